//! The engine of one pipeline session: its tasks — restoring, running or kept
//! as standby copies — their outbox, the sink, and what commits, failures, swaps
//! and the group's assignments do to them.
//!
//! A task given to this host restores before it runs: the question thread learns
//! where it resumes (the committed offset, waiting while another producer's
//! transaction holds it pending) and how far its changelog reaches, the restorer
//! reads the changelog up to there from the store's checkpoint (a standby copy
//! has read most of it already), and only then are the task's input partitions
//! assigned to the source consumer — at exactly the committed offsets.
//!
//! A commit is all or nothing. Tasks queue results and changelog records in the
//! outbox; the sink sends them in one transaction with the input offsets; only
//! after it commits are the stores written. A failure anywhere before the commit
//! aborts the transaction and rewinds every task to its last commit. A commit
//! whose outcome is unknown (the broker went away mid-commit) makes every task
//! restore again from what Kafka knows. A failure that stops the pipeline marks
//! it failed: it commits nothing more, not even at shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};

use super::swap::{ControlCommand, SwapError, SwapEvent, Versions};
use super::{CRASH_ENV, PipelineError};
use crate::config::{EmitMode, RunConfig};
use crate::faults;
use crate::global::Globals;
use crate::group::{Board, GroupView, HostTasks, Membership, TaskView, Update};
use crate::kafka::KafkaIoError;
use crate::kafka::queries::{Queries, Question, Resume};
use crate::kafka::restore::Restorer;
use crate::kafka::sink::{OutRecord, Sink};
use crate::kafka::source::{SourceContext, caught_up, high_watermark};
use crate::metrics::Metrics;
use crate::runtime::Worker;
use crate::state::{MemoryStore, RocksOptions, RocksStore, Store};
use crate::task::{CommitMetadata, Dest, Env, Kind, Outbox, Policy, Task, TaskError, TaskId};
use crate::topology::Input;
use weir_abi::topology::Emit;

/// The consumer of a session.
pub(super) type Source = BaseConsumer<SourceContext>;

/// How many non-Kafka commit failures in a row stop the pipeline.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;

/// How often standby copies are brought up to date, and for how long at most.
const STANDBY_POLL_EVERY: Duration = Duration::from_millis(20);
const STANDBY_BUDGET: Duration = Duration::from_millis(5);

/// How often the group hears how warm this host's copies are.
const REPORT_POSITIONS_EVERY: Duration = Duration::from_secs(1);

/// Longest pause between commit attempts while Kafka fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Topics a pipeline reads and writes.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The sources' topics, in the order of the topology's sources.
    pub sources: Vec<String>,
    /// The sinks' topics, in the order of the topology's sinks.
    pub sinks: Vec<String>,
    /// The repartition topics, in the order of the topology's repartitions.
    pub repartitions: Vec<String>,
    /// Per sub-topology: the topics its tasks read (a task reads the same
    /// partition of each), in the order of the sub-topology's inputs.
    pub inputs: Vec<Vec<String>>,
    /// Per sub-topology: its stores' changelogs, in the order of its stores
    /// (a table restored from its source topic: that topic, never written).
    pub changelogs: Vec<Vec<String>>,
    /// The global tables' topics, in the order of the shape's global tables.
    pub globals: Vec<String>,
    /// Dead letters.
    pub dead_letter: String,
}

impl Topics {
    /// The real topics of `shape` under `cfg`'s mapping.
    pub fn of(cfg: &RunConfig, shape: &crate::topology::Shape) -> Self {
        let only_source = (shape.sources.len() == 1).then_some(&cfg.input_topic);
        let only_sink = (shape.sinks.len() == 1).then_some(&cfg.output_topic);
        let sources: Vec<String> = shape.sources.iter().map(|s| cfg.topic(&s.topic, only_source)).collect();
        let repartitions: Vec<String> = shape.repartitions.iter().map(|r| cfg.repartition_topic(&r.name)).collect();
        let inputs: Vec<Vec<String>> = shape
            .subs
            .iter()
            .map(|sub| {
                sub.inputs
                    .iter()
                    .map(|i| match i.input {
                        Input::Source(i) => sources.get(i).cloned().unwrap_or_default(),
                        Input::Repartition(i) => repartitions.get(i).cloned().unwrap_or_default(),
                    })
                    .collect()
            })
            .collect();
        Self {
            sinks: shape.sinks.iter().map(|s| cfg.topic(&s.topic, only_sink)).collect(),
            changelogs: shape
                .subs
                .iter()
                .zip(&inputs)
                .map(|(sub, topics)| {
                    let of = |(i, s): (usize, &&weir_abi::topology::StoreSpec)| match sub.source_table(i) {
                        Some(t) => topics.get(t.input).cloned().unwrap_or_default(),
                        None => cfg.changelog_topic(&s.name),
                    };
                    sub.stores().iter().enumerate().map(of).collect()
                })
                .collect(),
            globals: shape.globals.iter().map(|g| cfg.topic(&g.topic, None)).collect(),
            sources,
            repartitions,
            inputs,
            dead_letter: cfg.dead_letter_topic(),
        }
    }

    /// The first source's topic (the pipeline's input, for one-source topologies).
    pub fn input(&self) -> &str {
        self.sources.first().map_or("", String::as_str)
    }

    /// The sub-topology whose tasks read `topic`, and which of its inputs it is.
    pub fn sub_reading(&self, topic: &str) -> Option<(usize, usize)> {
        self.inputs.iter().enumerate().find_map(|(sub, inputs)| Some((sub, inputs.iter().position(|t| t == topic)?)))
    }

    /// Every topic some sub-topology reads.
    pub fn all_inputs(&self) -> impl Iterator<Item = &String> {
        self.inputs.iter().flatten()
    }

    /// The partitions task `id` reads: `partition` of each of its inputs.
    fn partitions_of(&self, id: TaskId) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for topic in self.inputs.get(id.sub).into_iter().flatten() {
            tpl.add_partition(topic, id.partition);
        }
        tpl
    }
}

/// Where a restoring task is.
enum Phase {
    /// Waiting to learn where it resumes.
    Asking { epoch: u64 },
    /// Reading its changelogs (`left` of them still); it resumes at
    /// `committed` (per input) afterwards.
    Reading { committed: Vec<Option<i64>>, meta: CommitMetadata, left: usize, records: u64 },
    /// Restored; waiting for the consumer to be positioned.
    Seeking { committed: Vec<Option<i64>>, meta: CommitMetadata, records: u64 },
}

