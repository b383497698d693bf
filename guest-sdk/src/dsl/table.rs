//! Tables (the result of an aggregation: the latest value per key), their
//! stream of updates, and re-grouping a table to aggregate it again with an
//! adder and a subtractor — what a top-N over changing values needs.

use std::marker::PhantomData;
use std::rc::Rc;

use weir_abi::topology::{Edge, Fold as FoldKind, JoinKind, Op};

use super::codec::{KeyCodec, ValueCodec};
use super::grouped::{FoldOf, count_fold};
use super::stream::key_bytes;
use super::{Codec, Item, KStream, NewNode, Rows, Run, Shared, Step, cast, fn_name, store_spec};
use crate::data::{decode_stored, encode_stored};
use crate::{Change, Data};

/// A table: the latest value per key, kept by the host in a named store.
pub struct KTable<K, A> {
    pub(crate) g: Shared,
    pub(crate) node: u32,
    key: Rc<KeyCodec>,
    /// How its rows are encoded.
    pub(crate) rows: Rows,
    /// Whether it is derived from another table without a store of its own
    /// (a join's result, a filtered or mapped table): its node's records are
    /// its updates (a null value deletes).
    derived: bool,
    _t: PhantomData<fn() -> (K, A)>,
}

impl<K: Data, A: Data> KTable<K, A> {
    pub(crate) fn new(g: Shared, node: u32, key: Rc<KeyCodec>) -> Self {
        Self { g, node, key, rows: Rows::Stored, derived: false, _t: PhantomData }
    }

    pub(crate) fn with_rows(mut self, rows: Rows) -> Self {
        self.rows = rows;
        self
    }

    /// Names the aggregation, its store (and changelog) and its repartition topic.
    pub fn named(self, name: &str) -> Self {
        self.g.borrow_mut().rename(self.node, name);
        self
    }

    /// Declares the version of the stored values' encoding, the older versions
    /// `migrate` converts from, and the conversion: `migrate(from, key, stored)`
    /// returns the value in this version's form, or `None` to drop it. Read the
    /// old form with [`crate::decode_state`].
    pub fn state_schema<F>(self, schema: u32, migrates_from: &[u32], migrate: F) -> Self
    where
        F: Fn(u32, &K, &[u8]) -> Result<Option<A>, String> + 'static,
    {
        let mut g = self.g.borrow_mut();
        if let Some(Op::Aggregate { store, .. } | Op::TableAggregate { store, .. }) = g.op_mut(self.node) {
            store.schema = schema;
            store.migrates_from = migrates_from.to_vec();
        }
        let key = self.key.clone();
        g.set_migrate(
            self.node,
            Box::new(move |from, key_bytes, window, stored| {
                let decoded = Codec::new(key.clone(), ValueCodec::text::<()>()).decode(&weir_abi::calls::Rec {
                    key: key_bytes,
                    value: None,
                    old: None,
                    timestamp: 0,
                    window,
                })?;
                let k = cast::<K>(decoded.key.as_ref())?;
                migrate(from, k, stored)?.map(|a| encode_stored(&a)).transpose()
            }),
        );
        drop(g);
        self
    }

