//! The `weir` command line: `run`, `serve`, `gen trades`, `describe`, `plugin …`,
//! `pipeline …`, `demo`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Compression, ConfigError, EmitMode, Guarantee, RunConfig, StateBackend};
use crate::generator::GenConfig;

/// Weir: Kafka stream processing with sandboxed WebAssembly processors.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: consume, process through a plugin, produce, commit.
    Run(Box<RunArgs>),
    /// Run several pipelines in one host, from a file of `[[pipeline]]` tables.
    Serve(ServeArgs),
    /// Generate test data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Load a plugin and print what it declares and the topology it would run.
    Describe(DescribeArgs),
    /// Plugin versions.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Pipelines of a running `weir serve` host.
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// Every host of an application: its tasks (active and standby), their lag
    /// and restore progress, and the group's generation.
    Status(StatusArgs),
    /// Everything in one process on an in-process mock Kafka cluster: generator,
    /// host and stock-stats, with a live table of window statistics.
    Demo(DemoArgs),
}

/// `weir status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The pipeline (application id).
    #[arg(long)]
    pub pipeline: String,
    /// Print JSON (every host's answer) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Any host of the application (the others are found through the group).
    #[command(flatten)]
    pub target: AdminTarget,
}

/// `weir gen …`
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Stock trades in the stock-stats contract's shape.
    Trades(GenConfig),
}

