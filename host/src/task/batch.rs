//! Running a task's buffered records through the plugin.
//!
//! The records go in chunks, each one `aggregate` call whose frame stays within the
//! plugin's frame budget; the accumulators a chunk updates are the input of the
//! next, and the task's state changes only when the whole batch is through (plugin
//! calls are pure: state goes in and comes out with the call, so a failed call
//! leaves nothing to undo).
//!
//! A record the host cannot use (no key, no usable time, a frame too large on its
//! own) or that the plugin rejects is dead-lettered with the reason and the chunk
//! is run again without it, so it does not move stream time. A chunk the plugin
//! fails on is retried on fresh instances; if it keeps failing, its records are
//! replayed in order, one call each, every one starting from the state the records
//! before it left — so a failure that depends on state built up within the batch
//! is still pinned to the record that triggers it, which is dead-lettered while
//! the others count. If no record fails alone, the task stops and says so.

use std::collections::HashMap;
use std::ops::Range;

use weir_abi::calls::{AggRecord, AggregateIn, AggregateOut, Rec, SlotOp};

use super::{Env, Kind, Pending, TABLE_ROW, Task, TaskError, frame_err, input_of, span_bytes};
use crate::config::FailurePolicy;
use crate::runtime::{GuestError, MAX_REASON_BYTES, clip};
use crate::state::window_key;
use weir_abi::calls::ChangeFrame;
use weir_abi::topology::Edge;

/// State built up by the chunks of one batch.
struct BatchState {
    /// Where the records enter the guest (see `AggregateIn::via`).
    via: Option<Edge>,
    stream_time: Option<i64>,
    updates: HashMap<Vec<u8>, Vec<u8>>,
    late_records: u64,
    late_updates: u64,
    records: u64,
}

impl BatchState {
    fn apply(&mut self, done: ChunkDone) {
        self.stream_time = done.stream_time;
        self.updates.extend(done.updates);
        self.late_records += done.late_records;
        self.late_updates += done.late_updates;
        self.records += done.records;
    }
}

/// What one chunk computed; nothing is applied yet.
struct ChunkDone {
    stream_time: Option<i64>,
    late_records: u64,
    late_updates: u64,
    /// Changed accumulators by window-store key.
    updates: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records that went into the plugin.
    records: u64,
}

/// How a chunk went.
enum Outcome {
    Done(ChunkDone),
    /// Records the plugin rejected, by index into the batch, with the node and
    /// the reason.
    Rejected(Vec<(usize, Reject)>),
    /// This record alone makes a frame larger than the budget.
    TooBig(usize, Reject),
    /// The plugin failed.
    Failed(GuestError),
}

/// Frame bytes a record costs besides its key, value and slots.
const RECORD_OVERHEAD: usize = 24;
/// Frame bytes a slot or slot reference costs besides its accumulator.
const SLOT_OVERHEAD: usize = 5;

/// Why a record is dead-lettered: the reason, and the node that refused it.
pub(super) type Reject = (String, Option<String>);

fn host(reason: impl Into<String>) -> Reject {
    (reason.into(), None)
}

impl Task {
    pub(super) fn process_records(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let via = self.via(env, pending)?;
        let folded = self.fold(env, pending, via)?;
        self.count_in(env, input_of(pending), folded);
        Ok(())
    }

