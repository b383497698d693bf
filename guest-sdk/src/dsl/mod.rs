//! The topology DSL: build a graph of operators the way Kafka Streams' DSL does,
//! with plain Rust functions (or non-capturing closures) as the user code.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use weir_sdk::dsl::{StreamsBuilder, hopping};
//! use weir_sdk::Windowed;
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Trade { side: String, price: f64 }
//! #[derive(Clone, Default, Serialize, Deserialize)]
//! struct Count { n: u64 }
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Out { ticker: String, start: i64, n: u64 }
//!
//! fn is_ask(_: &String, t: &Trade) -> bool { t.side == "ask" }
//! fn add(c: &mut Count, _: &String, _: &Trade) { c.n += 1 }
//! fn render(k: &Windowed<String>, c: Count) -> Out {
//!     Out { ticker: k.key.clone(), start: k.window.start, n: c.n }
//! }
//!
//! let b = StreamsBuilder::new();
//! b.stream::<String, Trade>("trades")
//!     .filter(is_ask)
//!     .group_by_key()
//!     .windowed_by(hopping(Duration::from_secs(5), Duration::from_secs(1)).grace(Duration::from_secs(2)))
//!     .aggregate(add)
//!     .to_stream()
//!     .map_values(render)
//!     .to("stockstats-output");
//! let topology = b.build().unwrap();
//! assert_eq!(topology.describe().subtopologies().unwrap().len(), 1);
//! ```
//!
//! **Names.** Every node has a name. Stateless operators take the name of the
//! function they run (`is_ask`), or `<operator>-<n>` for a closure; a name used
//! twice gets `-2`, `-3`. Stateful operators — aggregations, whose store and
//! changelog are named after them, and the repartition topics before them —
//! take the function's name too, or the one given with `.named(..)`; a closure
//! without a name is refused at build, because a name that moved with the
//! graph's shape would orphan the state. Sources are named after their topic,
//! sinks `to-<topic>`.
//!
//! **Values** are read and written by the text-or-JSON rule (see [`crate::data`]);
//! aggregates are stored with postcard.

// Type-erased closures over boxed records are what this module is made of.
#![allow(clippy::type_complexity)]

mod codec;
pub(crate) mod grouped;
mod stream;
mod table;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use weir_abi::topology::{Edge, Node, Op, StoreSpec, Topology as Description, TopologyError, WindowSpec};

pub(crate) use codec::{Codec, Item, KeyCodec, Obj, Rows, ValueCodec, cast, cast_mut, take};
pub(crate) use grouped::{FoldOf, no_merge, no_subtract};
pub use grouped::{KGroupedStream, SessionWindowedStream, WindowedStream};
pub use stream::{KStream, Split};

pub use table::{KGroupedTable, KTable};

/// A guest operator: takes a record and pushes `(port, record)` outputs; an
/// `Err` rejects the record with that reason.
pub(crate) type Step = Box<dyn Fn(Item, &mut Vec<(u32, Item)>) -> Result<(), String>>;

/// How an aggregation folds, type-erased.
pub(crate) struct Fold {
    /// A new slot's value.
    pub init: Box<dyn Fn() -> Obj>,
    pub decode: Box<dyn Fn(&[u8]) -> Result<Obj, String>>,
    /// `None`: nothing to store yet (a reduce that has seen no value).
    pub encode: Box<dyn Fn(&dyn std::any::Any) -> Result<Option<Vec<u8>>, String>>,
    pub add: Box<dyn Fn(&mut Obj, &Item) -> Result<(), String>>,
    pub subtract: Box<dyn Fn(&mut Obj, &Item) -> Result<(), String>>,
    pub merge: Box<dyn Fn(&mut Obj, &dyn std::any::Any) -> Result<(), String>>,
    pub clone: Box<dyn Fn(&dyn std::any::Any) -> Result<Obj, String>>,
    /// Converts a value stored under an older schema (`from`, key, window, bytes).
    pub migrate: Option<Migrate>,
}

