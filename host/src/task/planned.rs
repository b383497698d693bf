//! Running records through a sliding or session aggregation.
//!
//! Which windows a record opens, grows, copies or merges depends on the windows
//! its key already has, so the host plans each record (`crate::window`) from the
//! key's window metadata — kept in memory per task, built from the store on first
//! use — and hands the guest the planned steps over the slots they touch, a chunk
//! of records per `aggregate` call. The operators before the aggregation run
//! first (`run`), because a record they drop must not open a window.
//!
//! A planned window's stored value starts with its largest record timestamp
//! (sliding windows need it to plan; sessions keep it for symmetry), then the
//! aggregate. A chunk's plans change the metadata; if the plugin refuses a record
//! or fails, the keys the chunk touched get their metadata back and the chunk is
//! planned again without the refused record, retried on a fresh instance, or run
//! record by record to pin the failure, as for time windows.

use std::collections::HashMap;

use weir_abi::calls::{AggRecord, AggregateIn, AggregateOut, Rec, SlotOp as Step};

use super::batch::Reject;
use super::stateless::{Reached, Target};
use super::{Env, Kind, Pending, Task, TaskError, frame_err, input_of, span_bytes, split_meta, with_meta};
use crate::config::FailurePolicy;
use crate::runtime::{GuestError, MAX_REASON_BYTES, clip};
use crate::state::{split_window_key, window_key};
use crate::window::{KeyWindows, Outcome, Seed, SlotOp, Window, WindowMeta};

/// A record that reaches the aggregation: the input it came from, key, value,
/// time, and the task's stream time once its input was read.
struct Arrival {
    source: usize,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    stream_time: i64,
}

/// What the chunks of one batch changed so far.
#[derive(Default)]
struct Batch {
    stream_time: Option<i64>,
    /// Window-store key → stored value, or `None` when removed.
    updates: HashMap<Vec<u8>, Option<Vec<u8>>>,
    late_records: u64,
    skipped: u64,
    records: u64,
}

/// What one chunk computed.
struct Chunk {
    stream_time: Option<i64>,
    updates: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    late_records: u64,
    skipped: u64,
    records: u64,
}

enum Planned {
    Done(Chunk),
    Rejected(Vec<(usize, Reject)>),
    /// The chunk's frame is over the budget (with its number of records).
    TooBig(usize),
    Failed(GuestError),
}

/// Records per `aggregate` call, at most.
const CHUNK: usize = 512;

