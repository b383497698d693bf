//! Configuration of a pipeline: defaults, then a TOML file, then command-line flags.
//!
//! ```toml
//! application_id = "stock-stats"
//! plugin = "target/wasm32-wasip2/release/stock_stats.wasm"
//! bootstrap_servers = "127.0.0.1:9092"
//! input_topic = "trades"                 # the topology's only source reads this
//! output_topic = "stockstats-output"     # the topology's only sink writes this
//! processing_guarantee = "exactly_once"   # or "at_least_once"
//! commit_interval_ms = 100
//! grace_ms = 2000                         # overrides the plugin's grace
//!
//! [topics]                                # logical topic name → real topic
//! trades = "trades-eu"
//!
//! [kafka]                                  # passed to every Kafka client
//! "socket.keepalive.enable" = "true"
//! ```
//!
//! A plugin names the topics it reads and writes logically; a pipeline maps each
//! to a real topic: by `[topics]`, else (for a topology's only source or only
//! sink) by `input_topic` / `output_topic`, else a topic of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::runtime::{Limits, Sandbox};

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or missing.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Exactly-once or at-least-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Guarantee {
    /// Output, changelog and input offsets commit in one Kafka transaction.
    ExactlyOnce,
    /// Output and changelog are flushed before offsets commit; a crash may repeat work.
    AtLeastOnce,
}

/// When results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum EmitMode {
    /// Every changed window at every commit (results update as data arrives).
    Updates,
    /// Once per window, when it closes (stream time passes its end plus grace).
    Final,
}

/// Which backend holds task state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum StateBackend {
    /// RocksDB on local disk, restored incrementally from its checkpoint.
    Rocksdb,
    /// Memory only, restored from the whole changelog on every start.
    Memory,
}

/// Compression of the batches a pipeline writes (output, changelog, dead
/// letters). Reading handles every codec whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Compression {
    /// Uncompressed (Kafka's producer default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The name librdkafka's `compression.type` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// State store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Backend.
    pub backend: StateBackend,
    /// Directory for RocksDB stores and the instance id.
    pub dir: PathBuf,
    /// Block cache shared by all stores, in MiB.
    pub cache_mb: usize,
    /// Memtable size per store, in MiB.
    pub write_buffer_mb: usize,
    /// Most memory a pipeline holds for its next commit (buffered records,
    /// uncommitted state, queued output), in MiB: beyond it, it commits early
    /// and reads nothing more until it has.
    pub uncommitted_mb: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Rocksdb,
            dir: PathBuf::from(".weir-state"),
            cache_mb: 64,
            write_buffer_mb: 8,
            uncommitted_mb: 128,
        }
    }
}

/// What to do with a record the plugin keeps failing on (trap, out of memory,
/// out of time, oversized value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Send the record to the dead-letter topic with the failure and go on.
    DeadLetter,
    /// Stop the pipeline with the failure (nothing after the last commit is lost).
    Pause,
}

/// Plugin sandbox limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest linear memory of a plugin instance, in MiB.
    pub memory_mb: usize,
    /// CPU time one plugin call may take, in ms.
    pub call_budget_ms: u64,
    /// Largest accumulator or output value a plugin may return, in KiB.
    pub max_value_kb: usize,
    /// Most windows a plugin's windowing may put one record into.
    pub max_windows_per_record: u64,
    /// Retries of a failed plugin call (each on a fresh instance) before the
    /// failing record is looked for.
    pub retries: u32,
    /// What to do with that record.
    pub on_failure: FailurePolicy,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            memory_mb: d.memory_bytes >> 20,
            call_budget_ms: d.call_budget.as_millis() as u64,
            max_value_kb: d.max_value_bytes >> 10,
            max_windows_per_record: d.max_windows_per_record,
            retries: 2,
            on_failure: FailurePolicy::DeadLetter,
        }
    }
}

/// The admin HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it at all.
    pub enabled: bool,
    /// Address to bind; loopback unless a token is set.
    pub addr: String,
    /// Bearer token for calls that change something (or `WEIR_ADMIN_TOKEN`).
    pub token: Option<String>,
    /// Largest plugin upload, in MiB.
    pub max_upload_mb: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { enabled: true, addr: "127.0.0.1:7070".into(), token: None, max_upload_mb: 32 }
    }
}

/// Capabilities granted to the plugin; nothing by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Give the plugin a real clock (otherwise it reads zero).
    pub clock: bool,
    /// Environment variables the plugin sees.
    pub env: BTreeMap<String, String>,
}