/// A store's migration: `(from, key, window, stored)` to the new value, or `None`
/// to drop it.
pub(crate) type Migrate =
    Box<dyn Fn(u32, Option<&[u8]>, Option<weir_abi::Window>, &[u8]) -> Result<Option<Vec<u8>>, String>>;

pub(crate) enum Run {
    /// A host operator.
    Host,
    /// A guest operator.
    Step(Step),
    /// An aggregation (run by the host, folded by the guest).
    Fold(Fold),
}

#[derive(Debug, Clone)]
enum Naming {
    /// Stateless: the function's name, else `<kind>-<n>`; de-duplicated.
    Free,
    /// Stateful: the function's name or an explicit one, else refused.
    Required,
    /// Sources: the topic's name.
    Source(String),
    /// Sinks: `to-<topic>`.
    Sink(String),
    /// A repartition before node `n`: `<n's name>-repartition`.
    RepartitionOf(u32),
    /// A repartition before one side of join `n`: `<n's name>-<side>-repartition`.
    RepartitionOfSide(u32, &'static str),
    /// An encoding step before sink `n`: `<n's name>-encode`.
    EncodeFor(u32),
}

pub(crate) struct NodeDef {
    explicit: Option<String>,
    fn_name: Option<String>,
    naming: Naming,
    inputs: Vec<Edge>,
    op: Op,
    /// How this node's output crosses the boundary (none for a sink).
    output: Option<Codec>,
    run: Run,
}

#[derive(Default)]
pub(crate) struct Graph {
    nodes: Vec<NodeDef>,
    errors: Vec<String>,
}

pub(crate) type Shared = Rc<RefCell<Graph>>;

/// The name of the function type `F` if it is a named function, not a closure.
pub(crate) fn fn_name<F>() -> Option<String> {
    let full = std::any::type_name::<F>();
    if full.contains("{{closure}}") || full.contains('<') {
        return None;
    }
    full.rsplit("::").next().map(str::to_owned)
}

pub(crate) struct NewNode {
    pub fn_name: Option<String>,
    pub inputs: Vec<Edge>,
    pub op: Op,
    pub output: Option<Codec>,
    pub run: Run,
}

impl Graph {
    pub(crate) fn add(&mut self, n: NewNode) -> u32 {
        let naming = match &n.op {
            Op::Source { topic } => Naming::Source(topic.clone()),
            Op::Sink { topic } => Naming::Sink(topic.clone()),
            op if op.store().is_some() => Naming::Required,
            _ => Naming::Free,
        };
        self.push(n, naming)
    }

    fn push(&mut self, n: NewNode, naming: Naming) -> u32 {
        self.nodes.push(NodeDef {
            explicit: None,
            fn_name: n.fn_name,
            naming,
            inputs: n.inputs,
            op: n.op,
            output: n.output,
            run: n.run,
        });
        (self.nodes.len() - 1) as u32
    }

    /// Adds a repartition before the (not yet added) node that will be `for_node`.
    pub(crate) fn add_repartition(&mut self, input: Edge, output: Codec, for_node: u32) -> u32 {
        self.push(Self::repartition(input, output), Naming::RepartitionOf(for_node))
    }

    /// Adds a repartition before side `side` (`left`, `right`) of the (not yet
    /// added) join that will be `for_node`.
    pub(crate) fn add_side_repartition(
        &mut self,
        input: Edge,
        output: Codec,
        for_node: u32,
        side: &'static str,
    ) -> u32 {
        self.push(Self::repartition(input, output), Naming::RepartitionOfSide(for_node, side))
    }

    fn repartition(input: Edge, output: Codec) -> NewNode {
        NewNode {
            fn_name: None,
            inputs: vec![input],
            op: Op::Repartition { partitions: None },
            output: Some(output),
            run: Run::Host,
        }
    }

    pub(crate) fn add_encode(&mut self, input: Edge, output: Codec, for_node: u32) -> u32 {
        let n = NewNode {
            fn_name: None,
            inputs: vec![input],
            op: Op::Encode,
            output: Some(output),
            run: Run::Step(Box::new(|item, out| {
                out.push((0, item));
                Ok(())
            })),
        };
        self.push(n, Naming::EncodeFor(for_node))
    }

