//! Tables of latest values and stream–table joins.
//!
//! A table made from a stream (`to_table`) is folded by the host: the records
//! reaching it (read directly, or after the guest operators before it, such as
//! a change-data-capture envelope mapped to a row) replace their key's row; a
//! null value deletes it; a record without a key cannot be a row and is
//! dead-lettered naming the table. Rows are the bytes the record carried.
//!
//! A join reads the records of one input of the task (through the operators
//! before it, in a call of their own), looks each key's row up in the task's
//! table — uncommitted updates included, so a record sees the table as of its
//! place in the task's time order across inputs — and hands the record on from
//! the join's output with the row beside it, to the joiner and what follows it.
//! An inner join drops a record whose key has no row and dead-letters one
//! without a key; a left join hands both on without a row.
//!
//! A join of two tables keeps each side in a store of its own (the task's side
//! stores): an update of one side replaces its row, then the key's rows of
//! both sides are handed on from the join's output (left row as the value,
//! right row beside it) if they make a result — both present (inner), the left
//! one (left), either (outer) — or, if they made one before the update and do
//! not any more, with neither row, which the joiner writes as a tombstone.
//!
//! The left half of a foreign-key join is a join of this kind too: its
//! records are the right side's answers, joined with the left row only if
//! they answer it as it is now (see `foreign`).

use weir_abi::topology::Edge;

use super::stateless::{Target, derive};
use super::{Env, Made, Pending, TABLE_ROW, Task, TaskError, input_of};
use crate::state::{Change, window_key};
use crate::topology::{GlobalJoin, SourceTable, Stage, TableJoin};

impl Task {
    /// The rows of table `table` of task `id`'s sub-topology that the records
    /// of its topic (`records`, read again from its start to restore it, in
    /// order) make: each through the guest operators before the table, as
    /// when it was first read; those the operators refuse, or that reach the
    /// table without a key, make no row (they were dead-lettered then). Keys
    /// as the store holds them. What the operators write besides (dead
    /// letters, records for sinks: all written when the records were first
    /// read) goes to `env`'s outbox, for the caller to discard.
    pub fn table_rows(
        env: &mut Env<'_>,
        id: super::TaskId,
        table: SourceTable,
        records: Vec<Change>,
    ) -> Result<Vec<Change>, TaskError> {
        let mut scratch = Task::new(id, super::Kind::Stateless, 0, Vec::new(), &[], None, 0);
        scratch.offsets = vec![Default::default(); table.input + 1];
        for (offset, (key, value)) in records.iter().enumerate() {
            scratch.accept(table.input, offset as i64, Some(key), value.as_deref(), None);
        }
        let pending = std::mem::take(&mut scratch.pending);
        let (reached, _, _) = scratch.split_off(env, &pending, table.node)?;
        let mut row_key = Vec::new();
        Ok(reached
            .into_iter()
            .filter_map(|(_, key, value)| {
                let key = key?;
                Some(match table.row_keys {
                    true => {
                        window_key(&mut row_key, TABLE_ROW, &key);
                        (row_key.clone(), value)
                    }
                    false => (key, value),
                })
            })
            .collect())
    }

    /// Replaces (or deletes) the rows of the records of `pending` that reach the
    /// task's table.
    pub(super) fn process_latest(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let table = self.aggregation(env)?.node;
        let (reached, mut excluded, stream_times) = self.split_off(env, pending, table)?;
        let name = env.node_name(table)?;
        let mut row_key = Vec::new();
        for (source, key, value) in reached {
            let Some(key) = key else {
                let reason = "a record without a key cannot be a table row".to_owned();
                self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                continue;
            };
            window_key(&mut row_key, TABLE_ROW, &key);
            self.replace_row(&row_key, value)?;
        }
        if let Some(&st) = stream_times.last().filter(|st| **st > i64::MIN) {
            self.stream_time = Some(self.stream_time.map_or(st, |s| s.max(st)));
        }
        self.count_in(env, input_of(pending), pending.len() as u64);
        Ok(())
    }

    /// Sets the row under store key `key` to `value` until the next commit;
    /// `None` deletes it (a deletion of a row the last commit did not have
    /// leaves nothing to emit).
    fn replace_row(&mut self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), TaskError> {
        if let Some(old) = self.dirty.remove(key) {
            self.dirty_bytes -= key.len() + old.len();
        }
        match value {
            Some(value) => {
                self.removed.remove(key);
                self.dirty_bytes += key.len() + value.len();
                self.dirty.insert(key.to_vec(), value);
            }
            None => {
                let committed = match self.migrated.get(key) {
                    Some(converted) => converted.is_some(),
                    None => self.store.get(key)?.is_some(),
                };
                if committed {
                    self.removed.insert(key.to_vec());
                }
            }
        }
        Ok(())
    }

