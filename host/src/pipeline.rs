//! The pipeline: one consumer-group member, its tasks, one plugin instance and one
//! producer, in a consume → process → commit loop.
//!
//! Under exactly-once every commit interval ends one Kafka transaction holding the
//! output records, the changelog records and the input offsets (with each task's
//! stream time as offset metadata); stores are written only after it commits. On a
//! revocation the pipeline commits before giving partitions up; on an assignment it
//! restores each task's store from its changelog and resumes at the committed
//! offset. A failed transaction is aborted and every task rewinds to its last commit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use thiserror::Error;

use crate::config::{Guarantee, RunConfig, StateBackend};
use crate::kafka::admin::{TopicSpec, ensure_topics, partition_count};
use crate::kafka::restore::restore;
use crate::kafka::sink::Sink;
use crate::kafka::{self, KafkaIoError, base_config, set_default};
use crate::metrics::Metrics;
use crate::runtime::{GuestError, Instance, LoadError, Plugin, PluginInfo, Runtime};
use crate::state::{MemoryStore, RocksOptions, RocksStore, Store};
use crate::task::{CommitMetadata, PreparedCommit, Task, TaskContext, TaskError, Topics};

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

/// Test hook: abort the process after flushing the first commit that covers at
/// least N processed records, before committing it.
pub const CRASH_ENV: &str = "WEIR_TEST_CRASH_AFTER_FLUSH";

/// How often the pipeline logs its counters.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How many times in a row a failed commit is retried before the pipeline stops.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// A plugin version ready to take over: compiled and instantiated off the hot path.
struct Staged {
    label: String,
    plugin: Plugin,
    instance: Instance,
    /// Drop the stored state instead of migrating it.
    reset_state: bool,
}

/// Why a swap was refused before it was staged.
#[derive(Debug, Error)]
pub enum SwapError {
    /// The new version would read the stores differently.
    #[error("version {label} is incompatible: {reason}")]
    Incompatible {
        /// The version.
        label: String,
        /// What differs.
        reason: String,
    },
    /// The new version cannot read the pipeline's state.
    #[error(
        "version {label} has state schema {schema} and migrates from {migrates_from:?}, but the pipeline's \
         state is in schema {stored}: use a version that migrates from {stored}, or activate with \
         reset_state to drop the stored windows"
    )]
    StateSchema {
        /// The version.
        label: String,
        /// Its state schema.
        schema: u32,
        /// What it migrates from.
        migrates_from: Vec<u32>,
        /// The schema the state is in.
        stored: u32,
    },
    /// Nothing to roll back to.
    #[error("no previous version to roll back to")]
    NoPrevious,
    /// The new version could not be instantiated.
    #[error("version {label} cannot be instantiated: {source}")]
    Instantiate {
        /// The version.
        label: String,
        /// Why.
        source: GuestError,
    },
    /// The pipeline is gone.
    #[error("the pipeline has stopped")]
    Stopped,
}

/// One completed or failed swap.
#[derive(Debug, Clone)]
pub struct SwapEvent {
    /// The version swapped from.
    pub from: String,
    /// The version swapped to.
    pub to: String,
    /// How long the pipeline thread paused for it.
    pub pause: Duration,
    /// Set if the new version failed and the pipeline rolled back.
    pub rolled_back: Option<String>,
    /// What happened to the stored state, if anything (migrated or reset).
    pub state: Option<String>,
}

/// What a pipeline reports about its plugin.
#[derive(Debug, Clone, Default)]
pub struct SwapStatus {
    /// Label of the active version.
    pub active: String,
    /// Label of the version before it, if any.
    pub previous: Option<String>,
    /// Every swap, in order.
    pub history: Vec<SwapEvent>,
    /// The last failure of a new version, if any.
    pub last_error: Option<String>,
    /// What the active version declared.
    pub active_info: Option<PluginInfo>,
    /// What the previous version declared.
    pub previous_info: Option<PluginInfo>,
}

/// Hot swap of a running pipeline's plugin.
#[derive(Clone)]
pub struct Control {
    tx: Sender<ControlCommand>,
    status: Arc<Mutex<SwapStatus>>,
}

enum ControlCommand {
    Activate(Box<Staged>),
    Rollback { reset_state: bool },
}

