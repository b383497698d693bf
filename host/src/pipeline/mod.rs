//! The pipeline: one member of the application's group ([`crate::group`]), its
//! tasks, its plugin versions and one producer, in a consume → process → commit
//! loop.
//!
//! Under exactly-once every commit ends one Kafka transaction holding the output
//! records, the changelog records and the input offsets (with each task's stream
//! time and state schema as offset metadata); stores are written only after it
//! commits (`engine`). Plugin versions and hot swap live in `swap`.
//!
//! A run is a session of Kafka clients. Kafka being away costs time, never the
//! pipeline: setting up waits for the broker, a host dropped from the group gives
//! its tasks up and joins again, a fatal or uncertain producer is replaced, and
//! every wait gives way to the stop flag within seconds. A pipeline that stops
//! leaves the group, so its tasks move to the other hosts at once.
//! What stops a run is what retrying cannot mend: a plugin that keeps failing
//! under `on_failure = pause`, a state the plugin cannot read, a broken store or
//! configuration. `weir run` then exits non-zero; `weir serve` restarts the
//! pipeline with backoff when the cause is on the host's side.

mod engine;
mod swap;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use thiserror::Error;

pub use engine::Topics;
use engine::{Engine, Parts, Source};
pub use swap::{Control, SwapError, SwapEvent, SwapStatus};
use swap::{ControlCommand, Versions};

use crate::config::{Guarantee, RunConfig, StateBackend};
use crate::global::Globals;
use crate::group::{Membership, Space};
use crate::kafka::admin::{TopicSpec, ensure_topics, partition_count};
use crate::kafka::health::Health;
use crate::kafka::queries::Queries;
use crate::kafka::restore::Restorer;
use crate::kafka::sink::Sink;
use crate::kafka::source::{self, SourceContext};
use crate::kafka::{KafkaIoError, base_config};
use crate::metrics::Metrics;
use crate::runtime::{GuestError, LoadError, Plugin, Runtime};
use crate::state::{RocksOptions, RocksStore};
use crate::task::TaskError;
use crate::topology::Input;