impl Task {
    pub(super) fn process_planned(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let stage = self.aggregation(env)?;
        let (node, split) = (stage.node, stage.split);
        let via = self.via(env, pending)?;
        self.ensure_index()?;
        let mut excluded = vec![false; pending.len()];
        for (i, p) in pending.iter().enumerate() {
            let reason = if p.key.is_none() {
                Some("record has no key; windowed aggregations group by key")
            } else if p.timestamp.is_none_or(|t| t < 0) {
                Some("record has no usable event time (timestamp missing or negative)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.dead_letter(env, p, &(reason.to_owned(), None));
                excluded[i] = true;
            }
        }
        let usable: Vec<Pending> = pending.iter().zip(&excluded).filter(|(_, x)| !**x).map(|(p, _)| *p).collect();
        let index_of: Vec<usize> = (0..pending.len()).filter(|&i| !excluded[i]).collect();
        // What reaches the aggregation, with the input it came from.
        let reached: Vec<Reached> = match via {
            // The input also leads to sinks or repartition topics.
            _ if split => {
                let (reached, refused, _) = self.split_off(env, &usable, node)?;
                for (i, refused) in refused.into_iter().enumerate() {
                    excluded[index_of[i]] |= refused;
                }
                reached.into_iter().map(|(source, key, value)| (index_of[source], key, value)).collect()
            }
            Some(from) => {
                let (emitted, refused) = self.through_guest(env, &usable, from, Target::Node(node))?;
                for (i, refused) in refused.into_iter().enumerate() {
                    excluded[index_of[i]] |= refused;
                }
                emitted.into_iter().map(|e| (index_of[e.source], e.key, e.value)).collect()
            }
            None => index_of
                .iter()
                .map(|&i| {
                    let p = &pending[i];
                    (
                        i,
                        span_bytes(&self.arena, p.key).map(<[u8]>::to_vec),
                        span_bytes(&self.arena, p.value).map(<[u8]>::to_vec),
                    )
                })
                .collect(),
        };
        let stream_times = self.stream_times(pending, &excluded);
        let arrivals: Vec<Arrival> = reached
            .into_iter()
            .filter_map(|(source, key, value)| {
                Some(Arrival {
                    source,
                    key: key?,
                    value,
                    timestamp: pending[source].timestamp?,
                    stream_time: stream_times[source],
                })
            })
            .collect();

        let mut batch = Batch { stream_time: self.stream_time, ..Batch::default() };
        let mut dropped = vec![false; arrivals.len()];
        let mut at = 0;
        let mut size = CHUNK;
        while at < arrivals.len() {
            let end = (at + size).min(arrivals.len());
            match self.plan_chunk(env, node, &arrivals, at..end, &dropped, &batch)? {
                Planned::Done(chunk) => {
                    batch.apply(chunk);
                    at = end;
                    size = CHUNK;
                }
                Planned::Rejected(rejects) => self.drop_arrivals(env, pending, &arrivals, &mut dropped, rejects),
                Planned::TooBig(records) if records > 1 => size = (records / 2).max(1),
                Planned::TooBig(_) => {
                    let reason = "this record and the windows it touches make a frame larger than the plugin's frame \
                                  limit (a quarter of [limits] memory_mb)";
                    self.drop_arrivals(env, pending, &arrivals, &mut dropped, vec![(at, (reason.to_owned(), None))]);
                }
                Planned::Failed(failure) => {
                    self.contain_planned(env, node, pending, &arrivals, at..end, &mut dropped, &mut batch, failure)?;
                    at = end;
                }
            }
        }
        // The batch is through: only now does the task's state change.
        for (key, value) in batch.updates {
            match value {
                Some(v) => {
                    self.removed.remove(&key);
                    self.dirty_bytes += key.len() + v.len();
                    if let Some(old) = self.dirty.insert(key.clone(), v) {
                        self.dirty_bytes -= key.len() + old.len();
                    }
                }
                None => {
                    if let Some(old) = self.dirty.remove(&key) {
                        self.dirty_bytes -= key.len() + old.len();
                    }
                    self.removed.insert(key);
                }
            }
        }
        if let Some(&st) = stream_times.last().filter(|st| **st > i64::MIN) {
            batch.stream_time = Some(batch.stream_time.map_or(st, |b| b.max(st)));
        }
        self.stream_time = batch.stream_time;
        self.count_in(env, input_of(pending), pending.len() as u64);
        env.metrics.late_records.inc_by(batch.late_records);
        env.metrics.late_window_updates.inc_by(batch.skipped);
        Ok(())
    }

    /// Reads every stored window's metadata, once.
    pub(super) fn ensure_index(&mut self) -> Result<(), TaskError> {
        if self.index.is_some() {
            return Ok(());
        }
        let mut index: HashMap<Vec<u8>, KeyWindows> = HashMap::new();
        for key in self.store.keys()? {
            let Some((window, record_key)) = split_window_key(&key) else { continue };
            let Some(value) = self.store.get(&key)? else { continue };
            let max_ts = split_meta(&value).map_or(window.start, |(ts, _)| ts);
            index.entry(record_key.to_vec()).or_default().insert(WindowMeta { window, max_ts });
        }
        self.index = Some(index);
        Ok(())
    }

    fn drop_arrivals(
        &self,
        env: &mut Env<'_>,
        pending: &[Pending],
        arrivals: &[Arrival],
        dropped: &mut [bool],
        rejects: Vec<(usize, Reject)>,
    ) {
        for (i, reject) in rejects {
            if !dropped[i] {
                dropped[i] = true;
                self.dead_letter(env, &pending[arrivals[i].source], &reject);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn contain_planned(
        &mut self,
        env: &mut Env<'_>,
        node: u32,
        pending: &[Pending],
        arrivals: &[Arrival],
        range: std::ops::Range<usize>,
        dropped: &mut [bool],
        batch: &mut Batch,
        failure: GuestError,
    ) -> Result<(), TaskError> {
        env.metrics.plugin_failures.inc();
        if env.policy.probation {
            return Err(TaskError::Guest(failure));
        }
        tracing::warn!(partition = self.partition, error = %failure, "plugin call failed; retrying on a fresh instance");
        let mut last = failure;
        for _ in 0..env.policy.retries {
            env.guest.renew();
            match self.plan_chunk(env, node, arrivals, range.clone(), dropped, batch)? {
                Planned::Done(chunk) => {
                    batch.apply(chunk);
                    return Ok(());
                }
                Planned::Rejected(rejects) => self.drop_arrivals(env, pending, arrivals, dropped, rejects),
                Planned::TooBig(_) => break,
                Planned::Failed(e) => {
                    env.metrics.plugin_failures.inc();
                    last = e;
                }
            }
        }
        env.guest.renew();
        if env.policy.on_failure == FailurePolicy::Pause {
            return Err(TaskError::Paused(last));
        }
        // In order, one record per call, each from the state the ones before it left.
        for i in range {
            if dropped[i] {
                continue;
            }
            match self.plan_chunk(env, node, arrivals, i..i + 1, dropped, batch)? {
                Planned::Done(chunk) => batch.apply(chunk),
                Planned::Rejected(rejects) => self.drop_arrivals(env, pending, arrivals, dropped, rejects),
                Planned::TooBig(_) => {
                    let reason = "this record and the windows it touches make a frame larger than the plugin's frame \
                                  limit";
                    self.drop_arrivals(env, pending, arrivals, dropped, vec![(i, (reason.to_owned(), None))]);
                }
                Planned::Failed(e) => {
                    env.metrics.plugin_failures.inc();
                    env.guest.renew();
                    let reason = format!("plugin failed on this record: {e}");
                    self.drop_arrivals(env, pending, arrivals, dropped, vec![(i, (reason, None))]);
                }
            }
        }
        Ok(())
    }

    /// The stored value of window-store key `key` as the batch has it.
    fn batch_value(&self, batch: &Batch, key: &[u8]) -> Result<Option<Vec<u8>>, TaskError> {
        match batch.updates.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.current(key),
        }
    }

    /// Plans the arrivals of `range` (those not dropped) and folds them in one
    /// `aggregate` call. On any outcome but `Done`, the metadata is as before.
    fn plan_chunk(
        &mut self,
        env: &mut Env<'_>,
        node: u32,
        arrivals: &[Arrival],
        range: std::ops::Range<usize>,
        dropped: &[bool],
        batch: &Batch,
    ) -> Result<Planned, TaskError> {
        let Kind::Planned(kind) = &self.kind else {
            return Err(TaskError::Frame("internal: not a planned aggregation".into()));
        };
        let mut index = self.index.take().unwrap_or_default();
        let mut snapshot: HashMap<Vec<u8>, Option<KeyWindows>> = HashMap::new();
        let mut plan: Vec<SlotOp> = Vec::new();
        let mut stream_time = batch.stream_time;
        let (mut late_records, mut skipped) = (0u64, 0u64);
        // Slots of this call, by window-store key (the latest slot of a key).
        let mut slot_of: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut slot_keys: Vec<Vec<u8>> = Vec::new();
        let mut slot_values: Vec<Option<Vec<u8>>> = Vec::new();
        // Per window-store key touched: its slot at the end, or `None` if removed.
        let mut last: HashMap<Vec<u8>, Option<u32>> = HashMap::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut records: Vec<(usize, u32, u32)> = Vec::new(); // (arrival, first step, steps)
        let mut key_buf = Vec::new();
        let result = (|| -> Result<(), TaskError> {
            for i in range.clone() {
                if dropped[i] {
                    continue;
                }
                let a = &arrivals[i];
                let windows = index.entry(a.key.clone()).or_default();
                snapshot.entry(a.key.clone()).or_insert_with(|| Some(windows.clone()));
                plan.clear();
                let st = stream_time.unwrap_or(i64::MIN).max(a.stream_time);
                let planned = kind.planner.plan(windows, a.timestamp, st, &mut plan);
                stream_time = Some(planned.stream_time.max(st));
                match planned.outcome {
                    Outcome::Dropped(_) => {
                        late_records += 1;
                        continue;
                    }
                    Outcome::Applied { skipped: s } => skipped += u64::from(s),
                }
                let first = steps.len() as u32;
                for op in &plan {
                    let mut slot = |w: Window, key_buf: &mut Vec<u8>| -> Result<u32, TaskError> {
                        window_key(key_buf, w, &a.key);
                        if let Some(&s) = slot_of.get(key_buf.as_slice()) {
                            return Ok(s);
                        }
                        let stored = self.batch_value(batch, key_buf)?;
                        let acc = stored.as_deref().map(|v| self.acc_of(v).map(<[u8]>::to_vec)).transpose()?;
                        let s = slot_keys.len() as u32;
                        slot_keys.push(key_buf.clone());
                        slot_values.push(acc);
                        slot_of.insert(key_buf.clone(), s);
                        last.entry(key_buf.clone()).or_insert(Some(s));
                        Ok(s)
                    };
                    match *op {
                        SlotOp::Create { window, seed } => {
                            let from = match seed {
                                Seed::CopyOf(src) => Some(slot(src, &mut key_buf)?),
                                Seed::Empty => None,
                            };
                            window_key(&mut key_buf, window, &a.key);
                            let s = slot_keys.len() as u32;
                            slot_keys.push(key_buf.clone());
                            slot_values.push(None);
                            slot_of.insert(key_buf.clone(), s);
                            last.insert(key_buf.clone(), Some(s));
                            if let Some(from) = from {
                                steps.push(Step::Copy { into: s, from });
                            }
                        }
                        SlotOp::Add { window } => steps.push(Step::Add(slot(window, &mut key_buf)?)),
                        SlotOp::Merge { into, from } => {
                            let (into, from) = (slot(into, &mut key_buf)?, slot(from, &mut key_buf)?);
                            steps.push(Step::Merge { into, from });
                        }
                        SlotOp::Remove { window } => {
                            window_key(&mut key_buf, window, &a.key);
                            slot_of.remove(key_buf.as_slice());
                            last.insert(key_buf.clone(), None);
                        }
                    }
                }
                records.push((i, first, steps.len() as u32 - first));
            }
            Ok(())
        })();
        let restore = |index: &mut HashMap<Vec<u8>, KeyWindows>, snapshot: HashMap<Vec<u8>, Option<KeyWindows>>| {
            for (key, windows) in snapshot {
                match windows {
                    Some(w) => index.insert(key, w),
                    None => index.remove(&key),
                };
            }
        };
        if let Err(e) = result {
            restore(&mut index, snapshot);
            self.index = Some(index);
            return Err(e);
        }
        let chunk_records = records.len() as u64;
        let mut outcome = if records.is_empty() {
            Planned::Done(Chunk { stream_time, updates: Vec::new(), late_records, skipped, records: 0 })
        } else {
            let frame = AggregateIn {
                node,
                via: None,
                slots: slot_values.iter().map(|v| v.as_deref()).collect(),
                records: records
                    .iter()
                    .map(|&(i, first_op, op_count)| AggRecord {
                        record: Rec {
                            key: Some(&arrivals[i].key),
                            value: arrivals[i].value.as_deref(),
                            old: None,
                            timestamp: arrivals[i].timestamp,
                            window: None,
                        },
                        first_op,
                        op_count,
                    })
                    .collect(),
                ops: steps,
            };
            let bytes = weir_abi::encode(&frame).map_err(frame_err)?;
            if bytes.len() > env.guest.max_frame_bytes() {
                Planned::TooBig(records.len())
            } else {
                env.metrics.guest_calls.inc();
                match env.guest.aggregate(&bytes) {
                    Err(e) => Planned::Failed(e),
                    Ok(answer) => match read(env, &answer, &records, slot_keys.len()) {
                        Err(e) => Planned::Failed(e),
                        Ok(Err(rejects)) => Planned::Rejected(rejects),
                        Ok(Ok(values)) => {
                            let mut updates = Vec::with_capacity(last.len());
                            for (key, slot) in last {
                                let stored = match slot {
                                    None => None,
                                    Some(s) => match values.get(&s) {
                                        Some(acc) => {
                                            let (window, record_key) = split_window_key(&key)
                                                .ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
                                            let max_ts = index
                                                .get(record_key)
                                                .and_then(|w| w.get(window))
                                                .map_or(window.start, |m| m.max_ts);
                                            Some(with_meta(max_ts, acc))
                                        }
                                        // Unchanged (or nothing to store yet).
                                        None => continue,
                                    },
                                };
                                updates.push((key, stored));
                            }
                            Planned::Done(Chunk { stream_time, updates, late_records, skipped, records: chunk_records })
                        }
                    },
                }
            }
        };
        if !matches!(outcome, Planned::Done(_)) {
            restore(&mut index, snapshot);
        }
        if let Planned::Done(chunk) = &mut outcome {
            chunk.records = chunk_records;
        }
        self.index = Some(index);
        Ok(outcome)
    }
}

impl Batch {
    fn apply(&mut self, chunk: Chunk) {
        self.stream_time = chunk.stream_time.or(self.stream_time);
        self.updates.extend(chunk.updates);
        self.late_records += chunk.late_records;
        self.skipped += chunk.skipped;
        self.records += chunk.records;
    }
}

/// Reads an `aggregate` answer: the new value of each updated slot, or the
/// arrivals refused; holds the plugin to slots and records of the call.
#[allow(clippy::type_complexity)]
fn read(
    env: &mut Env<'_>,
    answer: &[u8],
    records: &[(usize, u32, u32)],
    slots: usize,
) -> Result<Result<HashMap<u32, Vec<u8>>, Vec<(usize, Reject)>>, GuestError> {
    let out: AggregateOut<'_> = weir_abi::decode(answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
    if !out.rejects.is_empty() {
        let mut rejects = Vec::with_capacity(out.rejects.len());
        for r in &out.rejects {
            let Some(&(arrival, _, _)) = records.get(r.record as usize) else {
                return Err(GuestError::BadFrame(format!(
                    "reject of record {} in a batch of {}",
                    r.record,
                    records.len()
                )));
            };
            let node = env.node_name(r.node)?;
            rejects.push((arrival, (clip(r.reason, MAX_REASON_BYTES), Some(node))));
        }
        return Ok(Err(rejects));
    }
    let limit = env.guest.max_value_bytes();
    let mut values = HashMap::with_capacity(out.updates.len());
    for u in &out.updates {
        if u.slot as usize >= slots {
            return Err(GuestError::BadFrame(format!("update of slot {} in a batch of {slots} slots", u.slot)));
        }
        if u.value.len() > limit {
            env.guest.renew();
            return Err(GuestError::Oversized { size: u.value.len(), limit });
        }
        if values.insert(u.slot, u.value.to_vec()).is_some() {
            return Err(GuestError::BadFrame(format!("slot {} updated twice", u.slot)));
        }
    }
    Ok(Ok(values))
}