/// Why `new` cannot take over from `old`, if it cannot.
fn incompatibility(label: &str, old: &PluginInfo, new: &PluginInfo, reset_state: bool) -> Option<SwapError> {
    if old.windowing != new.windowing {
        let reason = format!(
            "windows {:?} differ from the running {:?}; a different windowing is a new pipeline (new application id)",
            new.windowing, old.windowing
        );
        return Some(SwapError::Incompatible { label: label.to_owned(), reason });
    }
    (!reset_state && !new.reads_state(old.state_schema)).then(|| SwapError::StateSchema {
        label: label.to_owned(),
        schema: new.state_schema,
        migrates_from: new.migrates_from.clone(),
        stored: old.state_schema,
    })
}

impl Control {
    /// Stages `plugin` (labelled `label`) to replace the running version at the
    /// next transaction boundary. The instance is created here, on the caller's
    /// thread; the pipeline thread only switches to it. A version with another
    /// state schema must migrate from the running one's, or `reset_state` must be
    /// set to drop the stored windows.
    pub fn activate(&self, label: &str, plugin: Plugin, reset_state: bool) -> Result<(), SwapError> {
        if let Some(old) = self.status().active_info
            && let Some(refusal) = incompatibility(label, &old, plugin.info(), reset_state)
        {
            return Err(refusal);
        }
        let instance =
            plugin.instantiate().map_err(|source| SwapError::Instantiate { label: label.to_owned(), source })?;
        self.tx
            .send(ControlCommand::Activate(Box::new(Staged { label: label.to_owned(), plugin, instance, reset_state })))
            .map_err(|_| SwapError::Stopped)
    }

    /// Returns to the previous version at the next transaction boundary; the same
    /// state-schema rule as [`Control::activate`] applies.
    pub fn rollback(&self, reset_state: bool) -> Result<(), SwapError> {
        let status = self.status();
        let (Some(label), Some(previous)) = (status.previous, status.previous_info) else {
            return Err(SwapError::NoPrevious);
        };
        if let Some(old) = status.active_info
            && let Some(refusal) = incompatibility(&label, &old, &previous, reset_state)
        {
            return Err(refusal);
        }
        self.tx.send(ControlCommand::Rollback { reset_state }).map_err(|_| SwapError::Stopped)
    }

    /// The current status.
    pub fn status(&self) -> SwapStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The part of a pipeline the rebalance callbacks need.
struct Engine {
    cfg: RunConfig,
    topics: Topics,
    sink: Sink,
    plugin: Plugin,
    instance: Instance,
    tasks: BTreeMap<i32, Task>,
    suspended: BTreeMap<i32, Task>,
    rocks: Option<RocksOptions>,
    metrics: Metrics,
    base: ClientConfig,
    /// An error raised inside a rebalance callback, surfaced by the loop.
    fatal: Option<PipelineError>,
    failures: u32,
    crash_after_flush: Option<u64>,
    /// Label of the running version.
    active: String,
    /// The version before it, kept for rollback.
    previous: Option<(String, Plugin)>,
    /// Set from a swap until the first commit after `probation_until` (so at
    /// least until the new version's first commit); a plugin failure in that
    /// time rolls back instead of dead-lettering records.
    probation: bool,
    /// `None`: a probation too long to represent, which does not end.
    probation_until: Option<Instant>,
    /// The running version was activated with `reset_state` and that reset is
    /// not committed yet: it is redone if the transaction is rewound.
    reset_state: bool,
    control: Receiver<ControlCommand>,
    status: Arc<Mutex<SwapStatus>>,
}

impl Engine {
    fn ctx_parts(&mut self) -> (TaskContext<'_>, &mut BTreeMap<i32, Task>) {
        (
            TaskContext {
                plugin: &self.plugin,
                retries: self.cfg.limits.retries,
                probation: self.probation,
                on_failure: self.cfg.limits.on_failure,
                instance: &mut self.instance,
                sink: &mut self.sink,
                topics: &self.topics,
                metrics: &self.metrics,
                emit: self.cfg.emit,
            },
            &mut self.tasks,
        )
    }

    fn process_pending(&mut self) -> Result<(), TaskError> {
        let (mut ctx, tasks) = self.ctx_parts();
        for task in tasks.values_mut() {
            task.process_pending(&mut ctx)?;
        }
        Ok(())
    }

