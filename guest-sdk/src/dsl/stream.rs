//! Streams and their stateless operators.

use std::marker::PhantomData;
use std::rc::Rc;

use weir_abi::topology::{Edge, JoinKind, Op};

use super::codec::{KeyCodec, ValueCodec};
use super::{Codec, Item, KGroupedStream, KTable, NewNode, Rows, Run, Shared, Step, cast, fn_name, store_spec, take};
use crate::Data;
use crate::data::encode_text_or_json;

/// A stream of records with keys `K` and values `V`.
pub struct KStream<K, V> {
    pub(crate) g: Shared,
    pub(crate) from: Edge,
    pub(crate) codec: Codec,
    /// Whether an operator since the last source or repartition may have
    /// changed keys (grouping then needs a repartition).
    pub(crate) rekeyed: bool,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for KStream<K, V> {
    fn clone(&self) -> Self {
        Self { g: self.g.clone(), from: self.from, codec: self.codec.clone(), rekeyed: self.rekeyed, _t: PhantomData }
    }
}

fn keep<F>(out: &mut Vec<(u32, Item)>, item: Item, keep: F) -> Result<(), String>
where
    F: FnOnce(&Item) -> Result<bool, String>,
{
    if keep(&item)? {
        out.push((0, item));
    }
    Ok(())
}

impl<K: Data, V: Data> KStream<K, V> {
    pub(crate) fn new(g: Shared, from: Edge, codec: Codec, rekeyed: bool) -> Self {
        Self { g, from, codec, rekeyed, _t: PhantomData }
    }

    pub(crate) fn add<K2: Data, V2: Data>(
        &self,
        op: Op,
        name: Option<String>,
        output: Codec,
        step: Step,
    ) -> KStream<K2, V2> {
        let rekeys = op.changes_key();
        let node = self.g.borrow_mut().add(NewNode {
            fn_name: name,
            inputs: vec![self.from],
            op,
            output: Some(output.clone()),
            run: Run::Step(step),
        });
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, self.rekeyed || rekeys)
    }

    fn same_key<V2: Data>(&self) -> Codec {
        Codec::new(self.codec.key.clone(), ValueCodec::text::<V2>())
    }

    fn new_key<K2: Data, V2: Data>() -> Codec {
        Codec::new(Rc::new(KeyCodec::plain::<K2>()), ValueCodec::text::<V2>())
    }

    /// Names the operator that produced this stream (see the module docs on names).
    pub fn named(self, name: &str) -> Self {
        self.g.borrow_mut().rename(self.from.node, name);
        self
    }