/// Where the admin API is and how to authenticate.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// Admin API base URL.
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "WEIR_ADMIN_URL")]
    pub admin: String,
    /// Bearer token.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `weir plugin …`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Upload a component to a running host.
    Upload {
        /// Name to store it under.
        #[arg(long)]
        name: String,
        /// The component.
        file: PathBuf,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// List stored versions.
    List {
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Activate a stored version in a running pipeline.
    Activate {
        /// The pipeline (its application id).
        #[arg(long)]
        pipeline: String,
        /// Version id (or a prefix of at least 8 characters).
        version: String,
        /// Drop the pipeline's stored windows instead of migrating them (for a
        /// version with a state schema it cannot migrate from).
        #[arg(long)]
        reset_state: bool,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Go back to the previous version.
    Rollback {
        /// The pipeline.
        #[arg(long)]
        pipeline: String,
        /// Drop the stored windows (if the previous version cannot read their schema).
        #[arg(long)]
        reset_state: bool,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Show a pipeline's active version, swaps and errors.
    Status {
        /// The pipeline.
        #[arg(long)]
        pipeline: String,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Validate a component as an upload would (size, kind, world, version,
    /// exports, compilation) and print the version it would become.
    Check {
        /// The component.
        file: PathBuf,
        /// Largest accepted size in MiB.
        #[arg(long, default_value_t = 32)]
        max_mb: usize,
    },
}

/// `weir pipeline …`
#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// List the host's pipelines.
    List {
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Create and start a pipeline running a stored plugin version.
    Create {
        /// Plugin version id (or a prefix of at least 8 characters).
        #[arg(long)]
        version: String,
        /// TOML file with the pipeline's settings (the keys of a `[[pipeline]]`
        /// table, without `plugin`).
        file: PathBuf,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Stop a pipeline (it commits what it processed) and remove it from the host.
    Stop {
        /// The pipeline's application id.
        name: String,
        /// The host.
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// `weir describe`
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Plugin component.
    #[arg(long)]
    pub plugin: PathBuf,
    /// Optional config file for topic names.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON (sub-topologies, segments, stores, internal topics) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `weir serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Host config: `[admin]`, `[limits]`, `state_dir` and `[[pipeline]]` tables.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Admin API address (overrides the file).
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Kafka bootstrap servers for every pipeline (overrides the file).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
}

/// `weir demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Plugin component (default: the stock-stats build in target/).
    #[arg(long, default_value = "target/wasm32-wasip2/release/stock_stats.wasm")]
    pub plugin: PathBuf,
    /// Trades per second.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Number of tickers.
    #[arg(long, default_value_t = 12)]
    pub tickers: usize,
    /// Stop after this many seconds; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

/// `weir run`: every flag overrides the config file. A flag is its config key
/// with `-` for `_` and `.` (`processing_guarantee` → `--processing-guarantee`,
/// `state.dir` → `--state-dir`), and takes the same values (`exactly_once`).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Plugin component (`.wasm`).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Application id (consumer group, prefix of internal topics).
    #[arg(long)]
    pub application_id: Option<String>,
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// Topic the topology's only source reads.
    #[arg(long)]
    pub input_topic: Option<String>,
    /// Topic the topology's only sink writes.
    #[arg(long)]
    pub output_topic: Option<String>,
    /// Maps a logical topic of the plugin to a real one, `logical=real`; repeatable.
    #[arg(long = "topic", value_name = "LOGICAL=REAL")]
    pub topics: Vec<String>,
    /// Dead-letter topic.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Processing guarantee.
    #[arg(long, value_enum)]
    pub processing_guarantee: Option<Guarantee>,
    /// Compression of what the pipeline writes.
    #[arg(long, value_enum)]
    pub compression: Option<Compression>,
    /// Commit interval in ms.
    #[arg(long)]
    pub commit_interval_ms: Option<u64>,
    /// Grace period for late records in ms.
    #[arg(long)]
    pub grace_ms: Option<u64>,
    /// How often consumed records of repartition topics are deleted, in ms.
    #[arg(long)]
    pub repartition_purge_ms: Option<u64>,
    /// 0: a task reading several topics waits for an input with records still
    /// to fetch; -1: never waits.
    #[arg(long, allow_negative_numbers = true)]
    pub max_task_idle_ms: Option<i64>,
    /// Emit every update or only final window results.
    #[arg(long, value_enum)]
    pub emit: Option<EmitMode>,
    /// State directory.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// State backend.
    #[arg(long, value_enum)]
    pub state_backend: Option<StateBackend>,
    /// Instance id (static group membership, transactional id).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// Standby copies of each stateful task kept warm on other hosts.
    #[arg(long)]
    pub num_standby_replicas: Option<usize>,
    /// A host silent this long is dropped from the group (its tasks move), in ms.
    #[arg(long)]
    pub session_timeout_ms: Option<u64>,
    /// Admin API address (default 127.0.0.1:7070, or the next free port; port 0
    /// picks any free one).
    #[arg(long)]
    pub admin_addr: Option<String>,
    /// Do not serve the admin API.
    #[arg(long)]
    pub no_admin: bool,
    /// Extra librdkafka property, `key=value`; repeatable.
    #[arg(long = "kafka", short = 'X', value_name = "KEY=VALUE")]
    pub kafka: Vec<String>,
}

impl RunArgs {
    /// The config file (or defaults) with these flags applied.
    pub fn resolve(&self) -> Result<RunConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => RunConfig::from_file(path)?,
            None => RunConfig::default(),
        };
        macro_rules! set {
            ($($field:ident => $target:expr),* $(,)?) => {
                $(if let Some(v) = &self.$field { $target = v.clone(); })*
            };
        }
        set!(
            plugin => cfg.plugin,
            application_id => cfg.application_id,
            bootstrap_servers => cfg.bootstrap_servers,
            processing_guarantee => cfg.processing_guarantee,
            compression => cfg.compression,
            commit_interval_ms => cfg.commit_interval_ms,
            repartition_purge_ms => cfg.repartition_purge_ms,
            max_task_idle_ms => cfg.max_task_idle_ms,
            state_dir => cfg.state.dir,
            state_backend => cfg.state.backend,
            num_standby_replicas => cfg.num_standby_replicas,
            session_timeout_ms => cfg.session_timeout_ms,
        );
        macro_rules! set_some {
            ($($field:ident => $target:expr),* $(,)?) => {
                $(if let Some(v) = &self.$field { $target = Some(v.clone()); })*
            };
        }
        set_some!(
            dead_letter_topic => cfg.dead_letter_topic,
            input_topic => cfg.input_topic,
            output_topic => cfg.output_topic,
            grace_ms => cfg.grace_ms,
            emit => cfg.emit,
        );
        for mapping in &self.topics {
            let (logical, real) = mapping
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("--topic {mapping:?} is not logical=real")))?;
            cfg.topics.insert(logical.to_owned(), real.to_owned());
        }
        if let Some(addr) = &self.admin_addr {
            cfg.admin.addr = addr.clone();
        }
        if self.no_admin {
            cfg.admin.enabled = false;
        }
        if let Some(id) = &self.instance_id {
            cfg.instance_id = Some(id.clone());
        }
        for kv in &self.kafka {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError::Invalid(format!("--kafka expects key=value, got {kv:?}")))?;
            cfg.kafka.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weir.toml");
        std::fs::write(&file, "application_id = \"from-file\"\nplugin = \"a.wasm\"\ngrace_ms = 1\n").unwrap();
        let cli = Cli::parse_from([
            "weir",
            "run",
            "-c",
            file.to_str().unwrap(),
            "--grace-ms",
            "2000",
            "--processing-guarantee",
            "at_least_once",
            "-X",
            "linger.ms=0",
        ]);
        let Command::Run(args) = cli.command else { panic!("not run") };
        let cfg = args.resolve().unwrap();
        assert_eq!(cfg.application_id, "from-file");
        assert_eq!(cfg.grace_ms, Some(2000));
        assert_eq!(cfg.processing_guarantee, Guarantee::AtLeastOnce);
        assert_eq!(cfg.kafka["linger.ms"], "0");
    }

    #[test]
    fn flag_values_are_the_config_values() {
        for (flag, value) in [
            ("--processing-guarantee", "exactly_once"),
            ("--emit", "final"),
            ("--state-backend", "rocksdb"),
            ("--compression", "zstd"),
        ] {
            let parsed = Cli::try_parse_from(["weir", "run", flag, value]);
            assert!(parsed.is_ok(), "{flag} {value}: {:?}", parsed.err());
        }
        // The kebab-case spelling is not a second vocabulary.
        assert!(Cli::try_parse_from(["weir", "run", "--processing-guarantee", "exactly-once"]).is_err());
    }
}
