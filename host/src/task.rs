//! A task: one input partition with its own store, stream time and uncommitted
//! window updates.
//!
//! Records are buffered per task and handed to the plugin in batches. The task
//! assigns each record to its windows (dropping windows already closed by stream
//! time and grace), passes the plugin the accumulators the batch touches, and keeps
//! the updated ones in memory until commit. At commit it renders changed (or, in
//! final mode, closed) windows through the plugin, writes results and changelog
//! records to the sink, and — once the transaction is committed — writes the changes
//! and the new changelog checkpoint to its store in one batch.
//!
//! A task also knows the state schema its store is written in. When a plugin with
//! another schema takes over, [`Task::evolve`] converts (or drops) every stored
//! accumulator before the plugin sees one; the converted values are written like
//! any other change — changelog and store, with the new schema in the commit —
//! so a crash before that commit leaves the old state and the old schema intact.

use std::collections::{HashMap, HashSet};

use rdkafka::message::{Header, OwnedHeaders};
use thiserror::Error;
use weir_abi::{FinishIn, FinishOut, FinishSlot, MigrateOut, ProcessIn, ProcessOut, RecordIn, Window};

use crate::config::{EmitMode, FailurePolicy};
use crate::kafka::KafkaIoError;
use crate::kafka::sink::{OutRecord, Sink};
use crate::metrics::Metrics;
use crate::runtime::{GuestError, Instance, Plugin};
use crate::state::{Change, Store, StoreError, split_window_key, window_end_bound, window_key};
use crate::window::Windowing;

/// A task failure.
#[derive(Debug, Error)]
pub enum TaskError {
    /// The plugin failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] KafkaIoError),
    /// Host and plugin disagree about a frame.
    #[error("frame: {0}")]
    Frame(String),
    /// The plugin kept failing and the pipeline is configured to pause.
    #[error("plugin keeps failing and on_failure = pause: {0}")]
    Paused(GuestError),
}

fn frame_err(e: weir_abi::Error) -> TaskError {
    TaskError::Frame(e.to_string())
}

/// Topics a task writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    /// The input topic (named in dead-letter headers).
    pub input: String,
    /// Results.
    pub output: String,
    /// The window store's changelog.
    pub changelog: String,
    /// Dead letters.
    pub dead_letter: String,
}

/// What a task needs from its pipeline while it works.
pub struct TaskContext<'a> {
    /// The plugin, to replace a failed instance.
    pub plugin: &'a Plugin,
    /// Retries of a failed plugin call before the failing record is looked for.
    pub retries: u32,
    /// The plugin was just swapped in: a failure means the version is broken, not
    /// the record, so it is returned at once (the pipeline rolls back).
    pub probation: bool,
    /// What to do with a record the plugin keeps failing on.
    pub on_failure: FailurePolicy,
    /// The plugin instance.
    pub instance: &'a mut Instance,
    /// The producer.
    pub sink: &'a mut Sink,
    /// Topic names.
    pub topics: &'a Topics,
    /// Counters.
    pub metrics: &'a Metrics,
    /// Emit mode.
    pub emit: EmitMode,
}

#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    key: Option<Span>,
    value: Option<Span>,
    timestamp: Option<i64>,
    offset: i64,
}

/// One input partition's processing state.
pub struct Task {
    partition: i32,
    windowing: Windowing,
    grace_ms: i64,
    store: Box<dyn Store>,
    /// Uncommitted accumulators by window-store key.
    dirty: HashMap<Vec<u8>, Vec<u8>>,
    /// Uncommitted conversions of stored accumulators to `schema` (`None` drops
    /// the window); read before the store, written without emitting results.
    migrated: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// State schema of the store plus the uncommitted changes.
    schema: u32,
    committed_schema: u32,
    stream_time: Option<i64>,
    committed_stream_time: Option<i64>,
    next_offset: Option<i64>,
    committed_offset: Option<i64>,
    /// Windows ending before this were expired from the store already.
    expired_before: i64,
    pending: Vec<Pending>,
    arena: Vec<u8>,
    frame: Vec<u8>,
}