    /// Joins the records of `pending` that reach `join` with their rows and runs
    /// them on from the join's output.
    pub(super) fn process_join(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        join: TableJoin,
    ) -> Result<(), TaskError> {
        let (reached, mut excluded, stream_times) = self.split_off(env, pending, join.node)?;
        let name = env.node_name(join.node)?;
        let mut row_key = Vec::new();
        let mut joined = Vec::with_capacity(reached.len());
        for (source, key, value) in reached {
            let row = match &key {
                Some(k) => {
                    window_key(&mut row_key, TABLE_ROW, k);
                    self.current(&row_key)?
                }
                None if join.left => None,
                None => {
                    let reason = "a record without a key cannot be joined with a table".to_owned();
                    self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                    continue;
                }
            };
            if join.foreign {
                // A foreign-key join's answer: joined only with the row it answers.
                match super::foreign::answer_for(row.as_deref(), value.as_deref()) {
                    None => {
                        env.metrics.join_misses.inc();
                    }
                    Some(right) if row.is_none() || (right.is_none() && !join.left) => {
                        joined.push((source, key, None, None, None));
                    }
                    Some(right) => joined.push((source, key, row, right, None)),
                }
            } else if row.is_some() || join.left {
                joined.push((source, key, value, row, None));
            } else {
                env.metrics.join_misses.inc();
            }
        }
        self.hand_on(env, pending, joined, &stream_times, join.node)
    }

    /// Runs what a join made of `pending`'s records (source, key, value, row)
    /// on from the output of join node `node`, and moves stream time over
    /// `pending`.
    pub(super) fn hand_on(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        made: Vec<Made>,
        stream_times: &[i64],
        node: u32,
    ) -> Result<(), TaskError> {
        env.metrics.joined.inc_by(made.len() as u64);
        let (made, arena) = derive(pending, made.into_iter(), stream_times);
        let input_arena = std::mem::replace(&mut self.arena, arena);
        let from = Edge { node, port: 0 };
        let ran = self
            .through_guest(env, &made, from, Target::Exits)
            .and_then(|(emitted, _)| self.write_exits(env, &made, &emitted));
        self.arena = input_arena;
        ran?;
        if let Some(&st) = stream_times.last().filter(|st| **st > i64::MIN) {
            self.stream_time = Some(self.stream_time.map_or(st, |s| s.max(st)));
        }
        self.count_in(env, input_of(pending), pending.len() as u64);
        Ok(())
    }

    /// Updates the side of a join of two tables that `pending`'s input feeds,
    /// and hands on what each update makes (see the module's doc).
    pub(super) fn process_tables_join(&mut self, env: &mut Env<'_>, pending: &[Pending]) -> Result<(), TaskError> {
        let Some(Stage::Join(join)) = env.info.shape.subs.get(self.sub).map(|s| &s.stage) else {
            return Err(TaskError::Frame(format!("internal: sub-topology {} joins no tables", self.sub)));
        };
        let input = input_of(pending);
        let side =
            join.side_of(input).ok_or_else(|| TaskError::Frame(format!("internal: input {input} feeds no table")))?;
        let (kind, table, node) = (join.kind, join.sides[side].table, join.node);
        let (reached, mut excluded, stream_times) = self.split_off(env, pending, table)?;
        let name = env.node_name(table)?;
        let mut made = Vec::new();
        for (source, key, value) in reached {
            let Some(key) = key else {
                let reason = "a record without a key cannot be a table row".to_owned();
                self.exclude(env, pending, &mut excluded, vec![(source, (reason, Some(name.clone())))]);
                continue;
            };
            let old = self.side[side].get(&key)?;
            if old.is_none() && value.is_none() {
                continue;
            }
            self.side[side].put(&key, value.clone());
            let other = self.side[1 - side].get(&key)?;
            let (now, before) = match side {
                0 => ((value, other.clone()), (old, other)),
                _ => ((other.clone(), value), (other, old)),
            };
            if kind.matches(now.0.is_some(), now.1.is_some()) {
                made.push((source, Some(key), now.0, now.1, None));
            } else if kind.matches(before.0.is_some(), before.1.is_some()) {
                made.push((source, Some(key), None, None, None));
            }
        }
        self.hand_on(env, pending, made, &stream_times, node)
    }

    /// Joins the records of `pending` that reach `join` with the rows of their
    /// selected keys in its global table, and runs them on from the join's
    /// output under their own keys.
    pub(super) fn process_global_join(
        &mut self,
        env: &mut Env<'_>,
        pending: &[Pending],
        join: GlobalJoin,
    ) -> Result<(), TaskError> {
        let (reached, _, stream_times) = self.split_off_with_old(env, pending, join.node)?;
        let mut joined = Vec::with_capacity(reached.len());
        for (source, selected, value, own_key) in reached {
            let row = match &selected {
                Some(k) => env.globals.get(join.table, k)?,
                None => None,
            };
            if row.is_some() || join.left {
                joined.push((source, own_key, value, row, None));
            } else {
                env.metrics.join_misses.inc();
            }
        }
        self.hand_on(env, pending, joined, &stream_times, join.node)
    }
}
