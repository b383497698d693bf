//! Joins of two streams within a time window (Kafka Streams'
//! `KStream#join(KStream, ValueJoiner, JoinWindows)`).
//!
//! Both sides live in the task's one side store, under four kinds of key:
//!
//! ```text
//! L|R  key-length key time seq          → value   a record of the left or right side
//! O    close side key-length key time seq → value   a record that met nothing yet (left, outer joins)
//! E    time side key-length key seq      → ()      when each side record may go
//! ```
//!
//! (times order-preserving big-endian, so each kind ranges by key and time, by
//! window close, by time.) A record of one side at `t` is stored, then meets
//! every record of the other side with its key in its window; each meeting is
//! handed on with the later of the two timestamps, and a met record of the
//! other side no longer counts as unmatched. A record that met nothing is kept
//! as unmatched if the join keeps its side (the left of a left join, both of
//! an outer join) and handed on alone once its window has closed: when stream
//! time passes `t + after + grace` (`before` for a right record) — before the
//! record that moved stream time there meets anything. A record whose window
//! closed before it arrived is late: dropped and counted. Records are deleted
//! once no record that is not late can meet them (`before + after + grace`
//! behind stream time).

use weir_abi::topology::JoinKind;

use super::{Env, MAX_FANOUT, Made, Pending, Task, TaskError, input_of};
use crate::state::{from_order_preserving, order_preserving};
use crate::topology::Stage;

const LEFT: u8 = b'L';
const RIGHT: u8 = b'R';
const OUTER: u8 = b'O';
const EXPIRY: u8 = b'E';

fn push_key(buf: &mut Vec<u8>, key: &[u8]) {
    buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
    buf.extend_from_slice(key);
}

/// The first store key of `side`'s records of `key` at or after `time`.
fn side_bound(side: u8, key: &[u8], time: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(key.len() + 13);
    buf.push(side);
    push_key(&mut buf, key);
    buf.extend_from_slice(&order_preserving(time));
    buf
}

fn side_key(side: u8, key: &[u8], time: i64, seq: u64) -> Vec<u8> {
    let mut buf = side_bound(side, key, time);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf
}

/// Time and sequence of a side record's store key.
fn side_tail(stored: &[u8]) -> Option<(i64, u64)> {
    let tail = stored.len().checked_sub(16).map(|at| &stored[at..])?;
    Some((from_order_preserving(tail[..8].try_into().ok()?), u64::from_be_bytes(tail[8..].try_into().ok()?)))
}

fn outer_key(close: i64, side: u8, key: &[u8], time: i64, seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(key.len() + 30);
    buf.push(OUTER);
    buf.extend_from_slice(&order_preserving(close));
    buf.push(side);
    push_key(&mut buf, key);
    buf.extend_from_slice(&order_preserving(time));
    buf.extend_from_slice(&seq.to_be_bytes());
    buf
}

fn expiry_key(time: i64, side: u8, key: &[u8], seq: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(key.len() + 22);
    buf.push(EXPIRY);
    buf.extend_from_slice(&order_preserving(time));
    buf.push(side);
    push_key(&mut buf, key);
    buf.extend_from_slice(&seq.to_be_bytes());
    buf
}

/// The first key of `kind` (`O` or `E`) whose time is at or after `time`.
fn time_bound(kind: u8, time: i64) -> Vec<u8> {
    let mut buf = vec![kind];
    buf.extend_from_slice(&order_preserving(time));
    buf
}

/// Side, record key and what follows it, of an `O` or `E` key (after its
/// kind byte and time).
fn split_timed(stored: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let rest = stored.get(9..)?;
    let (&side, rest) = rest.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4 + len)?;
    Some((side, key, &rest[4 + len..]))
}

/// Where the scans of a task's join of streams may start: below these, the
/// store holds no unmatched record (by close) and no record (by time) — those
/// went in this task's earlier runs. Reset by a rewind (the committed store may
/// hold again what the forgotten runs deleted).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursors {
    outer: i64,
    expiry: i64,
}

impl Default for Cursors {
    fn default() -> Self {
        Self { outer: i64::MIN, expiry: i64::MIN }
    }
}

fn corrupt() -> TaskError {
    TaskError::Frame("corrupt key in a stream join's store".into())
}

