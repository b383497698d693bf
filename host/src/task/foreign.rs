//! Foreign-key joins of two tables (see [`crate::topology::ForeignJoin`]): the
//! subscriptions the left table's task writes, the right table's task that
//! answers them, and the check the left task makes before joining an answer.
//!
//! - **Subscribing** (left task, at a commit): each rendered update of the
//!   left table comes back from the extractor with the foreign keys of its new
//!   and old row. A row whose foreign key changed unsubscribes from the old one
//!   (no answer); a live row subscribes to its foreign key with a hash of
//!   itself; a deleted row unsubscribes and asks for an answer, which deletes
//!   the result. Every subscription is answered, with the right row or
//!   without one: an answer is dropped when the left row has changed since,
//!   so the answer to the latest subscription is the one that must end a
//!   result an earlier row made, even if the join was inner and the row new
//!   (Kafka Streams answers only if the right row exists in those cases, and
//!   can leave a stale result behind when the earlier answer was dropped). An
//!   inner join so writes a tombstone for a row without a match, also one
//!   that never had a result.
//!   Subscriptions are keyed by the foreign key (partitioned like the right
//!   table's topic) and name the left row's partition.
//! - **Answering** (right task): a subscription is kept (or dropped) in the
//!   store under (foreign key, left key) and answered with the foreign key's
//!   row; an update of a right row answers every subscriber with the new row.
//!   Answers are keyed by the left key and written to the left row's
//!   partition. The subscribers of a right row are answered at the commit,
//!   with the row as it is then, once however often it changed since the
//!   last one (the answers in between would only make results the last one
//!   replaces).
//! - **Joining** (left task): an answer is joined with the left row as it is
//!   now only if the hash it carries is the row's (an answer for a row that has
//!   changed since is dropped: a newer one is on its way); an answer without a
//!   right row writes a tombstone for an inner join or a deleted left row.
//!
//! Each hop commits its output with its offsets and changelogs in one
//! transaction, so the whole is exactly-once; results converge on the join of
//! the tables' latest rows (intermediate ones may be skipped).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use weir_abi::calls::ForeignKeys;

use super::outbox::{Dest, Out};
use super::{Env, Pending, Task, TaskError, frame_err, input_of, span_bytes};
use crate::state::split_window_key;
use crate::topology::{Carries, ForeignJoin, Stage};

/// A row's hash: the first 16 bytes of its SHA-256 (`None`: no row).
pub(super) fn hash_of(row: Option<&[u8]>) -> Option<[u8; 16]> {
    row.map(|r| {
        let digest = Sha256::digest(r);
        let mut h = [0u8; 16];
        h.copy_from_slice(&digest[..16]);
        h
    })
}

/// When the right side answers a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Respond {
    /// With the row, or without one.
    Always,
    /// Never (a row leaving a foreign key it no longer has).
    Never,
}

/// A subscription: the value on the subscriptions' topic, keyed by the
/// foreign key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Subscription<'a> {
    /// The left row's key.
    #[serde(borrow, serialize_with = "weir_abi::bytes::one")]
    key: &'a [u8],
    /// The left row's hash; `None` unsubscribes.
    hash: Option<[u8; 16]>,
    /// The partition of the left row (where the answer goes).
    partition: i32,
    respond: Respond,
}

/// An answer: the value on the responses' topic, keyed by the left key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Response<'a> {
    /// The hash of the left row it answers.
    hash: Option<[u8; 16]>,
    /// The right row, if any.
    #[serde(borrow, serialize_with = "weir_abi::bytes::opt")]
    row: Option<&'a [u8]>,
}

/// The store key of a subscription: the foreign key's length (4 bytes, big
/// endian), the foreign key, the left key — so one foreign key's subscribers
/// are one range.
fn subscription_key(fk: &[u8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + fk.len() + key.len());
    k.extend_from_slice(&(fk.len() as u32).to_be_bytes());
    k.extend_from_slice(fk);
    k.extend_from_slice(key);
    k
}

/// The range `[from, to)` of `fk`'s subscriptions.
fn subscribers_of(fk: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let from = subscription_key(fk, &[]);
    // The next prefix of the same length: length and key bytes as one number, plus one.
    let mut to = from.clone();
    while let Some(last) = to.pop() {
        if last < u8::MAX {
            to.push(last + 1);
            return (from, to);
        }
    }
    (from, vec![u8::MAX; 5 + fk.len()])
}

/// A stored subscription's value: the hash, then the partition.
fn stored_subscription(hash: [u8; 16], partition: i32) -> Vec<u8> {
    let mut v = hash.to_vec();
    v.extend_from_slice(&partition.to_be_bytes());
    v
}