    fn fresh_instance_if_poisoned(&mut self) -> Result<(), GuestError> {
        if self.instance.is_poisoned() {
            tracing::warn!("replacing the trapped plugin instance with a fresh one");
            self.instance = self.plugin.instantiate()?;
        }
        Ok(())
    }

    /// Processes what is buffered and commits it.
    fn commit(&mut self, consumer: &BaseConsumer<SourceContext>) -> Result<(), PipelineError> {
        if !self.tasks.values().any(|t| t.has_progress() || t.pending_len() > 0) {
            return Ok(());
        }
        match self.try_commit(consumer) {
            Ok(()) => {
                self.failures = 0;
                Ok(())
            }
            Err(e) => self.recover(e, consumer),
        }
    }

    fn try_commit(&mut self, consumer: &BaseConsumer<SourceContext>) -> Result<(), PipelineError> {
        self.process_pending()?;
        let mut prepared: Vec<(i32, PreparedCommit)> = Vec::new();
        let mut offsets = TopicPartitionList::new();
        {
            let (mut ctx, tasks) = self.ctx_parts();
            for task in tasks.values_mut() {
                prepared.push((task.partition(), task.prepare_commit(&mut ctx)?));
                if let Some(next) = task.next_offset() {
                    let mut elem = offsets.add_partition(&ctx.topics.input, task.partition());
                    elem.set_offset(Offset::Offset(next)).map_err(KafkaIoError::from)?;
                    elem.set_metadata(task.commit_metadata());
                }
            }
        }
        self.sink.flush()?;
        if self.crash_after_flush.is_some_and(|n| self.metrics.records_in.get() >= n) {
            // Fault injection for tests: die with everything of this commit
            // written but nothing committed, the window at-least-once cannot cover.
            tracing::error!("{CRASH_ENV} reached: aborting the process");
            std::process::abort();
        }
        let group = consumer.group_metadata();
        let committing = Instant::now();
        self.sink.commit(&offsets, group.as_ref())?;
        tracing::debug!(micros = committing.elapsed().as_micros() as u64, "committed");
        if !self.sink.is_transactional() && offsets.count() > 0 {
            consumer.commit(&offsets, CommitMode::Sync).map_err(KafkaIoError::from)?;
        }
        let changelog_offsets = self.sink.take_changelog_offsets();
        for (partition, commit) in prepared {
            if let Some(task) = self.tasks.get_mut(&partition) {
                task.complete_commit(commit, changelog_offsets.get(&partition).map(|o| o + 1))?;
            }
        }
        self.metrics.commits.inc();
        if self.probation_until.is_some_and(|until| Instant::now() >= until) {
            self.probation = false;
        }
        self.reset_state = false;
        Ok(())
    }

    /// Brings every task's state to the running plugin's schema (or drops it, if
    /// the version was activated with `reset_state`). Returns what it did, if
    /// anything, for the swap history.
    fn align_state(&mut self) -> Result<Option<String>, PipelineError> {
        let info = self.plugin.info().clone();
        let label = self.active.clone();
        let reset = self.reset_state;
        let (mut ctx, tasks) = self.ctx_parts();
        let (mut windows, mut from) = (0usize, std::collections::BTreeSet::new());
        for task in tasks.values_mut() {
            let stored = task.state_schema();
            if !reset && stored == info.state_schema {
                continue;
            }
            if !reset && !info.reads_state(stored) {
                return Err(PipelineError::Swap(SwapError::StateSchema {
                    label,
                    schema: info.state_schema,
                    migrates_from: info.migrates_from,
                    stored,
                }));
            }
            from.insert(stored);
            windows += task.evolve(&mut ctx, info.state_schema, reset)?;
        }
        if from.is_empty() {
            return Ok(None);
        }
        let what = if reset {
            format!("reset: {windows} stored windows dropped")
        } else {
            format!("migrated {windows} stored windows from state schema {from:?} to {}", info.state_schema)
        };
        tracing::info!(version = %label, "{what}");
        Ok(Some(what))
    }