impl Task {
    /// Joins the records of `pending` (one side of a join of two streams) with
    /// the other side's (see the module's doc).
    pub(super) fn process_streams_join(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let Some(Stage::JoinStreams(join)) = env.info.shape.subs.get(self.sub).map(|s| &s.stage) else {
            return Err(TaskError::Frame(format!("internal: sub-topology {} joins no streams", self.sub)));
        };
        let input = input_of(pending);
        let side = join.sides.iter().position(|&i| i == input).ok_or_else(|| {
            TaskError::Frame(format!("internal: input {input} is no side of the join of sub-topology {}", self.sub))
        })?;
        let (kind, node, w) = (join.kind, join.node, join.window);
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let (me, other) = if side == 0 { (LEFT, RIGHT) } else { (RIGHT, LEFT) };
        // How far before and after a record of this side the other side's
        // records meet it; the other side's "after" is this side's "before".
        let (before, after) =
            if side == 0 { (ms(w.before_ms), ms(w.after_ms)) } else { (ms(w.after_ms), ms(w.before_ms)) };
        let grace = ms(w.grace_ms);
        let keeps = |s: u8| match kind {
            JoinKind::Inner => false,
            JoinKind::Left => s == LEFT,
            JoinKind::Outer => true,
        };
        let (reached, mut excluded, stream_times) = self.split_off(env, pending, node)?;
        let name = env.node_name(node)?;
        let mut made: Vec<Made> = Vec::new();
        let mut last_source = None;
        let mut fanned = 0u64;
        for (source, key, value) in reached {
            let (Some(key), Some(value)) = (key, value) else {
                let reason = "a record without a key or a value cannot be joined".to_owned();
                self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                continue;
            };
            let time = pending[source].timestamp.unwrap_or(0);
            let now = stream_times[source];
            let close = time.saturating_add(after).saturating_add(grace);
            if close < now {
                env.metrics.late_records.inc();
                continue;
            }
            // Records made from one input record (a flat_map before the join)
            // get sequence numbers of their own.
            fanned = if last_source == Some(source) { fanned + 1 } else { 0 };
            last_source = Some(source);
            let seq = (pending[source].offset as u64) << 10 | (fanned & 0x3ff);
            // The unmatched whose windows closed go first. (Below the cursor
            // they are gone: each is kept with a close not behind stream time.)
            if keeps(LEFT) || keeps(RIGHT) {
                let from = time_bound(OUTER, self.cursors.outer);
                self.cursors.outer = self.cursors.outer.max(now);
                for stored in self.side[0].keys_between(&from, &time_bound(OUTER, now))? {
                    let (s, k, tail) = split_timed(&stored).ok_or_else(corrupt)?;
                    let at =
                        tail.get(..8).and_then(|t| t.try_into().ok()).map(from_order_preserving).ok_or_else(corrupt)?;
                    let v = self.side[0].get(&stored)?;
                    let (l, r) = if s == LEFT { (v, None) } else { (None, v) };
                    made.push((source, Some(k.to_vec()), l, r, Some(at)));
                    self.side[0].put(&stored, None);
                }
            }
            let (from, to) = (
                side_bound(other, &key, time.saturating_sub(before)),
                side_bound(other, &key, time.saturating_add(after).saturating_add(1)),
            );
            let meets = self.side[0].keys_between(&from, &to)?;
            // Each meeting is a record to hand on: a key flooding the window
            // would make the output grow with the square of its records.
            if meets.len() > MAX_FANOUT {
                let reason = format!(
                    "meets {} records of the other side within its window; the limit is {MAX_FANOUT}",
                    meets.len()
                );
                self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                continue;
            }
            self.side[0].put(&side_key(me, &key, time, seq), Some(value.clone()));
            self.side[0].put(&expiry_key(time, me, &key, seq), Some(Vec::new()));
            let mut met = false;
            for stored in meets {
                let (at, other_seq) = side_tail(&stored).ok_or_else(corrupt)?;
                let Some(theirs) = self.side[0].get(&stored)? else { continue };
                met = true;
                if keeps(other) {
                    // The other record met one: it is no longer unmatched.
                    let their_close = at.saturating_add(before).saturating_add(grace);
                    self.side[0].put(&outer_key(their_close, other, &key, at, other_seq), None);
                }
                let (l, r) = if side == 0 { (value.clone(), theirs) } else { (theirs, value.clone()) };
                made.push((source, Some(key.clone()), Some(l), Some(r), Some(time.max(at))));
            }
            if !met && keeps(me) {
                self.side[0].put(&outer_key(close, me, &key, time, seq), Some(value));
            }
        }
        // Records nothing that is not late can meet any more go.
        if let Some(&now) = stream_times.last().filter(|st| **st > i64::MIN) {
            let retention = ms(w.before_ms).saturating_add(ms(w.after_ms)).saturating_add(grace);
            let expired = now.saturating_sub(retention);
            let from = time_bound(EXPIRY, self.cursors.expiry);
            self.cursors.expiry = self.cursors.expiry.max(expired);
            for stored in self.side[0].keys_between(&from, &time_bound(EXPIRY, expired))? {
                let time =
                    stored.get(1..9).and_then(|t| t.try_into().ok()).map(from_order_preserving).ok_or_else(corrupt)?;
                let (s, k, tail) = split_timed(&stored).ok_or_else(corrupt)?;
                let seq = tail.try_into().map(u64::from_be_bytes).map_err(|_| corrupt())?;
                self.side[0].put(&side_key(s, k, time, seq), None);
                self.side[0].put(&stored, None);
            }
        }
        self.hand_on(env, pending, made, &stream_times, node)
    }
}