    /// Folds `pending` into the aggregation (through the guest operators from
    /// `via`, if any), dead-lettering what cannot be; moves stream time. Returns
    /// how many records went into the plugin.
    pub(super) fn fold(&mut self, env: &mut Env<'_>, pending: &[Pending], via: Option<Edge>) -> Result<u64, TaskError> {
        let mut excluded = vec![false; pending.len()];
        let (windowed, changes) = match self.kind {
            Kind::Table { changes } => (false, changes),
            _ => (true, false),
        };
        // Records the host itself cannot use never reach the plugin.
        for (i, record) in pending.iter().enumerate() {
            let reason = if record.key.is_none() {
                Some("record has no key; aggregations group by key")
            } else if windowed && record.timestamp.is_none_or(|t| t < 0) {
                Some("record has no usable event time (timestamp missing or negative)")
            } else if changes
                && weir_abi::decode::<ChangeFrame<'_>>(span_bytes(&self.arena, record.value).unwrap_or_default())
                    .is_err()
            {
                Some("record on a repartition topic of table updates is not a change frame (old and new row)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.dead_letter(env, record, &host(reason));
                excluded[i] = true;
            }
        }
        let mut state = BatchState {
            via,
            stream_time: self.stream_time,
            updates: HashMap::new(),
            late_records: 0,
            late_updates: 0,
            records: 0,
        };
        let mut at = 0;
        while at < pending.len() {
            if excluded[at] {
                at += 1;
                continue;
            }
            let (outcome, end) = self.run_chunk(env, pending, at, pending.len(), &excluded, &state)?;
            match outcome {
                Outcome::Done(done) => {
                    state.apply(done);
                    at = end;
                }
                Outcome::Rejected(rejects) => self.exclude(env, pending, &mut excluded, rejects),
                Outcome::TooBig(i, reason) => self.exclude(env, pending, &mut excluded, vec![(i, reason)]),
                Outcome::Failed(failure) => {
                    at = self.contain(env, pending, at..end, &mut excluded, &mut state, failure)?
                }
            }
        }
        // The batch is through: only now does the task's state change.
        for (key, acc) in state.updates {
            self.dirty_bytes += key.len() + acc.len();
            if let Some(old) = self.dirty.get(&key) {
                self.dirty_bytes -= key.len() + old.len();
            }
            self.dirty.insert(key, acc);
        }
        self.stream_time = state.stream_time;
        env.metrics.late_records.inc_by(state.late_records);
        env.metrics.late_window_updates.inc_by(state.late_updates);
        Ok(state.records)
    }

    pub(super) fn exclude(
        &self,
        env: &mut Env<'_>,
        pending: &[Pending],
        excluded: &mut [bool],
        rejects: Vec<(usize, Reject)>,
    ) {
        for (index, reject) in rejects {
            if !excluded[index] {
                excluded[index] = true;
                self.dead_letter(env, &pending[index], &reject);
            }
        }
    }

    /// The plugin failed on the chunk `range`: retry it on fresh instances (a
    /// retry that succeeds is the chunk's result); if it keeps failing, replay its
    /// records in order, one call each, and dead-letter (or pause on) those it
    /// fails on. Returns how far the batch got.
    fn contain(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        range: Range<usize>,
        excluded: &mut [bool],
        state: &mut BatchState,
        failure: GuestError,
    ) -> Result<usize, TaskError> {
        env.metrics.plugin_failures.inc();
        if env.policy.probation {
            return Err(TaskError::Guest(failure));
        }
        tracing::warn!(partition = self.partition, error = %failure, "plugin call failed; retrying on a fresh instance");
        let mut last = failure;
        let mut retries = env.policy.retries;
        while retries > 0 {
            env.guest.renew();
            let (outcome, end) = self.run_chunk(env, pending, range.start, range.end, excluded, state)?;
            match outcome {
                Outcome::Done(done) => {
                    state.apply(done);
                    return Ok(end);
                }
                Outcome::Rejected(rejects) => self.exclude(env, pending, excluded, rejects),
                Outcome::TooBig(i, reason) => self.exclude(env, pending, excluded, vec![(i, reason)]),
                Outcome::Failed(e) => {
                    env.metrics.plugin_failures.inc();
                    last = e;
                    retries -= 1;
                }
            }
        }
        env.guest.renew();
        if env.policy.on_failure == FailurePolicy::Pause {
            return Err(TaskError::Paused(last));
        }
        // In order, one record per call, each from the state the ones before it
        // left: the record that fails is the one to blame.
        let mut pinned = false;
        for i in range.clone() {
            if excluded[i] {
                continue;
            }
            let (outcome, _) = self.run_chunk(env, pending, i, i + 1, excluded, state)?;
            match outcome {
                Outcome::Done(done) => state.apply(done),
                Outcome::Rejected(rejects) => self.exclude(env, pending, excluded, rejects),
                Outcome::TooBig(i, reason) => self.exclude(env, pending, excluded, vec![(i, reason)]),
                Outcome::Failed(e) => {
                    env.metrics.plugin_failures.inc();
                    env.guest.renew();
                    let reason = format!("plugin failed on this record: {e}");
                    self.exclude(env, pending, excluded, vec![(i, host(reason))]);
                    pinned = true;
                }
            }
        }
        if !pinned {
            let included: Vec<&Pending> = pending[range.clone()].iter().collect();
            return Err(TaskError::Unpinned {
                partition: self.partition,
                first: included.first().map_or(-1, |p| p.offset),
                last: included.last().map_or(-1, |p| p.offset),
                records: included.len(),
                error: last,
            });
        }
        Ok(range.end)
    }

    /// Runs the records of `from..until` that are not excluded, as many as fit
    /// one frame, from `state`. Returns the outcome and the index after the last
    /// record it covered.
    fn run_chunk(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        from: usize,
        until: usize,
        excluded: &[bool],
        state: &BatchState,
    ) -> Result<(Outcome, usize), TaskError> {
        let budget = env.guest.max_frame_bytes();
        let mut stream_time = state.stream_time;
        let mut slot_index: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut slot_keys: Vec<Vec<u8>> = Vec::new();
        let mut slot_values: Vec<Option<Vec<u8>>> = Vec::new();
        let mut records: Vec<AggRecord<'_>> = Vec::new();
        let mut record_index: Vec<usize> = Vec::new();
        let mut ops: Vec<SlotOp> = Vec::new();
        let (mut late_records, mut late_updates) = (0u64, 0u64);
        let (windowing, changes) = match self.kind {
            Kind::Time(windowing) => (Some(windowing), false),
            Kind::Table { changes } => (None, changes),
            _ => return Err(TaskError::Frame("internal: these records are not folded by batch".into())),
        };
        let stage = self.aggregation(env)?;
        let mut frame_bytes = 0usize;
        let mut key_buf = Vec::new();
        // The slots and references of the record being added, until it fits.
        let mut new_slots: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut record_refs: Vec<u32> = Vec::new();
        let mut end = from;

        for (i, record) in pending.iter().enumerate().take(until).skip(from) {
            if excluded[i] {
                end = i + 1;
                continue;
            }
            let ts = match (record.timestamp, windowing) {
                (Some(ts), _) => Some(ts),
                // A table needs no event time.
                (None, None) => Some(stream_time.unwrap_or(0)),
                (None, Some(_)) => None,
            };
            let (Some(key), Some(ts)) = (span_bytes(&self.arena, record.key), ts) else {
                end = i + 1;
                continue;
            };
            let value = span_bytes(&self.arena, record.value);
            // Re-grouped table updates: the old row is subtracted, the new one added.
            let (value, old) = match changes {
                true => match value.map(weir_abi::decode::<ChangeFrame<'_>>) {
                    Some(Ok(c)) => (c.new, c.old),
                    _ => (None, None),
                },
                false => (value, None),
            };
            let now = stream_time.map_or(ts, |st| st.max(ts)).max(record.floor);
            let close = now.saturating_sub(self.grace_ms);
            new_slots.clear();
            record_refs.clear();
            let mut cost = key.len() + value.map_or(0, <[u8]>::len) + old.map_or(0, <[u8]>::len) + RECORD_OVERHEAD;
            let (mut late, mut any_window) = (0u64, false);
            let windows = windowing.map(|w| w.windows_for(ts)).into_iter().flatten();
            for window in windows.chain(windowing.is_none().then_some(TABLE_ROW)) {
                any_window = true;
                if window.end <= close {
                    late += 1;
                    continue;
                }
                window_key(&mut key_buf, window, key);
                cost += SLOT_OVERHEAD;
                if let Some(&slot) = slot_index.get(key_buf.as_slice()) {
                    record_refs.push(slot);
                    continue;
                }
                let current = match state.updates.get(&key_buf) {
                    Some(acc) => Some(acc.clone()),
                    None => self.current(&key_buf)?,
                };
                cost += SLOT_OVERHEAD + current.as_ref().map_or(0, Vec::len);
                record_refs.push((slot_keys.len() + new_slots.len()) as u32);
                new_slots.push((key_buf.clone(), current));
            }
            if !records.is_empty() && frame_bytes + cost > budget {
                break;
            }
            if records.is_empty() && cost > budget {
                let reason = format!(
                    "record falls into {} windows whose state makes a {cost}-byte frame; the plugin's frame limit is \
                     {budget} bytes (a quarter of [limits] memory_mb)",
                    record_refs.len()
                );
                return Ok((Outcome::TooBig(i, host(reason)), i + 1));
            }
            frame_bytes += cost;
            stream_time = Some(now);
            for (slot_key, current) in new_slots.drain(..) {
                slot_index.insert(slot_key.clone(), slot_keys.len() as u32);
                slot_keys.push(slot_key);
                slot_values.push(current);
            }
            late_updates += late;
            if any_window && record_refs.is_empty() {
                late_records += 1;
            }
            let first_op = ops.len() as u32;
            if changes {
                // One slot: subtract the old row (if any), then add the new one.
                for &slot in &record_refs {
                    ops.extend(old.map(|_| SlotOp::Subtract(slot)));
                    ops.extend(value.map(|_| SlotOp::Add(slot)));
                }
            } else {
                ops.extend(record_refs.iter().map(|&slot| SlotOp::Add(slot)));
            }
            records.push(AggRecord {
                record: Rec { key: Some(key), value, old, timestamp: ts, window: None },
                first_op,
                op_count: ops.len() as u32 - first_op,
            });
            record_index.push(i);
            end = i + 1;
        }
        if records.is_empty() {
            let done = ChunkDone { stream_time, late_records, late_updates, updates: Vec::new(), records: 0 };
            return Ok((Outcome::Done(done), end));
        }

        let frame = AggregateIn {
            node: stage.node,
            via: state.via,
            slots: slot_values.iter().map(|v| v.as_deref()).collect(),
            records,
            ops,
        };
        let mut buf = std::mem::take(&mut self.frame);
        let encoded = weir_abi::encode_into(&frame, &mut buf).map_err(frame_err);
        drop(frame);
        if let Err(e) = encoded {
            self.frame = buf;
            return Err(e);
        }
        env.metrics.guest_calls.inc();
        let answer = env.guest.aggregate(&buf);
        self.frame = buf;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => return Ok((Outcome::Failed(e), end)),
        };
        let outcome = match read_answer(env, &answer, &record_index, &slot_keys) {
            Ok(Answer::Rejected(rejects)) => Outcome::Rejected(rejects),
            Ok(Answer::Updates(updates)) => {
                let records = record_index.len() as u64;
                Outcome::Done(ChunkDone { stream_time, late_records, late_updates, updates, records })
            }
            Err(e) => Outcome::Failed(e),
        };
        Ok((outcome, end))
    }
}

