//! Running records through guest operators with one `run` call per chunk: for a
//! stateless sub-topology from its input to sinks and repartition topics; for an
//! aggregation whose input (or the operators before it) also leads to sinks or
//! repartition topics, first through every operator reading the input, then the
//! records that reached the aggregation are folded; and for a sliding or session
//! aggregation from the source to the aggregation (whose windows depend on which
//! records reach it, so the operators before it run first).
//!
//! With no state involved, a record's outcome does not depend on the records
//! before it: a record an operator refuses is dead-lettered (naming the operator)
//! and the rest of the chunk stands as answered. A chunk the plugin fails on is
//! retried on fresh instances, then run record by record, and a record that fails
//! alone is dead-lettered (or the pipeline pauses, as configured).

use weir_abi::calls::{Rec, RunIn, RunOut};
use weir_abi::topology::Edge;

use super::batch::Reject;
use super::{Env, MAX_FANOUT, Pending, Task, TaskError, check_record, exit_record, frame_err, input_of, span_bytes};
use crate::config::FailurePolicy;
use crate::runtime::{GuestError, MAX_REASON_BYTES, clip};

/// Frame bytes a record costs besides its key and value.
const RECORD_OVERHEAD: usize = 32;

/// A record that left the guest: the input it came from, the node output it
/// left through, key and value (operators keep the input's timestamp).
pub(super) struct Emitted {
    pub source: usize,
    pub node: u32,
    pub port: u32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub old: Option<Vec<u8>>,
}

/// Where the records of a `run` call must go.
#[derive(Clone, Copy)]
pub(super) enum Target {
    /// Sinks and repartition topics.
    Exits,
    /// The aggregation node.
    Node(u32),
    /// Sinks and repartition topics, or the aggregation node.
    Split(u32),
}

/// A record that reached an aggregation: the input it came from, key, value.
pub(super) type Reached = (usize, Option<Vec<u8>>, Option<Vec<u8>>);

/// What [`Task::split_off`] gives: the records that reached the aggregation,
/// which inputs were dead-lettered, and the stream time after each input.
pub(super) type SplitOff = (Vec<Reached>, Vec<bool>, Vec<i64>);

/// [`SplitOff`] with what each record carries beside its value.
pub(super) type SplitOffWithOld = (Vec<super::Made4>, Vec<bool>, Vec<i64>);

/// What one chunk gave: records that left, and refusals.
struct Answer {
    emitted: Vec<Emitted>,
    rejects: Vec<(usize, Reject)>,
}

impl Task {
    pub(super) fn process_stateless(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let from = self.entry(env, input_of(pending))?;
        let (emitted, excluded) = self.through_guest(env, pending, from, Target::Exits)?;
        self.write_direct(env, pending, from)?;
        self.write_exits(env, pending, &emitted)?;
        // Records an operator refused do not move stream time.
        for (p, _) in pending.iter().zip(&excluded).filter(|(_, x)| !**x) {
            if let Some(ts) = p.timestamp {
                self.stream_time = Some(self.stream_time.map_or(ts, |st| st.max(ts)));
            }
        }
        self.count_in(env, input_of(pending), pending.len() as u64);
        Ok(())
    }

    /// Writes the input records to the sinks that read the input node directly.
    fn write_direct(&mut self, env: &mut Env<'_>, pending: &[Pending], from: Edge) -> Result<(), TaskError> {
        for &exit in env.info.shape.exits_of(from.node, from.port) {
            for p in pending {
                let key = span_bytes(&self.arena, p.key).map(<[u8]>::to_vec);
                let value = span_bytes(&self.arena, p.value).map(<[u8]>::to_vec);
                env.outbox.push(exit_record(env, exit, key, value, None, p.timestamp, None)?);
            }
        }
        Ok(())
    }

    /// Writes the records that left the guest towards sinks and repartitions.
    pub(super) fn write_exits(
        &self,
        env: &mut Env<'_>,
        pending: &[Pending],
        emitted: &[Emitted],
    ) -> Result<(), TaskError> {
        for e in emitted {
            for &exit in env.info.shape.exits_of(e.node, e.port) {
                let out = exit_record(
                    env,
                    exit,
                    e.key.clone(),
                    e.value.clone(),
                    e.old.as_deref(),
                    pending[e.source].timestamp,
                    None,
                )?;
                env.outbox.push(out);
            }
        }
        Ok(())
    }

    /// Runs `pending` through every guest operator reading the sub-topology's
    /// input, writing what reaches sinks and repartition topics. Returns what
    /// reaches host node `agg` — every input record if `agg` reads the input
    /// itself —, which inputs were dead-lettered, and the stream time after each
    /// input (every record read moves it, except one dead-lettered).
    pub(super) fn split_off(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        agg: u32,
    ) -> Result<SplitOff, TaskError> {
        let (reached, excluded, stream_times) = self.split_off_with_old(env, pending, agg)?;
        Ok((reached.into_iter().map(|(source, key, value, _)| (source, key, value)).collect(), excluded, stream_times))
    }