    pub(crate) fn next_index(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub(crate) fn rename(&mut self, node: u32, name: &str) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.explicit = Some(name.to_owned());
        }
    }

    /// Whether some node reads `node`.
    pub(crate) fn reads(&self, node: u32) -> bool {
        self.nodes.iter().any(|n| n.inputs.iter().any(|e| e.node == node))
    }

    /// The first node reading `node` whose operator `is` accepts.
    pub(crate) fn reader(&self, node: u32, is: impl Fn(&Op) -> bool) -> Option<u32> {
        (self.nodes.iter().enumerate())
            .find(|(_, n)| is(&n.op) && n.inputs.iter().any(|e| e.node == node))
            .map(|(i, _)| i as u32)
    }

    /// Puts the guest operator `new` in front of node
    /// `node`, which must read one input and nothing yet read; `node` then
    /// writes `node_output`. Returns false (changing nothing) otherwise.
    pub(crate) fn insert_before(&mut self, node: u32, new: NewNode, node_output: Codec) -> bool {
        let read = self.reads(node);
        let Some(input) = self.nodes.get(node as usize).and_then(|n| n.inputs.first().copied()) else { return false };
        if read || self.nodes[node as usize].inputs.len() != 1 {
            return false;
        }
        let step = self.add(NewNode { inputs: vec![input], ..new });
        let target = &mut self.nodes[node as usize];
        target.inputs = vec![Edge { node: step, port: 0 }];
        target.output = Some(node_output);
        true
    }

    pub(crate) fn op_mut(&mut self, node: u32) -> Option<&mut Op> {
        self.nodes.get_mut(node as usize).map(|n| &mut n.op)
    }

    pub(crate) fn set_migrate(&mut self, node: u32, migrate: Migrate) {
        if let Some(NodeDef { run: Run::Fold(fold), .. }) = self.nodes.get_mut(node as usize) {
            fold.migrate = Some(migrate);
        }
    }

    pub(crate) fn error(&mut self, e: String) {
        self.errors.push(e);
    }

    fn names(&self) -> Result<Vec<String>, TopologyError> {
        let mut names: Vec<Option<String>> = vec![None; self.nodes.len()];
        let mut used: HashMap<String, usize> = HashMap::new();
        let mut per_kind: HashMap<&'static str, usize> = HashMap::new();
        let resolve = |i: usize,
                       names: &mut Vec<Option<String>>,
                       used: &mut HashMap<String, usize>,
                       per_kind: &mut HashMap<&'static str, usize>|
         -> Result<(), TopologyError> {
            let n = &self.nodes[i];
            let base = match (&n.explicit, &n.naming) {
                (Some(name), _) => name.clone(),
                (None, Naming::Source(topic)) => topic.clone(),
                (None, Naming::Sink(topic)) => format!("to-{topic}"),
                (None, Naming::Required) => match &n.fn_name {
                    Some(f) => f.clone(),
                    None => {
                        let after = n
                            .inputs
                            .first()
                            .map(|e| format!(" reading `{}`", names[e.node as usize].clone().unwrap_or_default()))
                            .unwrap_or_default();
                        return Err(TopologyError {
                            node: None,
                            reason: format!(
                                "the {}{after} has no name: its store and changelog are named after it, so give it one \
                                 with `.named(\"…\")` (or pass a named function instead of a closure)",
                                n.op.kind()
                            ),
                        });
                    }
                },
                (None, Naming::Free) => match &n.fn_name {
                    Some(f) => f.clone(),
                    None => {
                        let k = per_kind.entry(n.op.kind()).or_insert(0);
                        *k += 1;
                        format!("{}-{k}", n.op.kind().replace(' ', "-"))
                    }
                },
                (None, Naming::RepartitionOf(_) | Naming::RepartitionOfSide(..) | Naming::EncodeFor(_)) => {
                    String::new()
                }
            };
            let name = match n.naming {
                Naming::Free | Naming::Sink(_) if n.explicit.is_none() => {
                    let seen = used.entry(base.clone()).or_insert(0);
                    *seen += 1;
                    if *seen == 1 { base } else { format!("{base}-{seen}") }
                }
                _ => base,
            };
            names[i] = Some(name);
            Ok(())
        };
        // Repartition and encode nodes are named after the node they serve,
        // which is added after them: name everything else first.
        for i in 0..self.nodes.len() {
            if !matches!(
                self.nodes[i].naming,
                Naming::RepartitionOf(_) | Naming::RepartitionOfSide(..) | Naming::EncodeFor(_)
            ) {
                resolve(i, &mut names, &mut used, &mut per_kind)?;
            }
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let name = match (&n.explicit, &n.naming) {
                (Some(name), _) => name.clone(),
                (None, Naming::RepartitionOf(of)) => {
                    format!("{}-repartition", names[*of as usize].clone().unwrap_or_default())
                }
                (None, Naming::RepartitionOfSide(of, side)) => {
                    format!("{}-{side}-repartition", names[*of as usize].clone().unwrap_or_default())
                }
                (None, Naming::EncodeFor(of)) => format!("{}-encode", names[*of as usize].clone().unwrap_or_default()),
                _ => continue,
            };
            names[i] = Some(name);
        }
        Ok(names.into_iter().map(Option::unwrap_or_default).collect())
    }
}