/// Why a pipeline stopped.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The plugin could not be read.
    #[error("cannot read plugin {path}: {source}")]
    PluginFile {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Kafka failed in a way the pipeline cannot recover from.
    #[error(transparent)]
    Kafka(#[from] KafkaIoError),
    /// A task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The plugin failed again after being replaced.
    #[error("plugin keeps failing: {0}")]
    Guest(#[from] GuestError),
    /// The plugin cannot take over the stored state.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// Another thread panicked while holding the pipeline.
    #[error("pipeline state poisoned by an earlier panic")]
    Poisoned,
}

impl From<crate::global::GlobalError> for PipelineError {
    fn from(e: crate::global::GlobalError) -> Self {
        match e {
            crate::global::GlobalError::Kafka(e) => PipelineError::Kafka(e),
            crate::global::GlobalError::Store(e) => PipelineError::Task(TaskError::Store(e)),
        }
    }
}

impl PipelineError {
    /// A Kafka failure that retrying from the last commit can get past.
    pub fn is_transient_kafka(&self) -> bool {
        matches!(
            self,
            PipelineError::Kafka(
                KafkaIoError::Abortable(_)
                    | KafkaIoError::Uncertain(_)
                    | KafkaIoError::Unreachable(_)
                    | KafkaIoError::Stopped
                    | KafkaIoError::Request(_)
            )
        )
    }

    /// A failure no retry inside the pipeline can mend.
    fn stops_pipeline(&self) -> bool {
        match self {
            PipelineError::Task(e) => e.is_plugin() || matches!(e, TaskError::Frame(_)),
            PipelineError::Kafka(e) => matches!(e, KafkaIoError::Setup(_) | KafkaIoError::Topic { .. }),
            PipelineError::Guest(_) | PipelineError::Swap(_) | PipelineError::Config(_) => true,
            PipelineError::PluginFile { .. } | PipelineError::Load(_) | PipelineError::Poisoned => true,
        }
    }

    /// Whether starting the pipeline again later may work: the cause is on the
    /// host's side (Kafka, a store), not in its plugin, state or configuration.
    pub fn is_restartable(&self) -> bool {
        match self {
            PipelineError::Kafka(KafkaIoError::Topic { .. } | KafkaIoError::Setup(_)) => false,
            PipelineError::Kafka(_) | PipelineError::Poisoned => true,
            PipelineError::Task(TaskError::Store(_)) => true,
            _ => false,
        }
    }
}

/// Test hook: abort the process after flushing the first commit that covers at
/// least N processed records, before committing it.
pub const CRASH_ENV: &str = "WEIR_TEST_CRASH_AFTER_FLUSH";

/// How often the pipeline logs its counters.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How long setting up may wait for Kafka per attempt.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stopping pipeline may spend on its last commit, counted from
/// the stop request (a commit in flight then may finish within it).
const SHUTDOWN_GRACE: Duration = crate::kafka::sink::STOP_GRACE;

/// How long closing a consumer, or leaving the group, may take.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// A configured pipeline, ready to run (and to run again after a failure).
pub struct Pipeline {
    cfg: RunConfig,
    metrics: Metrics,
    health: Health,
    control: Control,
    member: String,
    /// This host's static identity in the group.
    instance: String,
    /// Where this host's admin API answers (told to the other hosts).
    admin: Option<String>,
    /// The state directory, held while the pipeline lives.
    _state_lock: crate::state::DirLock,
    /// The group and this host's tasks, for the admin API.
    board: crate::group::Board,
    /// Between sessions: the versions and the swap commands.
    versions: Option<(Versions, Receiver<ControlCommand>)>,
}

/// This host's identity: `instance_id` if set; otherwise the machine's name and
/// a digest of the state directory's absolute path — the same after a restart,
/// even on an emptied state directory (so the host takes its place back at once
/// instead of waiting for its old session to expire), and different for two
/// hosts on one machine (which need state directories of their own).
fn instance_id(cfg: &RunConfig) -> Result<String, PipelineError> {
    use sha2::Digest;
    if let Some(id) = &cfg.instance_id {
        return Ok(id.clone());
    }
    let dir = &cfg.state.dir;
    std::fs::create_dir_all(dir)
        .map_err(|source| TaskError::Store(crate::state::StoreError::Io { path: dir.display().to_string(), source }))?;
    let path = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    Ok(format!("{}-{short}", host_name()))
}

/// The machine's name (`localhost` if it has none readable).
fn host_name() -> String {
    let name = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|n| n.trim().to_owned())
        .unwrap_or_default();
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if clean.is_empty() { "localhost".into() } else { clean }
}

impl Pipeline {
    /// Loads the plugin and prepares the pipeline; Kafka is first contacted by
    /// [`Pipeline::run`].
    pub fn new(cfg: RunConfig, runtime: &Runtime, metrics: Metrics) -> Result<Self, PipelineError> {
        cfg.validate()?;
        let plugin = Self::load_plugin(&cfg, runtime)?;
        Self::with_plugin(cfg, plugin, metrics)
    }

    /// Loads the plugin file `cfg` names, under its sandbox.
    pub fn load_plugin(cfg: &RunConfig, runtime: &Runtime) -> Result<Plugin, PipelineError> {
        let wasm = std::fs::read(&cfg.plugin)
            .map_err(|source| PipelineError::PluginFile { path: cfg.plugin.clone(), source })?;
        Ok(runtime.load(&wasm, cfg.sandbox())?)
    }

    /// Like [`Pipeline::new`], with the plugin already loaded (e.g. from the
    /// registry); `cfg.plugin` is only reported.
    pub fn with_plugin(mut cfg: RunConfig, plugin: Plugin, metrics: Metrics) -> Result<Self, PipelineError> {
        cfg.validate()?;
        let (dir, state_lock) = crate::state::claim(&cfg.state.dir, &cfg.application_id).map_err(TaskError::Store)?;
        if dir != cfg.state.dir {
            tracing::warn!(
                configured = %cfg.state.dir.display(),
                taken = %dir.display(),
                "another host of this application on this machine holds the state directory; this host takes the next"
            );
            cfg.state.dir = dir;
        }
        let info = plugin.info();
        let topics = Topics::of(&cfg, &info.shape);
        tracing::info!(
            plugin = %plugin.label(),
            sources = ?topics.sources,
            sinks = ?topics.sinks,
            repartitions = ?topics.repartitions,
            sub_topologies = info.shape.subs.len(),
            "plugin loaded"
        );
        let versions = Versions::new(plugin);
        let (tx, rx) = channel();
        let control = Control { tx, status: versions.status.clone(), cfg: Arc::new(cfg.clone()) };
        let health = Health::new(&cfg.application_id, metrics.kafka_reachable.clone());
        let instance = instance_id(&cfg)?;
        let member = format!("{}-{instance}", cfg.application_id);
        Ok(Self {
            cfg,
            metrics,
            health,
            control,
            member,
            instance,
            admin: None,
            _state_lock: state_lock,
            board: crate::group::Board::default(),
            versions: Some((versions, rx)),
        })
    }

    /// Tells the other hosts of the application where this host's admin API
    /// answers (set before [`Pipeline::run`]).
    pub fn set_admin_address(&mut self, addr: Option<String>) {
        self.admin = addr;
    }

    /// This host's identity in the application's group.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The state directory this host took (the configured one, or the next
    /// free one if another host of the application holds it).
    pub fn state_dir(&self) -> &std::path::Path {
        &self.cfg.state.dir
    }

    /// The group and this host's tasks, as the admin API shows them.
    pub fn board(&self) -> crate::group::Board {
        self.board.clone()
    }

    /// The pipeline's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Whether the pipeline reaches Kafka.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// A handle to swap the pipeline's plugin while it runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until `stop` is set, then commits and leaves the group. Returns an
    /// error if the pipeline failed; it may be run again afterwards.
    pub fn run(&mut self, stop: &Arc<AtomicBool>) -> Result<(), PipelineError> {
        let span = tracing::info_span!("pipeline", name = %self.cfg.application_id);
        let _entered = span.enter();
        let mut noted = Instant::now() - REPORT_EVERY;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match self.session(stop) {
                Err(PipelineError::Kafka(KafkaIoError::Unreachable(reason))) => {
                    self.health.setting_up(Some(&reason));
                    if noted.elapsed() >= REPORT_EVERY {
                        noted = Instant::now();
                        tracing::warn!(%reason, "Kafka unreachable while setting up; trying again");
                    }
                    sleep_unless(stop, Duration::from_secs(1));
                }
                other => return other,
            }
        }
    }

    fn engine(engine: &Mutex<Engine>) -> Result<MutexGuard<'_, Engine>, PipelineError> {
        engine.lock().map_err(|_| PipelineError::Poisoned)
    }

    /// One session: clients made, tasks run, until stop or failure.
    fn session(&mut self, stop: &Arc<AtomicBool>) -> Result<(), PipelineError> {
        let cfg = &self.cfg;
        let mut base = base_config(&cfg.bootstrap_servers, &cfg.kafka);
        let Some((versions, _)) = &self.versions else { return Err(PipelineError::Poisoned) };
        let shape = versions.info().shape.clone();
        let topics = Topics::of(cfg, &shape);
        let all: Vec<&String> = topics.all_inputs().collect();
        if let Some(twice) = all.iter().enumerate().find(|(i, t)| all[..*i].contains(t)) {
            return Err(KafkaIoError::Topic {
                topic: twice.1.to_string(),
                reason: "two sources would read it; map them to different topics".into(),
            }
            .into());
        }
        let mut source_partitions = Vec::with_capacity(topics.sources.len());
        for topic in &topics.sources {
            let count = partition_count(&base, topic, SETUP_TIMEOUT)?
                .ok_or_else(|| KafkaIoError::Topic { topic: topic.clone(), reason: "does not exist".into() })?;
            source_partitions.push(count);
        }
        let partitions = source_partitions.iter().copied().max().unwrap_or(1);
        let spec = |name: &str, partitions: i32, configs: Vec<(String, String)>, exact| TopicSpec {
            name: name.to_owned(),
            partitions,
            replication: cfg.replication_factor,
            configs,
            exact_partitions: exact,
        };
        let mut wanted: Vec<TopicSpec> = topics.sinks.iter().map(|t| spec(t, partitions, vec![], false)).collect();
        // Repartition topics keep records until the tasks reading them commit
        // past them; then the records are deleted (purged), as Kafka Streams does.
        // Unless the plugin sets a count: a repartition topic merged with a
        // source is co-partitioned with it; others get the largest source's count.
        let merged_source = |r: usize| {
            let sub = shape.subs.iter().find(|s| s.inputs.iter().any(|i| i.input == Input::Repartition(r)))?;
            sub.inputs.iter().find_map(|i| match i.input {
                Input::Source(s) => source_partitions.get(s).copied(),
                Input::Repartition(_) => None,
            })
        };
        let repartition_partitions: Vec<i32> = shape
            .repartitions
            .iter()
            .enumerate()
            .map(|(i, r)| r.partitions.map_or_else(|| merged_source(i).unwrap_or(partitions), |p| p as i32))
            .collect();
        let count_of = |input: Input| match input {
            Input::Source(i) => source_partitions[i],
            Input::Repartition(i) => repartition_partitions[i],
        };
        // A task reads the same partition of each topic its sub-topology merges.
        for (sub, names) in shape.subs.iter().zip(&topics.inputs) {
            let counts: Vec<i32> = sub.inputs.iter().map(|i| count_of(i.input)).collect();
            if let Some(at) = counts.iter().position(|&c| c != counts[0]) {
                return Err(KafkaIoError::Topic {
                    topic: names[at].clone(),
                    reason: format!(
                        "it has {} partitions and is read with {} ({} partitions) in one sub-topology (merged or \
                         joined); such topics must be co-partitioned (the same number of partitions, keyed alike) — \
                         repartition one of them first, or give them the same partition count",
                        counts[at], names[0], counts[0]
                    ),
                }
                .into());
            }
        }
        for (topic, &count) in topics.repartitions.iter().zip(&repartition_partitions) {
            let configs = vec![
                ("cleanup.policy".into(), "delete".into()),
                ("retention.ms".into(), "-1".into()),
                ("segment.bytes".into(), (50 << 20).to_string()),
            ];
            wanted.push(spec(topic, count, configs, true));
        }
        for (sub, changelogs) in shape.subs.iter().zip(&topics.changelogs) {
            // A table restored from its source topic has no changelog of its own.
            let own = changelogs.iter().enumerate().filter(|(i, _)| sub.source_table(*i).is_none());
            for (_, changelog) in own {
                // A store's changelog has a partition per task: as many as its input.
                let count = sub.inputs.first().map_or(partitions, |i| count_of(i.input));
                wanted.push(spec(changelog, count, vec![("cleanup.policy".into(), "compact".into())], true));
            }
        }
        wanted.push(spec(&topics.dead_letter, partitions, vec![], false));
        ensure_topics(&base, &wanted, SETUP_TIMEOUT)?;
        let exactly_once = cfg.processing_guarantee == Guarantee::ExactlyOnce;
        let queries = Queries::start(&base, &cfg.application_id, self.health.clone(), stop.clone())?;
        let changelogs: Vec<String> = (shape.subs.iter().zip(&topics.changelogs))
            .flat_map(|(sub, logs)| logs.iter().enumerate().filter(|(i, _)| sub.source_table(*i).is_none()))
            .map(|(_, log)| log.clone())
            .collect();
        // What restores read: changelogs, and the topics tables are restored from.
        let mut restored: Vec<String> = changelogs.iter().chain(topics.all_inputs()).cloned().collect();
        restored.sort_unstable();
        restored.dedup();
        let restorer = Restorer::new(&base, exactly_once, self.health.clone(), &restored)?;
        let standby_restorer = Restorer::new(&base, exactly_once, self.health.clone(), &restored)?.impatient();
        let mut producer = base.clone();
        producer.set("compression.type", cfg.compression.as_str());
        let mut sink = Sink::new(
            producer,
            &changelogs,
            exactly_once.then_some(self.member.as_str()),
            self.health.clone(),
            stop.clone(),
        );
        // Before joining: fences this host's previous producer at once and
        // settles the transaction it left open, which a restore would wait for.
        sink.ready(SETUP_TIMEOUT)?;
        base.set("client.id", format!("weir-{}", cfg.application_id));
        let consumer_config = source::consumer_config(&base, &cfg.application_id);
        // A task per partition of each sub-topology's (co-partitioned) inputs.
        let tasks: Vec<(crate::task::TaskId, bool)> = (shape.subs.iter().enumerate())
            .flat_map(|(sub, s)| {
                let count = s.inputs.first().map_or(partitions, |i| count_of(i.input));
                let stateful = !s.stores().is_empty();
                (0..count).map(move |partition| (crate::task::TaskId { sub, partition }, stateful))
            })
            .collect();
        let space = Space {
            tasks: tasks.iter().map(|(t, _)| *t).collect(),
            stateful: tasks.iter().filter(|(_, stateful)| *stateful).map(|(t, _)| *t).collect(),
            inputs: topics.inputs.clone(),
        };
        let membership = Membership::join(self.group_settings(), space)
            .map_err(|e| KafkaIoError::Setup(format!("joining the group: {e}")))?;
        let rocks = (cfg.state.backend == StateBackend::Rocksdb)
            .then(|| RocksOptions::new(cfg.state.cache_mb << 20, cfg.state.write_buffer_mb << 20));
        // Global tables are read whole before any task runs.
        let mut global_stores: Vec<(String, Box<dyn crate::state::Store>)> = Vec::new();
        for (global, topic) in shape.globals.iter().zip(&topics.globals) {
            let store: Box<dyn crate::state::Store> = match &rocks {
                Some(options) => {
                    let dir = cfg.state.dir.join(&cfg.application_id).join(&global.store.name);
                    Box::new(RocksStore::open(&dir, options).map_err(TaskError::from)?)
                }
                None => Box::new(crate::state::MemoryStore::default()),
            };
            global_stores.push((topic.clone(), store));
        }
        let mut globals = Globals::new(&base, exactly_once, self.health.clone(), global_stores)?;
        globals.bootstrap(SETUP_TIMEOUT)?;
        self.health.setting_up(None);
        let Some((versions, control)) = self.versions.take() else { return Err(PipelineError::Poisoned) };
        let engine = Arc::new(Mutex::new(Engine::new(Parts {
            cfg: cfg.clone(),
            topics,
            sink,
            versions,
            control,
            metrics: self.metrics.clone(),
            restorer,
            standby_restorer,
            queries,
            rocks,
            globals,
            membership,
            board: self.board.clone(),
        })));
        let result = self.drive(&engine, &consumer_config, stop);
        // Whatever happened, the versions (and the swap history) live on. A
        // consumer let go may still be in a callback for a moment: wait it out.
        let mut engine = engine;
        for _ in 0..100 {
            match Arc::try_unwrap(engine) {
                Ok(engine) => {
                    let engine = engine.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
                    self.versions = Some(engine.into_versions());
                    return result;
                }
                Err(shared) => {
                    engine = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        Err(PipelineError::Poisoned)
    }

    /// How this host joins the application's group.
    fn group_settings(&self) -> crate::group::Settings {
        let cfg = &self.cfg;
        crate::group::Settings {
            bootstrap: cfg.bootstrap_servers.clone(),
            group: cfg.application_id.clone(),
            instance: self.instance.clone(),
            client_id: format!("weir-{}-{}", cfg.application_id, self.instance),
            session_timeout: Duration::from_millis(cfg.session_timeout_ms),
            rebalance_timeout: Duration::from_millis(cfg.rebalance_timeout_ms),
            heartbeat_interval: Duration::from_millis(cfg.heartbeat_interval()),
            standbys: cfg.num_standby_replicas,
            acceptable_lag: cfg.acceptable_recovery_lag,
            admin: self.admin.clone(),
        }
    }

    /// The loop of a session, and its shutdown: the last commit, then leaving
    /// the group so the tasks move at once.
    fn drive(
        &self,
        engine: &Arc<Mutex<Engine>>,
        consumer_config: &rdkafka::ClientConfig,
        stop: &Arc<AtomicBool>,
    ) -> Result<(), PipelineError> {
        let consumer = source::create(consumer_config, SourceContext::new(self.health.clone()))?;
        let result = self.poll_loop(engine, &consumer, stop);
        let mut stopped_cleanly = result.is_ok();
        let membership = {
            let mut engine = Self::engine(engine)?;
            engine.sink.allow_grace(SHUTDOWN_GRACE);
            if result.is_ok() && !engine.failed {
                // The last commit, bounded by the grace period.
                if let Err(e) = engine.commit(&consumer, true) {
                    stopped_cleanly = false;
                    if e.is_transient_kafka() {
                        tracing::warn!(error = %e, "the last commit failed: the next owner redoes the work since the commit before");
                    } else if result.is_ok() {
                        engine.fatal.get_or_insert(e);
                    }
                }
            }
            engine.sink.end_abandoned(CLOSE_GRACE);
            engine.membership.take()
        };
        // Whatever stopped the pipeline, its tasks are better off elsewhere now.
        if let Some(membership) = membership {
            membership.leave(CLOSE_GRACE);
        }
        source::close(consumer, CLOSE_GRACE);
        tracing::info!(metrics = %self.metrics.summary(), clean = stopped_cleanly, "pipeline stopped");
        if let Some(e) = Self::engine(engine)?.fatal.take()
            && result.is_ok()
        {
            return Err(e);
        }
        result
    }

    fn poll_loop(
        &self,
        engine: &Arc<Mutex<Engine>>,
        consumer: &Source,
        stop: &Arc<AtomicBool>,
    ) -> Result<(), PipelineError> {
        let interval = self.cfg.commit_interval();
        let batch = self.cfg.batch_size;
        let hold_limit = self.cfg.state.uncommitted_mb << 20;
        let mut last_commit = Instant::now();
        let mut last_report = Instant::now();
        loop {
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                tracing::info!(metrics = %self.metrics.summary(), "progress");
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (restoring, reading, held, deferred) = {
                let mut engine = Self::engine(engine)?;
                if let Err(e) = engine.follow_group(consumer) {
                    return Err(engine.fail(e));
                }
                (engine.is_restoring(), engine.is_reading_changelogs(), engine.held_bytes(), engine.commit_deferred())
            };
            let mut wait = interval.saturating_sub(last_commit.elapsed()).min(Duration::from_millis(100));
            // A restore reading changelogs waits for their records itself; a
            // commit waiting for the group is made once the group answers.
            if reading {
                wait = Duration::ZERO;
            } else if restoring || deferred {
                wait = wait.min(Duration::from_millis(5));
            }
            let mut polled = 0;
            let mut consumer_fatal = None;
            // Over the memory bound, nothing more is read until a commit; while
            // commits back off (Kafka away) the loop waits instead of spinning.
            if held >= hold_limit {
                std::thread::sleep(wait);
            }
            while polled < batch && held < hold_limit {
                let Some(message) = consumer.poll(wait) else { break };
                wait = Duration::ZERO;
                let message = match message {
                    Ok(m) => m,
                    Err(KafkaError::MessageConsumptionFatal(code)) => {
                        consumer_fatal = Some(code.to_string());
                        break;
                    }
                    Err(KafkaError::MessageConsumption(code)) => {
                        self.health.report_error("consumer", &KafkaError::Global(code), &code.to_string());
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                };
                polled += 1;
                let timestamp = match message.timestamp() {
                    Timestamp::NotAvailable => None,
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                };
                Self::engine(engine)?.accept(
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    message.key(),
                    message.payload(),
                    timestamp,
                );
            }
            if consumer_fatal.is_none()
                && let Some((code, reason)) = consumer.client().fatal_error()
            {
                consumer_fatal = Some(format!("{code}: {reason}"));
            }
            let mut engine = Self::engine(engine)?;
            if let Some(reason) = consumer_fatal {
                let error = KafkaIoError::Fatal(format!("the consumer failed: {reason}"));
                return Err(engine.fail(error.into()));
            }
            if let Some(e) = engine.fatal.take() {
                return Err(engine.fail(e));
            }
            if let Err(e) = engine.globals.poll(Duration::ZERO) {
                return Err(engine.fail(e.into()));
            }
            let budget = if engine.is_restoring() { Duration::from_millis(20) } else { Duration::ZERO };
            if let Err(e) = engine.drive_restores(consumer, budget) {
                return Err(engine.fail(e));
            }
            if let Err(e) = engine.tend(consumer) {
                return Err(engine.fail(e));
            }
            let due = last_commit.elapsed() >= interval || engine.held_bytes() >= hold_limit || engine.commit_soon();
            let step = if due {
                last_commit = Instant::now();
                engine.commit(consumer, false)
            } else {
                engine.process_pending(consumer).map_err(PipelineError::from).or_else(|e| engine.recover(e, consumer))
            };
            if let Err(e) = step {
                // Whatever stopped the loop, nothing more is committed.
                return Err(if engine.failed { e } else { engine.fail(e) });
            }
            engine.apply_control();
            engine.keep_producer_ready();
            engine.sink.poll();
        }
    }
}

/// Checks what can be checked of `cfg` before a pipeline is made: the input
/// topic of `plugin` exists. Kafka being unreachable is not an error here (a run
/// waits for it).
pub fn preflight(cfg: &RunConfig, plugin: &Plugin) -> Result<(), PipelineError> {
    let base = base_config(&cfg.bootstrap_servers, &cfg.kafka);
    for input in Topics::of(cfg, &plugin.info().shape).sources {
        match partition_count(&base, &input, SETUP_TIMEOUT) {
            Ok(Some(_)) => {}
            Err(KafkaIoError::Unreachable(_)) => return Ok(()),
            Ok(None) => return Err(KafkaIoError::Topic { topic: input, reason: "does not exist".into() }.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sleeps for `duration`, waking early when `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, duration: Duration) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}