    /// [`Task::split_off`], each record reaching `agg` with what it carries
    /// beside its value (the key a global key selector kept).
    pub(super) fn split_off_with_old(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        agg: u32,
    ) -> Result<SplitOffWithOld, TaskError> {
        let from = self.entry(env, input_of(pending))?;
        let nodes = &env.info.topology.nodes;
        let guests_read = env.info.topology.consumers(from.node).any(|(c, _)| nodes[c as usize].op.is_guest());
        let (emitted, excluded) = match guests_read {
            true => self.through_guest(env, pending, from, Target::Split(agg))?,
            false => (Vec::new(), vec![false; pending.len()]),
        };
        self.write_direct(env, pending, from)?;
        self.write_exits(env, pending, &emitted)?;
        let reads_input = env.info.topology.nodes.get(agg as usize).is_some_and(|n| n.inputs.contains(&from));
        let reached: Vec<super::Made4> = if reads_input {
            pending
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    (
                        i,
                        span_bytes(&self.arena, p.key).map(<[u8]>::to_vec),
                        span_bytes(&self.arena, p.value).map(<[u8]>::to_vec),
                        None,
                    )
                })
                .collect()
        } else {
            let into_agg =
                |e: &Emitted| env.info.topology.consumers(e.node).any(|(c, port)| c == agg && port == e.port);
            emitted.into_iter().filter(|e| into_agg(e)).map(|e| (e.source, e.key, e.value, e.old)).collect()
        };
        let stream_times = self.stream_times(pending, &excluded);
        Ok((reached, excluded, stream_times))
    }

    /// The task's stream time after each input: every record read moves it,
    /// also one an operator filters out before an aggregation, but not one that
    /// was dead-lettered (`i64::MIN` before any).
    pub(super) fn stream_times(&self, pending: &[Pending], excluded: &[bool]) -> Vec<i64> {
        let mut seen = self.stream_time.unwrap_or(i64::MIN);
        pending
            .iter()
            .zip(excluded)
            .map(|(p, x)| {
                if !x {
                    seen = seen.max(p.timestamp.unwrap_or(i64::MIN));
                }
                seen
            })
            .collect()
    }

    /// An aggregation whose input also leads elsewhere: the operators reading
    /// the input run first ([`Task::split_off`]), then what reached the
    /// aggregation is folded, each record no earlier in stream time than the
    /// input it came from.
    pub(super) fn process_split(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let agg = self.aggregation(env)?.node;
        let (reached, _, stream_times) = self.split_off(env, pending, agg)?;
        let (derived, arena) = derive(
            pending,
            reached.into_iter().map(|(source, key, value)| (source, key, value, None, None)),
            &stream_times,
        );
        let input_arena = std::mem::replace(&mut self.arena, arena);
        let folded = self.fold(env, &derived, None);
        self.arena = input_arena;
        folded?;
        if let Some(&st) = stream_times.last().filter(|st| **st > i64::MIN) {
            self.stream_time = Some(self.stream_time.map_or(st, |s| s.max(st)));
        }
        self.count_in(env, input_of(pending), pending.len() as u64);
        Ok(())
    }

    /// Runs `pending` from host output `from` through the guest operators reading
    /// it, in chunks within the frame budget, dead-lettering what is refused or
    /// fails alone. Returns the records that reach `target`, in input order, and
    /// which inputs were dead-lettered.
    pub(super) fn through_guest(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        from: Edge,
        target: Target,
    ) -> Result<(Vec<Emitted>, Vec<bool>), TaskError> {
        let budget = env.guest.max_frame_bytes();
        let mut excluded = vec![false; pending.len()];
        let mut emitted = Vec::new();
        let mut at = 0;
        while at < pending.len() {
            let mut end = at;
            let mut bytes = 0;
            while end < pending.len() {
                let p = &pending[end];
                let cost = RECORD_OVERHEAD
                    + span_bytes(&self.arena, p.key).map_or(0, <[u8]>::len)
                    + span_bytes(&self.arena, p.value).map_or(0, <[u8]>::len)
                    + span_bytes(&self.arena, p.old).map_or(0, <[u8]>::len);
                if end > at && bytes + cost > budget {
                    break;
                }
                bytes += cost;
                end += 1;
            }
            match self.run_chunk_through(env, pending, at..end, from, target)? {
                Ok(answer) => self.take(env, pending, &mut excluded, answer, &mut emitted),
                Err(failure) => {
                    self.contain_run(env, pending, at..end, from, target, &mut excluded, failure, &mut emitted)?
                }
            }
            at = end;
        }
        Ok((emitted, excluded))
    }

    fn take(
        &self,
        env: &mut Env<'_>,
        pending: &[Pending],
        excluded: &mut [bool],
        answer: Answer,
        emitted: &mut Vec<Emitted>,
    ) {
        emitted.extend(answer.emitted);
        self.exclude(env, pending, excluded, answer.rejects);
    }

    #[allow(clippy::too_many_arguments)]
    fn contain_run(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        range: std::ops::Range<usize>,
        from: Edge,
        target: Target,
        excluded: &mut [bool],
        failure: GuestError,
        emitted: &mut Vec<Emitted>,
    ) -> Result<(), TaskError> {
        env.metrics.plugin_failures.inc();
        if env.policy.probation {
            return Err(TaskError::Guest(failure));
        }
        tracing::warn!(partition = self.partition, error = %failure, "plugin call failed; retrying on a fresh instance");
        let mut last = failure;
        for _ in 0..env.policy.retries {
            env.guest.renew();
            match self.run_chunk_through(env, pending, range.clone(), from, target)? {
                Ok(answer) => {
                    self.take(env, pending, excluded, answer, emitted);
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
            match self.run_chunk_through(env, pending, i..i + 1, from, target)? {
                Ok(answer) => self.take(env, pending, excluded, answer, emitted),
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
    fn run_chunk_through(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        range: std::ops::Range<usize>,
        from: Edge,
        target: Target,
    ) -> Result<Result<Answer, GuestError>, TaskError> {
        let records: Vec<Rec<'_>> = pending[range.clone()]
            .iter()
            .map(|p| Rec {
                key: span_bytes(&self.arena, p.key),
                value: span_bytes(&self.arena, p.value),
                old: span_bytes(&self.arena, p.old),
                timestamp: p.timestamp.unwrap_or(0),
                window: None,
            })
            .collect();
        let frame = RunIn { from, records };
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
        Ok(read(env, &answer, range, target))
    }
}

/// Reads a `run` answer for the records `range` of the batch, holding the plugin
/// to it: records come from inputs of the chunk, leave towards `target`, and stay
/// within the value limit; rejects name nodes that exist.
fn read(env: &mut Env<'_>, answer: &[u8], range: std::ops::Range<usize>, target: Target) -> Result<Answer, GuestError> {
    let out: RunOut<'_> = weir_abi::decode(answer).map_err(|e| GuestError::BadFrame(e.to_string()))?;
    let inputs = range.len();
    if out.emitted.len() > inputs.saturating_mul(MAX_FANOUT) {
        return Err(GuestError::BadFrame(format!("{} records from {inputs} inputs", out.emitted.len())));
    }
    let limit = env.guest.max_value_bytes();
    let mut emitted = Vec::with_capacity(out.emitted.len());
    for e in &out.emitted {
        if e.source as usize >= inputs {
            return Err(GuestError::BadFrame(format!("a record from input {} of {inputs}", e.source)));
        }
        let reaches = match target {
            Target::Exits => !env.info.shape.exits_of(e.node, e.port).is_empty(),
            Target::Node(node) => env.info.topology.consumers(e.node).any(|(c, port)| c == node && port == e.port),
            Target::Split(node) => {
                !env.info.shape.exits_of(e.node, e.port).is_empty()
                    || env.info.topology.consumers(e.node).any(|(c, port)| c == node && port == e.port)
            }
        };
        if !reaches {
            return Err(GuestError::BadFrame(format!(
                "a record leaving node #{} towards no operator that reads it",
                e.node
            )));
        }
        if let Err(e) = check_record(&e.record, limit) {
            env.guest.renew();
            return Err(e);
        }
        emitted.push(Emitted {
            source: range.start + e.source as usize,
            node: e.node,
            port: e.port,
            key: e.record.key.map(<[u8]>::to_vec),
            value: e.record.value.map(<[u8]>::to_vec),
            old: e.record.old.map(<[u8]>::to_vec),
        });
    }
    let mut rejects = Vec::with_capacity(out.rejects.len());
    for r in &out.rejects {
        if r.record as usize >= inputs {
            return Err(GuestError::BadFrame(format!("a reject of input {} of {inputs}", r.record)));
        }
        let node = env.node_name(r.node)?;
        rejects.push((range.start + r.record as usize, (clip(r.reason, MAX_REASON_BYTES), Some(node))));
    }
    Ok(Answer { emitted, rejects })
}

/// Records made from input records ([`super::Made`]), in an arena of their
/// own: each keeps its input's offset and input, its timestamp unless it has
/// one of its own, and its input's stream time as a floor.
pub(super) fn derive(
    pending: &[Pending],
    made: impl Iterator<Item = super::Made>,
    stream_times: &[i64],
) -> (Vec<Pending>, Vec<u8>) {
    let mut arena = Vec::new();
    let mut derived = Vec::new();
    let span = |bytes: Option<Vec<u8>>, arena: &mut Vec<u8>| {
        bytes.map(|b| {
            let start = arena.len() as u32;
            arena.extend_from_slice(&b);
            super::Span { start, len: b.len() as u32 }
        })
    };
    for (source, key, value, old, timestamp) in made {
        let input = &pending[source];
        derived.push(Pending {
            key: span(key, &mut arena),
            value: span(value, &mut arena),
            old: span(old, &mut arena),
            timestamp: timestamp.or(input.timestamp),
            offset: input.offset,
            input: input.input,
            floor: stream_times[source],
        });
    }
    (derived, arena)
}