/// Builds a topology. Streams, tables and grouped streams are handles into the
/// builder: operators called on them add nodes, and a stream may be read by
/// several operators.
#[derive(Default)]
pub struct StreamsBuilder {
    pub(crate) g: Shared,
}

impl StreamsBuilder {
    /// A new, empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream read from the logical topic `topic` (a pipeline maps it to a real
    /// topic; by default one of the same name), keys `K` and values `V`.
    pub fn stream<K: crate::Data, V: crate::Data>(&self, topic: &str) -> KStream<K, V> {
        self.source(topic, codec::ValueCodec::text::<V>())
    }

    /// The topic `topic` read as a table: the latest value per key, kept by the
    /// host in a store named `<topic>-table` (rename it with
    /// [`KTable::named`]). A record with a null value deletes its key's row; a
    /// record that does not decode as `K`, `V` is dead-lettered by the node
    /// `<topic>-decode`.
    pub fn table<K: crate::Data, V: crate::Data>(&self, topic: &str) -> KTable<K, V> {
        let source = self.source::<K, V>(topic, codec::ValueCodec::text_rows::<V>());
        let step: Step = Box::new(|item, out| {
            out.push((0, item));
            Ok(())
        });
        let decoded = source.add::<K, V>(Op::Validate, None, source.codec.clone(), step);
        self.g.borrow_mut().rename(decoded.from.node, &format!("{topic}-decode"));
        decoded.to_table(&format!("{topic}-table"))
    }

    /// The topic `topic`, whose values are `E` (a change-data-capture envelope,
    /// say), read as a table of `V`: `f` turns each value into the key's new
    /// row, `Ok(None)` to delete it, or an `Err` that dead-letters the record
    /// with the reason, naming `f`. A null value deletes the row without
    /// calling `f`. The store is named `<topic>-table`.
    pub fn table_with<K, E, V, F>(&self, topic: &str, f: F) -> KTable<K, V>
    where
        K: crate::Data,
        E: crate::Data,
        V: crate::Data,
        F: Fn(&K, E) -> Result<Option<V>, String> + 'static,
    {
        let source = self.source::<K, E>(topic, codec::ValueCodec::text_rows::<E>());
        let step: Step = Box::new(move |item, out| {
            let value = match item.value {
                Some(v) => f(cast::<K>(item.key.as_ref())?, take::<E>(v)?)?.map(|v| Box::new(v) as Obj),
                None => None,
            };
            out.push((0, Item { key: item.key, value, timestamp: item.timestamp }));
            Ok(())
        });
        let output = Codec::new(source.codec.key.clone(), codec::ValueCodec::text_rows::<V>());
        let rows = source.add::<K, V>(Op::MapValues, fn_name::<F>(), output, step);
        rows.to_table(&format!("{topic}-table"))
    }