    /// The stream of the table's updates (a deleted row, such as a session
    /// merged into another, is a tombstone: see the module docs of `dsl`).
    pub fn to_stream(&self) -> KStream<K, A> {
        if self.derived {
            let output = Codec::new(self.key.clone(), ValueCodec::text_rows::<A>());
            return KStream::new(self.g.clone(), Edge { node: self.node, port: 0 }, output, false);
        }
        let output = Codec::new(self.key.clone(), ValueCodec::rows::<A>(self.rows));
        let mut g = self.g.borrow_mut();
        // One stream of updates per table, however often asked for.
        let node = match g.reader(self.node, |op| matches!(op, Op::ToStream)) {
            Some(node) => node,
            None => g.add(NewNode {
                fn_name: None,
                inputs: vec![Edge { node: self.node, port: 0 }],
                op: Op::ToStream,
                output: Some(output.clone()),
                run: Run::Host,
            }),
        };
        drop(g);
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, false)
    }

    /// The table of the rows `f` accepts: a row it refuses is deleted (so a
    /// key whose row stops passing leaves the table, with a tombstone
    /// downstream, and one that never passed writes nothing) — Kafka Streams'
    /// `KTable#filter`. For a table read from a topic (`table`, `table_with`,
    /// `to_table`) before anything reads it: the filter runs before the store,
    /// which keeps only the rows that pass. For any other table (an
    /// aggregation, a join's result, one read already) it runs on the table's
    /// updates, and — as Kafka Streams does for a table it does not
    /// materialise — an update that does not pass is a tombstone, also for a
    /// key that had no row downstream.
    pub fn filter<F>(self, f: F) -> KTable<K, A>
    where
        F: Fn(&K, &A) -> bool + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let value = match item.value {
                Some(v) if f(cast::<K>(item.key.as_ref())?, cast::<A>(v.as_ref())?) => Some(v),
                _ => None,
            };
            out.push((0, Item { key: item.key, value, timestamp: item.timestamp }));
            Ok(())
        });
        self.with_step(Op::Filter, fn_name::<F>(), step)
    }

    /// The table of each row mapped by `f` (a deleted row stays deleted) —
    /// Kafka Streams' `KTable#mapValues`. For a table read from a topic before
    /// anything reads it: the store keeps the mapped rows; for any other
    /// table it runs on the table's updates.
    pub fn map_values<V2: Data, F>(self, f: F) -> KTable<K, V2>
    where
        F: Fn(&K, A) -> V2 + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let value = match item.value {
                Some(v) => Some(Box::new(f(cast::<K>(item.key.as_ref())?, super::take::<A>(v)?)) as super::Obj),
                None => None,
            };
            out.push((0, Item { key: item.key, value, timestamp: item.timestamp }));
            Ok(())
        });
        self.with_step(Op::MapValues, fn_name::<F>(), step)
    }

    /// This table with guest operator `step` (rows of type `A` in, `V2` out,
    /// a `None` value a deletion) run before its store if it is a table read
    /// from a topic that nothing reads yet; on its updates otherwise.
    fn with_step<V2: Data>(self, op: Op, name: Option<String>, step: Step) -> KTable<K, V2> {
        let from_topic = self.rows == Rows::Text && !self.derived;
        let rows = Codec::new(self.key.clone(), ValueCodec::text_rows::<V2>());
        let new = NewNode { fn_name: name, inputs: vec![], op, output: Some(rows), run: Run::Step(step) };
        let node_output = Codec::new(self.key.clone(), ValueCodec::text_change::<V2>());
        let mut g = self.g.borrow_mut();
        if from_topic && !g.reads(self.node) {
            g.insert_before(self.node, new, node_output);
            drop(g);
            return KTable {
                g: self.g,
                node: self.node,
                key: self.key,
                rows: Rows::Text,
                derived: false,
                _t: PhantomData,
            };
        }
        drop(g);
        // On the updates: the step reads the table's stream of updates.
        let updates = self.to_stream().from;
        let node = self.g.borrow_mut().add(NewNode { inputs: vec![updates], ..new });
        KTable { g: self.g, node, key: self.key, rows: Rows::Text, derived: true, _t: PhantomData }
    }

    /// Joins this table with `other` on their key: for every key with a row in
    /// both, `joiner(left, right)`; each update of either side makes the key's
    /// new result, and a key whose match ends is deleted (a tombstone). Both
    /// tables must come from topics (`table`, `to_table`) partitioned alike.
    pub fn join<R: Data, V: Data, F>(&self, other: &KTable<K, R>, joiner: F) -> KTable<K, V>
    where
        F: Fn(&A, &R) -> V + 'static,
    {
        self.join_tables(other, JoinKind::Inner, fn_name::<F>(), move |l, r| Some(joiner(l?, r?)))
    }

    /// Like [`KTable::join`], for every key with a row in this table, with the
    /// other table's row if it has one.
    pub fn left_join<R: Data, V: Data, F>(&self, other: &KTable<K, R>, joiner: F) -> KTable<K, V>
    where
        F: Fn(&A, Option<&R>) -> V + 'static,
    {
        self.join_tables(other, JoinKind::Left, fn_name::<F>(), move |l, r| Some(joiner(l?, r)))
    }

    /// Like [`KTable::join`], for every key with a row in either table.
    pub fn outer_join<R: Data, V: Data, F>(&self, other: &KTable<K, R>, joiner: F) -> KTable<K, V>
    where
        F: Fn(Option<&A>, Option<&R>) -> V + 'static,
    {
        self.join_tables(other, JoinKind::Outer, fn_name::<F>(), move |l, r| Some(joiner(l, r)))
    }

    fn join_tables<R: Data, V: Data>(
        &self,
        other: &KTable<K, R>,
        kind: JoinKind,
        name: Option<String>,
        joiner: impl Fn(Option<&A>, Option<&R>) -> Option<V> + 'static,
    ) -> KTable<K, V> {
        let mut g = self.g.borrow_mut();
        for t in [(self.rows, self.derived), (other.rows, other.derived)] {
            if t != (Rows::Text, false) {
                g.error("tables joined with each other must be read from topics (`table`, `to_table`)".to_owned());
            }
        }
        let join = g.add(NewNode {
            fn_name: name.as_ref().map(|n| format!("{n}-join")),
            inputs: vec![Edge { node: self.node, port: 0 }, Edge { node: other.node, port: 0 }],
            op: Op::JoinTables { kind },
            output: Some(Codec::new(self.key.clone(), ValueCodec::joined_rows::<A, R>())),
            run: Run::Host,
        });
        let step = pair_joiner(joiner);
        let node = g.add(NewNode {
            fn_name: name,
            inputs: vec![Edge { node: join, port: 0 }],
            op: Op::Joiner,
            output: Some(Codec::new(self.key.clone(), ValueCodec::text_rows::<V>())),
            run: Run::Step(step),
        });
        drop(g);
        KTable { g: self.g.clone(), node, key: self.key.clone(), rows: Rows::Text, derived: true, _t: PhantomData }
    }

    /// Joins this table with `other` by foreign key (Kafka Streams' foreign-key
    /// join): each row whose `foreign_key` has a row in `other`, as
    /// `joiner(row, other's row)`, kept under this table's key; a row without
    /// a foreign key, or whose foreign key has no row, has no result (a
    /// tombstone if it had one). An update of either side makes new results —
    /// a row of `other` changing updates every row that refers to it.
    ///
    /// `name` names the join's store of subscriptions and its two internal
    /// topics (`<name>-subscription-repartition`, `<name>-response-repartition`):
    /// keep it stable across versions. Both tables must come from topics
    /// (`table`, `to_table`) and be read by nothing else; they need not be
    /// partitioned alike.
    pub fn join_foreign<FK: Data, R: Data, V: Data, E, F>(
        &self,
        name: &str,
        other: &KTable<FK, R>,
        foreign_key: E,
        joiner: F,
    ) -> KTable<K, V>
    where
        E: Fn(&A) -> Option<FK> + 'static,
        F: Fn(&A, &R) -> V + 'static,
    {
        self.foreign_join(name, other, JoinKind::Inner, foreign_key, move |l, r| Some(joiner(l?, r?)))
    }

    /// Like [`KTable::join_foreign`], for every row of this table, with the
    /// row its foreign key refers to if there is one.
    pub fn left_join_foreign<FK: Data, R: Data, V: Data, E, F>(
        &self,
        name: &str,
        other: &KTable<FK, R>,
        foreign_key: E,
        joiner: F,
    ) -> KTable<K, V>
    where
        E: Fn(&A) -> Option<FK> + 'static,
        F: Fn(&A, Option<&R>) -> V + 'static,
    {
        self.foreign_join(name, other, JoinKind::Left, foreign_key, move |l, r| Some(joiner(l?, r)))
    }

    fn foreign_join<FK: Data, R: Data, V: Data>(
        &self,
        name: &str,
        other: &KTable<FK, R>,
        kind: JoinKind,
        foreign_key: impl Fn(&A) -> Option<FK> + 'static,
        joiner: impl Fn(Option<&A>, Option<&R>) -> Option<V> + 'static,
    ) -> KTable<K, V> {
        let mut g = self.g.borrow_mut();
        for t in [(self.rows, self.derived), (other.rows, other.derived)] {
            if t != (Rows::Text, false) {
                g.error("tables joined by foreign key must be read from topics (`table`, `to_table`)".to_owned());
            }
        }
        // The foreign keys of each update's new and old row, in the other
        // table's key encoding.
        let extract: Step = Box::new(move |item, out| {
            let Some(change) = item.value else { return Ok(()) };
            let change = super::take::<Change<A>>(change)?;
            let fk = |row: &Option<A>| match row.as_ref().and_then(&foreign_key) {
                Some(k) => key_bytes(&k),
                None => Ok(None),
            };
            let keys = Box::new((fk(&change.new)?, fk(&change.old)?)) as super::Obj;
            out.push((0, Item { key: item.key, value: Some(keys), timestamp: item.timestamp }));
            Ok(())
        });
        let keys = Codec::new(self.key.clone(), ValueCodec::foreign_keys());
        let extractor = g.add(NewNode {
            fn_name: None,
            inputs: vec![Edge { node: self.node, port: 0 }],
            op: Op::ForeignKey,
            output: Some(keys.clone()),
            run: Run::Step(extract),
        });
        g.rename(extractor, &format!("{name}-foreign-key"));
        let join = g.next_index() + 1;
        let subscriptions =
            g.add_side_repartition(Edge { node: extractor, port: 0 }, keys.clone(), join, "subscription");
        let join = g.add(NewNode {
            fn_name: None,
            inputs: vec![Edge { node: subscriptions, port: 0 }, Edge { node: other.node, port: 0 }],
            op: Op::JoinForeign { kind, store: store_spec() },
            output: Some(keys.clone()),
            run: Run::Host,
        });
        g.rename(join, name);
        let responses = g.add_side_repartition(Edge { node: join, port: 0 }, keys, join, "response");
        let answered = g.add(NewNode {
            fn_name: None,
            inputs: vec![Edge { node: responses, port: 0 }, Edge { node: self.node, port: 0 }],
            op: Op::ForeignResponse { kind },
            output: Some(Codec::new(self.key.clone(), ValueCodec::joined_rows::<A, R>())),
            run: Run::Host,
        });
        g.rename(answered, &format!("{name}-response-join"));
        let node = g.add(NewNode {
            fn_name: None,
            inputs: vec![Edge { node: answered, port: 0 }],
            op: Op::Joiner,
            output: Some(Codec::new(self.key.clone(), ValueCodec::text_rows::<V>())),
            run: Run::Step(pair_joiner(joiner)),
        });
        g.rename(node, &format!("{name}-joiner"));
        drop(g);
        KTable { g: self.g.clone(), node, key: self.key.clone(), rows: Rows::Text, derived: true, _t: PhantomData }
    }

    /// Re-groups the table's rows under new keys: `f` maps each row to a new
    /// key and value. Each update of the table takes its old row out of the
    /// group it was in and adds its new row to the group it is in now.
    pub fn group_by<K2: Data, V2: Data, F>(&self, f: F) -> KGroupedTable<K2, V2>
    where
        F: Fn(&K, &A) -> (K2, V2) + 'static,
    {
        if self.derived {
            self.g.borrow_mut().error(
                "re-grouping a derived table (a join's result, or a table filtered or mapped after its store) is not \
                 supported yet"
                    .to_owned(),
            );
        }
        let step: Step = Box::new(move |item, out| {
            let Some(change) = item.value else { return Ok(()) };
            let change = super::take::<Change<A>>(change)?;
            let key = cast::<K>(item.key.as_ref())?;
            let new = change.new.as_ref().map(|v| f(key, v));
            let old = change.old.as_ref().map(|v| f(key, v));
            let ts = item.timestamp;
            let one = |k: K2, new: Option<V2>, old: Option<V2>| Item {
                key: Box::new(k),
                value: Some(Box::new(Change { new, old })),
                timestamp: ts,
            };
            match (new, old) {
                (Some((kn, vn)), Some((ko, vo))) if key_bytes(&kn)? == key_bytes(&ko)? => {
                    out.push((0, one(kn, Some(vn), Some(vo))));
                }
                (new, old) => {
                    // The old row leaves its group first, then the new row joins.
                    if let Some((ko, vo)) = old {
                        out.push((0, one(ko, None, Some(vo))));
                    }
                    if let Some((kn, vn)) = new {
                        out.push((0, one(kn, Some(vn), None)));
                    }
                }
            }
            Ok(())
        });
        let output = Codec::new(Rc::new(KeyCodec::plain::<K2>()), ValueCodec::text_change::<V2>());
        let node = self.g.borrow_mut().add(NewNode {
            fn_name: fn_name::<F>(),
            inputs: vec![Edge { node: self.node, port: 0 }],
            op: Op::TableGroupBy,
            output: Some(output.clone()),
            run: Run::Step(step),
        });
        KGroupedTable { g: self.g.clone(), from: Edge { node, port: 0 }, codec: output, _t: PhantomData }
    }
}