/// The changes to apply to a store once the transaction carrying them commits.
pub struct PreparedCommit {
    changes: Vec<Change>,
}

impl TaskContext<'_> {
    /// Replaces the instance with a fresh one if a failure poisoned it.
    pub fn renew_instance_if_poisoned(&mut self) -> Result<(), GuestError> {
        if self.instance.is_poisoned() {
            *self.instance = self.plugin.instantiate()?;
        }
        Ok(())
    }
}

impl Task {
    /// A task over `store` (written in state schema `schema`), resuming at
    /// `committed_offset` with `stream_time`.
    pub fn new(
        partition: i32,
        windowing: Windowing,
        grace_ms: u64,
        store: Box<dyn Store>,
        committed_offset: Option<i64>,
        stream_time: Option<i64>,
        schema: u32,
    ) -> Self {
        Self {
            partition,
            windowing,
            grace_ms: grace_ms as i64,
            store,
            dirty: HashMap::new(),
            migrated: HashMap::new(),
            schema,
            committed_schema: schema,
            stream_time,
            committed_stream_time: stream_time,
            next_offset: committed_offset,
            committed_offset,
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

    /// The offset to commit (after the last processed record), if any.
    pub fn next_offset(&self) -> Option<i64> {
        self.next_offset
    }

    /// The offset of the last commit; where to resume after an abort.
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed_offset
    }

    /// The highest event time seen.
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// Gives up the task, keeping its store (whose committed state stays valid).
    pub fn into_store(self) -> Box<dyn Store> {
        self.store
    }

    /// Number of buffered records.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
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
        self.next_offset != self.committed_offset
            || !self.dirty.is_empty()
            || !self.migrated.is_empty()
            || self.schema != self.committed_schema
    }