enum Answer {
    Rejected(Vec<(usize, Reject)>),
    Updates(Vec<(Vec<u8>, Vec<u8>)>),
}

/// Reads an `aggregate` answer, holding the plugin to what it was asked: rejects
/// of records in the chunk, each once, by a node that exists; updates of slots
/// in the chunk, each once, no larger than the value limit.
fn read_answer(
    env: &mut Env<'_>,
    answer: &[u8],
    record_index: &[usize],
    slot_keys: &[Vec<u8>],
) -> Result<Answer, GuestError> {
    let out: AggregateOut<'_> = weir_abi::decode(answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
    if !out.rejects.is_empty() {
        let mut seen = vec![false; record_index.len()];
        let mut rejects = Vec::with_capacity(out.rejects.len().min(record_index.len()));
        for reject in &out.rejects {
            let at = reject.record as usize;
            let Some(&index) = record_index.get(at) else {
                return Err(GuestError::BadFrame(format!(
                    "reject of record {at} in a batch of {}",
                    record_index.len()
                )));
            };
            if std::mem::replace(&mut seen[at], true) {
                return Err(GuestError::BadFrame(format!("record {at} rejected twice")));
            }
            let node = env.node_name(reject.node)?;
            rejects.push((index, (clip(reject.reason, MAX_REASON_BYTES), Some(node))));
        }
        return Ok(Answer::Rejected(rejects));
    }
    let limit = env.guest.max_value_bytes();
    let mut seen = vec![false; slot_keys.len()];
    let mut updates = Vec::with_capacity(out.updates.len().min(slot_keys.len()));
    for update in &out.updates {
        let slot = update.slot as usize;
        let Some(key) = slot_keys.get(slot) else {
            return Err(GuestError::BadFrame(format!("update of slot {slot} in a batch of {} slots", slot_keys.len())));
        };
        if std::mem::replace(&mut seen[slot], true) {
            return Err(GuestError::BadFrame(format!("slot {slot} updated twice")));
        }
        if update.value.len() > limit {
            env.guest.renew();
            return Err(GuestError::Oversized { size: update.value.len(), limit });
        }
        updates.push((key.clone(), update.value.to_vec()));
    }
    Ok(Answer::Updates(updates))
}