/// A table re-grouped under new keys, ready to aggregate with an adder and a
/// subtractor.
pub struct KGroupedTable<K, V> {
    g: Shared,
    from: Edge,
    codec: Codec,
    _t: PhantomData<fn() -> (K, V)>,
}

fn change<V: Data>(item: &Item) -> Result<Option<&Change<V>>, String> {
    item.value.as_ref().map(|v| cast::<Change<V>>(v.as_ref())).transpose()
}

impl<K: Data, V: Data> KGroupedTable<K, V> {
    fn node<A: Data>(&self, name: Option<String>, kind: FoldKind, fold: super::Fold) -> KTable<K, A> {
        let mut g = self.g.borrow_mut();
        let node = g.next_index() + 1;
        let r = g.add_repartition(self.from, self.codec.clone(), node);
        let key = Rc::new(KeyCodec::plain::<K>());
        let output = Codec::new(key.clone(), ValueCodec::stored_change::<A>());
        let node = g.add(NewNode {
            fn_name: name,
            inputs: vec![Edge { node: r, port: 0 }],
            op: Op::TableAggregate { store: store_spec(), fold: kind },
            output: Some(output),
            run: Run::Fold(fold),
        });
        drop(g);
        KTable::new(self.g.clone(), node, key)
    }

    /// Counts the rows in each group.
    pub fn count(&self) -> KTable<K, u64> {
        let mut fold = count_fold::<K, V>();
        fold.add = Box::new(|n, item| {
            if change::<V>(item)?.is_some_and(|c| c.new.is_some()) {
                *n += 1;
            }
            Ok(())
        });
        fold.subtract = Box::new(|n, item| {
            if change::<V>(item)?.is_some_and(|c| c.old.is_some()) {
                *n = n.saturating_sub(1);
            }
            Ok(())
        });
        self.node(None, FoldKind::Count, fold.erase())
    }