    /// Brings every stored accumulator to state schema `to`: through the plugin's
    /// `migrate`, or — with `reset` — by dropping them all. Only at a transaction
    /// boundary (nothing pending or uncommitted). Returns how many windows it
    /// touched. The conversion is committed by the next commit, or forgotten by
    /// [`Task::rewind`].
    pub fn evolve(&mut self, ctx: &mut TaskContext<'_>, to: u32, reset: bool) -> Result<usize, TaskError> {
        let keys = self.store.keys()?;
        let from = self.schema;
        if reset {
            self.migrated.extend(keys.into_iter().map(|k| (k, None)));
        } else {
            for chunk in keys.chunks(MIGRATE_BATCH) {
                let mut accs = Vec::with_capacity(chunk.len());
                for key in chunk {
                    accs.push(self.store.get(key)?.unwrap_or_default());
                }
                let mut slots = Vec::with_capacity(chunk.len());
                for (key, acc) in chunk.iter().zip(&accs) {
                    let (window, record_key) =
                        split_window_key(key).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
                    slots.push(FinishSlot { key: record_key, window, acc });
                }
                let frame = weir_abi::encode(&FinishIn { slots }).map_err(frame_err)?;
                ctx.metrics.guest_calls.inc();
                let answer = ctx.instance.migrate(from, &frame)?;
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
                        ctx.instance.check_value(acc)?;
                    }
                    self.migrated.insert(key.clone(), acc.map(<[u8]>::to_vec));
                }
            }
        }
        self.schema = to;
        tracing::info!(partition = self.partition, from, to, reset, windows = self.migrated.len(), "state evolved");
        Ok(self.migrated.len())
    }

    /// The current accumulator of `key`: uncommitted, converted, or stored.
    fn current(&self, key: &[u8]) -> Result<Option<Vec<u8>>, TaskError> {
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

    fn bytes(&self, span: Option<Span>) -> Option<&[u8]> {
        span_bytes(&self.arena, span)
    }

    /// Buffers a record; returns false (and buffers nothing) if it was already
    /// processed.
    pub fn accept(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>, timestamp: Option<i64>) -> bool {
        let already = self.pending.last().map(|p| p.offset + 1).or(self.next_offset);
        if already.is_some_and(|next| offset < next) {
            return false;
        }
        let key = self.push_bytes(key);
        let value = self.push_bytes(value);
        self.pending.push(Pending { key, value, timestamp, offset });
        true
    }

    fn dead_letter(&self, ctx: &mut TaskContext<'_>, record: &Pending, reason: &str) -> Result<(), TaskError> {
        let partition = self.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: "weir.error", value: Some(reason) })
            .insert(Header { key: "weir.source.topic", value: Some(ctx.topics.input.as_str()) })
            .insert(Header { key: "weir.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "weir.source.offset", value: Some(offset.as_str()) });
        ctx.sink.send(OutRecord {
            topic: &ctx.topics.dead_letter,
            partition: None,
            key: self.bytes(record.key),
            value: self.bytes(record.value),
            timestamp: record.timestamp,
            headers: Some(headers),
        })?;
        ctx.metrics.dead_letters.inc();
        tracing::warn!(
            partition = self.partition,
            offset = record.offset,
            reason,
            "record sent to the dead-letter topic"
        );
        Ok(())
    }

    /// Runs the buffered records through the plugin.
    pub fn process_pending(&mut self, ctx: &mut TaskContext<'_>) -> Result<(), TaskError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.process_records(ctx, &pending);
        self.arena.clear();
        result
    }

    fn process_records(&mut self, ctx: &mut TaskContext<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let mut excluded: HashSet<usize> = HashSet::new();
        // Records the host itself cannot use never reach the plugin.
        for (i, record) in pending.iter().enumerate() {
            let reason = if record.key.is_none() {
                Some("record has no key; windowed aggregations group by key")
            } else if record.timestamp.is_none_or(|t| t < 0) {
                Some("record has no usable event time (timestamp missing or negative)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.dead_letter(ctx, record, reason)?;
                excluded.insert(i);
            }
        }
        // A record the plugin rejects must not move stream time, so a batch with
        // rejects is run again without them (the plugin is pure: state goes in
        // and comes out with the call).
        loop {
            let attempt = match self.run_batch(ctx, pending, &|i| excluded.contains(&i)) {
                Ok(attempt) => attempt,
                Err(TaskError::Guest(failure)) if ctx.probation => return Err(TaskError::Guest(failure)),
                Err(TaskError::Guest(failure)) => match self.contain(ctx, pending, &mut excluded, failure)? {
                    Some(attempt) => attempt,
                    None => continue,
                },
                Err(e) => return Err(e),
            };
            match attempt {
                BatchResult::Done { stream_time, late_records, late_updates, updates, records } => {
                    // Only the run whose result is used changes state.
                    self.dirty.extend(updates);
                    self.stream_time = stream_time;
                    ctx.metrics.records_in.inc_by(records);
                    ctx.metrics.late_records.inc_by(late_records);
                    ctx.metrics.late_window_updates.inc_by(late_updates);
                    break;
                }
                BatchResult::Rejected(rejects) => {
                    for (index, reason) in rejects {
                        if excluded.insert(index) {
                            self.dead_letter(ctx, &pending[index], &reason)?;
                        }
                    }
                }
            }
        }
        if let Some(last) = pending.last() {
            self.next_offset = Some(last.offset + 1);
        }
        Ok(())
    }

    /// The plugin failed on a batch: retry on fresh instances (a retry that
    /// succeeds is the batch's result); if it keeps failing, run the batch one
    /// record at a time and dead-letter (or pause on) the records it fails on,
    /// returning `None` so the caller runs the rest. Plugin calls are pure — state
    /// goes in and comes out — so a failed call left nothing to undo.
    fn contain(
        &mut self,
        ctx: &mut TaskContext<'_>,
        pending: &[Pending],
        excluded: &mut HashSet<usize>,
        failure: GuestError,
    ) -> Result<Option<BatchResult>, TaskError> {
        ctx.metrics.plugin_failures.inc();
        tracing::warn!(partition = self.partition, error = %failure, "plugin call failed; retrying on a fresh instance");
        let mut last = failure;
        for _ in 0..ctx.retries {
            ctx.renew_instance_if_poisoned()?;
            match self.run_batch(ctx, pending, &|i| excluded.contains(&i)) {
                Ok(result) => return Ok(Some(result)),
                Err(TaskError::Guest(e)) => {
                    ctx.metrics.plugin_failures.inc();
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        ctx.renew_instance_if_poisoned()?;
        if ctx.on_failure == FailurePolicy::Pause {
            return Err(TaskError::Paused(last));
        }
        let mut found = false;
        let candidates: Vec<usize> = (0..pending.len()).filter(|i| !excluded.contains(i)).collect();
        for i in candidates {
            match self.run_batch(ctx, pending, &|j| j != i) {
                Ok(_) => {}
                Err(TaskError::Guest(e)) => {
                    ctx.metrics.plugin_failures.inc();
                    self.dead_letter(ctx, &pending[i], &format!("plugin failed on this record: {e}"))?;
                    excluded.insert(i);
                    found = true;
                    ctx.renew_instance_if_poisoned()?;
                }
                Err(e) => return Err(e),
            }
        }
        if found { Ok(None) } else { Err(TaskError::Guest(last)) }
    }

    fn run_batch(
        &mut self,
        ctx: &mut TaskContext<'_>,
        pending: &[Pending],
        skip: &dyn Fn(usize) -> bool,
    ) -> Result<BatchResult, TaskError> {
        let mut stream_time = self.stream_time;
        let mut slot_index: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut slot_keys: Vec<Vec<u8>> = Vec::new();
        let mut slot_values: Vec<Option<Vec<u8>>> = Vec::new();
        let mut records: Vec<RecordIn<'_>> = Vec::with_capacity(pending.len());
        let mut record_index: Vec<usize> = Vec::with_capacity(pending.len());
        let mut refs: Vec<u32> = Vec::new();
        let (mut late_records, mut late_updates) = (0u64, 0u64);
        let mut key_buf = Vec::new();

        for (i, record) in pending.iter().enumerate() {
            if skip(i) {
                continue;
            }
            let (Some(key), Some(ts)) = (span_bytes(&self.arena, record.key), record.timestamp) else {
                continue;
            };
            let now = stream_time.map_or(ts, |st| st.max(ts));
            stream_time = Some(now);
            let close = now.saturating_sub(self.grace_ms);
            let first_ref = refs.len() as u32;
            let mut any_window = false;
            for window in self.windowing.windows_for(ts) {
                any_window = true;
                if window.end <= close {
                    late_updates += 1;
                    continue;
                }
                window_key(&mut key_buf, window, key);
                let slot = match slot_index.get(key_buf.as_slice()) {
                    Some(&slot) => slot,
                    None => {
                        let slot = slot_keys.len() as u32;
                        let value = self.current(&key_buf)?;
                        slot_index.insert(key_buf.clone(), slot);
                        slot_keys.push(key_buf.clone());
                        slot_values.push(value);
                        slot
                    }
                };
                refs.push(slot);
            }
            let ref_count = refs.len() as u32 - first_ref;
            if any_window && ref_count == 0 {
                late_records += 1;
            }
            records.push(RecordIn {
                key: Some(key),
                value: span_bytes(&self.arena, record.value),
                timestamp: ts,
                first_ref,
                ref_count,
            });
            record_index.push(i);
        }
        if records.is_empty() {
            return Ok(BatchResult::Done { stream_time, late_records, late_updates, updates: Vec::new(), records: 0 });
        }

        let frame = ProcessIn { slots: slot_values.iter().map(|v| v.as_deref()).collect(), records, refs };
        let mut buf = std::mem::take(&mut self.frame);
        let encoded = weir_abi::encode_into(&frame, &mut buf).map_err(frame_err);
        drop(frame);
        ctx.metrics.guest_calls.inc();
        let answer = encoded.and_then(|()| ctx.instance.process(&buf).map_err(TaskError::from));
        self.frame = buf;
        let answer = answer?;
        let out: ProcessOut<'_> = weir_abi::decode(&answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
        if !out.rejects.is_empty() {
            let mut rejects = Vec::with_capacity(out.rejects.len());
            for reject in &out.rejects {
                let index = record_index.get(reject.record as usize).ok_or_else(|| {
                    GuestError::BadFrame(format!("reject of record {} outside the batch", reject.record))
                })?;
                rejects.push((*index, reject.reason.to_owned()));
            }
            return Ok(BatchResult::Rejected(rejects));
        }
        let mut updates = Vec::with_capacity(out.updates.len());
        for update in &out.updates {
            ctx.instance.check_value(update.acc)?;
            let key = slot_keys
                .get(update.slot as usize)
                .ok_or_else(|| GuestError::BadFrame(format!("update of slot {} outside the batch", update.slot)))?;
            updates.push((key.clone(), update.acc.to_vec()));
        }
        let records = record_index.len() as u64;
        Ok(BatchResult::Done { stream_time, late_records, late_updates, updates, records })
    }

    /// Writes this commit's results and changelog records to the sink and returns
    /// the store changes to apply once the transaction has committed.
    pub fn prepare_commit(&mut self, ctx: &mut TaskContext<'_>) -> Result<PreparedCommit, TaskError> {
        let close = self.stream_time.map(|st| st.saturating_sub(self.grace_ms));
        let is_closed = |window: Window| close.is_some_and(|c| window.end <= c);

        // Windows that closed since the last commit and are only in the store.
        let mut closed_in_store: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if let Some(close) = close {
            let bound = window_end_bound(close.saturating_add(1));
            if self.expired_before < close.saturating_add(1) {
                // Windows ending before the previous bound were deleted by an
                // earlier commit and no late record can reopen them: start there.
                let from =
                    if self.expired_before == i64::MIN { Vec::new() } else { window_end_bound(self.expired_before) };
                for key in self.store.keys_between(&from, &bound)? {
                    if !self.dirty.contains_key(&key)
                        && let Some(acc) = self.current(&key)?
                    {
                        closed_in_store.push((key, acc));
                    }
                }
                self.expired_before = close.saturating_add(1);
            }
        }

        let dirty: Vec<(Vec<u8>, Vec<u8>)> = self.dirty.drain().collect();
        // What to render: every changed window, or only windows that closed.
        let render: Vec<(&[u8], &[u8])> = match ctx.emit {
            EmitMode::Updates => dirty.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect(),
            EmitMode::Final => dirty
                .iter()
                .chain(closed_in_store.iter())
                .filter(|(k, _)| split_window_key(k).is_some_and(|(w, _)| is_closed(w)))
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect(),
        };
        self.render(ctx, &render)?;

        // One change per key; later sources win: conversions, then expiry, then
        // this commit's updates.
        let mut by_key: HashMap<Vec<u8>, Option<Vec<u8>>> = self.migrated.drain().collect();
        by_key.extend(closed_in_store.into_iter().map(|(key, _)| (key, None)));
        by_key.extend(dirty.into_iter().map(|(key, acc)| (key, Some(acc))));
        let mut changes: Vec<Change> = Vec::with_capacity(by_key.len());
        for (key, acc) in by_key {
            let closed = split_window_key(&key).is_some_and(|(w, _)| is_closed(w));
            changes.push((key, acc.filter(|_| !closed)));
        }
        for (key, value) in &changes {
            ctx.sink.send(OutRecord {
                topic: &ctx.topics.changelog,
                partition: Some(self.partition),
                key: Some(key),
                value: value.as_deref(),
                timestamp: self.stream_time,
                headers: None,
            })?;
        }
        Ok(PreparedCommit { changes })
    }

    fn render(&mut self, ctx: &mut TaskContext<'_>, slots: &[(&[u8], &[u8])]) -> Result<(), TaskError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut finish = Vec::with_capacity(slots.len());
        for (key, acc) in slots {
            let (window, record_key) =
                split_window_key(key).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
            finish.push(FinishSlot { key: record_key, window, acc });
        }
        let frame = weir_abi::encode(&FinishIn { slots: finish }).map_err(frame_err)?;
        ctx.metrics.guest_calls.inc();
        let answer = ctx.instance.finish(&frame)?;
        let out: FinishOut<'_> = weir_abi::decode(&answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
        if out.values.len() != slots.len() {
            return Err(GuestError::BadFrame(format!(
                "finish returned {} values for {} slots",
                out.values.len(),
                slots.len()
            ))
            .into());
        }
        for value in out.values.iter().flatten() {
            ctx.instance.check_value(value)?;
        }
        for ((key, _), value) in slots.iter().zip(&out.values) {
            if let (Some(value), Some((_, record_key))) = (value, split_window_key(key)) {
                ctx.sink.send(OutRecord {
                    topic: &ctx.topics.output,
                    partition: None,
                    key: Some(record_key),
                    value: Some(value),
                    timestamp: self.stream_time,
                    headers: None,
                })?;
                ctx.metrics.records_out.inc();
            }
        }
        Ok(())
    }

    /// The transaction committed: apply its changes and the new checkpoint.
    pub fn complete_commit(&mut self, prepared: PreparedCommit, changelog_next: Option<i64>) -> Result<(), TaskError> {
        self.store.write(prepared.changes, changelog_next)?;
        self.committed_offset = self.next_offset;
        self.committed_stream_time = self.stream_time;
        self.committed_schema = self.schema;
        Ok(())
    }

    /// The transaction was aborted: forget everything since the last commit.
    pub fn rewind(&mut self) {
        self.dirty.clear();
        self.migrated.clear();
        self.schema = self.committed_schema;
        self.pending.clear();
        self.arena.clear();
        self.stream_time = self.committed_stream_time;
        self.next_offset = self.committed_offset;
        self.expired_before = i64::MIN;
    }
}

/// Stored accumulators per `migrate` call.
const MIGRATE_BATCH: usize = 512;

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

fn span_bytes(arena: &[u8], span: Option<Span>) -> Option<&[u8]> {
    span.map(|s| &arena[s.start as usize..(s.start + s.len) as usize])
}

/// What one run of a batch through the plugin computed; nothing is applied yet.
enum BatchResult {
    Done {
        stream_time: Option<i64>,
        late_records: u64,
        late_updates: u64,
        /// Changed accumulators by window-store key.
        updates: Vec<(Vec<u8>, Vec<u8>)>,
        /// Records that went into the plugin.
        records: u64,
    },
    Rejected(Vec<(usize, String)>),
}

#[cfg(test)]
mod tests {
    use super::CommitMetadata;

    #[test]
    fn commit_metadata_round_trips_and_reads_the_old_format() {
        for meta in [
            CommitMetadata { stream_time: Some(1_700_000_000_123), schema: Some(2) },
            CommitMetadata { stream_time: None, schema: Some(1) },
            CommitMetadata { stream_time: Some(-5), schema: None },
            CommitMetadata::default(),
        ] {
            assert_eq!(CommitMetadata::parse(&meta.to_string()), meta, "{meta}");
        }
        assert_eq!(CommitMetadata::parse("42"), CommitMetadata { stream_time: Some(42), schema: None });
        assert_eq!(CommitMetadata::parse("garbage;schema=x"), CommitMetadata::default());
    }
}