    fn record(&self, event: SwapEvent, error: Option<String>) {
        if event.rolled_back.is_some() { &self.metrics.swap_rollbacks } else { &self.metrics.swaps }.inc();
        if let Ok(mut status) = self.status.lock() {
            status.active = self.active.clone();
            status.active_info = Some(self.plugin.info().clone());
            status.previous = self.previous.as_ref().map(|(label, _)| label.clone());
            status.previous_info = self.previous.as_ref().map(|(_, plugin)| plugin.info().clone());
            status.history.push(event);
            if error.is_some() {
                status.last_error = error;
            }
        }
    }

    /// Applies a staged swap or rollback, but only at a transaction boundary
    /// (nothing processed since the last commit).
    fn apply_control(&mut self) {
        if self.tasks.values().any(|t| t.has_progress() || t.pending_len() > 0) {
            return;
        }
        let Ok(command) = self.control.try_recv() else { return };
        let paused = Instant::now();
        let (label, plugin, instance, reset_state) = match command {
            ControlCommand::Activate(staged) => (staged.label, staged.plugin, Ok(staged.instance), staged.reset_state),
            ControlCommand::Rollback { reset_state } => match self.previous.take() {
                Some((label, plugin)) => {
                    let instance = plugin.instantiate();
                    (label, plugin, instance, reset_state)
                }
                None => return,
            },
        };
        let instance = match instance {
            Ok(instance) => instance,
            Err(e) => {
                tracing::error!(version = %label, error = %e, "swap failed to instantiate; keeping the running version");
                return;
            }
        };
        let old_plugin = std::mem::replace(&mut self.plugin, plugin);
        self.instance = instance;
        let from = std::mem::replace(&mut self.active, label.clone());
        self.previous = Some((from.clone(), old_plugin));
        self.probation = true;
        self.probation_until = Instant::now().checked_add(Duration::from_millis(self.cfg.swap_probation_ms));
        self.reset_state = reset_state;
        let state = match self.align_state() {
            Ok(state) => state,
            Err(error) => {
                // Nothing was processed since the boundary: forget the partial
                // conversion and hand the state back to the previous version.
                for task in self.tasks.values_mut() {
                    task.rewind();
                }
                self.reset_state = false;
                self.record(
                    SwapEvent { from, to: label, pause: paused.elapsed(), rolled_back: None, state: None },
                    None,
                );
                if let Err(e) = self.roll_back_failed_swap(&error) {
                    self.fatal.get_or_insert(e);
                }
                return;
            }
        };
        let pause = paused.elapsed();
        tracing::info!(from = %from, to = %label, pause_us = pause.as_micros() as u64, "plugin swapped at a transaction boundary");
        self.record(SwapEvent { from, to: label, pause, rolled_back: None, state }, None);
    }

    /// The version on probation failed: go back to the previous one.
    fn roll_back_failed_swap(&mut self, error: &PipelineError) -> Result<(), PipelineError> {
        let Some((label, plugin)) = self.previous.take() else { return Ok(()) };
        let instance = plugin.instantiate()?;
        let failed_plugin = std::mem::replace(&mut self.plugin, plugin);
        self.instance = instance;
        let failed = std::mem::replace(&mut self.active, label.clone());
        self.previous = Some((failed.clone(), failed_plugin));
        self.probation = false;
        self.reset_state = false;
        let reason = format!("version {failed} failed and was rolled back to {label}: {error}");
        tracing::error!("{reason}");
        self.record(
            SwapEvent {
                from: failed,
                to: label,
                pause: Duration::ZERO,
                rolled_back: Some(reason.clone()),
                state: None,
            },
            Some(reason),
        );
        Ok(())
    }