    /// Checks each record: an `Err` sends it to the dead-letter topic with that
    /// reason, naming this operator.
    pub fn validate<F>(&self, f: F) -> KStream<K, V>
    where
        F: Fn(&K, &V) -> Result<(), String> + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            if let Some(v) = &item.value {
                f(cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?)?;
            }
            out.push((0, item));
            Ok(())
        });
        self.add(Op::Validate, fn_name::<F>(), self.same_key::<V>(), step)
    }

    /// Keeps the records `f` accepts.
    pub fn filter<F>(&self, f: F) -> KStream<K, V>
    where
        F: Fn(&K, &V) -> bool + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            keep(out, item, |item| match &item.value {
                Some(v) => Ok(f(cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?)),
                None => Ok(true),
            })
        });
        self.add(Op::Filter, fn_name::<F>(), self.same_key::<V>(), step)
    }

    /// Keeps the records `f` rejects.
    pub fn filter_not<F>(&self, f: F) -> KStream<K, V>
    where
        F: Fn(&K, &V) -> bool + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            keep(out, item, |item| match &item.value {
                Some(v) => Ok(!f(cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?)),
                None => Ok(true),
            })
        });
        self.add(Op::FilterNot, fn_name::<F>(), self.same_key::<V>(), step)
    }

    /// Maps each record to a new key and value. Grouping the result needs a
    /// repartition (added for you).
    pub fn map<K2: Data, V2: Data, F>(&self, f: F) -> KStream<K2, V2>
    where
        F: Fn(K, V) -> (K2, V2) + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let Some(v) = item.value else { return Ok(()) };
            let (k, v) = f(take::<K>(item.key)?, take::<V>(v)?);
            out.push((0, Item { key: Box::new(k), value: Some(Box::new(v)), timestamp: item.timestamp }));
            Ok(())
        });
        self.add(Op::Map, fn_name::<F>(), Self::new_key::<K2, V2>(), step)
    }

    /// Maps each value, keeping the key.
    pub fn map_values<V2: Data, F>(&self, f: F) -> KStream<K, V2>
    where
        F: Fn(&K, V) -> V2 + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let value = match item.value {
                Some(v) => Some(Box::new(f(cast::<K>(item.key.as_ref())?, take::<V>(v)?)) as super::Obj),
                None => None,
            };
            out.push((0, Item { key: item.key, value, timestamp: item.timestamp }));
            Ok(())
        });
        self.add(Op::MapValues, fn_name::<F>(), self.same_key::<V2>(), step)
    }

    /// Maps each record to any number of records with new keys.
    pub fn flat_map<K2: Data, V2: Data, I, F>(&self, f: F) -> KStream<K2, V2>
    where
        I: IntoIterator<Item = (K2, V2)>,
        F: Fn(K, V) -> I + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let Some(v) = item.value else { return Ok(()) };
            for (k, v) in f(take::<K>(item.key)?, take::<V>(v)?) {
                out.push((0, Item { key: Box::new(k), value: Some(Box::new(v)), timestamp: item.timestamp }));
            }
            Ok(())
        });
        self.add(Op::FlatMap, fn_name::<F>(), Self::new_key::<K2, V2>(), step)
    }

    /// Maps each value to any number of values, keeping the key.
    pub fn flat_map_values<V2: Data, I, F>(&self, f: F) -> KStream<K, V2>
    where
        I: IntoIterator<Item = V2>,
        F: Fn(&K, V) -> I + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let Some(v) = item.value else {
                out.push((0, item));
                return Ok(());
            };
            let key = cast::<K>(item.key.as_ref())?;
            for v2 in f(key, take::<V>(v)?) {
                out.push((
                    0,
                    Item { key: Box::new(key.clone()), value: Some(Box::new(v2)), timestamp: item.timestamp },
                ));
            }
            Ok(())
        });
        self.add(Op::FlatMapValues, fn_name::<F>(), self.same_key::<V2>(), step)
    }

    /// Sets a new key computed from each record. Grouping the result needs a
    /// repartition (added for you).
    pub fn select_key<K2: Data, F>(&self, f: F) -> KStream<K2, V>
    where
        F: Fn(&K, &V) -> K2 + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            let Some(v) = item.value else { return Ok(()) };
            let k2 = f(cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?);
            out.push((0, Item { key: Box::new(k2), value: Some(v), timestamp: item.timestamp }));
            Ok(())
        });
        self.add(Op::SelectKey, fn_name::<F>(), Self::new_key::<K2, V>(), step)
    }

    /// Calls `f` for each record and passes the record on.
    pub fn peek<F>(&self, f: F) -> KStream<K, V>
    where
        F: Fn(&K, &V) + 'static,
    {
        let step: Step = Box::new(move |item, out| {
            if let Some(v) = &item.value {
                f(cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?);
            }
            out.push((0, item));
            Ok(())
        });
        self.add(Op::Peek, fn_name::<F>(), self.same_key::<V>(), step)
    }

    /// Splits the stream into named branches: each record goes to the first
    /// branch whose predicate accepts it.
    pub fn split(&self, name: &str) -> Split<K, V> {
        Split { stream: self.clone(), name: name.to_owned(), branches: Vec::new() }
    }

    /// The union of this stream and `other`.
    pub fn merge(&self, other: &KStream<K, V>) -> KStream<K, V> {
        let output = if self.codec.value.is_stored() { other.codec.clone() } else { self.codec.clone() };
        let output = if output.value.is_stored() { self.same_key::<V>() } else { output };
        let node = self.g.borrow_mut().add(NewNode {
            fn_name: None,
            inputs: vec![self.from, other.from],
            op: Op::Merge,
            output: Some(output.clone()),
            run: Run::Step(Box::new(|item, out| {
                out.push((0, item));
                Ok(())
            })),
        });
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, self.rekeyed || other.rekeyed)
    }

    /// Writes the stream to the logical topic `topic`.
    pub fn to(&self, topic: &str) {
        let mut g = self.g.borrow_mut();
        let mut input = self.from;
        let from_table = g.op_mut(input.node).is_some_and(|op| matches!(op, Op::ToStream));
        if self.codec.value.is_stored() || from_table {
            // A table's rows reach sinks through the guest (the host renders
            // them there): stored values are written as text-or-JSON, rows
            // read from a topic as they are.
            let sink = g.next_index() + 1;
            let encoded = match self.codec.value.is_stored() {
                true => self.same_key::<V>(),
                false => Codec::new(self.codec.key.clone(), ValueCodec::text_rows::<V>()),
            };
            let node = g.add_encode(input, encoded, sink);
            input = Edge { node, port: 0 };
        }
        g.add(NewNode {
            fn_name: None,
            inputs: vec![input],
            op: Op::Sink { topic: topic.to_owned() },
            output: None,
            run: Run::Host,
        });
    }

    /// The stream read as a table: each record's value becomes its key's row (a
    /// null value deletes it), kept by the host in the store `name` (and its
    /// changelog). Through a repartition if keys changed upstream.
    pub fn to_table(&self, name: &str) -> KTable<K, V> {
        let mut g = self.g.borrow_mut();
        let mut input = self.from;
        if self.rekeyed {
            let node = g.next_index() + 1;
            let r = g.add_repartition(input, self.codec.clone(), node);
            input = Edge { node: r, port: 0 };
        }
        let output = Codec::new(self.codec.key.clone(), ValueCodec::text_change::<V>());
        let node = g.add(NewNode {
            fn_name: None,
            inputs: vec![input],
            op: Op::ToTable { store: store_spec() },
            output: Some(output),
            run: Run::Host,
        });
        g.rename(node, name);
        drop(g);
        KTable::new(self.g.clone(), node, self.codec.key.clone()).with_rows(Rows::Text)
    }

    /// Joins each record with its key's row in `table` as the table is at that
    /// record's place in time (see the README's "Tables and joins"): `joiner`
    /// combines value and row (Kafka Streams' `ValueJoiner`). A record whose
    /// key has no row is dropped; one without a key is dead-lettered. Through a
    /// repartition if keys changed upstream (the table and the stream must be
    /// partitioned alike).
    pub fn join<R: Data, V2: Data, F>(&self, table: &KTable<K, R>, joiner: F) -> KStream<K, V2>
    where
        F: Fn(&V, &R) -> V2 + 'static,
    {
        self.join_node(table, false, fn_name::<F>(), move |_, v, r| r.map(|r| joiner(v, r)))
    }

    /// Like [`KStream::join`], but a record whose key has no row (or that has
    /// no key) is joined with `None` rather than dropped.
    pub fn left_join<R: Data, V2: Data, F>(&self, table: &KTable<K, R>, joiner: F) -> KStream<K, V2>
    where
        F: Fn(&V, Option<&R>) -> V2 + 'static,
    {
        self.join_node(table, true, fn_name::<F>(), move |_, v, r| Some(joiner(v, r)))
    }

    /// [`KStream::join`] with a joiner that also reads the key (Kafka Streams'
    /// `ValueJoinerWithKey`).
    pub fn join_with_key<R: Data, V2: Data, F>(&self, table: &KTable<K, R>, joiner: F) -> KStream<K, V2>
    where
        F: Fn(&K, &V, &R) -> V2 + 'static,
    {
        self.join_node(table, false, fn_name::<F>(), move |k, v, r| r.map(|r| joiner(k, v, r)))
    }

    /// [`KStream::left_join`] with a joiner that also reads the key.
    pub fn left_join_with_key<R: Data, V2: Data, F>(&self, table: &KTable<K, R>, joiner: F) -> KStream<K, V2>
    where
        F: Fn(&K, &V, Option<&R>) -> V2 + 'static,
    {
        self.join_node(table, true, fn_name::<F>(), move |k, v, r| Some(joiner(k, v, r)))
    }

    fn join_node<R: Data, V2: Data>(
        &self,
        table: &KTable<K, R>,
        left: bool,
        name: Option<String>,
        joiner: impl Fn(&K, &V, Option<&R>) -> Option<V2> + 'static,
    ) -> KStream<K, V2> {
        let mut input = self.from;
        if self.rekeyed {
            let mut g = self.g.borrow_mut();
            let node = g.next_index() + 1;
            let r = g.add_repartition(input, self.codec.clone(), node);
            input = Edge { node: r, port: 0 };
        }
        let rows = Edge { node: table.node, port: 0 };
        self.join_node_from(input, rows, Op::JoinTable { left }, table.rows, name, joiner)
    }

    /// A host join node `op` reading `input` and `rows`, and the joiner after
    /// it: records leave the join with the row beside them, in `rows_form`.
    fn join_node_from<R: Data, V2: Data>(
        &self,
        input: Edge,
        rows: Edge,
        op: Op,
        rows_form: Rows,
        name: Option<String>,
        joiner: impl Fn(&K, &V, Option<&R>) -> Option<V2> + 'static,
    ) -> KStream<K, V2> {
        // A stream–table join reads a repartitioned stream if keys changed; a
        // join with a global table keeps the stream's partitioning.
        let rekeyed = matches!(op, Op::JoinGlobal { .. }) && self.rekeyed;
        let mut g = self.g.borrow_mut();
        let pairs = Codec::new(self.codec.key.clone(), ValueCodec::joined::<V, R>(rows_form));
        let join = g.add(NewNode {
            fn_name: name.as_ref().map(|n| format!("{n}-join")),
            inputs: vec![input, rows],
            op,
            output: Some(pairs),
            run: Run::Host,
        });
        let step: Step = Box::new(move |item, out| {
            let Some(pair) = item.value else { return Ok(()) };
            let (value, row) = take::<(V, Option<R>)>(pair)?;
            if let Some(joined) = joiner(cast::<K>(item.key.as_ref())?, &value, row.as_ref()) {
                out.push((0, Item { key: item.key, value: Some(Box::new(joined)), timestamp: item.timestamp }));
            }
            Ok(())
        });
        let output = Codec::new(self.codec.key.clone(), ValueCodec::text::<V2>());
        let node = g.add(NewNode {
            fn_name: name,
            inputs: vec![Edge { node: join, port: 0 }],
            op: Op::Joiner,
            output: Some(output.clone()),
            run: Run::Step(step),
        });
        drop(g);
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, rekeyed)
    }

    /// Joins each record with the row of `global` whose key `selector` computes
    /// from it (an `Err` dead-letters the record, naming the selector):
    /// `joiner(value, row)`, under the record's own key. A record whose
    /// selected key has no row is dropped. The global table is read whole on
    /// every host, so the stream need not be partitioned like its topic; rows
    /// are as read so far (not synchronised with the stream's event time).
    pub fn join_global<KG: Data, VG: Data, V2: Data, S, F>(
        &self,
        global: &super::GlobalKTable<KG, VG>,
        selector: S,
        joiner: F,
    ) -> KStream<K, V2>
    where
        S: Fn(&K, &V) -> Result<KG, String> + 'static,
        F: Fn(&V, &VG) -> V2 + 'static,
    {
        self.global_join(global, false, selector, fn_name::<F>(), move |_, v, r| r.map(|r| joiner(v, r)))
    }

    /// Like [`KStream::join_global`], but a record whose selected key has no
    /// row is joined with `None` rather than dropped.
    pub fn left_join_global<KG: Data, VG: Data, V2: Data, S, F>(
        &self,
        global: &super::GlobalKTable<KG, VG>,
        selector: S,
        joiner: F,
    ) -> KStream<K, V2>
    where
        S: Fn(&K, &V) -> Result<KG, String> + 'static,
        F: Fn(&V, Option<&VG>) -> V2 + 'static,
    {
        self.global_join(global, true, selector, fn_name::<F>(), move |_, v, r| Some(joiner(v, r)))
    }

    fn global_join<KG: Data, VG: Data, V2: Data, S>(
        &self,
        global: &super::GlobalKTable<KG, VG>,
        left: bool,
        selector: S,
        name: Option<String>,
        joiner: impl Fn(&K, &V, Option<&VG>) -> Option<V2> + 'static,
    ) -> KStream<K, V2>
    where
        S: Fn(&K, &V) -> Result<KG, String> + 'static,
    {
        let select: Step = Box::new(move |item, out| {
            let Some(value) = item.value else { return Ok(()) };
            let (key, value) = (super::take::<K>(item.key)?, take::<V>(value)?);
            let selected = selector(&key, &value)?;
            let pair = Box::new((key, value)) as super::Obj;
            out.push((0, Item { key: Box::new(selected), value: Some(pair), timestamp: item.timestamp }));
            Ok(())
        });
        let selected = Codec::new(Rc::new(KeyCodec::plain::<KG>()), ValueCodec::with_own_key::<K, V>());
        let mut g = self.g.borrow_mut();
        let selector_node = g.add(NewNode {
            fn_name: fn_name::<S>(),
            inputs: vec![self.from],
            op: Op::GlobalKey,
            output: Some(selected),
            run: Run::Step(select),
        });
        drop(g);
        self.join_node_from(
            Edge { node: selector_node, port: 0 },
            Edge { node: global.node, port: 0 },
            Op::JoinGlobal { left },
            Rows::Text,
            name,
            joiner,
        )
    }

    /// Joins this stream with `other` within `windows`: for each record of
    /// either and each record of the other with its key whose time is in the
    /// window, `joiner(this value, other value)`, with the later timestamp.
    /// Both sides are kept in a store (with a changelog) named after the join.
    /// Through repartitions if keys changed upstream.
    pub fn join_windowed<V2: Data, V3: Data, F>(
        &self,
        other: &KStream<K, V2>,
        windows: super::JoinWindows,
        joiner: F,
    ) -> KStream<K, V3>
    where
        F: Fn(&V, &V2) -> V3 + 'static,
    {
        self.streams_join(other, windows, JoinKind::Inner, fn_name::<F>(), move |l, r| Some(joiner(l?, r?)))
    }

    /// Like [`KStream::join_windowed`], and a record of this stream that met
    /// nothing by the time its window closed is joined with `None` then.
    pub fn left_join_windowed<V2: Data, V3: Data, F>(
        &self,
        other: &KStream<K, V2>,
        windows: super::JoinWindows,
        joiner: F,
    ) -> KStream<K, V3>
    where
        F: Fn(&V, Option<&V2>) -> V3 + 'static,
    {
        self.streams_join(other, windows, JoinKind::Left, fn_name::<F>(), move |l, r| Some(joiner(l?, r)))
    }

    /// Like [`KStream::left_join_windowed`], for records of either stream.
    pub fn outer_join_windowed<V2: Data, V3: Data, F>(
        &self,
        other: &KStream<K, V2>,
        windows: super::JoinWindows,
        joiner: F,
    ) -> KStream<K, V3>
    where
        F: Fn(Option<&V>, Option<&V2>) -> V3 + 'static,
    {
        self.streams_join(other, windows, JoinKind::Outer, fn_name::<F>(), move |l, r| Some(joiner(l, r)))
    }

    fn streams_join<V2: Data, V3: Data>(
        &self,
        other: &KStream<K, V2>,
        windows: super::JoinWindows,
        kind: JoinKind,
        name: Option<String>,
        joiner: impl Fn(Option<&V>, Option<&V2>) -> Option<V3> + 'static,
    ) -> KStream<K, V3> {
        let mut g = self.g.borrow_mut();
        let sides =
            [(self.from, &self.codec, self.rekeyed, "left"), (other.from, &other.codec, other.rekeyed, "right")];
        // The join comes after the repartitions its re-keyed sides need.
        let join_at = g.next_index() + sides.iter().filter(|s| s.2).count() as u32;
        let mut inputs = Vec::with_capacity(2);
        for (from, codec, rekeyed, side) in sides {
            inputs.push(match rekeyed {
                true => Edge { node: g.add_side_repartition(from, codec.clone(), join_at, side), port: 0 },
                false => from,
            });
        }
        let join = g.add(NewNode {
            fn_name: windows.name.clone().or(name.as_ref().map(|n| format!("{n}-join"))),
            inputs,
            op: Op::JoinStreams { kind, window: windows.spec(), store: store_spec() },
            output: Some(Codec::new(self.codec.key.clone(), ValueCodec::joined_rows::<V, V2>())),
            run: Run::Host,
        });
        if let Some(name) = &windows.name {
            g.rename(join, name);
        }
        let output = Codec::new(self.codec.key.clone(), ValueCodec::text::<V3>());
        let node = g.add(NewNode {
            fn_name: name,
            inputs: vec![Edge { node: join, port: 0 }],
            op: Op::Joiner,
            output: Some(output.clone()),
            run: Run::Step(super::table::pair_joiner(joiner)),
        });
        drop(g);
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, false)
    }

    /// Groups by the current key (through a repartition if keys changed upstream).
    pub fn group_by_key(&self) -> KGroupedStream<K, V> {
        KGroupedStream::new(self.clone())
    }

    /// Groups by a new key computed from each record (through a repartition).
    pub fn group_by<K2: Data, F>(&self, f: F) -> KGroupedStream<K2, V>
    where
        F: Fn(&K, &V) -> K2 + 'static,
    {
        KGroupedStream::new(self.select_key(f))
    }
}