fn read_stored(v: &[u8]) -> Option<([u8; 16], i32)> {
    let (hash, partition) = v.split_at_checked(16)?;
    Some((hash.try_into().ok()?, i32::from_be_bytes(partition.try_into().ok()?)))
}

impl Task {
    /// The subscriptions (to repartition topic `r`) of one rendered update of the left table: its store key and new row in
    /// `slot`, the foreign keys the extractor handed back in `value`.
    pub(super) fn subscriptions(
        &self,
        env: &mut Env<'_>,
        r: usize,
        slot: (&[u8], Option<&[u8]>),
        value: Option<&[u8]>,
    ) -> Result<Vec<Out>, TaskError> {
        let fks: ForeignKeys<'_> = match weir_abi::decode(value.unwrap_or_default()) {
            Ok(fks) => fks,
            Err(e) => {
                // The plugin's fault: this row's subscription is dead-lettered, nothing else.
                env.metrics.plugin_failures.inc();
                let reason = format!("the plugin's foreign keys for this row do not decode: {e}");
                self.dead_letter_window(env, slot.0, &reason)?;
                return Ok(Vec::new());
            }
        };
        let (_, key) = split_window_key(slot.0).ok_or_else(|| TaskError::Frame("corrupt window-store key".into()))?;
        let mut out = Vec::with_capacity(2);
        let mut send = |fk: Option<&[u8]>, hash: Option<[u8; 16]>, respond: Respond| -> Result<(), TaskError> {
            let frame = Subscription { key, hash, partition: self.partition, respond };
            env.metrics.repartition_out.inc();
            out.push(Out {
                dest: Dest::Repartition(r),
                partition: None,
                key: fk.map(<[u8]>::to_vec),
                value: Some(weir_abi::encode(&frame).map_err(frame_err)?),
                timestamp: self.stream_time,
                headers: Vec::new(),
            });
            Ok(())
        };
        match slot.1 {
            None => send(fks.old, None, Respond::Always)?,
            Some(row) => {
                if fks.old.is_some() && fks.old != fks.new {
                    send(fks.old, None, Respond::Never)?;
                }
                send(fks.new, hash_of(Some(row)), Respond::Always)?;
            }
        }
        Ok(out)
    }

    /// The right half of a foreign-key join: records of the right table's
    /// input update its rows and answer every subscriber; subscriptions are
    /// kept and answered (see the module's doc).
    pub(super) fn process_foreign(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let Some(Stage::JoinForeign(join)) = env.info.shape.subs.get(self.sub).map(|s| &s.stage) else {
            return Err(TaskError::Frame(format!("internal: sub-topology {} has no foreign-key join", self.sub)));
        };
        let join = join.clone();
        if input_of(pending) == join.input {
            self.answer_subscriptions(env, pending, &join)?;
        } else {
            self.update_right(env, pending, &join)?;
        }
        if let Some(ts) = pending.iter().filter_map(|p| p.timestamp).max() {
            self.stream_time = Some(self.stream_time.map_or(ts, |s| s.max(ts)));
        }
        self.count_in(env, input_of(pending), pending.len() as u64);
        Ok(())
    }

    fn answer_subscriptions(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        join: &ForeignJoin,
    ) -> Result<(), TaskError> {
        let name = env.node_name(join.node)?;
        for p in pending {
            let fk = span_bytes(&self.arena, p.key).map(<[u8]>::to_vec);
            let frame = span_bytes(&self.arena, p.value).unwrap_or_default();
            let Ok(sub) = weir_abi::decode::<Subscription<'_>>(frame) else {
                let reason = "a damaged foreign-key subscription".to_owned();
                self.dead_letter(env, p, &(reason, Some(name.clone())));
                continue;
            };
            let row = match &fk {
                Some(fk) => {
                    let at = subscription_key(fk, sub.key);
                    self.side[1].put(&at, sub.hash.map(|h| stored_subscription(h, sub.partition)));
                    self.side[0].get(fk)?
                }
                None => None,
            };
            if sub.respond == Respond::Always {
                let out = answer(env, join.responses, (sub.key, sub.partition), sub.hash, row.as_deref(), p.timestamp)?;
                env.outbox.push(out);
            }
        }
        Ok(())
    }

    fn update_right(&mut self, env: &mut Env<'_>, pending: &[Pending], join: &ForeignJoin) -> Result<(), TaskError> {
        let table = join.table.table;
        let (reached, mut excluded, _) = self.split_off(env, pending, table)?;
        let name = env.node_name(table)?;
        for (source, key, value) in reached {
            let Some(key) = key else {
                let reason = "a record without a key cannot be a table row".to_owned();
                self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                continue;
            };
            if self.side[0].get(&key)? == value {
                continue;
            }
            self.side[0].put(&key, value);
            self.changed_rows.insert(key, pending.get(source).and_then(|p| p.timestamp));
        }
        Ok(())
    }

    /// Answers every subscriber of each right row changed since the last
    /// commit with the row as it is now (stamped with its last change's time).
    pub(super) fn answer_changed_rows(&mut self, env: &mut Env<'_>) -> Result<(), TaskError> {
        if self.changed_rows.is_empty() {
            return Ok(());
        }
        let Some(Stage::JoinForeign(join)) = env.info.shape.subs.get(self.sub).map(|s| &s.stage) else {
            return Err(TaskError::Frame(format!("internal: sub-topology {} has no foreign-key join", self.sub)));
        };
        let responses = join.responses;
        for (key, timestamp) in std::mem::take(&mut self.changed_rows) {
            let row = self.side[0].get(&key)?;
            let (from, to) = subscribers_of(&key);
            for at in self.side[1].keys_between(&from, &to)? {
                let Some((hash, partition)) = self.side[1].get(&at)?.as_deref().and_then(read_stored) else {
                    return Err(TaskError::Frame("corrupt foreign-key subscription in the store".into()));
                };
                let left = &at[from.len()..];
                env.outbox.push(answer(env, responses, (left, partition), Some(hash), row.as_deref(), timestamp)?);
            }
        }
        Ok(())
    }
}