/// Everything `weir run` needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// Consumer group and prefix of internal topics and transactional ids.
    pub application_id: String,
    /// Path of the plugin component (`.wasm`).
    pub plugin: PathBuf,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// Topic the topology's only source reads (unless `[topics]` maps it).
    pub input_topic: Option<String>,
    /// Topic the topology's only sink writes (unless `[topics]` maps it).
    pub output_topic: Option<String>,
    /// Logical topic names of the plugin mapped to real topics.
    pub topics: BTreeMap<String, String>,
    /// Topic for records that cannot be processed; default `<application_id>-dlq`.
    pub dead_letter_topic: Option<String>,
    /// Exactly-once or at-least-once.
    pub processing_guarantee: Guarantee,
    /// How often to commit, in ms.
    pub commit_interval_ms: u64,
    /// How long after a window ends late records are still accepted, in ms;
    /// overrides the grace the plugin declares.
    pub grace_ms: Option<u64>,
    /// How long a newly activated plugin version is on probation, in ms: a
    /// plugin failure in that time (and always before its first commit) rolls
    /// back to the previous version instead of dead-lettering records.
    pub swap_probation_ms: u64,
    /// How often consumed records of repartition topics are deleted, in ms
    /// (Kafka Streams' `repartition.purge.interval.ms`).
    pub repartition_purge_ms: u64,
    /// How a task reading several topics (a merge, a join) waits for an input
    /// that has no record buffered (Kafka Streams' `max.task.idle.ms`): `0`
    /// waits while that input may still have records to fetch (its lag is
    /// unknown or above zero), so records go in timestamp order across inputs;
    /// `-1` never waits (records go in the order they arrive).
    pub max_task_idle_ms: i64,
    /// When results are written; overrides what the plugin declares.
    pub emit: Option<EmitMode>,
    /// Largest number of records per plugin call.
    pub batch_size: usize,
    /// Replication factor of topics Weir creates; -1 takes the broker's default.
    pub replication_factor: i32,
    /// Compression of what the pipeline writes (output, changelog, dead letters).
    pub compression: Compression,
    /// Identifies this host in the group (static membership) and in transactional
    /// ids; default: the machine's name and a digest of the state directory's path.
    pub instance_id: Option<String>,
    /// Standby copies of each stateful task's stores, kept warm by other hosts
    /// (Kafka Streams' `num.standby.replicas`).
    pub num_standby_replicas: usize,
    /// A host without a heartbeat for this long is dropped from the group and
    /// its tasks move (within the broker's `group.min/max.session.timeout.ms`).
    pub session_timeout_ms: u64,
    /// How often a host heartbeats (and learns of rebalances); default: a
    /// quarter second, or a tenth of the session timeout if that is shorter.
    pub heartbeat_interval_ms: Option<u64>,
    /// How long a rebalance waits for every host to join.
    pub rebalance_timeout_ms: u64,
    /// A stateful task moves to another host (to balance the load) only once
    /// that host's copy of its stores is at most this many changelog records
    /// behind; until then the host warms one up (Kafka Streams' setting).
    pub acceptable_recovery_lag: i64,
    /// State stores.
    pub state: StateConfig,
    /// Plugin sandbox limits.
    pub limits: LimitsConfig,
    /// Plugin capabilities.
    pub sandbox: SandboxConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// Extra librdkafka properties for every client.
    pub kafka: BTreeMap<String, String>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            application_id: "weir".into(),
            plugin: PathBuf::new(),
            bootstrap_servers: "127.0.0.1:9092".into(),
            input_topic: None,
            output_topic: None,
            topics: BTreeMap::new(),
            dead_letter_topic: None,
            processing_guarantee: Guarantee::ExactlyOnce,
            commit_interval_ms: 100,
            swap_probation_ms: 30_000,
            repartition_purge_ms: 30_000,
            max_task_idle_ms: 0,
            grace_ms: None,
            emit: None,
            batch_size: 1000,
            replication_factor: -1,
            compression: Compression::None,
            instance_id: None,
            num_standby_replicas: 1,
            session_timeout_ms: 6_000,
            heartbeat_interval_ms: None,
            rebalance_timeout_ms: 30_000,
            acceptable_recovery_lag: 10_000,
            state: StateConfig::default(),
            limits: LimitsConfig::default(),
            sandbox: SandboxConfig::default(),
            admin: AdminConfig::default(),
            kafka: BTreeMap::new(),
        }
    }
}