/// A stream being split into named branches; finish with [`Split::branches`].
pub struct Split<K, V> {
    stream: KStream<K, V>,
    name: String,
    #[allow(clippy::type_complexity)]
    branches: Vec<(String, Option<Box<dyn Fn(&K, &V) -> bool>>)>,
}

impl<K: Data, V: Data> Split<K, V> {
    /// Records `f` accepts (and no earlier branch took) go to branch `name`.
    pub fn branch<F>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(&K, &V) -> bool + 'static,
    {
        self.branches.push((name.to_owned(), Some(Box::new(f))));
        self
    }

    /// Records no branch took go to branch `name` (otherwise they are dropped).
    pub fn default_branch(mut self, name: &str) -> Self {
        self.branches.push((name.to_owned(), None));
        self
    }

    /// The branches' streams, in the order they were declared.
    pub fn branches(self) -> Vec<KStream<K, V>> {
        let mut names = Vec::new();
        let mut preds = Vec::new();
        let mut default_name = None;
        for (name, f) in self.branches {
            match f {
                Some(f) => {
                    names.push(name);
                    preds.push(f);
                }
                None => default_name = Some(name),
            }
        }
        let has_default = default_name.is_some();
        let ports = preds.len() as u32;
        let step: Step = Box::new(move |item, out| {
            let Some(v) = &item.value else {
                // A deletion goes to every branch: each may feed a table.
                for port in 0..ports {
                    out.push((port, Item { key: clone_obj::<K>(&item)?, value: None, timestamp: item.timestamp }));
                }
                if has_default {
                    out.push((ports, item));
                }
                return Ok(());
            };
            let (k, v) = (cast::<K>(item.key.as_ref())?, cast::<V>(v.as_ref())?);
            match preds.iter().position(|p| p(k, v)) {
                Some(port) => out.push((port as u32, item)),
                None if has_default => out.push((ports, item)),
                None => {}
            }
            Ok(())
        });
        let mut branch_names = names.clone();
        if let Some(d) = &default_name {
            branch_names.push(d.clone());
        }
        let s = &self.stream;
        let output = s.same_key::<V>();
        let node = s.g.borrow_mut().add(NewNode {
            fn_name: Some(self.name),
            inputs: vec![s.from],
            op: Op::Split { branches: branch_names.clone(), default_branch: has_default },
            output: Some(output.clone()),
            run: Run::Step(step),
        });
        (0..branch_names.len() as u32)
            .map(|port| KStream::new(s.g.clone(), Edge { node, port }, output.clone(), s.rekeyed))
            .collect()
    }
}

fn clone_obj<K: Data>(item: &Item) -> Result<super::Obj, String> {
    Ok(Box::new(cast::<K>(item.key.as_ref())?.clone()))
}

/// The bytes of a key, to compare keys of any type.
pub(crate) fn key_bytes<K: Data>(k: &K) -> Result<Option<Vec<u8>>, String> {
    encode_text_or_json(k)
}