/// An answer to the left row `key` in `partition` (of hash `hash`) with the
/// right row `row`, to repartition topic `r`.
fn answer(
    env: &Env<'_>,
    r: usize,
    (key, partition): (&[u8], i32),
    hash: Option<[u8; 16]>,
    row: Option<&[u8]>,
    timestamp: Option<i64>,
) -> Result<Out, TaskError> {
    env.metrics.repartition_out.inc();
    Ok(Out {
        dest: Dest::Repartition(r),
        partition: Some(partition),
        key: Some(key.to_vec()),
        value: Some(weir_abi::encode(&Response { hash, row }).map_err(frame_err)?),
        timestamp,
        headers: Vec::new(),
    })
}

/// The answer in a response's value, if it answers `current` (the left row
/// now): `Some(right row)`; `None` for a stale or damaged one.
pub(super) fn answer_for(current: Option<&[u8]>, value: Option<&[u8]>) -> Option<Option<Vec<u8>>> {
    let response: Response<'_> = weir_abi::decode(value?).ok()?;
    (response.hash == hash_of(current)).then(|| response.row.map(<[u8]>::to_vec))
}

/// Whether repartition topic `r` carries subscriptions.
pub(super) fn carries_subscriptions(env: &Env<'_>, r: usize) -> bool {
    env.info.shape.repartitions.get(r).is_some_and(|r| r.carries == Carries::Subscriptions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_keys_subscribers_are_one_range_and_no_other_keys() {
        let keys: Vec<Vec<u8>> =
            [(&b"p1"[..], &b"o1"[..]), (b"p1", b"o2"), (b"p10", b"o"), (b"p", b"1o"), (b"p2", b"")]
                .iter()
                .map(|(fk, k)| subscription_key(fk, k))
                .collect();
        let (from, to) = subscribers_of(b"p1");
        let inside: Vec<usize> = (0..keys.len()).filter(|&i| keys[i] >= from && keys[i] < to).collect();
        assert_eq!(inside, vec![0, 1]);
        let (from, to) = subscribers_of(&[0xff, 0xff]);
        assert!(subscription_key(&[0xff, 0xff], b"x") >= from && subscription_key(&[0xff, 0xff], b"x") < to);
        assert!(subscription_key(&[0xff, 0xff, 0], b"") >= to);
    }

    #[test]
    fn an_answer_counts_only_for_the_row_it_answers() {
        let value = weir_abi::encode(&Response { hash: hash_of(Some(b"a")), row: Some(b"r") }).unwrap();
        assert_eq!(answer_for(Some(b"a"), Some(&value)), Some(Some(b"r".to_vec())));
        assert_eq!(answer_for(Some(b"b"), Some(&value)), None);
        assert_eq!(answer_for(None, Some(&value)), None);
        let gone = weir_abi::encode(&Response { hash: None, row: None }).unwrap();
        assert_eq!(answer_for(None, Some(&gone)), Some(None));
        assert_eq!(answer_for(None, Some(b"\xff\xff")), None);
    }
}
