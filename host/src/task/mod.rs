//! A task: one partition of the topic a sub-topology reads (or the same
//! partition of each of the topics it merges), with the store of its aggregation
//! (if any), stream time and uncommitted updates. Tasks are named by [`TaskId`],
//! (sub-topology, partition), as Kafka Streams names them. A task keeps an offset
//! per input. Records of several inputs are processed in timestamp order across
//! the inputs — each input's own order kept, the input whose next record is
//! earliest going first, as Kafka Streams chooses — in runs of one input each,
//! and stream time is the largest event time of any of them.
//!
//! Records are buffered per task and handed to the plugin in chunks (`batch`):
//! the task assigns each record to its windows (dropping windows already closed by
//! stream time and grace), passes the plugin the accumulators the chunk touches,
//! and keeps the updated ones in memory until commit. A chunk is cut so its frame
//! stays within the plugin's frame budget. At commit it renders changed (or, in
//! final mode, closed) windows through the plugin and queues results and
//! changelog records in the [`Outbox`]; once the transaction carrying them is
//! committed, it writes the changes and the new changelog checkpoint to its store
//! in one batch.
//!
//! Nothing a task does between two commits reaches Kafka or its store before the
//! commit: a failure anywhere in a commit is undone by [`Task::rewind`], which
//! puts the task back exactly at its last commit.
//!
//! A task also knows the state schema its store is written in. When a plugin with
//! another schema takes over, [`Task::evolve`] converts (or drops) every stored
//! accumulator before the plugin sees one; the converted values are written like
//! any other change — changelog and store, with the new schema in the commit —
//! so a crash before that commit leaves the old state and the old schema intact.

mod batch;
mod foreign;
mod join;
pub mod outbox;
mod planned;
mod side;
mod stateless;
mod stream_join;

use std::collections::{HashMap, HashSet};

use thiserror::Error;
use weir_abi::calls::{MigrateIn, Rec, RunIn, RunOut, StoredSlot};
use weir_abi::topology::Edge;
use weir_abi::{MigrateOut, Window};

use crate::config::{EmitMode, FailurePolicy};
use crate::faults;
use crate::metrics::Metrics;
use crate::runtime::{Guest, GuestError, MAX_REASON_BYTES, PluginInfo, clip};
use crate::state::{Change, Store, StoreError, split_window_key, window_end_bound};
use crate::topology::{Aggregation, Carries, Exit, Folds, Stage};
use crate::window::{KeyWindows, Planner, SessionPlanner, SlidingPlanner, WindowError, Windowing};
use batch::Reject;
pub use outbox::{Dest, Out, Outbox};
use weir_abi::topology::WindowSpec;

/// Which task: (sub-topology, partition of the topic it reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    /// The sub-topology, by index into the shape's sub-topologies.
    pub sub: usize,
    /// The partition of the sub-topology's input topic.
    pub partition: i32,
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.sub, self.partition)
    }
}

/// A task failure.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The plugin failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Host and plugin disagree about a frame.
    #[error("frame: {0}")]
    Frame(String),
    /// The plugin kept failing and the pipeline is configured to pause.
    #[error("plugin keeps failing and on_failure = pause: {0}")]
    Paused(GuestError),
    /// The plugin failed on a chunk of records but on none of them alone, so no
    /// record could be dead-lettered for it.
    #[error(
        "plugin failed on {records} records of partition {partition} (offsets {first}..={last}) together but on \
         none of them alone, so the failure could not be pinned to a record: {error}"
    )]
    Unpinned {
        /// The input partition.
        partition: i32,
        /// First offset of the chunk.
        first: i64,
        /// Last offset of the chunk.
        last: i64,
        /// Records in the chunk.
        records: usize,
        /// The failure.
        error: GuestError,
    },
}

impl TaskError {
    /// Whether the plugin (not the host, the store or Kafka) caused this.
    pub fn is_plugin(&self) -> bool {
        matches!(self, TaskError::Guest(_) | TaskError::Paused(_) | TaskError::Unpinned { .. })
    }
}

fn frame_err(e: weir_abi::Error) -> TaskError {
    TaskError::Frame(e.to_string())
}

/// How a task treats plugin failures.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Retries of a failed plugin call (each on a fresh instance) before the
    /// failing record or window is looked for.
    pub retries: u32,
    /// The plugin was just swapped in: a failure means the version is broken, not
    /// the record, so it is returned at once (the pipeline rolls back).
    pub probation: bool,
    /// What to do with a record (or window) the plugin keeps failing on.
    pub on_failure: FailurePolicy,
    /// Emit mode.
    pub emit: EmitMode,
}

/// What a task needs from its pipeline while it works.
pub struct Env<'a> {
    /// The plugin.
    pub guest: &'a mut dyn Guest,
    /// What the running version declared (its nodes, and what the host runs).
    pub info: &'a PluginInfo,
    /// Where records to write go.
    pub outbox: &'a mut Outbox,
    /// Counters.
    pub metrics: &'a Metrics,
    /// The task's input topics, in the order of its sub-topology's inputs
    /// (named in dead-letter headers).
    pub input_topics: &'a [String],
    /// How failures are treated.
    pub policy: Policy,
    /// The pipeline's global tables.
    pub globals: &'a crate::global::Globals,
}

impl Env<'_> {
    /// The name of node `index` of the running version, or the plugin's fault.
    fn node_name(&self, index: u32) -> Result<String, GuestError> {
        self.info
            .topology
            .nodes
            .get(index as usize)
            .map(|n| n.name.clone())
            .ok_or_else(|| GuestError::BadFrame(format!("a reject names node #{index}, which does not exist")))
    }
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// What a join or the operators before an aggregation made of an input
/// record: (its index, key, value, row or other side, timestamp if not the
/// input's).
type Made = (usize, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>);