impl RunConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) })
    }

    /// How often a host heartbeats, in ms.
    pub fn heartbeat_interval(&self) -> u64 {
        self.heartbeat_interval_ms.unwrap_or((self.session_timeout_ms / 10).min(250)).max(1)
    }

    /// The dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{}-dlq", self.application_id))
    }

    /// The changelog topic of the store named `store`.
    pub fn changelog_topic(&self, store: &str) -> String {
        weir_abi::topology::changelog_topic(&self.application_id, store)
    }

    /// The internal topic of repartition node `node`.
    pub fn repartition_topic(&self, node: &str) -> String {
        weir_abi::topology::repartition_topic(&self.application_id, node)
    }

    /// The real topic of the plugin's logical topic `logical`; `only` is the
    /// topic mapped by `input_topic`/`output_topic` when the topology has just
    /// one source (or sink).
    pub fn topic(&self, logical: &str, only: Option<&Option<String>>) -> String {
        if let Some(real) = self.topics.get(logical) {
            return real.clone();
        }
        if let Some(Some(real)) = only {
            return real.clone();
        }
        logical.to_owned()
    }

    /// The commit interval.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// What the plugin is granted and the limits it runs under.
    pub fn sandbox(&self) -> Sandbox {
        Sandbox {
            clock: self.sandbox.clock,
            env: self.sandbox.env.clone().into_iter().collect(),
            limits: Limits {
                memory_bytes: self.limits.memory_mb << 20,
                call_budget: Duration::from_millis(self.limits.call_budget_ms),
                max_value_bytes: self.limits.max_value_kb << 10,
                max_windows_per_record: self.limits.max_windows_per_record,
            },
        }
    }

    /// Checks values that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.application_id.is_empty()
            || !self.application_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return bad("application_id must be non-empty and use only ASCII letters, digits, '.', '_' and '-'");
        }
        if self.plugin.as_os_str().is_empty() {
            return bad("no plugin given (plugin = \"path/to/plugin.wasm\" or --plugin)");
        }
        if self.input_topic.as_ref().is_some_and(String::is_empty)
            || self.output_topic.as_ref().is_some_and(String::is_empty)
            || self.topics.iter().any(|(k, v)| k.is_empty() || v.is_empty())
        {
            return bad("topic names must not be empty");
        }
        if self.commit_interval_ms == 0 {
            return bad("commit_interval_ms must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.heartbeat_interval() >= self.session_timeout_ms || self.session_timeout_ms > i32::MAX as u64 {
            return bad(
                "heartbeat_interval_ms must be shorter than session_timeout_ms (a third of it or less is usual)",
            );
        }
        if let Some(protocol) = self.kafka.get("security.protocol")
            && !protocol.eq_ignore_ascii_case("plaintext")
        {
            return bad(
                "security.protocol must be plaintext: Weir's group member (and its Kafka clients, built without \
                 TLS) speak PLAINTEXT only so far",
            );
        }
        if self.rebalance_timeout_ms == 0 || self.rebalance_timeout_ms > i32::MAX as u64 {
            return bad("rebalance_timeout_ms must be between 1 and 2^31-1");
        }
        if !matches!(self.max_task_idle_ms, -1 | 0) {
            return bad(
                "max_task_idle_ms must be 0 (wait for inputs with records still to fetch) or -1 (never wait); \
                 waiting longer for new records on a caught-up input is not supported yet",
            );
        }
        if self.grace_ms.is_some_and(|g| g > i64::MAX as u64 / 2) {
            return bad("grace_ms is too large");
        }
        if self.state.uncommitted_mb == 0 {
            return bad("state.uncommitted_mb must be at least 1");
        }
        if self.limits.memory_mb == 0 || self.limits.memory_mb > 4096 {
            return bad("limits.memory_mb must be between 1 and 4096 (a wasm32 plugin addresses at most 4 GiB)");
        }
        if self.limits.call_budget_ms == 0 {
            return bad("limits.call_budget_ms must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_override_defaults_and_unknown_keys_are_refused() {
        let cfg: RunConfig = toml::from_str(
            r#"
            application_id = "app"
            plugin = "p.wasm"
            processing_guarantee = "at_least_once"
            grace_ms = 2500
            [state]
            backend = "memory"
            [kafka]
            "linger.ms" = "1"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.processing_guarantee, Guarantee::AtLeastOnce);
        assert_eq!(cfg.grace_ms, Some(2500));
        assert_eq!(cfg.state.backend, StateBackend::Memory);
        assert_eq!(cfg.commit_interval_ms, 100);
        assert_eq!(cfg.kafka.get("linger.ms").map(String::as_str), Some("1"));
        assert_eq!(cfg.dead_letter_topic(), "app-dlq");
        cfg.validate().unwrap();
        assert!(toml::from_str::<RunConfig>("commit_intervl_ms = 5").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let cfg = RunConfig { plugin: "p.wasm".into(), application_id: "has space".into(), ..RunConfig::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("application_id"));
        let cfg = RunConfig::default();
        assert!(cfg.validate().unwrap_err().to_string().contains("no plugin"));
    }
}