struct Restoring {
    /// Its stores, in the order of its sub-topology's.
    stores: Vec<Box<dyn Store>>,
    phase: Phase,
    since: Instant,
    /// When Kafka told where it resumes.
    answered: Option<Instant>,
    /// A promoted standby: where its tail had read each store's changelog to
    /// (all of it written). A store read to its end needs no restore.
    read_to: BTreeMap<usize, i64>,
}

/// The session's clients and tasks.
pub(super) struct Engine {
    pub(super) cfg: RunConfig,
    pub(super) topics: Topics,
    pub(super) sink: Sink,
    pub(super) versions: Versions,
    pub(super) control: Receiver<ControlCommand>,
    pub(super) metrics: Metrics,
    tasks: BTreeMap<TaskId, Task>,
    restoring: BTreeMap<TaskId, Restoring>,
    suspended: BTreeMap<TaskId, Vec<Box<dyn Store>>>,
    /// Standby copies of other hosts' tasks, kept warm from their changelogs.
    standbys: BTreeMap<TaskId, Vec<Box<dyn Store>>>,
    outbox: Outbox,
    restorer: Restorer,
    /// Tails the changelogs of the standby copies.
    standby_restorer: Restorer,
    /// When standbys were last polled, and their positions last reported.
    standbys_polled: Instant,
    positions_reported: Instant,
    queries: Queries,
    /// The global tables, kept up to date between polls.
    pub(super) globals: Globals,
    epoch: u64,
    rocks: Option<RocksOptions>,
    /// Set once the pipeline failed: nothing is committed any more.
    pub(super) failed: bool,
    /// An error raised inside a rebalance callback, surfaced by the loop.
    pub(super) fatal: Option<PipelineError>,
    failures: u32,
    backoff: Duration,
    next_commit_at: Instant,
    /// When the producer was last asked to get ready.
    readied_at: Option<Instant>,
    crash_after_flush: Option<u64>,
    /// When repartition topics were last purged.
    purged_at: Instant,
    /// This host's place in the application's group (taken out to leave it).
    pub(super) membership: Option<Membership>,
    /// Every host's tasks, as the group's leader last placed them.
    pub(super) hosts: Vec<HostTasks>,
    /// What the admin API shows of the group and this host's tasks.
    board: Board,
    /// Standbys here warm up tasks this host is to take.
    warming: bool,
    /// Tasks that started running since the last commit, and when they were
    /// assigned (logged with the commit: how long taking them over took).
    taken_over: Vec<(TaskId, Instant)>,
    /// A commit waits for this host's place in a new generation of the group.
    deferred: bool,
    /// The generation the commit in flight carries its offsets under (in its
    /// transaction, or in the offset commit after it without one).
    committing_as: Option<i32>,
}

/// The parts an engine is made of.
pub(super) struct Parts {
    pub(super) cfg: RunConfig,
    pub(super) topics: Topics,
    pub(super) sink: Sink,
    pub(super) versions: Versions,
    pub(super) control: Receiver<ControlCommand>,
    pub(super) metrics: Metrics,
    pub(super) restorer: Restorer,
    pub(super) standby_restorer: Restorer,
    pub(super) queries: Queries,
    pub(super) rocks: Option<RocksOptions>,
    pub(super) globals: Globals,
    pub(super) membership: Membership,
    pub(super) board: Board,
}

impl Engine {
    pub(super) fn new(parts: Parts) -> Self {
        Self {
            cfg: parts.cfg,
            topics: parts.topics,
            sink: parts.sink,
            versions: parts.versions,
            control: parts.control,
            metrics: parts.metrics,
            tasks: BTreeMap::new(),
            restoring: BTreeMap::new(),
            suspended: BTreeMap::new(),
            standbys: BTreeMap::new(),
            outbox: Outbox::default(),
            restorer: parts.restorer,
            standby_restorer: parts.standby_restorer,
            standbys_polled: Instant::now(),
            positions_reported: Instant::now(),
            queries: parts.queries,
            globals: parts.globals,
            epoch: 0,
            rocks: parts.rocks,
            failed: false,
            fatal: None,
            failures: 0,
            backoff: Duration::ZERO,
            next_commit_at: Instant::now(),
            readied_at: None,
            crash_after_flush: std::env::var(CRASH_ENV).ok().and_then(|v| v.parse().ok()),
            purged_at: Instant::now(),
            membership: Some(parts.membership),
            hosts: Vec::new(),
            board: parts.board,
            warming: false,
            taken_over: Vec::new(),
            deferred: false,
            committing_as: None,
        }
    }

    /// Gives back what outlives the session.
    pub(super) fn into_versions(self) -> (Versions, Receiver<ControlCommand>) {
        (self.versions, self.control)
    }

    /// How sub-topology `sub`'s tasks treat failures and emit: the configured
    /// emit mode overrides a windowed aggregation's own.
    fn policy(&self, sub: usize) -> Policy {
        let aggregation = self.versions.info().shape.subs.get(sub).and_then(|s| s.aggregation());
        let declared = aggregation.map_or(EmitMode::Updates, |a| match a.emit {
            Emit::Updates => EmitMode::Updates,
            Emit::Final => EmitMode::Final,
        });
        let windowed = aggregation.is_some_and(|a| a.window().is_some());
        Policy {
            retries: self.cfg.limits.retries,
            probation: self.versions.probation,
            on_failure: self.cfg.limits.on_failure,
            emit: if windowed { self.cfg.emit.unwrap_or(declared) } else { declared },
        }
    }

    /// Sub-topology `sub`'s grace period: the configured one, or its windowed
    /// aggregation's own.
    fn grace_ms(&self, sub: usize) -> u64 {
        let aggregation = self.versions.info().shape.subs.get(sub).and_then(|s| s.aggregation());
        match aggregation {
            Some(a) if a.window().is_some() => self.cfg.grace_ms.unwrap_or(a.grace_ms),
            _ => 0,
        }
    }

    /// The task reading `partition` of `topic`, and which of its inputs that is.
    fn task_of(&self, topic: &str, partition: i32) -> Option<(TaskId, usize)> {
        self.topics.sub_reading(topic).map(|(sub, input)| (TaskId { sub, partition }, input))
    }

    /// Buffers a polled record for its task, if the task runs.
    pub(super) fn accept(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        ts: Option<i64>,
    ) {
        let Some((id, input)) = self.task_of(topic, partition) else { return };
        match self.tasks.get_mut(&id) {
            Some(task) => {
                if !task.accept(input, offset, key, value, ts) {
                    self.metrics.duplicates_skipped.inc();
                }
            }
            None => tracing::trace!(topic, partition, "record for a task that does not run (yet)"),
        }
    }