    /// Aborts, rewinds every task to its last commit and seeks the consumer back.
    fn recover(&mut self, error: PipelineError, consumer: &BaseConsumer<SourceContext>) -> Result<(), PipelineError> {
        let fatal =
            matches!(error, PipelineError::Kafka(KafkaIoError::Fatal(_)) | PipelineError::Task(TaskError::Paused(_)));
        self.failures += 1;
        if fatal || self.failures > MAX_CONSECUTIVE_FAILURES {
            let _ = self.sink.abort();
            return Err(error);
        }
        tracing::warn!(error = %error, attempt = self.failures, "commit failed; aborting and rewinding to the last commit");
        self.sink.abort()?;
        self.metrics.aborts.inc();
        if self.probation && matches!(error, PipelineError::Task(TaskError::Guest(_)) | PipelineError::Guest(_)) {
            // The rewind below hands everything after the last commit to the
            // previous version, if it can read the state as last committed.
            let readable = self.previous.as_ref().is_some_and(|(_, previous)| {
                self.tasks.values().all(|t| previous.info().reads_state(t.committed_state_schema()))
            });
            if readable {
                self.roll_back_failed_swap(&error)?;
            } else {
                // It committed state the previous version cannot read: keep it,
                // and let its failures be contained like any version's.
                self.probation = false;
                let reason = format!(
                    "version {} failed on probation but was kept: the previous version cannot read the state \
                     schema it committed; failures now follow on_failure: {error}",
                    self.active
                );
                tracing::error!("{reason}");
                if let Ok(mut status) = self.status.lock() {
                    status.last_error = Some(reason);
                }
            }
            self.failures -= 1;
        }
        self.fresh_instance_if_poisoned()?;
        for task in self.tasks.values_mut() {
            task.rewind();
            let offset = task.committed_offset().map_or(Offset::Beginning, Offset::Offset);
            consumer
                .seek(&self.topics.input, task.partition(), offset, Duration::from_secs(10))
                .map_err(KafkaIoError::from)?;
        }
        // The rewind also forgot an uncommitted state migration: redo it.
        self.align_state()?;
        Ok(())
    }

    fn open_store(&self, partition: i32) -> Result<Box<dyn Store>, PipelineError> {
        Ok(match &self.rocks {
            Some(options) => {
                let dir = self.cfg.state.dir.join(&self.cfg.application_id).join(format!("windows-{partition}"));
                Box::new(RocksStore::open(&dir, options).map_err(TaskError::from)?)
            }
            None => Box::new(MemoryStore::default()),
        })
    }

    /// Creates or resumes the tasks of newly assigned partitions.
    fn assign(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        assigned: &TopicPartitionList,
    ) -> Result<(), PipelineError> {
        let committed =
            kafka::committed_offsets(consumer, assigned, Duration::from_secs(30)).map_err(KafkaIoError::from)?;
        let read_committed = self.cfg.processing_guarantee == Guarantee::ExactlyOnce;
        for elem in committed.elements_for_topic(&self.topics.input) {
            let partition = elem.partition();
            let offset = elem.offset().to_raw().filter(|o| *o >= 0);
            let meta = CommitMetadata::parse(elem.metadata());
            let stream_time = meta.stream_time;
            // Offsets committed before schemas were recorded are in the plugin's.
            let schema = meta.schema.unwrap_or(self.plugin.info().state_schema);
            let mut store = match self.suspended.remove(&partition) {
                Some(task) => task.into_store(),
                None => self.open_store(partition)?,
            };
            let checkpoint = store.checkpoint().map_err(TaskError::from)?;
            let metrics = self.metrics.clone();
            let restored =
                restore(&self.base, &self.topics.changelog, partition, checkpoint, read_committed, |changes, next| {
                    metrics.restored_records.inc_by(changes.len() as u64);
                    store.write(changes, Some(next)).map_err(|e| KafkaIoError::Setup(format!("state store: {e}")))
                })?;
            tracing::info!(partition, ?offset, ?stream_time, ?checkpoint, restored = restored.records, "task assigned");
            let task = Task::new(
                partition,
                self.plugin.info().windowing,
                self.cfg.grace_ms,
                store,
                offset,
                stream_time,
                schema,
            );
            self.tasks.insert(partition, task);
        }
        self.suspended.clear();
        if let Some(what) = self.align_state()? {
            tracing::info!(version = %self.active, "state of newly assigned partitions: {what}");
        }
        self.metrics.tasks.set(self.tasks.len() as i64);
        Ok(())
    }