    /// The topic `topic` read whole, on every host, as a table (Kafka Streams'
    /// `GlobalKTable`): a stream joins it with a key it computes from each
    /// record ([`KStream::join_global`]). Its store is named `<topic>-global`.
    /// Rows are the values as read; a null value deletes.
    pub fn global_table<K: crate::Data, V: crate::Data>(&self, topic: &str) -> GlobalKTable<K, V> {
        let output = Codec::new(Rc::new(codec::KeyCodec::plain::<K>()), codec::ValueCodec::text_rows::<V>());
        let mut g = self.g.borrow_mut();
        let node = g.add(NewNode {
            fn_name: None,
            inputs: vec![],
            op: Op::GlobalTable { topic: topic.to_owned(), store: store_spec() },
            output: Some(output),
            run: Run::Host,
        });
        g.rename(node, &format!("{topic}-global"));
        drop(g);
        GlobalKTable { node, _t: std::marker::PhantomData }
    }

    fn source<K: crate::Data, V: crate::Data>(&self, topic: &str, value: codec::ValueCodec) -> KStream<K, V> {
        let key = Rc::new(codec::KeyCodec::plain::<K>());
        let output = Codec::new(key, value);
        let mut g = self.g.borrow_mut();
        if g.nodes.iter().any(|n| matches!(&n.op, Op::Source { topic: t } if t == topic)) {
            g.error(format!("the topic `{topic}` is read twice: read it once and use the stream twice"));
        }
        let node = g.add(NewNode {
            fn_name: None,
            inputs: vec![],
            op: Op::Source { topic: topic.to_owned() },
            output: Some(output.clone()),
            run: Run::Host,
        });
        drop(g);
        KStream::new(self.g.clone(), Edge { node, port: 0 }, output, false)
    }

    /// Finishes the topology: names every node, checks the graph as the host will
    /// and readies it to run.
    pub fn build(self) -> Result<Topology, TopologyError> {
        let mut g = std::mem::take(&mut *self.g.borrow_mut());
        if let Some(e) = g.errors.first() {
            return Err(TopologyError { node: None, reason: e.clone() });
        }
        let names = g.names()?;
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (def, name) in g.nodes.iter_mut().zip(&names) {
            let mut op = def.op.clone();
            if let Op::Aggregate { store, .. }
            | Op::TableAggregate { store, .. }
            | Op::ToTable { store }
            | Op::JoinStreams { store, .. }
            | Op::JoinForeign { store, .. }
            | Op::GlobalTable { store, .. } = &mut op
            {
                store.name = name.clone();
            }
            nodes.push(Node { name: name.clone(), inputs: def.inputs.clone(), op });
        }
        let description = Description { nodes };
        description.validate()?;
        let mut consumers: Vec<Vec<Vec<u32>>> =
            description.nodes.iter().map(|n| vec![Vec::new(); n.op.ports() as usize]).collect();
        for (i, n) in description.nodes.iter().enumerate() {
            for e in &n.inputs {
                consumers[e.node as usize][e.port as usize].push(i as u32);
            }
        }
        let runs = g.nodes.into_iter().map(|d| (d.output, d.run)).collect();
        Ok(Topology { description, runs, consumers })
    }
}

/// A built topology: its description (what `describe` returns) and the user
/// functions that run it.
pub struct Topology {
    pub(crate) description: Description,
    pub(crate) runs: Vec<(Option<Codec>, Run)>,
    /// Per node and port, the nodes reading it.
    pub(crate) consumers: Vec<Vec<Vec<u32>>>,
}

impl Topology {
    /// The graph as the host sees it.
    pub fn describe(&self) -> &Description {
        &self.description
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology").field("description", &self.description).finish_non_exhaustive()
    }
}

/// Time windows or sliding windows for [`KGroupedStream::windowed_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    spec: WindowSpec,
}