    /// Folds each group's rows into an accumulator: `add` a row that joins,
    /// `subtract` a row that leaves.
    pub fn aggregate<A: Data + Default, F, S>(&self, add: F, subtract: S) -> KTable<K, A>
    where
        F: Fn(&mut A, &K, &V) + 'static,
        S: Fn(&mut A, &K, &V) + 'static,
    {
        let fold = FoldOf::<A> {
            init: Box::new(A::default),
            decode: Box::new(decode_stored::<A>),
            encode: Box::new(|a| encode_stored(a).map(Some)),
            add: Box::new(move |acc, item| {
                if let Some(new) = change::<V>(item)?.and_then(|c| c.new.as_ref()) {
                    add(acc, cast::<K>(item.key.as_ref())?, new);
                }
                Ok(())
            }),
            subtract: Box::new(move |acc, item| {
                if let Some(old) = change::<V>(item)?.and_then(|c| c.old.as_ref()) {
                    subtract(acc, cast::<K>(item.key.as_ref())?, old);
                }
                Ok(())
            }),
            merge: Box::new(|_, _| Err("internal: tables do not merge".to_owned())),
        };
        self.node(fn_name::<F>(), FoldKind::Aggregate, fold.erase())
    }
}

/// The joiner of a join of two tables or two streams: the pair the host hands
/// on, `(left, right)` with either missing, to `joiner`; neither (a match of
/// two tables that ended) is a tombstone.
pub(crate) fn pair_joiner<L: Data, R: Data, V: Data>(
    joiner: impl Fn(Option<&L>, Option<&R>) -> Option<V> + 'static,
) -> Step {
    Box::new(move |item, out| {
        let Some(pair) = item.value else { return Ok(()) };
        let (left, right) = super::take::<(Option<L>, Option<R>)>(pair)?;
        let value = match (&left, &right) {
            (None, None) => None,
            _ => match joiner(left.as_ref(), right.as_ref()) {
                Some(v) => Some(Box::new(v) as super::Obj),
                None => return Ok(()),
            },
        };
        out.push((0, Item { key: item.key, value, timestamp: item.timestamp }));
        Ok(())
    })
}