    /// Commits and suspends every task before partitions are given up.
    fn revoke(&mut self, consumer: &BaseConsumer<SourceContext>) -> Result<(), PipelineError> {
        let result = self.commit(consumer);
        if result.is_err() {
            let _ = self.sink.abort();
        }
        let tasks = std::mem::take(&mut self.tasks);
        for (partition, mut task) in tasks {
            task.rewind();
            self.suspended.insert(partition, task);
        }
        self.metrics.tasks.set(0);
        result
    }
}

/// The consumer's context: runs revocations and assignments against the engine.
pub struct SourceContext {
    engine: Arc<Mutex<Engine>>,
}

impl SourceContext {
    fn engine(&self) -> Option<MutexGuard<'_, Engine>> {
        self.engine.lock().ok()
    }
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(_), Some(mut engine)) = (rebalance, self.engine())
            && let Err(e) = engine.revoke(consumer)
        {
            tracing::error!(error = %e, "commit before revocation failed");
            engine.fatal.get_or_insert(e);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(assigned), Some(mut engine)) = (rebalance, self.engine())
            && let Err(e) = engine.assign(consumer, assigned)
        {
            tracing::error!(error = %e, "taking over assigned partitions failed");
            engine.fatal.get_or_insert(e);
        }
    }
}

/// A configured pipeline, ready to run.
pub struct Pipeline {
    engine: Arc<Mutex<Engine>>,
    consumer: BaseConsumer<SourceContext>,
    cfg: RunConfig,
    metrics: Metrics,
    control: Control,
}

fn instance_id(cfg: &RunConfig) -> Result<String, PipelineError> {
    if let Some(id) = &cfg.instance_id {
        return Ok(id.clone());
    }
    let path = cfg.state.dir.join("instance.id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::create_dir_all(&cfg.state.dir).and_then(|_| std::fs::write(&path, &id)).map_err(|source| {
        TaskError::Store(crate::state::StoreError::Io { path: path.display().to_string(), source })
    })?;
    Ok(id)
}

impl Pipeline {
    /// Loads the plugin, prepares topics and clients, and joins the group.
    pub fn new(cfg: RunConfig, runtime: &Runtime, metrics: Metrics) -> Result<Self, PipelineError> {
        cfg.validate()?;
        let wasm = std::fs::read(&cfg.plugin)
            .map_err(|source| PipelineError::PluginFile { path: cfg.plugin.clone(), source })?;
        let plugin = runtime.load(&wasm, cfg.sandbox())?;
        Self::with_plugin(cfg, plugin, metrics)
    }

    /// Like [`Pipeline::new`], with the plugin already loaded (e.g. from the
    /// registry); `cfg.plugin` is only reported.
    pub fn with_plugin(cfg: RunConfig, plugin: Plugin, metrics: Metrics) -> Result<Self, PipelineError> {
        cfg.validate()?;
        let info = plugin.info().clone();
        tracing::info!(plugin = %info.name, version = %info.version, windows = ?info.windowing, "plugin loaded");

        let base = base_config(&cfg.bootstrap_servers, &cfg.kafka);
        let partitions = partition_count(&base, &cfg.input_topic)?
            .ok_or_else(|| KafkaIoError::Topic { topic: cfg.input_topic.clone(), reason: "does not exist".into() })?;
        let topics = Topics {
            input: cfg.input_topic.clone(),
            output: cfg.output_topic.clone(),
            changelog: cfg.changelog_topic(),
            dead_letter: cfg.dead_letter_topic(),
        };
        let spec = |name: &str, configs: Vec<(String, String)>, exact| TopicSpec {
            name: name.to_owned(),
            partitions,
            replication: cfg.replication_factor,
            configs,
            exact_partitions: exact,
        };
        ensure_topics(
            &base,
            &[
                spec(&topics.output, vec![], false),
                spec(&topics.changelog, vec![("cleanup.policy".into(), "compact".into())], true),
                spec(&topics.dead_letter, vec![], false),
            ],
        )?;

        let label = format!("{}@{}", info.name, info.version);
        let (control_tx, control_rx) = channel();
        let status = Arc::new(Mutex::new(SwapStatus {
            active: label.clone(),
            active_info: Some(info.clone()),
            ..SwapStatus::default()
        }));
        let control = Control { tx: control_tx, status: status.clone() };
        let instance = instance_id(&cfg)?;
        let member = format!("{}-{}", cfg.application_id, instance);
        let exactly_once = cfg.processing_guarantee == Guarantee::ExactlyOnce;
        let sink = Sink::new(base.clone(), &topics.changelog, exactly_once.then_some(member.as_str()))?;
        let rocks = (cfg.state.backend == StateBackend::Rocksdb)
            .then(|| RocksOptions::new(cfg.state.cache_mb << 20, cfg.state.write_buffer_mb << 20));
        let engine = Arc::new(Mutex::new(Engine {
            instance: plugin.instantiate()?,
            plugin,
            topics,
            sink,
            tasks: BTreeMap::new(),
            suspended: BTreeMap::new(),
            rocks,
            metrics: metrics.clone(),
            base: base.clone(),
            fatal: None,
            failures: 0,
            crash_after_flush: std::env::var(CRASH_ENV).ok().and_then(|v| v.parse().ok()),
            active: label.clone(),
            previous: None,
            probation: false,
            probation_until: None,
            reset_state: false,
            control: control_rx,
            status: status.clone(),
            cfg: cfg.clone(),
        }));

        let mut consumer_config = base;
        consumer_config.set("group.id", &cfg.application_id);
        consumer_config.set("enable.auto.commit", "false");
        consumer_config.set("enable.auto.offset.store", "false");
        set_default(&mut consumer_config, "group.instance.id", &member);
        set_default(&mut consumer_config, "auto.offset.reset", "earliest");
        set_default(&mut consumer_config, "isolation.level", "read_committed");
        set_default(&mut consumer_config, "fetch.queue.backoff.ms", "0");
        set_default(&mut consumer_config, "session.timeout.ms", "10000");
        let consumer: BaseConsumer<SourceContext> = consumer_config
            .create_with_context(SourceContext { engine: engine.clone() })
            .map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        consumer.subscribe(&[&cfg.input_topic]).map_err(KafkaIoError::from)?;
        Ok(Self { engine, consumer, cfg, metrics, control })
    }