/// Session windows for [`KGroupedStream::windowed_by`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionWindows {
    spec: WindowSpec,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Back-to-back windows of `size`, aligned to the epoch, no grace.
pub fn tumbling(size: Duration) -> Windows {
    Windows { spec: WindowSpec::Tumbling { size_ms: ms(size), grace_ms: 0 } }
}

/// Windows of `size` starting every `advance`, aligned to the epoch, no grace.
pub fn hopping(size: Duration, advance: Duration) -> Windows {
    Windows { spec: WindowSpec::Hopping { size_ms: ms(size), advance_ms: ms(advance), grace_ms: 0 } }
}

/// Kafka Streams' sliding windows: one window per distinct set of records at
/// most `difference` apart, no grace.
pub fn sliding(difference: Duration) -> Windows {
    Windows { spec: WindowSpec::Sliding { difference_ms: ms(difference), grace_ms: 0 } }
}

/// Sessions of records at most `gap` apart, no grace.
pub fn session(gap: Duration) -> SessionWindows {
    SessionWindows { spec: WindowSpec::Session { gap_ms: ms(gap), grace_ms: 0 } }
}

fn with_grace(spec: WindowSpec, grace: Duration) -> WindowSpec {
    let g = ms(grace);
    match spec {
        WindowSpec::Tumbling { size_ms, .. } => WindowSpec::Tumbling { size_ms, grace_ms: g },
        WindowSpec::Hopping { size_ms, advance_ms, .. } => WindowSpec::Hopping { size_ms, advance_ms, grace_ms: g },
        WindowSpec::Sliding { difference_ms, .. } => WindowSpec::Sliding { difference_ms, grace_ms: g },
        WindowSpec::Session { gap_ms, .. } => WindowSpec::Session { gap_ms, grace_ms: g },
    }
}

impl Windows {
    /// How long after a window ends records are still accepted into it.
    pub fn grace(self, grace: Duration) -> Self {
        Self { spec: with_grace(self.spec, grace) }
    }

    /// The description.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }
}

impl SessionWindows {
    /// How long after a session ends records are still accepted into it.
    pub fn grace(self, grace: Duration) -> Self {
        Self { spec: with_grace(self.spec, grace) }
    }

    /// The description.
    pub fn spec(&self) -> WindowSpec {
        self.spec
    }
}

/// A topic read whole by every task, for joins by a key computed from the
/// stream: see [`StreamsBuilder::global_table`].
pub struct GlobalKTable<K, V> {
    pub(crate) node: u32,
    _t: std::marker::PhantomData<fn() -> (K, V)>,
}

/// The window of a join of two streams, for [`KStream::join_windowed`]: a
/// record of the left stream at `t` meets the right stream's records at
/// `t - before ..= t + after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinWindows {
    window: weir_abi::topology::JoinWindow,
    name: Option<String>,
}

/// Records at most `difference` apart meet (either way), no grace (Kafka
/// Streams' `JoinWindows.ofTimeDifferenceWithNoGrace`).
pub fn join_windows(difference: Duration) -> JoinWindows {
    let d = ms(difference);
    JoinWindows { window: weir_abi::topology::JoinWindow { before_ms: d, after_ms: d, grace_ms: 0 }, name: None }
}

impl JoinWindows {
    /// How long before a left record a right one may be.
    pub fn before(mut self, before: Duration) -> Self {
        self.window.before_ms = ms(before);
        self
    }

    /// How long after a left record a right one may be.
    pub fn after(mut self, after: Duration) -> Self {
        self.window.after_ms = ms(after);
        self
    }

    /// How long after a record's window ends late records still meet it.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.window.grace_ms = ms(grace);
        self
    }

    /// Names the join (its store and changelog are named after it); by default
    /// `<joiner>-join`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// The description.
    pub fn spec(&self) -> weir_abi::topology::JoinWindow {
        self.window
    }
}

pub(crate) fn store_spec() -> StoreSpec {
    StoreSpec { name: String::new(), schema: 1, migrates_from: vec![], changelog: true }
}

#[cfg(test)]
mod tests;
