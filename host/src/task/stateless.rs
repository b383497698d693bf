//! Running a stateless topology's records: one `run` call per chunk through the
//! guest operators from the source to the sinks.
//!
//! With no state, a record's outcome does not depend on the records before it: a
//! record an operator refuses is dead-lettered (naming the operator) and the rest
//! of the chunk stands as answered. A chunk the plugin fails on is retried on
//! fresh instances, then run record by record, and a record that fails alone is
//! dead-lettered (or the pipeline pauses, as configured).

use weir_abi::calls::{Rec, RunIn, RunOut};

use super::batch::Reject;
use super::{Dest, Env, MAX_FANOUT, Out, Pending, Task, TaskError, frame_err, span_bytes};
use crate::config::FailurePolicy;
use crate::runtime::{GuestError, MAX_REASON_BYTES, clip};

/// Frame bytes a record costs besides its key and value.
const RECORD_OVERHEAD: usize = 32;

/// What one chunk gave: records for sinks, and refusals.
struct Answer {
    outs: Vec<Out>,
    rejects: Vec<(usize, Reject)>,
}

impl Task {
    pub(super) fn process_stateless(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let budget = env.guest.max_frame_bytes();
        let mut excluded = vec![false; pending.len()];
        let mut at = 0;
        while at < pending.len() {
            let mut end = at;
            let mut bytes = 0;
            while end < pending.len() {
                let p = &pending[end];
                let cost = RECORD_OVERHEAD
                    + span_bytes(&self.arena, p.key).map_or(0, <[u8]>::len)
                    + span_bytes(&self.arena, p.value).map_or(0, <[u8]>::len);
                if end > at && bytes + cost > budget {
                    break;
                }
                bytes += cost;
                end += 1;
            }
            match self.run_stateless(env, pending, at..end)? {
                Ok(answer) => self.take(env, pending, &mut excluded, answer),
                Err(failure) => self.contain_stateless(env, pending, at..end, &mut excluded, failure)?,
            }
            at = end;
        }
        for p in pending {
            if let Some(ts) = p.timestamp {
                self.stream_time = Some(self.stream_time.map_or(ts, |st| st.max(ts)));
            }
        }
        env.metrics.records_in.inc_by(pending.len() as u64);
        if let Some(last) = pending.last() {
            self.next_offset = Some(last.offset + 1);
        }
        Ok(())
    }

    fn take(&self, env: &mut Env<'_>, pending: &[Pending], excluded: &mut [bool], answer: Answer) {
        for out in answer.outs {
            env.outbox.push(out);
            env.metrics.records_out.inc();
        }
        self.exclude(env, pending, excluded, answer.rejects);
    }

    fn contain_stateless(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        range: std::ops::Range<usize>,
        excluded: &mut [bool],
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
            match self.run_stateless(env, pending, range.clone())? {
                Ok(answer) => {
                    self.take(env, pending, excluded, answer);
                    return Ok(());
                }
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
        for i in range {
            match self.run_stateless(env, pending, i..i + 1)? {
                Ok(answer) => self.take(env, pending, excluded, answer),
                Err(e) => {
                    env.metrics.plugin_failures.inc();
                    env.guest.renew();
                    let reason = format!("plugin failed on this record: {e}");
                    self.exclude(env, pending, excluded, vec![(i, (reason, None))]);
                }
            }
        }
        Ok(())
    }

    /// One `run` call over `range`: what it gave, or the plugin's failure.
    fn run_stateless(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        range: std::ops::Range<usize>,
    ) -> Result<Result<Answer, GuestError>, TaskError> {
        let records: Vec<Rec<'_>> = pending[range.clone()]
            .iter()
            .map(|p| Rec {
                key: span_bytes(&self.arena, p.key),
                value: span_bytes(&self.arena, p.value),
                old: None,
                timestamp: p.timestamp.unwrap_or(0),
                window: None,
            })
            .collect();
        let frame = RunIn { from: env.info.shape.source_edge(), records };
        let mut buf = std::mem::take(&mut self.frame);
        let encoded = weir_abi::encode_into(&frame, &mut buf).map_err(frame_err);
        drop(frame);
        if let Err(e) = encoded {
            self.frame = buf;
            return Err(e);
        }
        env.metrics.guest_calls.inc();
        let answer = env.guest.run(&buf);
        self.frame = buf;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        Ok(read(env, &answer, pending, range))
    }
}

/// Reads a `run` answer for the records `range` of `pending`.
fn read(
    env: &mut Env<'_>,
    answer: &[u8],
    pending: &[Pending],
    range: std::ops::Range<usize>,
) -> Result<Answer, GuestError> {
    let out: RunOut<'_> = weir_abi::decode(answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
    let inputs = range.len();
    if out.emitted.len() > inputs.saturating_mul(MAX_FANOUT) {
        return Err(GuestError::BadFrame(format!("{} records from {inputs} inputs", out.emitted.len())));
    }
    let limit = env.guest.max_value_bytes();
    let mut outs = Vec::with_capacity(out.emitted.len());
    for e in &out.emitted {
        let Some(source) = pending.get(range.start + e.source as usize).filter(|_| (e.source as usize) < inputs) else {
            return Err(GuestError::BadFrame(format!("a record from input {} of {inputs}", e.source)));
        };
        let sinks = env.info.shape.sinks_of(e.node, e.port);
        if sinks.is_empty() {
            return Err(GuestError::BadFrame(format!("a record leaving node #{} towards no sink", e.node)));
        }
        if let Some(v) = e.record.value
            && v.len() > limit
        {
            env.guest.renew();
            return Err(GuestError::Oversized { size: v.len(), limit });
        }
        for &sink in sinks {
            outs.push(Out {
                dest: Dest::Sink(sink),
                partition: None,
                key: e.record.key.map(<[u8]>::to_vec),
                value: e.record.value.map(<[u8]>::to_vec),
                timestamp: source.timestamp,
                headers: Vec::new(),
            });
        }
    }
    let mut rejects = Vec::with_capacity(out.rejects.len());
    for r in &out.rejects {
        if r.record as usize >= inputs {
            return Err(GuestError::BadFrame(format!("a reject of input {} of {inputs}", r.record)));
        }
        let node = env.node_name(r.node)?;
        rejects.push((range.start + r.record as usize, (clip(r.reason, MAX_REASON_BYTES), Some(node))));
    }
    Ok(Answer { outs, rejects })
}