    /// The pipeline's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A handle to swap the pipeline's plugin while it runs.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    fn engine(&self) -> Result<MutexGuard<'_, Engine>, PipelineError> {
        self.engine.lock().map_err(|_| PipelineError::Poisoned)
    }

    /// Runs until `stop` is set, then commits and leaves the group.
    pub fn run(self, stop: &AtomicBool) -> Result<(), PipelineError> {
        let interval = self.cfg.commit_interval();
        let batch = self.cfg.batch_size;
        let mut last_commit = Instant::now();
        let mut last_report = Instant::now();
        let result = loop {
            if last_report.elapsed() >= REPORT_EVERY {
                last_report = Instant::now();
                tracing::info!(metrics = %self.metrics.summary(), "progress");
            }
            if stop.load(Ordering::Relaxed) {
                break Ok(());
            }
            let wait = interval.saturating_sub(last_commit.elapsed()).min(Duration::from_millis(100));
            let mut polled = 0;
            let mut timeout = wait;
            while polled < batch {
                let Some(message) = self.consumer.poll(timeout) else { break };
                timeout = Duration::ZERO;
                let message = match message {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        break;
                    }
                };
                polled += 1;
                let mut engine = self.engine()?;
                let timestamp = match message.timestamp() {
                    Timestamp::NotAvailable => None,
                    Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
                };
                let partition = message.partition();
                let metrics = engine.metrics.clone();
                match engine.tasks.get_mut(&partition) {
                    Some(task) => {
                        if !task.accept(message.offset(), message.key(), message.payload(), timestamp) {
                            metrics.duplicates_skipped.inc();
                        }
                    }
                    None => tracing::debug!(partition, "message for a partition without a task"),
                }
            }
            let mut engine = self.engine()?;
            if let Some(e) = engine.fatal.take() {
                break Err(e);
            }
            let step = if last_commit.elapsed() >= interval {
                last_commit = Instant::now();
                engine.commit(&self.consumer)
            } else {
                engine.process_pending().map_err(PipelineError::from).or_else(|e| engine.recover(e, &self.consumer))
            };
            if let Err(e) = step {
                break Err(e);
            }
            engine.apply_control();
            engine.sink.poll();
        };
        let result = result.and_then(|()| {
            let mut engine = self.engine()?;
            engine.commit(&self.consumer)
        });
        tracing::info!(metrics = %self.metrics.summary(), "pipeline stopped");
        // Leave the group only on a clean stop; the static member id lets a
        // restarted instance take its partitions back without a rebalance wait.
        result
    }
}