    /// Bytes held in memory for the next commit: buffered records, uncommitted
    /// state and queued output.
    pub(super) fn held_bytes(&self) -> usize {
        self.tasks.values().map(|t| t.pending_bytes() + t.uncommitted_bytes()).sum::<usize>() + self.outbox.bytes()
    }

    /// Whether a commit should not wait for the interval: one waits for a new
    /// generation, or a task taken over since the last commit has work to
    /// commit (its first commit ends its pause).
    pub(super) fn commit_soon(&self) -> bool {
        self.deferred || self.taken_over.iter().any(|(id, _)| self.tasks.get(id).is_some_and(Task::has_progress))
    }

    /// Whether a commit waits for this host's place in a new generation.
    pub(super) fn commit_deferred(&self) -> bool {
        self.deferred
    }

    fn has_progress(&self) -> bool {
        !self.outbox.is_empty() || self.tasks.values().any(Task::has_progress)
    }

    /// Runs every task's buffered records through the plugin. A task reading
    /// several topics waits for an input with nothing buffered while it may
    /// still have records to fetch (see [`Task::process_pending`]), unless
    /// `max_task_idle_ms` is -1 or memory for uncommitted work is full.
    pub(super) fn process_pending(&mut self, consumer: &Source) -> Result<(), TaskError> {
        let policies: Vec<Policy> = (0..self.topics.inputs.len()).map(|sub| self.policy(sub)).collect();
        let info = self.versions.worker.plugin().shared_info();
        let full = self.held_bytes() >= (self.cfg.state.uncommitted_mb << 20);
        let wait = self.cfg.max_task_idle_ms >= 0 && !full;
        for (id, task) in self.tasks.iter_mut().filter(|(_, t)| t.pending_len() > 0) {
            let topics = &self.topics.inputs[id.sub];
            let caught_up: Option<Vec<bool>> = (wait && task.is_merged()).then(|| {
                let positions = task.positions();
                topics.iter().zip(positions).map(|(t, at)| caught_up(consumer, t, id.partition, at)).collect()
            });
            let mut env = Env {
                info: &info,
                guest: &mut self.versions.worker,
                outbox: &mut self.outbox,
                metrics: &self.metrics,
                input_topics: topics,
                policy: policies[id.sub],
                globals: &self.globals,
            };
            task.process_pending(&mut env, caught_up.as_deref())?;
        }
        Ok(())
    }

    /// Makes (or replaces) the producer and initialises its transactions as soon
    /// as possible, at most once a second: its `init_transactions` fences this
    /// host's previous producer and settles the transaction it left open, which
    /// restoring tasks may be waiting for.
    pub(super) fn keep_producer_ready(&mut self) {
        if !self.sink.needs_ready() || self.readied_at.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.readied_at = Some(Instant::now());
        if let Err(e) = self.sink.ready(Duration::from_millis(500)) {
            tracing::debug!(error = %e, "producer not ready yet");
        }
    }

    /// Processes what is buffered and commits it; `force` ignores the backoff
    /// after Kafka failures (for revocations and shutdown).
    pub(super) fn commit(&mut self, consumer: &Source, force: bool) -> Result<(), PipelineError> {
        if self.failed {
            return Ok(());
        }
        if let Err(e) = self.process_pending(consumer) {
            return self.recover(e.into(), consumer);
        }
        // Records a task holds back (waiting for another input) are no progress.
        if !self.has_progress() {
            self.deferred = false;
            return Ok(());
        }
        if !force && Instant::now() < self.next_commit_at {
            return Ok(());
        }
        // Offsets sent now would carry the last generation and be refused.
        self.deferred = !force && self.membership.as_ref().is_some_and(Membership::between_generations);
        if self.deferred {
            return Ok(());
        }
        if self.sink.needs_ready() {
            match self.sink.ready(Duration::from_secs(1)) {
                Ok(()) => {}
                Err(e @ (KafkaIoError::Unreachable(_) | KafkaIoError::Stopped)) => {
                    tracing::debug!(error = %e, "producer not ready; commit later");
                    self.back_off();
                    return Ok(());
                }
                Err(e) => return self.recover(e.into(), consumer),
            }
        }
        match self.try_commit(consumer) {
            Ok(()) => {
                self.failures = 0;
                self.backoff = Duration::ZERO;
                Ok(())
            }
            Err(e) => self.recover(e, consumer),
        }
    }

    fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
        self.next_commit_at = Instant::now() + self.backoff;
    }

    fn try_commit(&mut self, consumer: &Source) -> Result<(), PipelineError> {
        let policies: Vec<Policy> = (0..self.topics.inputs.len()).map(|sub| self.policy(sub)).collect();
        let mut prepared = Vec::with_capacity(self.tasks.len());
        let mut offsets = TopicPartitionList::new();
        let info = self.versions.worker.plugin().shared_info();
        for (id, task) in self.tasks.iter_mut() {
            let mut env = Env {
                info: &info,
                guest: &mut self.versions.worker,
                outbox: &mut self.outbox,
                metrics: &self.metrics,
                input_topics: &self.topics.inputs[id.sub],
                policy: policies[id.sub],
                globals: &self.globals,
            };
            prepared.push((*id, task.prepare_commit(&mut env)?));
            for (input, topic) in self.topics.inputs[id.sub].iter().enumerate() {
                if let Some(next) = task.next_offset(input) {
                    let mut elem = offsets.add_partition(topic, task.partition());
                    elem.set_offset(Offset::Offset(next)).map_err(KafkaIoError::from)?;
                    elem.set_metadata(task.commit_metadata());
                }
            }
        }
        self.send_outbox()?;
        self.sink.flush()?;
        if self.crash_after_flush.is_some_and(|n| self.metrics.records_in.get() >= n) {
            // Fault injection for tests: die with everything of this commit
            // written but nothing committed, the window at-least-once cannot cover.
            tracing::error!("{CRASH_ENV} reached: aborting the process");
            std::process::abort();
        }
        let committing = Instant::now();
        let identity = self.membership.as_ref().and_then(Membership::identity);
        self.committing_as = identity.as_ref().map(|i| i.generation);
        self.sink.commit(&offsets, identity)?;
        tracing::debug!(micros = committing.elapsed().as_micros() as u64, "committed");
        if !self.sink.is_transactional() && offsets.count() > 0 {
            let offsets: Vec<(String, i32, i64, String)> = offsets
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o, e.metadata().to_owned())),
                    _ => None,
                })
                .collect();
            if let Some(m) = &self.membership {
                m.commit_offsets(&offsets).map_err(|e| KafkaIoError::Abortable(format!("committing offsets: {e}")))?;
            }
        }
        self.committing_as = None;
        let changelog_offsets = self.sink.take_changelog_offsets();
        let mut stale = Vec::new();
        for (id, commit) in prepared {
            let Some(task) = self.tasks.get_mut(&id) else { continue };
            // A table restored from its topic is as far as the task's commit in it.
            let source = |store: usize| info.shape.subs.get(id.sub).and_then(|s| s.source_table(store));
            let next: Vec<Option<i64>> = (self.topics.changelogs[id.sub].iter().enumerate())
                .map(|(store, c)| match source(store) {
                    Some(t) => task.next_offset(t.input),
                    None => changelog_offsets.get(&(c.clone(), id.partition)).map(|o| o + 1),
                })
                .collect();
            if let Err(e) = task.complete_commit(commit, &next) {
                // Kafka has the commit; the store does not: bring it up to date
                // from the changelog before the task goes on.
                tracing::warn!(task = %id, error = %e, "store write after a commit failed; restoring the task");
                stale.push(id);
            }
        }
        self.metrics.commits.inc();
        self.versions.committed();
        if !self.taken_over.is_empty() {
            let tasks: Vec<String> = self.taken_over.iter().map(|(id, _)| id.to_string()).collect();
            let slowest = self.taken_over.iter().map(|(_, at)| at.elapsed()).max().unwrap_or_default();
            tracing::info!(?tasks, since_assigned_ms = slowest.as_millis() as u64, "first commit of tasks taken over");
            self.taken_over.clear();
        }
        for id in stale {
            self.restore_again(id, consumer);
        }
        let purge_every = Duration::from_millis(self.cfg.repartition_purge_ms);
        if !self.topics.repartitions.is_empty() && self.purged_at.elapsed() >= purge_every {
            self.purged_at = Instant::now();
            self.purge(&offsets);
        }
        Ok(())
    }

    /// Deletes what tasks consumed and committed of repartition topics.
    fn purge(&self, committed: &TopicPartitionList) {
        let mut purge = TopicPartitionList::new();
        for e in committed.elements() {
            if self.topics.repartitions.iter().any(|r| r == e.topic())
                && let Offset::Offset(o) = e.offset()
            {
                let _ = purge.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
            }
        }
        if purge.count() > 0 {
            self.queries.purge(purge);
        }
    }

    /// Sends the outbox into the current transaction.
    fn send_outbox(&mut self) -> Result<(), KafkaIoError> {
        let mut changelog_seen = false;
        for out in self.outbox.records() {
            let topic = match out.dest {
                Dest::Sink(i) => {
                    self.topics.sinks.get(i).ok_or_else(|| KafkaIoError::Setup(format!("no sink #{i}")))?
                }
                Dest::Repartition(i) => self
                    .topics
                    .repartitions
                    .get(i)
                    .ok_or_else(|| KafkaIoError::Setup(format!("no repartition topic #{i}")))?,
                Dest::Changelog(sub, store) => self
                    .topics
                    .changelogs
                    .get(sub)
                    .and_then(|c| c.get(store))
                    .ok_or_else(|| KafkaIoError::Setup(format!("sub-topology {sub} has no store #{store}")))?,
                Dest::DeadLetter => &self.topics.dead_letter,
            };
            if matches!(out.dest, Dest::Changelog(..)) && !changelog_seen {
                changelog_seen = true;
                if faults::hit("changelog") {
                    return Err(KafkaIoError::Abortable("injected failure (changelog)".into()));
                }
            }
            let headers = (!out.headers.is_empty()).then(|| {
                out.headers
                    .iter()
                    .fold(OwnedHeaders::new(), |h, (key, value)| h.insert(Header { key, value: Some(value.as_str()) }))
            });
            self.sink.send(OutRecord {
                topic,
                partition: out.partition,
                key: out.key.as_deref(),
                value: out.value.as_deref(),
                timestamp: out.timestamp,
                headers,
            })?;
        }
        self.outbox.clear();
        Ok(())
    }

    /// After a failed commit (or processing step): abort, then decide whether the
    /// pipeline goes on — rewinding every task to its last commit, or restoring
    /// them when the commit's outcome is unknown — or stops.
    pub(super) fn recover(&mut self, error: PipelineError, consumer: &Source) -> Result<(), PipelineError> {
        self.outbox.clear();
        let committing_as = self.committing_as.take();
        let uncertain = matches!(error, PipelineError::Kafka(KafkaIoError::Uncertain(_)));
        if !uncertain && let Err(e) = self.sink.abort() {
            tracing::warn!(error = %e, "abort failed; the producer is replaced (its successor aborts the transaction)");
        }
        self.metrics.aborts.inc();
        let plugin = matches!(error, PipelineError::Task(TaskError::Guest(_)) | PipelineError::Guest(_));
        if self.versions.probation && plugin {
            self.roll_back_after(&error)?;
        } else if error.is_transient_kafka() && self.group_moved_on(committing_as) {
            // Not Kafka in trouble: the commit is redone as soon as this host
            // knows its place in the new generation, without backing off.
            tracing::info!(error = %error, "the group formed a new generation during the commit; it is redone in the new one");
            self.deferred = true;
        } else if error.is_transient_kafka() {
            tracing::warn!(error = %error, "commit failed; retrying from the last commit");
            self.back_off();
        } else {
            self.failures += 1;
            if error.stops_pipeline() || self.failures > MAX_CONSECUTIVE_FAILURES {
                return Err(self.fail(error));
            }
            tracing::warn!(error = %error, attempt = self.failures, "commit failed; aborting and rewinding to the last commit");
        }
        if uncertain {
            tracing::warn!("the last commit's outcome is unknown: every task restores from what Kafka has");
            let ids: Vec<TaskId> = self.tasks.keys().copied().collect();
            for id in ids {
                self.restore_again(id, consumer);
            }
        } else {
            self.rewind_all(consumer);
        }
        // The rewind also forgot an uncommitted state migration: redo it.
        self.align_state(None)?;
        Ok(())
    }

    /// Whether the group formed a generation after `committing_as`, the one a
    /// failed commit carried its offsets under (a group refuses those).
    fn group_moved_on(&self, committing_as: Option<i32>) -> bool {
        let (Some(m), Some(was)) = (&self.membership, committing_as) else { return false };
        m.between_generations() || m.identity().is_none_or(|now| now.generation != was)
    }

    /// Marks the pipeline failed (it commits nothing more) and rewinds every task.
    pub(super) fn fail(&mut self, error: PipelineError) -> PipelineError {
        self.failed = true;
        self.outbox.clear();
        let _ = self.sink.abort();
        for task in self.tasks.values_mut() {
            task.rewind();
        }
        tracing::error!(error = %error, "pipeline failed: nothing more is committed");
        error
    }

    /// Rewinds every running task to its last commit and seeks the consumer back.
    fn rewind_all(&mut self, consumer: &Source) {
        let mut lost = Vec::new();
        for (id, task) in self.tasks.iter_mut() {
            task.rewind();
            for (input, topic) in self.topics.inputs[id.sub].iter().enumerate() {
                if let Err(e) = seek(consumer, topic, id.partition, task.committed_offset(input)) {
                    tracing::warn!(task = %id, topic, error = %e, "seek back failed; restoring the task");
                    lost.push(*id);
                    break;
                }
            }
        }
        for id in lost {
            self.restore_again(id, consumer);
        }
    }

    /// Takes a running task back to restoring: its store is brought up to date
    /// from the changelog and it resumes where Kafka says.
    fn restore_again(&mut self, id: TaskId, consumer: &Source) {
        if let Some(mut task) = self.tasks.remove(&id) {
            task.rewind();
            self.unassign(consumer, id);
            self.begin_restore(id, task.into_stores(), BTreeMap::new());
        }
    }

    /// Stops reading task `id`'s partitions (it no longer runs here).
    fn unassign(&self, consumer: &Source, id: TaskId) {
        if let Err(e) = consumer.incremental_unassign(&self.topics.partitions_of(id)) {
            tracing::warn!(task = %id, error = %e, "unassigning a task's partitions");
        }
    }

    /// A task's partitions are read only while it runs: it restores first.
    fn begin_restore(&mut self, id: TaskId, stores: Vec<Box<dyn Store>>, read_to: BTreeMap<usize, i64>) {
        self.epoch += 1;
        let changelogs = self.topics.changelogs[id.sub].clone();
        let inputs = self.topics.inputs[id.sub].clone();
        self.queries.ask(Question { task: id, inputs, changelogs }, self.epoch);
        self.restoring.insert(
            id,
            Restoring {
                stores,
                phase: Phase::Asking { epoch: self.epoch },
                since: Instant::now(),
                answered: None,
                read_to,
            },
        );
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics.tasks.set(self.tasks.len() as i64);
        self.metrics.tasks_restoring.set(self.restoring.len() as i64);
    }

    /// Whether some task is restoring.
    pub(super) fn is_restoring(&self) -> bool {
        !self.restoring.is_empty()
    }

    /// Whether some task's restore is reading its changelogs (not waiting to
    /// learn where it resumes).
    pub(super) fn is_reading_changelogs(&self) -> bool {
        !self.restorer.is_idle()
    }

    /// Moves restores on: answers about where tasks resume, changelog records,
    /// and tasks that are ready to run. At most `budget` is spent reading.
    pub(super) fn drive_restores(&mut self, consumer: &Source, budget: Duration) -> Result<(), PipelineError> {
        if self.restoring.is_empty() {
            return Ok(());
        }
        let mut ready = Vec::new();
        for answer in self.queries.answers() {
            if let Some(id) = self.start_reading(answer)? {
                ready.push(id);
            }
        }
        let policies: Vec<Policy> = (0..self.topics.inputs.len()).map(|sub| self.policy(sub)).collect();
        let fallback = self.policy(0);
        let info = self.versions.worker.plugin().shared_info();
        let restoring = &mut self.restoring;
        let metrics = &self.metrics;
        let (guest, topics, globals) = (&mut self.versions.worker, &self.topics, &self.globals);
        let finished = self.restorer.poll(budget, |id, store, changes, next| {
            metrics.restored_records.inc_by(changes.len() as u64);
            // A table restored from its topic: the records make rows through
            // the operators before it, as when they were first read.
            let changes = match info.shape.subs.get(id.sub).and_then(|s| s.source_table(store)) {
                Some(table) => {
                    let mut discard = Outbox::default();
                    let mut env = Env {
                        info: &info,
                        guest: &mut *guest,
                        outbox: &mut discard,
                        metrics,
                        input_topics: topics.inputs.get(id.sub).map_or(&[], Vec::as_slice),
                        policy: policies.get(id.sub).copied().unwrap_or(fallback),
                        globals,
                    };
                    Task::table_rows(&mut env, id, table, changes)
                        .map_err(|e| KafkaIoError::Setup(format!("restoring a table from its topic: {e}")))?
                }
                None => changes,
            };
            match restoring.get_mut(&id).and_then(|r| r.stores.get_mut(store)) {
                Some(store) => {
                    store.write(changes, Some(next)).map_err(|e| KafkaIoError::Setup(format!("state store: {e}")))
                }
                None => Ok(()),
            }
        })?;
        for done in finished {
            if let Some(r) = self.restoring.get_mut(&done.task)
                && let Phase::Reading { committed, meta, left, records } = &mut r.phase
            {
                *left = left.saturating_sub(1);
                *records += done.records;
                if *left == 0 {
                    r.phase = Phase::Seeking { committed: std::mem::take(committed), meta: *meta, records: *records };
                    ready.push(done.task);
                }
            }
        }
        // Tasks restored earlier whose seek failed are tried again.
        ready.extend(self.restoring.iter().filter(|(_, r)| matches!(r.phase, Phase::Seeking { .. })).map(|(p, _)| *p));
        ready.sort_unstable();
        ready.dedup();
        for id in ready {
            self.run_restored(id, consumer)?;
        }
        Ok(())
    }

    /// Knowing where `answer`'s task resumes, starts reading its changelog.
    /// Returns the partition if there is nothing to read.
    fn start_reading(&mut self, answer: Resume) -> Result<Option<TaskId>, PipelineError> {
        let Some(r) = self.restoring.get_mut(&answer.task) else { return Ok(None) };
        if !matches!(r.phase, Phase::Asking { epoch } if epoch == answer.epoch) {
            return Ok(None);
        }
        let id = answer.task;
        self.restorer.cancel(id);
        let info = self.versions.worker.plugin().shared_info();
        let mut left = 0;
        let mut checkpoints = Vec::with_capacity(r.stores.len());
        for (i, store) in r.stores.iter_mut().enumerate() {
            let (Some(changelog), Some(&(low, end))) =
                (self.topics.changelogs[id.sub].get(i), answer.changelogs.get(i))
            else {
                continue;
            };
            // A table restored from its source topic: up to the committed offset.
            let source = info.shape.subs.get(id.sub).and_then(|s| s.source_table(i));
            let end = match source {
                Some(t) => answer.committed.get(t.input).copied().flatten().unwrap_or(low),
                None => end,
            };
            let checkpoint = store.checkpoint().map_err(TaskError::from)?;
            checkpoints.push(checkpoint);
            let from = match checkpoint {
                Some(c) if c >= low && c <= end => c,
                None if store.approximate_len() == 0 => low,
                other => {
                    // The store does not match the changelog (it was cut, or
                    // made again): start over from the changelog alone.
                    tracing::warn!(
                        task = %id,
                        changelog,
                        checkpoint = ?other,
                        low,
                        end,
                        "local store does not match its changelog; restoring it from scratch"
                    );
                    store.clear().map_err(TaskError::from)?;
                    low
                }
            };
            // A promoted standby's tail read past the end already (commit
            // markers included): nothing to read, no first fetch to wait for.
            let tail_done = checkpoint == Some(from) && r.read_to.get(&i).is_some_and(|&p| p >= end);
            if !tail_done && self.restorer.start(id, i, changelog, from, end)? {
                left += 1;
            }
        }
        // Every input a commit carried has the same metadata; the latest wins.
        let meta =
            answer.metadata.iter().map(|m| CommitMetadata::parse(m)).max_by_key(|m| m.stream_time).unwrap_or_default();
        tracing::info!(
            task = %id,
            committed = ?answer.committed,
            checkpoints = ?checkpoints,
            changelog_ends = ?answer.changelogs.iter().map(|c| c.1).collect::<Vec<_>>(),
            "restoring task"
        );
        let reading = left > 0;
        let committed = answer.committed;
        r.answered = Some(Instant::now());
        r.phase = if reading {
            Phase::Reading { committed, meta, left, records: 0 }
        } else {
            Phase::Seeking { committed, meta, records: 0 }
        };
        Ok((!reading).then_some(id))
    }

    /// A restored task starts running at its committed offset.
    fn run_restored(&mut self, id: TaskId, consumer: &Source) -> Result<(), PipelineError> {
        let Some(r) = self.restoring.get(&id) else { return Ok(()) };
        let Phase::Seeking { committed, meta, records } = &r.phase else { return Ok(()) };
        let (committed, meta, records) = (committed.clone(), *meta, *records);
        let mut from = TopicPartitionList::new();
        for (topic, &offset) in self.topics.inputs[id.sub].iter().zip(&committed) {
            let offset = offset.map_or(Offset::Beginning, Offset::Offset);
            from.add_partition_offset(topic, id.partition, offset).map_err(KafkaIoError::from)?;
        }
        if let Err(e) = consumer.incremental_assign(&from) {
            tracing::debug!(task = %id, error = %e, "assigning the task's partitions not possible yet; trying again");
            return Ok(());
        }
        let Some(r) = self.restoring.remove(&id) else { return Ok(()) };
        let info = self.versions.info();
        let sub = info.shape.subs.get(id.sub).ok_or_else(|| TaskError::Frame(format!("no sub-topology {id}")))?;
        // Offsets committed before schemas were recorded are in the plugin's.
        let schema = meta.schema.unwrap_or(sub.aggregation().map_or(0, |a| a.store.schema));
        let grace = self.grace_ms(id.sub);
        let kind = Kind::of(&sub.stage, grace).map_err(|e| TaskError::Frame(format!("windows: {e}")))?;
        let task = Task::new(id, kind, grace, r.stores, &committed, meta.stream_time, schema);
        tracing::info!(
            task = %id,
            offset = ?committed,
            stream_time = ?meta.stream_time,
            restored = records,
            took_ms = r.since.elapsed().as_millis() as u64,
            asked_ms = r.answered.map(|a| a.duration_since(r.since).as_millis() as u64),
            "task assigned"
        );
        self.tasks.insert(id, task);
        self.taken_over.push((id, r.since));
        self.update_gauges();
        if let Some(what) = self.align_state(Some(id))? {
            tracing::info!(version = %self.versions.active, task = %id, "state of a newly assigned task: {what}");
        }
        Ok(())
    }

    /// The stores of task `id`, in its sub-topology's order: RocksDB in
    /// `<state dir>/<application>/<store>-<partition>` if configured; in memory
    /// otherwise.
    fn open_stores(&self, id: TaskId) -> Result<Vec<Box<dyn Store>>, PipelineError> {
        let info = self.versions.info();
        let Some(sub) = info.shape.subs.get(id.sub) else { return Ok(Vec::new()) };
        let mut stores: Vec<Box<dyn Store>> = Vec::new();
        for spec in sub.stores() {
            stores.push(match &self.rocks {
                Some(options) => {
                    let dir: PathBuf = self
                        .cfg
                        .state
                        .dir
                        .join(&self.cfg.application_id)
                        .join(format!("{}-{}", spec.name, id.partition));
                    Box::new(RocksStore::open(&dir, options).map_err(TaskError::from)?)
                }
                None => Box::new(MemoryStore::default()),
            });
        }
        Ok(stores)
    }

    /// Brings the tasks' state (every task's, or one partition's) to the running
    /// plugin's schema — or drops it, if the version was activated with
    /// `reset_state`. Returns what it did, if anything, for the swap history.
    pub(super) fn align_state(&mut self, only: Option<TaskId>) -> Result<Option<String>, PipelineError> {
        let info = self.versions.info().clone();
        let label = self.versions.active.clone();
        let reset = self.versions.reset_state;
        let (mut windows, mut from) = (0usize, std::collections::BTreeSet::new());
        for (id, task) in self.tasks.iter_mut() {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            let Some(stage) = info.shape.subs.get(id.sub).and_then(|s| s.aggregation()) else { continue };
            let store = &stage.store;
            let stored = task.state_schema();
            if !reset && stored == store.schema {
                continue;
            }
            if !reset && !info.reads_state(&store.name, stored) {
                return Err(PipelineError::Swap(SwapError::StateSchema {
                    label,
                    store: store.name.clone(),
                    schema: store.schema,
                    migrates_from: store.migrates_from.clone(),
                    stored,
                }));
            }
            from.insert((store.name.clone(), stored, store.schema));
            let max_bytes = self.cfg.state.uncommitted_mb << 20;
            windows +=
                task.evolve(&mut self.versions.worker, stage.node, &self.metrics, store.schema, reset, max_bytes)?;
        }
        if from.is_empty() {
            return Ok(None);
        }
        let what = if reset {
            format!("reset: {windows} stored windows dropped")
        } else {
            let stores: Vec<String> = from
                .iter()
                .map(|(store, stored, to)| format!("`{store}` from state schema {stored} to {to}"))
                .collect();
            format!("migrated {windows} stored windows: {}", stores.join(", "))
        };
        tracing::info!(version = %label, "{what}");
        Ok(Some(what))
    }

    /// Applies a staged swap or rollback, but only at a transaction boundary
    /// (nothing processed since the last commit).
    pub(super) fn apply_control(&mut self) {
        if self.failed || self.has_progress() {
            return;
        }
        let Ok(command) = self.control.try_recv() else { return };
        let paused = Instant::now();
        let (label, worker, reset_state) = match command {
            ControlCommand::Activate(staged) => {
                (staged.label, Worker::with_instance(staged.plugin, staged.instance), staged.reset_state)
            }
            ControlCommand::Rollback { reset_state } => match self.versions.previous.take() {
                Some((label, plugin)) => (label, Worker::new(plugin), reset_state),
                None => return,
            },
        };
        let from = self.versions.switch(label.clone(), worker);
        self.metrics.swaps.inc();
        self.versions.probation = true;
        self.versions.probation_until = Instant::now().checked_add(Duration::from_millis(self.cfg.swap_probation_ms));
        self.versions.reset_state = reset_state;
        let state = match self.align_state(None) {
            Ok(state) => state,
            Err(error) => {
                // Nothing was processed since the boundary: forget the partial
                // conversion and hand the state back to the previous version.
                for task in self.tasks.values_mut() {
                    task.rewind();
                }
                self.versions.reset_state = false;
                let event = SwapEvent { from, to: label, pause: paused.elapsed(), rolled_back: None, state: None };
                self.versions.record(event, None);
                if let Err(e) = self.roll_back_after(&error) {
                    self.fatal.get_or_insert(e);
                }
                return;
            }
        };
        let pause = paused.elapsed();
        tracing::info!(from = %from, to = %label, pause_us = pause.as_micros() as u64, "plugin swapped at a transaction boundary");
        self.versions.record(SwapEvent { from, to: label, pause, rolled_back: None, state }, None);
    }

    /// The version on probation failed with `error`: go back to the previous one
    /// if it can read the state as last committed; otherwise keep it and let its
    /// failures be contained like any version's.
    fn roll_back_after(&mut self, error: &PipelineError) -> Result<(), PipelineError> {
        let info = self.versions.info();
        let readable = self.versions.previous.as_ref().is_some_and(|(_, previous)| {
            self.tasks.iter().all(|(id, t)| match info.shape.subs.get(id.sub).and_then(|s| s.aggregation()) {
                Some(a) => previous.info().reads_state(&a.store.name, t.committed_state_schema()),
                None => true,
            })
        });
        if !readable {
            self.versions.probation = false;
            let reason = format!(
                "version {} failed on probation but was kept: the previous version cannot read the state schema it \
                 committed; failures now follow on_failure: {error}",
                self.versions.active
            );
            tracing::error!("{reason}");
            self.versions.note_error(reason);
            return Ok(());
        }
        let Some((label, plugin)) = self.versions.previous.take() else { return Ok(()) };
        let failed = self.versions.switch(label.clone(), Worker::new(plugin));
        self.versions.probation = false;
        self.versions.reset_state = false;
        let reason = format!("version {failed} failed and was rolled back to {label}: {error}");
        tracing::error!("{reason}");
        self.metrics.swap_rollbacks.inc();
        self.versions.record(
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
}

/// Positions the consumer on `partition` at `offset` (the beginning if none).
fn seek(consumer: &Source, topic: &str, partition: i32, offset: Option<i64>) -> Result<(), KafkaIoError> {
    let offset = offset.map_or(Offset::Beginning, Offset::Offset);
    consumer.seek(topic, partition, offset, Duration::from_secs(2)).map_err(KafkaIoError::from)
}

impl Engine {
    /// Takes what changed in the group: lets go of tasks no longer here
    /// (committing first, unless they were lost) and starts the new ones.
    pub(super) fn follow_group(&mut self, consumer: &Source) -> Result<(), PipelineError> {
        let Some(membership) = &self.membership else { return Ok(()) };
        if let Some(e) = membership.take_fatal() {
            return Err(KafkaIoError::Fatal(e.to_string()).into());
        }
        let Some(Update { lost, assignment }) = membership.take_update() else { return Ok(()) };
        let here: BTreeSet<TaskId> = self.tasks.keys().chain(self.restoring.keys()).copied().collect();
        if lost {
            self.revoke(consumer, &here, true);
        }
        let Some(assignment) = assignment else { return Ok(()) };
        let here: BTreeSet<TaskId> = self.tasks.keys().chain(self.restoring.keys()).copied().collect();
        let gone: BTreeSet<TaskId> = here.difference(&assignment.active).copied().collect();
        if !gone.is_empty() {
            self.revoke(consumer, &gone, false);
        }
        let new: Vec<TaskId> = assignment.active.difference(&here).copied().collect();
        self.fence_departed(&new, &assignment.group);
        self.assign(&new);
        self.keep_standbys(&assignment.standby);
        self.warming = assignment.warming;
        // Stores of tasks that went elsewhere are closed.
        self.suspended.clear();
        self.hosts = assignment.group;
        let positions = self.positions();
        if let Some(m) = &self.membership {
            m.applied(assignment.generation, &assignment.active, positions);
        }
        Ok(())
    }

    /// Fences the hosts that ran tasks of `new` in the last placement and are
    /// not in the group any more: a host killed inside a commit left its
    /// transaction open, and the tasks' restores would wait for it to time out.
    fn fence_departed(&self, new: &[TaskId], group: &[HostTasks]) {
        if !self.sink.is_transactional() {
            return;
        }
        let present: BTreeSet<&str> = group.iter().map(|h| h.host.as_str()).collect();
        let departed: Vec<String> = (self.hosts.iter())
            .filter(|h| !present.contains(h.host.as_str()))
            .filter(|h| h.active.iter().any(|&(sub, partition)| new.contains(&TaskId { sub, partition })))
            .map(|h| format!("{}-{}", self.cfg.application_id, h.host))
            .collect();
        if !departed.is_empty() {
            // Before the new tasks' questions: they are answered once it is done.
            self.queries.fence(departed);
        }
    }

    /// How far the local copy of each task's stores is: the sum of their
    /// checkpoints (a store without one counts as 0).
    fn positions(&self) -> BTreeMap<TaskId, i64> {
        let sum = |stores: &[Box<dyn Store>]| -> i64 {
            stores.iter().map(|s| s.checkpoint().ok().flatten().unwrap_or(0).max(0)).sum()
        };
        let mut positions = BTreeMap::new();
        for (id, task) in &self.tasks {
            positions.insert(*id, task.position());
        }
        for (id, r) in &self.restoring {
            positions.insert(*id, sum(&r.stores));
        }
        for (id, stores) in &self.standbys {
            positions.insert(*id, sum(stores));
        }
        positions
    }

    /// Keeps standby copies of exactly `wanted` (never of a task running
    /// here): new ones start tailing their changelogs from their checkpoints
    /// (a store that ran here before is nearly warm already).
    fn keep_standbys(&mut self, wanted: &BTreeSet<TaskId>) {
        let dropped: Vec<TaskId> = self.standbys.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in dropped {
            self.standby_restorer.cancel(id);
            self.standbys.remove(&id);
        }
        let info = self.versions.info().clone();
        for &id in wanted {
            if self.standbys.contains_key(&id) || self.tasks.contains_key(&id) || self.restoring.contains_key(&id) {
                continue;
            }
            let stores = match self.suspended.remove(&id).map_or_else(|| self.open_stores(id), Ok) {
                Ok(stores) => stores,
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "opening a standby's stores failed; no standby here");
                    continue;
                }
            };
            let sub = info.shape.subs.get(id.sub);
            for (i, store) in stores.iter().enumerate() {
                // A table restored from its topic has no changelog to tail.
                if sub.is_some_and(|s| s.source_table(i).is_some()) {
                    continue;
                }
                let Some(changelog) = self.topics.changelogs[id.sub].get(i) else { continue };
                let from = store.checkpoint().ok().flatten();
                if let Err(e) = self.standby_restorer.tail(id, i, changelog, from) {
                    tracing::warn!(task = %id, changelog, error = %e, "tailing a standby's changelog failed");
                }
            }
            self.standbys.insert(id, stores);
        }
        self.metrics.tasks_standby.set(self.standbys.len() as i64);
    }

    /// Writes what arrived for the standby copies (at most every few
    /// milliseconds, briefly); now and then tells the group how warm they are
    /// and the admin API what every task here does.
    pub(super) fn tend(&mut self, consumer: &Source) -> Result<(), PipelineError> {
        if self.positions_reported.elapsed() >= REPORT_POSITIONS_EVERY {
            self.positions_reported = Instant::now();
            if let Some(m) = &self.membership {
                m.report_positions(self.positions());
                let tasks = self.task_views(consumer);
                // Warm-ups within the acceptable lag: the tasks can move here now.
                let lag = self.cfg.acceptable_recovery_lag;
                let mut standbys = tasks.iter().filter(|t| t.role == "standby");
                if self.warming && standbys.all(|t| t.lag.is_some_and(|l| l <= lag)) {
                    self.warming = false;
                    m.rejoin();
                }
                self.board.set(GroupView { group: m.status(), tasks });
            }
        }
        if self.standbys.is_empty() || self.standbys_polled.elapsed() < STANDBY_POLL_EVERY {
            return Ok(());
        }
        self.standbys_polled = Instant::now();
        let standbys = &mut self.standbys;
        let metrics = &self.metrics;
        self.standby_restorer.poll(STANDBY_BUDGET, |id, store, changes, next| {
            metrics.standby_records.inc_by(changes.len() as u64);
            match standbys.get_mut(&id).and_then(|s| s.get_mut(store)) {
                Some(store) => {
                    store.write(changes, Some(next)).map_err(|e| KafkaIoError::Setup(format!("standby store: {e}")))
                }
                None => Ok(()),
            }
        })?;
        Ok(())
    }

    /// What every task here does, and how far behind it is.
    fn task_views(&self, consumer: &Source) -> Vec<TaskView> {
        let mut views = Vec::new();
        for (id, task) in &self.tasks {
            let inputs = &self.topics.inputs[id.sub];
            let lag = inputs.iter().enumerate().try_fold(0i64, |sum, (input, topic)| {
                let high = high_watermark(consumer, topic, id.partition)?;
                let at = task.next_offset(input).or(task.committed_offset(input)).unwrap_or(0);
                Some(sum + (high - at).max(0))
            });
            views.push(TaskView { task: id.to_string(), role: "active", lag, restored: 0 });
        }
        for id in self.restoring.keys() {
            let (restored, lag) = self.restorer.progress(*id);
            views.push(TaskView { task: id.to_string(), role: "restoring", lag, restored });
        }
        for id in self.standbys.keys() {
            let (restored, lag) = self.standby_restorer.progress(*id);
            views.push(TaskView { task: id.to_string(), role: "standby", lag, restored });
        }
        views
    }

    /// Lets go of `ids`: commits first (unless `lost`: they may have another
    /// owner already, so nothing is committed) and keeps their stores for now.
    fn revoke(&mut self, consumer: &Source, ids: &BTreeSet<TaskId>, lost: bool) {
        if lost || self.failed {
            if lost {
                tracing::warn!("tasks lost (this host was dropped from the group): nothing is committed");
            }
            self.outbox.clear();
            let _ = self.sink.abort();
            self.rewind_all(consumer);
        } else if let Err(e) = self.commit(consumer, true) {
            tracing::error!(error = %e, "commit before revocation failed");
            self.fatal.get_or_insert(e);
        }
        for &id in ids {
            if let Some(mut task) = self.tasks.remove(&id) {
                task.rewind();
                self.unassign(consumer, id);
                self.suspended.insert(id, task.into_stores());
            } else if let Some(r) = self.restoring.remove(&id) {
                self.restorer.cancel(id);
                self.queries.forget(id);
                self.suspended.insert(id, r.stores);
            }
        }
        self.taken_over.retain(|(id, _)| !ids.contains(id));
        let tasks: Vec<String> = ids.iter().map(ToString::to_string).collect();
        tracing::info!(?tasks, lost, "tasks revoked");
        self.update_gauges();
    }

    /// Starts tasks `ids` here: each restores (from a standby copy if this
    /// host kept one: only what it had not read yet), then runs.
    fn assign(&mut self, ids: &[TaskId]) {
        for &id in ids {
            if self.tasks.contains_key(&id) || self.restoring.contains_key(&id) {
                continue;
            }
            let mut read_to = BTreeMap::new();
            if let Some(stores) = self.standbys.remove(&id) {
                read_to = self.standby_restorer.positions(id);
                self.standby_restorer.cancel(id);
                self.suspended.insert(id, stores);
            }
            let stores = match self.suspended.remove(&id) {
                Some(stores) => stores,
                None => match self.open_stores(id) {
                    Ok(stores) => stores,
                    Err(e) => {
                        tracing::error!(task = %id, error = %e, "opening the task's store failed");
                        self.fatal.get_or_insert(e);
                        continue;
                    }
                },
            };
            self.begin_restore(id, stores, read_to);
        }
        let tasks: Vec<String> = ids.iter().map(ToString::to_string).collect();
        tracing::info!(?tasks, "tasks assigned; restoring them");
    }
}