/// A record that reached a host node from guest operators: (its input
/// record's index, key, value, what it carries beside the value).
type Made4 = (usize, Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

#[derive(Debug, Clone, Copy)]
struct Pending {
    key: Option<Span>,
    value: Option<Span>,
    /// For a record leaving a join: the table row it found.
    old: Option<Span>,
    timestamp: Option<i64>,
    offset: i64,
    /// Which of the task's inputs it was read from.
    input: usize,
    /// For a record guest operators made from an input record: the task's
    /// stream time once that input was read (stream time never goes below it).
    floor: i64,
}

/// What a task folds records into.
pub enum Kind {
    /// Nothing: guest operators only.
    Stateless,
    /// Tumbling or hopping windows, assigned from the timestamp alone.
    Time(Windowing),
    /// Sliding or session windows, planned per key from the windows that exist.
    Planned(PlannedKind),
    /// One row per key: a table. With `changes`, the records are re-grouped
    /// table updates whose old row is subtracted and new row added.
    Table {
        /// Whether the records are [`weir_abi::calls::ChangeFrame`]s.
        changes: bool,
    },
    /// One row per key, the latest value: a stream made a table, rows replaced
    /// by the host (see `join`).
    Latest,
    /// Two tables of latest values joined on key, in the task's side stores.
    JoinTables,
    /// Two streams joined within a time window, in the task's side store.
    JoinStreams,
    /// The right half of a foreign-key join: the right table's rows and the
    /// subscriptions, in the task's side stores.
    JoinForeign,
}

/// A sliding or session aggregation.
pub struct PlannedKind {
    planner: Box<dyn Planner + Send>,
    /// A window is closed once `end + grace + close_extra <= stream time`.
    close_extra: i64,
    /// It may be deleted once `end + grace + expire_extra <= stream time`.
    expire_extra: i64,
}

impl Kind {
    /// The kind of what `stage` folds into, with grace `grace_ms`.
    pub fn of(stage: &Stage, grace_ms: u64) -> Result<Self, WindowError> {
        let spec = match stage {
            Stage::Stateless => None,
            Stage::Join(_) => return Ok(Kind::JoinTables),
            Stage::JoinStreams(_) => return Ok(Kind::JoinStreams),
            Stage::JoinForeign(_) => return Ok(Kind::JoinForeign),
            Stage::Aggregate(a) => match a.folds {
                Folds::Windows(w) => Some(w),
                Folds::Table => return Ok(Kind::Table { changes: false }),
                Folds::Changes => return Ok(Kind::Table { changes: true }),
                Folds::Latest => return Ok(Kind::Latest),
            },
        };
        Ok(match spec {
            None => Kind::Stateless,
            Some(WindowSpec::Tumbling { size_ms, .. }) => Kind::Time(Windowing::tumbling(size_ms)?),
            Some(WindowSpec::Hopping { size_ms, advance_ms, .. }) => {
                Kind::Time(Windowing::hopping(size_ms, advance_ms)?)
            }
            Some(WindowSpec::Sliding { difference_ms, .. }) => Kind::Planned(PlannedKind {
                planner: Box::new(SlidingPlanner::new(difference_ms, grace_ms)?),
                close_extra: 0,
                expire_extra: 2 * difference_ms as i64,
            }),
            Some(WindowSpec::Session { gap_ms, .. }) => Kind::Planned(PlannedKind {
                planner: Box::new(SessionPlanner::new(gap_ms, grace_ms)?),
                close_extra: gap_ms as i64,
                expire_extra: gap_ms as i64,
            }),
        })
    }

    /// Whether its state is in the task's first store (the aggregation's).
    fn has_primary(&self) -> bool {
        !matches!(self, Kind::Stateless | Kind::JoinTables | Kind::JoinStreams | Kind::JoinForeign)
    }

    /// Whether it keeps one row per key (whose rows never close).
    fn is_table(&self) -> bool {
        matches!(self, Kind::Table { .. } | Kind::Latest)
    }

    fn extras(&self) -> (i64, i64) {
        match self {
            Kind::Planned(p) => (p.close_extra, p.expire_extra),
            _ => (0, 0),
        }
    }
}

/// Bytes of the metadata a planned window's stored value starts with (its
/// largest record timestamp).
const META: usize = 8;

/// A planned window's stored value: its largest timestamp, then the aggregate.
fn with_meta(max_ts: i64, acc: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(META + acc.len());
    v.extend_from_slice(&max_ts.to_be_bytes());
    v.extend_from_slice(acc);
    v
}

/// The largest timestamp and the aggregate of a planned window's stored value.
fn split_meta(stored: &[u8]) -> Option<(i64, &[u8])> {
    let (ts, acc) = stored.split_at_checked(META)?;
    Some((i64::from_be_bytes(ts.try_into().ok()?), acc))
}

/// The store key of a table row: the window-store layout with a window that
/// never closes or expires, so tables and windows share one key space and code.
pub const TABLE_ROW: Window = Window { start: i64::MIN, end: i64::MAX };

/// Where a task is in one of its input partitions.
#[derive(Debug, Clone, Copy, Default)]
struct Offsets {
    /// The offset to commit: after the last processed record.
    next: Option<i64>,
    /// The offset of the last commit.
    committed: Option<i64>,
    /// After the last buffered record (records before it are duplicates).
    accepted: Option<i64>,
    /// Records of this input buffered.
    buffered: usize,
}

/// One task's processing state.
pub struct Task {
    partition: i32,
    /// The sub-topology it runs.
    sub: usize,
    /// What records are folded into.
    kind: Kind,
    grace_ms: i64,
    /// Planned kinds: the windows of every key, as stored plus uncommitted
    /// changes; built from the store on first use, dropped by a rewind.
    index: Option<HashMap<Vec<u8>, KeyWindows>>,
    /// Planned kinds: windows removed since the last commit (sessions merged away).
    removed: HashSet<Vec<u8>>,
    /// Windows ending before this were rendered as closed already (emit final).
    closed_before: i64,
    store: Box<dyn Store>,
    /// Stores beside the aggregation's (a join's).
    side: Vec<side::SideStore>,
    /// Where a join of streams' scans start.
    cursors: stream_join::Cursors,
    /// A foreign-key join's right side: the rows changed since the last
    /// commit (key → the last change's timestamp), whose subscribers are
    /// answered at the commit, once each however often the row changed.
    changed_rows: std::collections::BTreeMap<Vec<u8>, Option<i64>>,
    /// Uncommitted accumulators by window-store key.
    dirty: HashMap<Vec<u8>, Vec<u8>>,
    /// Bytes of keys and values in `dirty`.
    dirty_bytes: usize,
    /// Uncommitted conversions of stored accumulators to `schema` (`None` drops
    /// the window); read before the store, written without emitting results.
    migrated: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// State schema of the store plus the uncommitted changes.
    schema: u32,
    committed_schema: u32,
    stream_time: Option<i64>,
    committed_stream_time: Option<i64>,
    /// Per input, in the order of the sub-topology's inputs.
    offsets: Vec<Offsets>,
    /// Windows ending before this were expired from the store already.
    expired_before: i64,
    pending: Vec<Pending>,
    arena: Vec<u8>,
    frame: Vec<u8>,
}

/// The changes to apply to the stores once the transaction carrying them commits.
pub struct PreparedCommit {
    changes: Vec<Change>,
    side: Vec<Vec<Change>>,
}

impl Task {
    /// A task over `stores` (its sub-topology's, in order: the aggregation's
    /// first, written in state schema `schema`), resuming at `committed` (an
    /// offset per input; `None`: its beginning) with `stream_time`.
    pub fn new(
        id: TaskId,
        kind: Kind,
        grace_ms: u64,
        stores: Vec<Box<dyn Store>>,
        committed: &[Option<i64>],
        stream_time: Option<i64>,
        schema: u32,
    ) -> Self {
        let mut stores = stores.into_iter();
        let store = match kind.has_primary() {
            true => stores.next(),
            false => None,
        }
        .unwrap_or_else(|| Box::new(crate::state::MemoryStore::default()));
        Self {
            side: stores.map(side::SideStore::new).collect(),
            cursors: stream_join::Cursors::default(),
            changed_rows: Default::default(),
            partition: id.partition,
            sub: id.sub,
            kind,
            grace_ms: grace_ms as i64,
            index: None,
            removed: HashSet::new(),
            closed_before: i64::MIN,
            store,
            dirty: HashMap::new(),
            dirty_bytes: 0,
            migrated: HashMap::new(),
            schema,
            committed_schema: schema,
            stream_time,
            committed_stream_time: stream_time,
            offsets: committed
                .iter()
                .map(|&c| Offsets { next: c, committed: c, accepted: None, buffered: 0 })
                .collect(),
            expired_before: i64::MIN,
            pending: Vec::new(),
            arena: Vec::new(),
            frame: Vec::new(),
        }
    }

    /// The input partition.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Which task it is.
    pub fn id(&self) -> TaskId {
        TaskId { sub: self.sub, partition: self.partition }
    }

    /// Counts `n` records read from `input`: a source or a repartition topic.
    fn count_in(&self, env: &Env<'_>, input: usize, n: u64) {
        match env.info.shape.subs.get(self.sub).and_then(|s| s.inputs.get(input)).map(|i| i.input) {
            Some(crate::topology::Input::Repartition(_)) => env.metrics.repartition_in.inc_by(n),
            _ => env.metrics.records_in.inc_by(n),
        };
    }

    /// Its sub-topology's aggregation in the running version.
    fn aggregation<'i>(&self, env: &Env<'i>) -> Result<&'i Aggregation, TaskError> {
        env.info
            .shape
            .subs
            .get(self.sub)
            .and_then(|s| s.aggregation())
            .ok_or_else(|| TaskError::Frame(format!("internal: sub-topology {} has no aggregation", self.sub)))
    }

    /// The offset to commit in `input` (after the last processed record), if any.
    pub fn next_offset(&self, input: usize) -> Option<i64> {
        self.offsets.get(input).and_then(|o| o.next)
    }

    /// The offset of the last commit in `input`; where to resume after an abort.
    pub fn committed_offset(&self, input: usize) -> Option<i64> {
        self.offsets.get(input).and_then(|o| o.committed)
    }

    /// The highest event time seen.
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// How far the task's stores are: the sum of their checkpoints.
    pub fn position(&self) -> i64 {
        let primary = self.kind.has_primary().then(|| self.store.checkpoint());
        let sides = self.side.iter().map(side::SideStore::checkpoint);
        primary.into_iter().chain(sides).map(|c| c.ok().flatten().unwrap_or(0).max(0)).sum()
    }

    /// Gives up the task, keeping its stores (whose committed state stays
    /// valid), in the order [`Task::new`] took them.
    pub fn into_stores(self) -> Vec<Box<dyn Store>> {
        let primary = self.kind.has_primary().then_some(self.store);
        primary.into_iter().chain(self.side.into_iter().map(side::SideStore::into_store)).collect()
    }

    /// Number of buffered records.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of buffered records.
    pub fn pending_bytes(&self) -> usize {
        self.arena.len()
    }

    /// Bytes of uncommitted state (accumulators waiting for the next commit).
    pub fn uncommitted_bytes(&self) -> usize {
        self.dirty_bytes + self.side.iter().map(side::SideStore::uncommitted_bytes).sum::<usize>()
    }

    /// The state schema the task's state is in (including uncommitted changes).
    pub fn state_schema(&self) -> u32 {
        self.schema
    }

    /// The state schema of the task's last commit.
    pub fn committed_state_schema(&self) -> u32 {
        self.committed_schema
    }

    /// What to store with the committed offset: stream time and state schema.
    pub fn commit_metadata(&self) -> String {
        CommitMetadata { stream_time: self.stream_time, schema: Some(self.schema) }.to_string()
    }

    /// Whether anything happened since the last commit.
    pub fn has_progress(&self) -> bool {
        self.offsets.iter().any(|o| o.next != o.committed)
            || !self.dirty.is_empty()
            || !self.removed.is_empty()
            || !self.migrated.is_empty()
            || self.schema != self.committed_schema
            || self.side.iter().any(side::SideStore::has_changes)
    }

    /// Brings every stored accumulator to state schema `to`: through the plugin's
    /// `migrate`, or — with `reset` — by dropping them all. Only at a transaction
    /// boundary (nothing pending or uncommitted). Returns how many windows it
    /// touched. The conversion is committed by the next commit, or forgotten by
    /// [`Task::rewind`]; it is held in memory until then, so converted
    /// accumulators larger than `max_bytes` in all fail it.
    #[allow(clippy::too_many_arguments)]
    pub fn evolve(
        &mut self,
        guest: &mut dyn Guest,
        node: u32,
        metrics: &Metrics,
        to: u32,
        reset: bool,
        max_bytes: usize,
    ) -> Result<usize, TaskError> {
        let keys = self.store.keys()?;
        let from = self.schema;
        let mut held = 0usize;
        if reset {
            self.migrated.extend(keys.into_iter().map(|k| (k, None)));
        } else {
            let budget = guest.max_frame_bytes();
            let mut at = 0;
            while at < keys.len() {
                // A chunk of stored accumulators within the frame budget.
                let mut accs = Vec::new();
                let mut bytes = 0usize;
                while at + accs.len() < keys.len() && accs.len() < MIGRATE_BATCH {
                    let key = &keys[at + accs.len()];
                    let acc = self.store.get(key)?.unwrap_or_default();
                    bytes += key.len() + acc.len() + 32;
                    if !accs.is_empty() && bytes > budget {
                        break;
                    }
                    accs.push(acc);
                }
                let chunk = &keys[at..at + accs.len()];
                at += accs.len();
                let mut slots = Vec::with_capacity(chunk.len());
                for (key, acc) in chunk.iter().zip(&accs) {
                    let (window, record_key) =
                        split_window_key(key).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
                    slots.push(StoredSlot { key: record_key, window: Some(window), value: self.acc_of(acc)? });
                }
                let frame = weir_abi::encode(&MigrateIn { node, from, slots }).map_err(frame_err)?;
                metrics.guest_calls.inc();
                let answer = guest.migrate(&frame)?;
                let out: MigrateOut<'_> = weir_abi::decode(&answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
                if out.accs.len() != chunk.len() {
                    return Err(GuestError::BadFrame(format!(
                        "migrate returned {} accumulators for {} slots",
                        out.accs.len(),
                        chunk.len()
                    ))
                    .into());
                }
                for (key, acc) in chunk.iter().zip(out.accs) {
                    if let Some(acc) = acc {
                        check_value(guest, acc)?;
                        held += key.len() + acc.len();
                    }
                    if held > max_bytes {
                        return Err(GuestError::Plugin(format!(
                            "the migration's output would hold more than {} MiB in memory until it commits; the \
                             limit is [state] uncommitted_mb",
                            max_bytes >> 20
                        ))
                        .into());
                    }
                    let stored = match (&self.kind, acc) {
                        (Kind::Planned(_), Some(acc)) => {
                            let old = self.store.get(key)?.unwrap_or_default();
                            Some(with_meta(split_meta(&old).map_or(0, |(ts, _)| ts), acc))
                        }
                        (_, acc) => acc.map(<[u8]>::to_vec),
                    };
                    self.migrated.insert(key.clone(), stored);
                }
            }
        }
        self.schema = to;
        tracing::info!(partition = self.partition, from, to, reset, windows = self.migrated.len(), "state evolved");
        Ok(self.migrated.len())
    }

    /// The aggregate in a stored value (planned windows store metadata before it).
    fn acc_of<'v>(&self, stored: &'v [u8]) -> Result<&'v [u8], TaskError> {
        match self.kind {
            Kind::Planned(_) => {
                split_meta(stored).map(|(_, acc)| acc).ok_or_else(|| TaskError::Frame("corrupt window value".into()))
            }
            _ => Ok(stored),
        }
    }

    /// The current accumulator of `key`: uncommitted, converted, or stored.
    fn current(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TaskError> {
        if self.removed.contains(key) {
            return Ok(None);
        }
        if let Some(v) = self.dirty.get(key) {
            return Ok(Some(v.clone()));
        }
        if let Some(v) = self.migrated.get(key) {
            return Ok(v.clone());
        }
        Ok(self.store.get(key)?)
    }

    fn push_bytes(&mut self, bytes: Option<&[u8]>) -> Option<Span> {
        bytes.map(|b| {
            let start = self.arena.len() as u32;
            self.arena.extend_from_slice(b);
            Span { start, len: b.len() as u32 }
        })
    }

    /// Buffers a record read from `input`; returns false (and buffers nothing)
    /// if it was already processed (or the task has no such input).
    pub fn accept(
        &mut self,
        input: usize,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: Option<i64>,
    ) -> bool {
        let Some(at) = self.offsets.get_mut(input) else { return false };
        if at.accepted.or(at.next).is_some_and(|next| offset < next) {
            return false;
        }
        at.accepted = Some(offset + 1);
        at.buffered += 1;
        let key = self.push_bytes(key);
        let value = self.push_bytes(value);
        self.pending.push(Pending { key, value, old: None, timestamp, offset, input, floor: i64::MIN });
        true
    }

    fn dead_letter(&self, env: &mut Env<'_>, record: &Pending, (reason, node): &Reject) {
        let reason = clip(reason, MAX_REASON_BYTES);
        let node = node.as_deref().unwrap_or("");
        tracing::warn!(partition = self.partition, offset = record.offset, node, %reason, "record sent to the dead-letter topic");
        let key = span_bytes(&self.arena, record.key).map(<[u8]>::to_vec);
        let value = span_bytes(&self.arena, record.value).map(<[u8]>::to_vec);
        let mut context = vec![("weir.source.offset", record.offset.to_string())];
        if !node.is_empty() {
            context.push(("weir.node", node.to_owned()));
        }
        self.queue_dead_letter(env, Some(record.input), (key, value, record.timestamp), reason, context);
    }

    /// Where the task is in each input: after the last record it read (buffered
    /// or processed), or where it resumed; `None` before any record or commit.
    pub fn positions(&self) -> Vec<Option<i64>> {
        self.offsets.iter().map(|o| o.accepted.or(o.next)).collect()
    }

    /// Whether the task reads several topics.
    pub fn is_merged(&self) -> bool {
        self.offsets.len() > 1
    }

    /// Runs the buffered records through the plugin, in runs of records of one
    /// input (which enter the guest at that input's output); records of several
    /// inputs go in timestamp order across them (see the module's doc). With
    /// `caught_up` (whether each input has nothing more to fetch at its
    /// position), they go only as long as every input has a record buffered or
    /// is caught up: the rest wait, so a record is not processed before an
    /// earlier one of another input that is still on its way (Kafka Streams'
    /// `max.task.idle.ms` = 0). Without it, everything buffered goes.
    pub fn process_pending(&mut self, env: &mut Env<'_>, caught_up: Option<&[bool]>) -> Result<(), TaskError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Nothing goes while an input with nothing buffered may still have
        // records on its way: leave everything where it is (sorting and
        // copying a large held backlog on every call made the wait cost the
        // square of the backlog).
        if let Some(c) = caught_up
            && self.offsets.len() > 1
            && self.offsets.iter().enumerate().any(|(i, o)| o.buffered == 0 && !c.get(i).copied().unwrap_or(false))
        {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        for at in &mut self.offsets {
            at.buffered = 0;
        }
        let mut held = Vec::new();
        if self.offsets.len() > 1 {
            (pending, held) = in_time_order(pending, self.offsets.len(), caught_up);
        }
        let sub = env.info.shape.subs.get(self.sub);
        let split = sub.and_then(|s| s.aggregation()).is_some_and(|a| a.split);
        let mut result = Ok(());
        for run in pending.chunk_by(|a, b| a.input == b.input) {
            let join = sub.and_then(|s| s.join_of(input_of(run))).copied();
            let global = sub.and_then(|s| s.global_join_of(input_of(run))).copied();
            result = match self.kind {
                _ if let Some(join) = join => self.process_join(env, run, join),
                _ if let Some(join) = global => self.process_global_join(env, run, join),
                Kind::JoinTables => self.process_tables_join(env, run),
                Kind::JoinStreams => self.process_streams_join(env, run),
                Kind::JoinForeign => self.process_foreign(env, run),
                Kind::Latest => self.process_latest(env, run),
                Kind::Time(_) | Kind::Table { .. } if split => self.process_split(env, run),
                Kind::Time(_) | Kind::Table { .. } => self.process_records(env, run),
                Kind::Planned(_) => self.process_planned(env, run),
                Kind::Stateless => self.process_stateless(env, run),
            };
            if result.is_err() {
                break;
            }
            if let Some(last) = run.last()
                && let Some(at) = self.offsets.get_mut(last.input)
            {
                at.next = Some(last.offset + 1);
            }
        }
        // What waits keeps its bytes: where they are, until the arena is
        // mostly records already processed; then in a fresh one.
        let live: usize =
            held.iter().map(|p| p.key.map_or(0, |s| s.len) as usize + p.value.map_or(0, |s| s.len) as usize).sum();
        let compact = self.arena.len() > 2 * live + COMPACT_ABOVE;
        let arena = if compact { std::mem::take(&mut self.arena) } else { Vec::new() };
        for mut p in held {
            if compact {
                p.key = self.push_bytes(span_bytes(&arena, p.key));
                p.value = self.push_bytes(span_bytes(&arena, p.value));
            }
            if let Some(at) = self.offsets.get_mut(p.input) {
                at.buffered += 1;
            }
            self.pending.push(p);
        }
        if self.pending.is_empty() {
            self.arena.clear();
        }
        result
    }

    /// The output where the records of `input` enter the guest.
    fn entry(&self, env: &Env<'_>, input: usize) -> Result<Edge, TaskError> {
        env.info
            .shape
            .subs
            .get(self.sub)
            .and_then(|s| s.inputs.get(input))
            .map(|i| i.entry)
            .ok_or_else(|| TaskError::Frame(format!("internal: sub-topology {} has no input {input}", self.sub)))
    }

    /// Where the records of one input's run enter the guest to be folded: at
    /// their input's output when guest operators run in the folding call.
    fn via(&self, env: &Env<'_>, run: &[Pending]) -> Result<Option<Edge>, TaskError> {
        match run.first() {
            Some(p) if self.aggregation(env)?.fused => self.entry(env, p.input).map(Some),
            _ => Ok(None),
        }
    }

    /// Queues this commit's results and changelog records in the outbox and
    /// returns the store changes to apply once the transaction has committed.
    /// The caller rewinds the task if anything in the commit fails.
    pub fn prepare_commit(&mut self, env: &mut Env<'_>) -> Result<PreparedCommit, TaskError> {
        self.answer_changed_rows(env)?;
        // A table's rows never close: it emits updates.
        let emit = if self.kind.is_table() { EmitMode::Updates } else { env.policy.emit };
        let (close_extra, expire_extra) = self.kind.extras();
        let close = self.stream_time.map(|st| st.saturating_sub(self.grace_ms).saturating_sub(close_extra));
        let expire = self.stream_time.map(|st| st.saturating_sub(self.grace_ms).saturating_sub(expire_extra));
        let is_closed = |window: Window| close.is_some_and(|c| window.end <= c);
        let is_expired = |window: Window| expire.is_some_and(|c| window.end <= c);

        // Windows that closed (for emit final) or expired (to delete) since the
        // last commit and are only in the store. Windows ending before a cursor
        // were handled by an earlier commit and no late record can reopen them.
        let mut closed_in_store: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut expired_in_store: Vec<Vec<u8>> = Vec::new();
        if let (Some(close), Some(expire)) = (close, expire) {
            if emit == EmitMode::Final && self.closed_before < close.saturating_add(1) {
                let from =
                    if self.closed_before == i64::MIN { Vec::new() } else { window_end_bound(self.closed_before) };
                for key in self.store.keys_between(&from, &window_end_bound(close.saturating_add(1)))? {
                    if !self.dirty.contains_key(&key)
                        && !self.removed.contains(&key)
                        && let Some(acc) = self.current(&key)?
                    {
                        closed_in_store.push((key, acc));
                    }
                }
                self.closed_before = close.saturating_add(1);
            }
            if self.expired_before < expire.saturating_add(1) {
                let from =
                    if self.expired_before == i64::MIN { Vec::new() } else { window_end_bound(self.expired_before) };
                for key in self.store.keys_between(&from, &window_end_bound(expire.saturating_add(1)))? {
                    if !self.dirty.contains_key(&key) {
                        expired_in_store.push(key);
                    }
                }
                self.expired_before = expire.saturating_add(1);
            }
        }
        if let Some(index) = &mut self.index {
            index.retain(|_, windows| {
                windows.retain(|m| !is_expired(m.window));
                !windows.is_empty()
            });
        }

        let dirty: Vec<(Vec<u8>, Vec<u8>)> = self.dirty.drain().collect();
        let removed: Vec<Vec<u8>> = self.removed.drain().collect();
        self.dirty_bytes = 0;
        // What to render: every changed window (a removed one as a deletion), or
        // only windows that closed.
        let render: Vec<(&[u8], Option<&[u8]>)> = match emit {
            EmitMode::Updates => dirty
                .iter()
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                .chain(removed.iter().map(|k| (k.as_slice(), None)))
                .collect(),
            EmitMode::Final => dirty
                .iter()
                .chain(closed_in_store.iter())
                .filter(|(k, _)| split_window_key(k).is_some_and(|(w, _)| is_closed(w)))
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                .collect(),
        };
        if !render.is_empty() {
            let stage = self.aggregation(env)?;
            if let Some(from) = stage.render_from {
                // A group_by downstream takes the row the update replaces out of
                // its group: the committed one (final results replace nothing).
                let with_old = stage.render_old && emit == EmitMode::Updates;
                self.render(env, &render, Render { from, with_old })?;
            }
        }

        // One change per key; later sources win: conversions, then expiry, then
        // this commit's updates and removals.
        let mut by_key: HashMap<Vec<u8>, Option<Vec<u8>>> = self.migrated.drain().collect();
        by_key.extend(expired_in_store.into_iter().map(|key| (key, None)));
        by_key.extend(dirty.into_iter().map(|(key, acc)| (key, Some(acc))));
        by_key.extend(removed.into_iter().map(|key| (key, None)));
        let mut changes: Vec<Change> = Vec::with_capacity(by_key.len());
        for (key, acc) in by_key {
            let expired = split_window_key(&key).is_some_and(|(w, _)| is_expired(w));
            changes.push((key, acc.filter(|_| !expired)));
        }
        let side: Vec<Vec<Change>> = self.side.iter().map(side::SideStore::changes).collect();
        let first_side = usize::from(self.kind.has_primary());
        // A table restored from its source topic has no changelog to write.
        let sub = env.info.shape.subs.get(self.sub);
        let stores = std::iter::once((0, &changes))
            .filter(|_| first_side == 1)
            .chain(side.iter().enumerate().map(|(i, c)| (first_side + i, c)))
            .filter(|(store, _)| sub.is_none_or(|s| s.source_table(*store).is_none()));
        for (store, changes) in stores {
            for (key, value) in changes {
                env.outbox.push(Out {
                    dest: Dest::Changelog(self.sub, store),
                    partition: Some(self.partition),
                    key: Some(key.clone()),
                    value: value.clone(),
                    timestamp: self.stream_time,
                    headers: Vec::new(),
                });
            }
        }
        Ok(PreparedCommit { changes, side })
    }

    /// Renders `slots` (window-store key, accumulator) through the plugin in
    /// chunks within the frame budget, queueing each result. A window the plugin
    /// keeps failing on (or renders too large) has its result dead-lettered with
    /// the reason, or stops the pipeline, as configured; on probation the failure
    /// is returned at once.
    fn render(&mut self, env: &mut Env<'_>, slots: &[(&[u8], Option<&[u8]>)], how: Render) -> Result<(), TaskError> {
        let budget = env.guest.max_frame_bytes();
        let mut at = 0;
        while at < slots.len() {
            let mut end = at;
            let mut bytes = 0usize;
            while end < slots.len() && end - at < RENDER_BATCH {
                bytes += slots[end].0.len() + slots[end].1.map_or(0, <[u8]>::len) + 32;
                if end > at && bytes > budget {
                    break;
                }
                end += 1;
            }
            self.render_chunk(env, &slots[at..end], how)?;
            at = end;
        }
        Ok(())
    }

    fn render_chunk(
        &mut self,
        env: &mut Env<'_>,
        slots: &[(&[u8], Option<&[u8]>)],
        how: Render,
    ) -> Result<(), TaskError> {
        let mut last = match self.finish_call(env, slots, how)? {
            Ok(rendered) => return self.emit_rendered(env, slots, rendered),
            Err(e) => e,
        };
        env.metrics.plugin_failures.inc();
        if env.policy.probation {
            return Err(TaskError::Guest(last));
        }
        tracing::warn!(partition = self.partition, error = %last, "rendering failed; retrying on a fresh instance");
        // An oversized value comes back the same every time: no retries for it.
        let retries = if matches!(last, GuestError::Oversized { .. }) { 0 } else { env.policy.retries };
        for _ in 0..retries {
            env.guest.renew();
            match self.finish_call(env, slots, how)? {
                Ok(rendered) => return self.emit_rendered(env, slots, rendered),
                Err(e) => {
                    env.metrics.plugin_failures.inc();
                    last = e;
                }
            }
        }
        env.guest.renew();
        if env.policy.on_failure == FailurePolicy::Pause {
            return Err(TaskError::Paused(last));
        }
        // Window by window: only the windows that fail alone are given up.
        for slot in slots {
            match self.finish_call(env, std::slice::from_ref(slot), how)? {
                Ok(rendered) => self.emit_rendered(env, std::slice::from_ref(slot), rendered)?,
                Err(e) => {
                    env.metrics.plugin_failures.inc();
                    env.guest.renew();
                    self.dead_letter_window(env, slot.0, &format!("plugin failed to render this window: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// One `run` call rendering `slots` through the operators after the
    /// aggregation: the records each slot leads to (sink, key, value), or the
    /// plugin's failure (including values over the size limit); `Err` only for
    /// what is not the plugin's fault.
    fn finish_call(
        &mut self,
        env: &mut Env<'_>,
        slots: &[(&[u8], Option<&[u8]>)],
        Render { from, with_old }: Render,
    ) -> Result<Result<Rendered, GuestError>, TaskError> {
        // The committed rows the updates replace (the store holds the last commit).
        let olds: Vec<Option<Vec<u8>>> = match with_old {
            true => slots.iter().map(|(key, _)| self.current(key)).collect::<Result<_, _>>()?,
            false => Vec::new(),
        };
        let table = self.kind.is_table();
        let mut records = Vec::with_capacity(slots.len());
        for (i, (key, stored)) in slots.iter().enumerate() {
            let (window, record_key) =
                split_window_key(key).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
            let timestamp = self.stream_time.unwrap_or(if table { 0 } else { window.start });
            let value = stored.map(|v| self.acc_of(v)).transpose()?;
            let old = olds.get(i).and_then(Option::as_deref).map(|v| self.acc_of(v)).transpose()?;
            let window = (!table).then_some(window);
            records.push(Rec { key: Some(record_key), value, old, timestamp, window });
        }
        let frame = weir_abi::encode(&RunIn { from, records }).map_err(frame_err)?;
        env.metrics.guest_calls.inc();
        let answer = match faults::hit("render") {
            true => Err(GuestError::Plugin("injected failure (render)".into())),
            false => env.guest.run(&frame),
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Ok(Err(e)),
        };
        let rendered = read_run(env, &answer, slots.len())?;
        if slots.len() == 1 && matches!(rendered, Err(GuestError::Oversized { .. })) {
            // Its memory may be full of ballast.
            env.guest.renew();
        }
        Ok(rendered)
    }

    /// Queues what rendering `slots` made: results, or, for foreign keys,
    /// the subscriptions of each slot's row.
    fn emit_rendered(
        &mut self,
        env: &mut Env<'_>,
        slots: &[(&[u8], Option<&[u8]>)],
        rendered: Rendered,
    ) -> Result<(), TaskError> {
        for r in rendered.records {
            if let Exit::Repartition(to) = r.exit
                && foreign::carries_subscriptions(env, to)
            {
                let slot = slots.get(r.source).copied().ok_or_else(|| {
                    TaskError::Frame(format!("internal: a rendered record of row {} of {}", r.source, slots.len()))
                })?;
                for out in self.subscriptions(env, to, slot, r.value.as_deref())? {
                    env.outbox.push(out);
                }
                continue;
            }
            let out = exit_record(env, r.exit, r.key, r.value, r.old.as_deref(), self.stream_time, r.window)?;
            env.outbox.push(out);
        }
        Ok(())
    }

    fn dead_letter_window(&self, env: &mut Env<'_>, key: &[u8], reason: &str) -> Result<(), TaskError> {
        let (window, record_key) =
            split_window_key(key).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
        let reason = clip(reason, MAX_REASON_BYTES);
        tracing::warn!(
            partition = self.partition,
            window_start = window.start,
            window_end = window.end,
            %reason,
            "window result sent to the dead-letter topic"
        );
        let context =
            vec![("weir.window.start", window.start.to_string()), ("weir.window.end", window.end.to_string())];
        self.queue_dead_letter(env, None, (Some(record_key.to_vec()), None, self.stream_time), reason, context);
        Ok(())
    }

    /// Queues a dead letter (key, value, timestamp) with the reason, the source
    /// topic (`input`'s; every input's, comma-separated, for a window result)
    /// and partition, and `context` (the offset, or the window) as headers.
    fn queue_dead_letter(
        &self,
        env: &mut Env<'_>,
        input: Option<usize>,
        (key, value, timestamp): (Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>),
        reason: String,
        context: Vec<(&'static str, String)>,
    ) {
        let topic = match input {
            Some(i) => env.input_topics.get(i).cloned().unwrap_or_default(),
            None => env.input_topics.join(","),
        };
        let mut headers = vec![
            ("weir.error", reason),
            ("weir.source.topic", topic),
            ("weir.source.partition", self.partition.to_string()),
        ];
        headers.extend(context);
        env.outbox.push(Out { dest: Dest::DeadLetter, partition: None, key, value, timestamp, headers });
        env.metrics.dead_letters.inc();
    }

    /// The transaction committed: apply its changes and the new checkpoints
    /// (`changelog_next`, per store in order). On an error a store is still at
    /// its previous commit (a batch is atomic) and must be brought up to date
    /// from its changelog.
    pub fn complete_commit(
        &mut self,
        prepared: PreparedCommit,
        changelog_next: &[Option<i64>],
    ) -> Result<(), TaskError> {
        for at in &mut self.offsets {
            at.committed = at.next;
        }
        self.committed_stream_time = self.stream_time;
        self.committed_schema = self.schema;
        if faults::hit("store") {
            return Err(StoreError::Injected.into());
        }
        let first_side = usize::from(self.kind.has_primary());
        if first_side == 1 {
            self.store.write(prepared.changes, changelog_next.first().copied().flatten())?;
        }
        for (i, (side, changes)) in self.side.iter_mut().zip(prepared.side).enumerate() {
            side.complete(changes, changelog_next.get(first_side + i).copied().flatten())?;
        }
        Ok(())
    }

    /// The transaction was aborted: forget everything since the last commit.
    pub fn rewind(&mut self) {
        self.dirty.clear();
        self.removed.clear();
        self.index = None;
        self.closed_before = i64::MIN;
        self.dirty_bytes = 0;
        self.migrated.clear();
        for side in &mut self.side {
            side.rewind();
        }
        self.cursors = stream_join::Cursors::default();
        self.changed_rows.clear();
        self.schema = self.committed_schema;
        self.pending.clear();
        self.arena.clear();
        self.stream_time = self.committed_stream_time;
        for at in &mut self.offsets {
            at.next = at.committed;
            at.accepted = None;
            at.buffered = 0;
        }
        self.expired_before = i64::MIN;
    }
}

/// Fails if a value the plugin returned is over the size limit (and drops the
/// instance, whose memory may be full of ballast).
fn check_value(guest: &mut dyn Guest, value: &[u8]) -> Result<(), GuestError> {
    let limit = guest.max_value_bytes();
    if value.len() > limit {
        guest.renew();
        return Err(GuestError::Oversized { size: value.len(), limit });
    }
    Ok(())
}

/// Fails if a record leaving the guest has a key, a value or a replaced row over
/// the value limit (the caller drops the instance, whose memory may be full of
/// ballast).
fn check_record(record: &Rec<'_>, limit: usize) -> Result<(), GuestError> {
    let size = [record.key, record.value, record.old].into_iter().flatten().map(<[u8]>::len).max().unwrap_or(0);
    match size > limit {
        true => Err(GuestError::Oversized { size, limit }),
        false => Ok(()),
    }
}

/// How a commit renders an aggregation's rows: from which output, and whether
/// each carries the committed row it replaces.
#[derive(Debug, Clone, Copy)]
struct Render {
    from: Edge,
    with_old: bool,
}

/// A rendered record: the row it came from (its index in the call), where it
/// goes, key, value, the row it replaces and its window.
struct RenderedRecord {
    source: usize,
    exit: Exit,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    old: Option<Vec<u8>>,
    window: Option<Window>,
}

/// The record to write for one that left the guest towards `exit`: to a sink
/// (a windowed row names its window in headers, so a deletion — a session
/// merged away — says which row it deletes), or to a repartition topic (a
/// re-grouped table update carries its old row with the new one).
fn exit_record(
    env: &Env<'_>,
    exit: Exit,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    old: Option<&[u8]>,
    timestamp: Option<i64>,
    window: Option<Window>,
) -> Result<Out, TaskError> {
    Ok(match exit {
        Exit::Sink(sink) => {
            env.metrics.records_out.inc();
            let headers = window.map_or_else(Vec::new, |w| {
                vec![("weir.window.start", w.start.to_string()), ("weir.window.end", w.end.to_string())]
            });
            Out { dest: Dest::Sink(sink), partition: None, key, value, timestamp, headers }
        }
        Exit::Repartition(r) => {
            env.metrics.repartition_out.inc();
            let changes = env.info.shape.repartitions.get(r).is_some_and(|r| r.carries == Carries::Changes);
            let value = match changes {
                true => Some(
                    weir_abi::encode(&weir_abi::calls::ChangeFrame { new: value.as_deref(), old })
                        .map_err(frame_err)?,
                ),
                false => value,
            };
            Out { dest: Dest::Repartition(r), partition: None, key, value, timestamp, headers: Vec::new() }
        }
    })
}

/// What a `run` call rendered, per record reaching a sink.
struct Rendered {
    records: Vec<RenderedRecord>,
}

/// Reads a `run` answer for `inputs` records, holding the plugin to it: records
/// come from inputs that exist, leave from nodes that feed sinks, and stay
/// within the value limit. A reject is the plugin's failure to render.
fn read_run(env: &mut Env<'_>, answer: &[u8], inputs: usize) -> Result<Result<Rendered, GuestError>, TaskError> {
    let out: RunOut<'_> = match weir_abi::decode(answer) {
        Ok(out) => out,
        Err(e) => return Ok(Err(GuestError::BadFrame(e.to_string()))),
    };
    if let Some(r) = out.rejects.first() {
        let node = env.node_name(r.node).unwrap_or_else(|_| format!("#{}", r.node));
        return Ok(Err(GuestError::Plugin(format!(
            "node `{node}` refused the result: {}",
            clip(r.reason, MAX_REASON_BYTES)
        ))));
    }
    let limit = env.guest.max_value_bytes();
    // At most a few records per input: flat_map_values may fan out, but not without bound.
    if out.emitted.len() > inputs.saturating_mul(MAX_FANOUT) {
        return Ok(Err(GuestError::BadFrame(format!("{} records rendered from {inputs} rows", out.emitted.len()))));
    }
    let mut records = Vec::with_capacity(out.emitted.len());
    for e in &out.emitted {
        if e.source as usize >= inputs {
            return Ok(Err(GuestError::BadFrame(format!("a record from input {} of {inputs}", e.source))));
        }
        let exits = env.info.shape.exits_of(e.node, e.port);
        if exits.is_empty() {
            return Ok(Err(GuestError::BadFrame(format!(
                "a record leaving node #{} towards no host operator",
                e.node
            ))));
        }
        if let Err(e) = check_record(&e.record, limit) {
            return Ok(Err(e));
        }
        for &exit in exits {
            records.push(RenderedRecord {
                source: e.source as usize,
                exit,
                key: e.record.key.map(<[u8]>::to_vec),
                value: e.record.value.map(<[u8]>::to_vec),
                old: e.record.old.map(<[u8]>::to_vec),
                window: e.record.window,
            });
        }
    }
    Ok(Ok(Rendered { records }))
}

/// Bytes of processed records an arena may hold beside those still waiting
/// before it is compacted.
const COMPACT_ABOVE: usize = 1 << 20;

/// Records one input may lead to in a `run` answer, at most.
const MAX_FANOUT: usize = 1024;

/// Stored accumulators per `migrate` call, at most.
const MIGRATE_BATCH: usize = 512;
/// Windows per `finish` call, at most.
const RENDER_BATCH: usize = 4096;

/// What a task keeps in the metadata of its committed offset: `<stream time>`
/// then `;schema=<n>` (older hosts wrote the stream time alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitMetadata {
    /// The highest event time seen.
    pub stream_time: Option<i64>,
    /// The state schema of the committed state, if recorded.
    pub schema: Option<u32>,
}

impl CommitMetadata {
    /// Reads metadata; anything unreadable counts as absent.
    pub fn parse(text: &str) -> Self {
        let mut parts = text.split(';');
        let stream_time = parts.next().and_then(|t| t.trim().parse().ok());
        let schema = parts.find_map(|p| p.trim().strip_prefix("schema=")).and_then(|s| s.parse().ok());
        Self { stream_time, schema }
    }
}

impl std::fmt::Display for CommitMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(t) = self.stream_time {
            write!(f, "{t}")?;
        }
        if let Some(s) = self.schema {
            write!(f, ";schema={s}")?;
        }
        Ok(())
    }
}

/// Records read from `inputs` topics in the order a task processes them: each
/// input's own order kept, the next record always the earliest (by timestamp;
/// one without a timestamp as early as can be) of the inputs' next records, the
/// earlier read on a tie — the order in which Kafka Streams' task picks from its
/// partitions' queues. With `caught_up`, the order stops where an input has no
/// record left and is not caught up: the records after that point are returned
/// second (in the order they were read), to wait.
fn in_time_order(pending: Vec<Pending>, inputs: usize, caught_up: Option<&[bool]>) -> (Vec<Pending>, Vec<Pending>) {
    use std::cmp::Reverse;
    let mut queues: Vec<std::collections::VecDeque<(usize, Pending)>> = vec![Default::default(); inputs];
    let total = pending.len();
    for (read, p) in pending.into_iter().enumerate() {
        // `accept` takes only records of existing inputs.
        if let Some(q) = queues.get_mut(p.input) {
            q.push_back((read, p));
        }
    }
    let waits_for = |input: usize| caught_up.is_some_and(|c| !c.get(input).copied().unwrap_or(false));
    // Inputs with nothing buffered that may still have records on their way.
    let mut blocked = queues.iter().enumerate().filter(|(i, q)| q.is_empty() && waits_for(*i)).count();
    // Each input's next record, earliest first: O(log inputs) per record.
    let head = |q: &std::collections::VecDeque<(usize, Pending)>| {
        q.front().map(|(read, p)| (p.timestamp.unwrap_or(i64::MIN), *read))
    };
    let mut next: std::collections::BinaryHeap<Reverse<((i64, usize), usize)>> =
        queues.iter().enumerate().filter_map(|(i, q)| Some(Reverse((head(q)?, i)))).collect();
    let mut ordered = Vec::with_capacity(total);
    while blocked == 0
        && let Some(Reverse((_, input))) = next.pop()
    {
        let q = &mut queues[input];
        ordered.extend(q.pop_front().map(|(_, p)| p));
        match head(q) {
            Some(h) => next.push(Reverse((h, input))),
            None if waits_for(input) => blocked += 1,
            None => {}
        }
    }
    let mut rest: Vec<(usize, Pending)> = queues.into_iter().flatten().collect();
    rest.sort_unstable_by_key(|(read, _)| *read);
    (ordered, rest.into_iter().map(|(_, p)| p).collect())
}

/// The input a run of records (all of one input) was read from.
fn input_of(run: &[Pending]) -> usize {
    run.first().map_or(0, |p| p.input)
}

fn span_bytes(arena: &[u8], span: Option<Span>) -> Option<&[u8]> {
    span.map(|s| &arena[s.start as usize..(s.start + s.len) as usize])
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod planned_tests;

#[cfg(test)]
mod table_tests;

#[cfg(test)]
mod split_tests;

#[cfg(test)]
mod merge_tests;

#[cfg(test)]
mod join_tests;

#[cfg(test)]
mod foreign_tests;
