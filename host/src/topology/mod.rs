//! What the host runs of a plugin's topology: the [`Shape`] it derives from the
//! graph `describe` returned, checked when the plugin is loaded (so a topology the
//! host cannot run is refused at upload, never at the first record).
//!
//! The graph is cut at repartition topics into **sub-topologies**; tasks are
//! (sub-topology, partition). A sub-topology reads one topic (a source or a
//! repartition topic) or several merged or joined ones — co-partitioned: task
//! `p` reads partition `p` of each — and holds at most **one aggregation or
//! table**:
//!
//! ```text
//! input → [guest operators] → sinks / repartitions                          (stateless)
//! input → [guest operators] → aggregate → to_stream → [guest operators] → sinks / repartitions
//! input → [guest operators] → aggregate → table group_by → repartition       (re-grouped table)
//! repartition → table aggregate → to_stream → [guest operators] → sinks / repartitions
//! input → [guest operators] → to_table → (to_stream | group_by, as an aggregate)
//! input' → [guest operators] → join(table) → joiner → [guest operators] → sinks / repartitions
//! ```
//!
//! An aggregation is windowed (tumbling, hopping, sliding, session) or not (a
//! table: latest aggregate per key), or a table aggregate folding re-grouped
//! table updates with an adder and a subtractor, or a table of the latest value
//! per key (`to_table`), whose rows the host replaces itself. The guest
//! operators before an aggregation run in the same call that folds records into
//! it (they keep keys and timestamps, so the host plans windows from the input
//! record); those after it render the rows the aggregation emits at a commit.
//! (Sliding and session windows depend on which records reach them, so the
//! operators before them run in a call of their own first, as do operators that
//! lead both into the aggregation and to sinks or repartition topics.) Records
//! of merged inputs enter the guest at their own input's output, in the order
//! they were read.
//!
//! A **stream–table join** reads another input of the sub-topology whose table
//! (a `to_table` or a non-windowed aggregate) it looks rows up in: the records
//! of that input (through the operators before the join, in a call of their
//! own) leave the join with their row beside them towards the joiner. A
//! sub-topology may instead hold one join of two tables or of two streams, each
//! side fed by an input of its own; and any input may be joined with global
//! tables (read whole by every task, so no part of any sub-topology), by a key
//! a guest selector computes. A **foreign-key join** spans two sub-topologies
//! and two repartition topics (see [`ForeignJoin`]): the left table's, whose
//! updates go through the foreign-key extractor as subscriptions and which
//! joins the responses with its rows, and the right table's, which answers
//! them. What this host cannot run is refused with the node named.

pub mod describe;

use std::collections::BTreeMap;

use weir_abi::topology::{Edge, Emit, Flow, JoinKind, JoinWindow, Op, StoreSpec, Topology, TopologyError, WindowSpec};

use crate::window::Windowing;

/// A logical topic the topology reads or writes, and the node that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The source or sink node.
    pub node: u32,
    /// Its logical topic name.
    pub topic: String,
}

/// A repartition node: written by one sub-topology, read by another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repartition {
    /// The node.
    pub node: u32,
    /// Its name (its topic is named after it).
    pub name: String,
    /// Its partition count, if the plugin set one.
    pub partitions: Option<u32>,
    /// What its records are.
    pub carries: Carries,
}

/// What the records of a repartition topic are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carries {
    /// Plain records, as the guest hands them on.
    Records,
    /// Re-grouped table updates, each value a [`weir_abi::calls::ChangeFrame`].
    Changes,
    /// A foreign-key join's subscriptions, which the host writes from the
    /// extractor's foreign keys (see [`crate::task`]'s `foreign`).
    Subscriptions,
    /// A foreign-key join's responses, written by the host.
    Responses,
}

/// Where records leaving the guest go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A sink, by index into [`Shape::sinks`].
    Sink(usize),
    /// A repartition topic, by index into [`Shape::repartitions`].
    Repartition(usize),
}

/// What an aggregation folds into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folds {
    /// Windows of a keyed stream.
    Windows(WindowSpec),
    /// One row per key of a keyed stream (a table).
    Table,
    /// One row per key, from re-grouped table updates: the old row subtracted,
    /// the new one added.
    Changes,
    /// One row per key, the latest value (a stream made a table, `to_table`):
    /// the host replaces rows itself, without calling the plugin.
    Latest,
}

/// The aggregation of a sub-topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregation {
    /// The aggregation node.
    pub node: u32,
    /// Its store (name, schema, migrations).
    pub store: StoreSpec,
    /// What it folds into.
    pub folds: Folds,
    /// Tumbling or hopping windows, ready to assign records (none for the
    /// others, which are planned per key or are tables).
    pub windowing: Option<Windowing>,
    /// Grace period as declared (0 for tables).
    pub grace_ms: u64,
    /// When rows are emitted.
    pub emit: Emit,
    /// Whether the records folded into it pass through guest operators first,
    /// in the call that folds them (entering at their input's output, sent as
    /// [`weir_abi::calls::AggregateIn::via`]), rather than reaching it directly.
    pub fused: bool,
    /// Whether the input (or the guest operators before the aggregation) also
    /// lead elsewhere — to sinks or repartition topics. Then those operators run
    /// in a call of their own first, and the records reaching the aggregation
    /// are folded afterwards (`fused` is false).
    pub split: bool,
    /// The output the emitted rows leave through (a `to_stream`, or the
    /// aggregation itself when a table `group_by` reads it); `None` if nothing
    /// reads it.
    pub render_from: Option<Edge>,
    /// Whether rendered rows carry the row they replace (a table `group_by`
    /// reads them and must take the old row out of its group).
    pub render_old: bool,
}

impl Aggregation {
    /// The windows, if it is windowed.
    pub fn window(&self) -> Option<WindowSpec> {
        match self.folds {
            Folds::Windows(w) => Some(w),
            Folds::Table | Folds::Changes | Folds::Latest => None,
        }
    }

    /// Whether it is a table a join can look rows up in (one row per key).
    pub fn is_table(&self) -> bool {
        matches!(self.folds, Folds::Table | Folds::Latest)
    }
}

/// A global table: a topic every task of every host reads whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Global {
    /// The global table node.
    pub node: u32,
    /// Its logical topic.
    pub topic: String,
    /// Its store.
    pub store: StoreSpec,
}

/// A join with a global table in a sub-topology: the records of one input,
/// through the operators before the join (the last a key selector), look the
/// selected key's row up in the global table and go on under their own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalJoin {
    /// The join node.
    pub node: u32,
    /// The sub-topology input whose records are joined.
    pub input: usize,
    /// Whether records without a row go on (a left join).
    pub left: bool,
    /// The global table, by index into [`Shape::globals`].
    pub table: usize,
}

/// A stream–table join in a sub-topology: the records of one input (through
/// the guest operators before the join, if any) look their key's row up in the
/// sub-topology's table (its aggregation) and go on to the joiner with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableJoin {
    /// The join node.
    pub node: u32,
    /// The sub-topology input whose records are joined.
    pub input: usize,
    /// Whether records without a row go on (a left join).
    pub left: bool,
    /// Whether its records are a foreign-key join's responses, joined with
    /// the row they answer if it has not changed since (see [`ForeignJoin`]).
    pub foreign: bool,
}

/// One side of a join of two tables: the table and the input that feeds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSide {
    /// The `to_table` node.
    pub table: u32,
    /// Its store.
    pub store: StoreSpec,
    /// The sub-topology input whose records (through the guest operators
    /// before the table, if any) update it.
    pub input: usize,
}

/// A join of two tables on their key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablesJoin {
    /// The join node.
    pub node: u32,
    /// Inner, left or outer.
    pub kind: JoinKind,
    /// The left and the right table.
    pub sides: [TableSide; 2],
}

impl TablesJoin {
    /// The side the records of `input` update.
    pub fn side_of(&self, input: usize) -> Option<usize> {
        self.sides.iter().position(|s| s.input == input)
    }
}

/// A join of two streams within a time window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamsJoin {
    /// The join node.
    pub node: u32,
    /// Inner, left or outer.
    pub kind: JoinKind,
    /// Its window.
    pub window: JoinWindow,
    /// The store of both sides.
    pub store: StoreSpec,
    /// The sub-topology inputs of the left and the right stream.
    pub sides: [usize; 2],
}

/// The right half of a foreign-key join: the right table, fed by one input,
/// and the subscriptions, read from the other (a repartition topic), kept in
/// a store of their own; answers go to the responses' repartition topic.
///
/// The left half is a [`TableJoin`] (`foreign`) of the responses with the
/// left table, in the left table's sub-topology, whose updates are rendered
/// through the foreign-key extractor into subscriptions: a left row
/// subscribes to its foreign key (with a hash of itself), the right side
/// answers with the foreign key's row — now, and again whenever it changes —
/// and the left side joins an answer only while the row's hash still matches,
/// so an answer for a row that has changed since (its foreign key with it)
/// is never written (Kafka Streams' design).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignJoin {
    /// The [`Op::JoinForeign`] node.
    pub node: u32,
    /// Inner or left.
    pub kind: JoinKind,
    /// The right table.
    pub table: TableSide,
    /// The store of subscriptions.
    pub store: StoreSpec,
    /// The sub-topology input of the subscriptions.
    pub input: usize,
    /// The responses' repartition topic, by index into [`Shape::repartitions`].
    pub responses: usize,
}

/// What runs in a sub-topology after its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Guest operators only.
    Stateless,
    /// One aggregation.
    Aggregate(Aggregation),
    /// A join of two tables.
    Join(TablesJoin),
    /// A join of two streams within a time window.
    JoinStreams(StreamsJoin),
    /// The right half of a foreign-key join.
    JoinForeign(ForeignJoin),
}

/// The topic a sub-topology reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// A source, by index into [`Shape::sources`].
    Source(usize),
    /// A repartition topic, by index into [`Shape::repartitions`].
    Repartition(usize),
}

/// A topic a sub-topology reads, and where its records enter the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubInput {
    /// The topic.
    pub input: Input,
    /// The output its records enter the guest from (the input node's).
    pub entry: Edge,
}

/// One sub-topology as the host runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sub {
    /// What its tasks read, in node order: one topic, or several merged
    /// (co-partitioned: a task reads the same partition of each).
    pub inputs: Vec<SubInput>,
    /// What runs after the inputs.
    pub stage: Stage,
    /// Stream–table joins against the aggregation's table.
    pub joins: Vec<TableJoin>,
    /// Joins with global tables.
    pub global_joins: Vec<GlobalJoin>,
    /// Its tables restored from their source topics (see [`Sub::source_tables`]).
    pub from_topics: Vec<SourceTable>,
}

impl Sub {
    /// The aggregation, if any.
    pub fn aggregation(&self) -> Option<&Aggregation> {
        match &self.stage {
            Stage::Aggregate(a) => Some(a),
            Stage::Stateless | Stage::Join(_) | Stage::JoinStreams(_) | Stage::JoinForeign(_) => None,
        }
    }

    /// The stores its tasks own, in order: the aggregation's, or a join's sides.
    pub fn stores(&self) -> Vec<&StoreSpec> {
        match &self.stage {
            Stage::Aggregate(a) => vec![&a.store],
            Stage::Join(j) => j.sides.iter().map(|s| &s.store).collect(),
            Stage::JoinStreams(j) => vec![&j.store],
            Stage::JoinForeign(j) => vec![&j.table.store, &j.store],
            Stage::Stateless => Vec::new(),
        }
    }

    /// Its tables restored from their source topics: every table fed by a
    /// topic (not a repartition topic) the topology reads. Worked out once,
    /// with the shape, into [`Sub::from_topics`].
    pub fn source_tables(&self) -> Vec<SourceTable> {
        let from_source = |input: usize| matches!(self.inputs.get(input).map(|i| i.input), Some(Input::Source(_)));
        match &self.stage {
            Stage::Aggregate(a) if a.folds == Folds::Latest => {
                let joined = |i: usize| {
                    self.joins.iter().any(|j| j.input == i) || self.global_joins.iter().any(|j| j.input == i)
                };
                let fed: Vec<usize> = (0..self.inputs.len()).filter(|&i| !joined(i)).collect();
                match fed.as_slice() {
                    [input] if from_source(*input) => {
                        vec![SourceTable { store: 0, input: *input, node: a.node, row_keys: true }]
                    }
                    _ => Vec::new(),
                }
            }
            Stage::Join(j) => (j.sides.iter().enumerate())
                .filter(|(_, side)| from_source(side.input))
                .map(|(store, side)| SourceTable { store, input: side.input, node: side.table, row_keys: false })
                .collect(),
            Stage::JoinForeign(j) if from_source(j.table.input) => {
                vec![SourceTable { store: 0, input: j.table.input, node: j.table.table, row_keys: false }]
            }
            _ => Vec::new(),
        }
    }

    /// The table restored from its source topic that store `store` holds, if any.
    pub fn source_table(&self, store: usize) -> Option<SourceTable> {
        self.from_topics.iter().find(|t| t.store == store).copied()
    }

    /// The join whose stream side reads `input`, if any.
    pub fn join_of(&self, input: usize) -> Option<&TableJoin> {
        self.joins.iter().find(|j| j.input == input)
    }

    /// The join with a global table that reads `input`, if any.
    pub fn global_join_of(&self, input: usize) -> Option<&GlobalJoin> {
        self.global_joins.iter().find(|j| j.input == input)
    }
}

/// A table whose rows are its source topic's records (through the guest
/// operators before it): the topic is its changelog. Nothing is written for
/// it; a task restores it by reading the topic up to its committed offset
/// through those operators again (Kafka Streams' source-topic optimisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceTable {
    /// Which of the sub-topology's stores (in [`Sub::stores`] order).
    pub store: usize,
    /// The sub-topology input of its topic.
    pub input: usize,
    /// The table node.
    pub node: u32,
    /// Whether its rows are under window-store keys (the task's own table,
    /// rather than a join's side store keyed by the record key).
    pub row_keys: bool,
}

/// The plan the host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The sources, in node order.
    pub sources: Vec<Endpoint>,
    /// The sinks, in node order; a record's sink is an index into this.
    pub sinks: Vec<Endpoint>,
    /// The repartition topics, in node order.
    pub repartitions: Vec<Repartition>,
    /// Where records leaving each node output go.
    pub exits: BTreeMap<(u32, u32), Vec<Exit>>,
    /// The sub-topologies, in the order [`Topology::subtopologies`] gives.
    pub subs: Vec<Sub>,
    /// The global tables, in node order.
    pub globals: Vec<Global>,
}

impl Shape {
    /// Where a record leaving `node`'s output `port` goes.
    pub fn exits_of(&self, node: u32, port: u32) -> &[Exit] {
        self.exits.get(&(node, port)).map_or(&[], Vec::as_slice)
    }

    /// Every aggregation, with its sub-topology's index.
    pub fn aggregations(&self) -> impl Iterator<Item = (usize, &Aggregation)> {
        self.subs.iter().enumerate().filter_map(|(i, s)| s.aggregation().map(|a| (i, a)))
    }

    /// The store named `name`.
    pub fn store(&self, name: &str) -> Option<&StoreSpec> {
        self.subs.iter().flat_map(Sub::stores).chain(self.globals.iter().map(|g| &g.store)).find(|s| s.name == name)
    }

    /// What keeps this version from taking over from `old` at a transaction
    /// boundary: other topics — as the pipeline maps them (`real` gives a
    /// shape's source topics and sink topics), so two builds naming their topics
    /// differently can still swap — or another stateful shape: other stores
    /// (found by name), windows or repartition topics. Stateless steps may
    /// differ freely.
    pub fn swap_difference(&self, old: &Shape, real: impl Fn(&Shape) -> (Vec<String>, Vec<String>)) -> Option<String> {
        let ((sources, sinks), (old_sources, old_sinks)) = (real(self), real(old));
        if sources != old_sources {
            return Some(format!("it reads {sources:?} where the running version reads {old_sources:?}"));
        }
        if sinks != old_sinks {
            return Some(format!("it writes {sinks:?} where the running version writes {old_sinks:?}"));
        }
        let globals = |s: &Shape| s.globals.iter().map(|g| (g.topic.clone(), g.store.name.clone())).collect::<Vec<_>>();
        if globals(self) != globals(old) {
            return Some(format!(
                "its global tables are {:?} where the running version's are {:?}",
                globals(self),
                globals(old)
            ));
        }
        let names = |s: &Shape| s.repartitions.iter().map(|r| (r.name.clone(), r.partitions)).collect::<Vec<_>>();
        if names(self) != names(old) {
            return Some(format!(
                "its repartition topics are {:?} where the running version's are {:?}",
                names(self).into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
                names(old).into_iter().map(|(n, _)| n).collect::<Vec<_>>()
            ));
        }
        for (sub, o) in old.aggregations() {
            let Some((_, a)) = self.aggregations().find(|(_, a)| a.store.name == o.store.name) else {
                return Some(match self.subs.get(sub).and_then(Sub::aggregation) {
                    Some(a) => format!(
                        "its aggregation is named `{}` where the running one is `{}`: stores are found by name",
                        a.store.name, o.store.name
                    ),
                    None => format!("it drops the aggregation `{}` (stores are found by name)", o.store.name),
                });
            };
            if a.folds != o.folds {
                let what = |f: Folds| match f {
                    Folds::Windows(w) => format!("windows {w}"),
                    Folds::Table => "a table".to_owned(),
                    Folds::Changes => "a table of re-grouped updates".to_owned(),
                    Folds::Latest => "a table of the latest values".to_owned(),
                };
                return Some(format!(
                    "`{}` folds into {} where the running version's folds into {}",
                    a.store.name,
                    what(a.folds),
                    what(o.folds)
                ));
            }
        }
        if let Some((_, a)) =
            self.aggregations().find(|(_, a)| !old.aggregations().any(|(_, o)| o.store.name == a.store.name))
        {
            return Some(format!(
                "it adds the aggregation `{}`, which the running version does not have",
                a.store.name
            ));
        }
        // Tasks are (sub-topology, partition): each sub-topology keeps its place,
        // its input and its store (sources and repartitions compare equal above,
        // so their indices name the same topics).
        // A join may change its joiner, not what it joins or how.
        type Place = (Vec<Input>, Vec<String>, Vec<(usize, bool)>, Option<(JoinKind, Option<JoinWindow>)>);
        let subs = |s: &Shape| -> Vec<Place> {
            let inputs = |sub: &Sub| sub.inputs.iter().map(|i| i.input).collect();
            let stores = |sub: &Sub| sub.stores().iter().map(|s| s.name.clone()).collect();
            let joins = |sub: &Sub| {
                let global = sub.global_joins.iter().map(|j| (j.input + (1 << 20) * (j.table + 1), j.left));
                let foreign = |j: &TableJoin| usize::from(j.foreign) << 30;
                sub.joins.iter().map(|j| (j.input + foreign(j), j.left)).chain(global).collect()
            };
            let kind = |sub: &Sub| match &sub.stage {
                Stage::Join(j) => Some((j.kind, None)),
                Stage::JoinStreams(j) => Some((j.kind, Some(j.window))),
                Stage::JoinForeign(j) => Some((j.kind, None)),
                _ => None,
            };
            s.subs.iter().map(|sub| (inputs(sub), stores(sub), joins(sub), kind(sub))).collect()
        };
        if subs(self) != subs(old) {
            return Some(format!(
                "its sub-topologies are {} where the running version's are {}: tasks are (sub-topology, \
                 partition), so each must keep its place, what it reads and its store",
                self.describe_subs(),
                old.describe_subs()
            ));
        }
        None
    }

    /// The sub-topologies in words: what each reads (sources by logical topic,
    /// repartition topics by node) and its store.
    fn describe_subs(&self) -> String {
        let input = |i: &SubInput| match i.input {
            Input::Source(s) => {
                self.sources.get(s).map_or_else(|| format!("source #{s}"), |e| format!("`{}`", e.topic))
            }
            Input::Repartition(r) => {
                self.repartitions.get(r).map_or_else(|| format!("repartition #{r}"), |e| format!("`{}`", e.name))
            }
        };
        let subs: Vec<String> = self
            .subs
            .iter()
            .enumerate()
            .map(|(n, sub)| {
                let reads: Vec<String> = sub.inputs.iter().map(input).collect();
                let joins: String = sub
                    .joins
                    .iter()
                    .map(|j| {
                        let side = sub.inputs.get(j.input).map(input).unwrap_or_default();
                        format!(", {side} {}joined with it", if j.left { "left-" } else { "" })
                    })
                    .collect();
                match &sub.stage {
                    Stage::Aggregate(a) => format!("{n}: {} into `{}`{joins}", reads.join(" + "), a.store.name),
                    Stage::Join(j) => format!(
                        "{n}: {} into `{}` ⋈ `{}` ({:?})",
                        reads.join(" + "),
                        j.sides[0].store.name,
                        j.sides[1].store.name,
                        j.kind
                    ),
                    Stage::JoinStreams(j) => format!(
                        "{n}: {} joined within {} ({:?}) in `{}`",
                        reads.join(" ⋈ "),
                        j.window,
                        j.kind,
                        j.store.name
                    ),
                    Stage::JoinForeign(j) => format!(
                        "{n}: {} into `{}`, foreign-key subscriptions ({:?}) in `{}`",
                        reads.join(" + "),
                        j.table.store.name,
                        j.kind,
                        j.store.name
                    ),
                    Stage::Stateless => format!("{n}: {}", reads.join(" + ")),
                }
            })
            .collect();
        format!("[{}]", subs.join("; "))
    }
}

/// Why the host cannot run a topology.
fn refuse(t: &Topology, node: u32, reason: impl Into<String>) -> TopologyError {
    TopologyError { node: Some(t.node(node).name.clone()), reason: reason.into() }
}

const LATER: &str = "this version of Weir runs sub-topologies that hold at most one aggregation, fed by guest \
                     operators from the topics they read";

/// Derives the shape of a validated topology, or says (naming the node) what
/// this host cannot run yet.
pub fn shape(t: &Topology) -> Result<Shape, TopologyError> {
    t.validate()?;
    let segments = t.segments()?;
    let segment_of = |node: u32| segments.iter().find(|s| s.nodes.contains(&node));
    let (mut sources, mut sinks, mut repartitions, mut globals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let flows = t.flows()?;
    for (i, n) in t.nodes.iter().enumerate() {
        match &n.op {
            Op::Source { topic } => sources.push(Endpoint { node: i as u32, topic: topic.clone() }),
            Op::GlobalTable { topic, store } => {
                globals.push(Global { node: i as u32, topic: topic.clone(), store: store.clone() })
            }
            Op::Sink { topic } => sinks.push(Endpoint { node: i as u32, topic: topic.clone() }),
            Op::Repartition { partitions } => {
                let input = n.inputs[0];
                let carries = match flows[input.node as usize] {
                    Flow::Changes => Carries::Changes,
                    Flow::Responses => Carries::Responses,
                    Flow::Subscriptions => {
                        if !t.consumers(i as u32).any(|(c, _)| matches!(t.node(c).op, Op::JoinForeign { .. })) {
                            return Err(refuse(t, i as u32, "foreign keys repartitioned towards no foreign-key join"));
                        }
                        Carries::Subscriptions
                    }
                    _ => Carries::Records,
                };
                if !t.node(input.node).op.is_guest() && carries != Carries::Responses {
                    return Err(refuse(
                        t,
                        i as u32,
                        format!("a repartition fed by a {}: {LATER}", t.node(input.node).op.kind()),
                    ));
                }
                repartitions.push(Repartition {
                    node: i as u32,
                    name: n.name.clone(),
                    partitions: *partitions,
                    carries,
                });
            }
            _ => {}
        }
    }
    if sources.is_empty() {
        return Err(TopologyError { node: None, reason: "the topology reads no topic".into() });
    }
    let mut exits: BTreeMap<(u32, u32), Vec<Exit>> = BTreeMap::new();
    for (i, sink) in sinks.iter().enumerate() {
        let input = t.node(sink.node).inputs[0];
        exits.entry((input.node, input.port)).or_default().push(Exit::Sink(i));
    }
    for (i, r) in repartitions.iter().enumerate() {
        let input = t.node(r.node).inputs[0];
        exits.entry((input.node, input.port)).or_default().push(Exit::Repartition(i));
    }
    check_foreign_halves(t)?;
    let mut subs = Vec::new();
    for part in t.subtopologies()? {
        // A global table is read whole by every task, not by tasks of its own.
        if part.nodes.iter().all(|&n| matches!(t.node(n).op, Op::GlobalTable { .. })) {
            continue;
        }
        let mut input_nodes: Vec<u32> = part.sources.iter().chain(&part.reads_repartitions).copied().collect();
        input_nodes.sort_unstable();
        if input_nodes.is_empty() {
            let first = part.nodes.first().copied().unwrap_or(0);
            return Err(refuse(t, first, "no topic feeds this part of the topology"));
        }
        let inputs: Vec<SubInput> = input_nodes
            .iter()
            .map(|&node| SubInput {
                input: match sources.iter().position(|s| s.node == node) {
                    Some(i) => Input::Source(i),
                    None => Input::Repartition(repartitions.iter().position(|r| r.node == node).unwrap_or(0)),
                },
                entry: Edge { node, port: 0 },
            })
            .collect();
        let is_entry = |e: Edge| inputs.iter().any(|i| i.entry == e);
        // The sub-topology's nodes, except the repartitions it writes (host exits).
        let own = |n: u32| part.nodes.contains(&n) && !part.writes_repartitions.contains(&n);
        let tables_join = tables_join(t, &part, &input_nodes, &segment_of)?;
        let streams_join = streams_join(t, &part, &input_nodes, &segment_of)?;
        let foreign_join = foreign_join(t, &part, &input_nodes, &repartitions, &segment_of)?;
        let sides: Vec<u32> = tables_join
            .iter()
            .flat_map(|j| j.sides.iter().map(|s| s.table))
            .chain(foreign_join.iter().map(|j| j.table.table))
            .collect();
        let aggregates: Vec<u32> = part
            .nodes
            .iter()
            .copied()
            .filter(|&n| matches!(t.node(n).op, Op::Aggregate { .. } | Op::TableAggregate { .. } | Op::ToTable { .. }))
            .filter(|n| !sides.contains(n))
            .collect();
        let pair = tables_join.as_ref().map(|j| j.node).or(foreign_join.as_ref().map(|j| j.node));
        if let (Some(j), Some(&agg)) = (pair, aggregates.first()) {
            return Err(refuse(
                t,
                agg,
                format!("an aggregation beside the join `{}` in one sub-topology: {LATER}", t.node(j).name),
            ));
        }
        if let [_, second, ..] = aggregates.as_slice() {
            return Err(refuse(t, *second, format!("a second aggregation or table in one sub-topology: {LATER}")));
        }
        let joins = joins(t, &part, &input_nodes, aggregates.first().copied(), &segment_of)?;
        let global_joins = global_joins(t, &part, &input_nodes, &globals, &segment_of)?;
        let joined: Vec<u32> = joins
            .iter()
            .map(|j| input_nodes[j.input])
            .chain(global_joins.iter().map(|j| input_nodes[j.input]))
            .collect();
        let agg_inputs: Vec<u32> = input_nodes.iter().copied().filter(|n| !joined.contains(n)).collect();
        if let Some(j) = &streams_join {
            let other = aggregates.first().copied().or(joins.first().map(|j| j.node));
            if let Some(other) = other.or(tables_join.as_ref().map(|t| t.node)) {
                return Err(refuse(
                    t,
                    other,
                    format!("beside the join of streams `{}` in one sub-topology: {LATER}", t.node(j.node).name),
                ));
            }
        }
        if let (Some(j), Some(other)) =
            (&foreign_join, streams_join.as_ref().map(|j| j.node).or(joins.first().map(|j| j.node)))
        {
            return Err(refuse(
                t,
                other,
                format!("beside the foreign-key join `{}` in one sub-topology: {LATER}", t.node(j.node).name),
            ));
        }
        let stage = match aggregates.first() {
            None if let Some(j) = foreign_join => Stage::JoinForeign(j),
            None if let Some(j) = streams_join => Stage::JoinStreams(j),
            None if let Some(j) = tables_join => {
                if let Some(stream_join) = joins.first() {
                    return Err(refuse(
                        t,
                        stream_join.node,
                        format!("a stream joined beside a join of tables: {LATER}"),
                    ));
                }
                Stage::Join(j)
            }
            None => {
                // Guest segments lead from the input to sinks and repartitions.
                for &n in part.nodes.iter().filter(|&&n| own(n)) {
                    let node = t.node(n);
                    if !(node.op.is_guest()
                        || input_nodes.contains(&n)
                        || matches!(node.op, Op::Sink { .. } | Op::JoinGlobal { .. }))
                    {
                        return Err(refuse(t, n, format!("a {}: {LATER}", node.op.kind())));
                    }
                }
                Stage::Stateless
            }
            Some(&agg) => Stage::Aggregate(aggregation(t, agg, &agg_inputs, &segment_of)?),
        };
        // Every guest segment must start at the input, the aggregation's
        // rendered output or a join, and end at sinks, repartitions, the
        // aggregation or a join.
        let mut join_nodes: Vec<u32> =
            joins.iter().map(|j| j.node).chain(global_joins.iter().map(|j| j.node)).collect();
        match &stage {
            Stage::Join(j) => {
                join_nodes.push(j.node);
                join_nodes.extend(j.sides.iter().map(|s| s.table));
            }
            Stage::JoinStreams(j) => join_nodes.push(j.node),
            Stage::JoinForeign(j) => join_nodes.extend([j.node, j.table.table]),
            _ => {}
        }
        for seg in segments.iter().filter(|s| s.nodes.iter().any(|&n| own(n))) {
            let render = match &stage {
                Stage::Aggregate(a) => a.render_from,
                _ => None,
            };
            for &e in &seg.entries {
                if let Some(bad) = t
                    .node(e)
                    .inputs
                    .iter()
                    .find(|i| Some(**i) != render && !is_entry(**i) && !join_nodes.contains(&i.node))
                {
                    return Err(refuse(
                        t,
                        e,
                        format!("reads `{}` together with other host operators: {LATER}", t.node(bad.node).name),
                    ));
                }
            }
            let agg = match &stage {
                Stage::Aggregate(a) => Some(a.node),
                _ => None,
            };
            if let Some(&bad) = seg.exits.iter().find(|&&x| {
                !matches!(t.node(x).op, Op::Sink { .. } | Op::Repartition { .. })
                    && Some(x) != agg
                    && !join_nodes.contains(&x)
            }) {
                return Err(refuse(t, bad, format!("is fed by guest operators: {LATER}")));
            }
        }
        let mut sub = Sub { inputs, stage, joins, global_joins, from_topics: Vec::new() };
        sub.from_topics = sub.source_tables();
        subs.push(sub);
    }
    Ok(Shape { sources, sinks, repartitions, exits, subs, globals })
}

/// The stream–table joins of a sub-topology (`part`, reading `inputs`, input
/// nodes in order) whose table is its aggregation `table`: each joins the
/// records of one input, read directly or through guest operators that lead
/// only to the join, sinks and repartition topics.
fn joins<'s>(
    t: &Topology,
    part: &weir_abi::topology::SubTopology,
    inputs: &[u32],
    table: Option<u32>,
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Vec<TableJoin>, TopologyError> {
    let mut joins: Vec<TableJoin> = Vec::new();
    for &n in &part.nodes {
        let (left, foreign) = match t.node(n).op {
            Op::JoinTable { left } => (left, false),
            Op::ForeignResponse { kind } => (kind == JoinKind::Left, true),
            _ => continue,
        };
        let (stream, rows) = (t.node(n).inputs[0], t.node(n).inputs[1]);
        match table {
            Some(agg) if agg == rows.node => {}
            _ => {
                return Err(refuse(
                    t,
                    n,
                    format!(
                        "joins a table that is not its sub-topology's table (`{}`): {LATER}",
                        t.node(rows.node).name
                    ),
                ));
            }
        }
        if !matches!(t.node(rows.node).op, Op::ToTable { .. } | Op::Aggregate { window: None, .. }) {
            return Err(refuse(
                t,
                n,
                format!("joins the {} `{}`: {LATER}", t.node(rows.node).op.kind(), t.node(rows.node).name),
            ));
        }
        // The input its stream side reads, which leads only to it (and to
        // sinks and repartitions).
        let Some(input) = input_reaching(t, stream, inputs, segment_of) else {
            return Err(refuse(
                t,
                n,
                format!("joins records that do not come from one topic of its sub-topology: {LATER}"),
            ));
        };
        leads_only_to(t, input, n, segment_of)?;
        let at = inputs.iter().position(|&i| i == input).unwrap_or(0);
        if joins.iter().any(|j| j.input == at) {
            return Err(refuse(t, n, format!("a second join of the topic `{}`: {LATER}", t.node(input).name)));
        }
        if foreign && !inputs.contains(&stream.node) {
            return Err(refuse(t, n, "reads its responses from their repartition topic directly"));
        }
        joins.push(TableJoin { node: n, input: at, left, foreign });
    }
    if joins.len() == inputs.len() && !joins.is_empty() {
        let first = joins[0].node;
        return Err(refuse(t, first, "no topic of this sub-topology feeds the table the join reads"));
    }
    Ok(joins)
}

/// The input node (one of `inputs`) whose records reach `edge`: `edge` itself,
/// or through guest operators that read only that input.
fn input_reaching<'s>(
    t: &Topology,
    edge: Edge,
    inputs: &[u32],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Option<u32> {
    if inputs.contains(&edge.node) {
        return Some(edge.node);
    }
    let seg = segment_of(edge.node).filter(|_| t.node(edge.node).op.is_guest())?;
    let from: Vec<u32> = seg.entries.iter().flat_map(|&e| t.node(e).inputs.iter().map(|i| i.node)).collect();
    from.first().copied().filter(|f| inputs.contains(f) && from.iter().all(|g| g == f))
}

/// Checks that what `input` leads to is `target` (a host node), sinks,
/// repartitions, or guest operators reading only `input` that lead only to those.
fn leads_only_to<'s>(
    t: &Topology,
    input: u32,
    target: u32,
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<(), TopologyError> {
    for (c, _) in t.consumers(input) {
        let reader = t.node(c);
        if c == target || matches!(reader.op, Op::Sink { .. }) {
            continue;
        }
        let seg = segment_of(c).filter(|_| reader.op.is_guest()).ok_or_else(|| {
            refuse(t, c, format!("reads `{}` besides `{}`: {LATER}", t.node(input).name, t.node(target).name))
        })?;
        if let Some(&bad) = seg
            .exits
            .iter()
            .find(|&&x| x != target && !matches!(t.node(x).op, Op::Sink { .. } | Op::Repartition { .. }))
        {
            return Err(refuse(t, bad, format!("is fed by the operators before `{}`: {LATER}", t.node(target).name)));
        }
        if seg.entries.iter().any(|&e| t.node(e).inputs.iter().any(|i| i.node != input)) {
            return Err(refuse(
                t,
                c,
                format!("the operators before `{}` read another host operator: {LATER}", t.node(target).name),
            ));
        }
    }
    Ok(())
}

/// The joins with global tables of a sub-topology (`part`, reading `inputs`):
/// each joins the records of one input, through guest operators ending in its
/// key selector, that lead only to it (and to sinks and repartitions).
fn global_joins<'s>(
    t: &Topology,
    part: &weir_abi::topology::SubTopology,
    inputs: &[u32],
    globals: &[Global],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Vec<GlobalJoin>, TopologyError> {
    let mut found: Vec<GlobalJoin> = Vec::new();
    for &n in &part.nodes {
        let Op::JoinGlobal { left } = t.node(n).op else { continue };
        let (stream, rows) = (t.node(n).inputs[0], t.node(n).inputs[1]);
        let table = globals
            .iter()
            .position(|g| g.node == rows.node)
            .ok_or_else(|| refuse(t, n, format!("joins `{}`, which is not a global table", t.node(rows.node).name)))?;
        let input = input_reaching(t, stream, inputs, segment_of).ok_or_else(|| {
            refuse(t, n, format!("joins records that do not come from one topic of its sub-topology: {LATER}"))
        })?;
        leads_only_to(t, input, n, segment_of)?;
        let at = inputs.iter().position(|&i| i == input).unwrap_or(0);
        if found.iter().any(|j| j.input == at) {
            return Err(refuse(t, n, format!("a second join of the topic `{}`: {LATER}", t.node(input).name)));
        }
        found.push(GlobalJoin { node: n, input: at, left, table });
    }
    Ok(found)
}

/// The join of two tables in a sub-topology (`part`, reading `inputs`), if it
/// has one: each table a `to_table` read by the join alone, fed by an input of
/// its own.
fn tables_join<'s>(
    t: &Topology,
    part: &weir_abi::topology::SubTopology,
    inputs: &[u32],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Option<TablesJoin>, TopologyError> {
    let mut found = part.nodes.iter().copied().filter(|&n| matches!(t.node(n).op, Op::JoinTables { .. }));
    let Some(node) = found.next() else { return Ok(None) };
    if let Some(second) = found.next() {
        return Err(refuse(t, second, format!("a second join of tables in one sub-topology: {LATER}")));
    }
    let Op::JoinTables { kind } = t.node(node).op else { return Ok(None) };
    let mut sides = Vec::with_capacity(2);
    for edge in t.node(node).inputs.clone() {
        let table = edge.node;
        let Op::ToTable { store } = &t.node(table).op else {
            return Err(refuse(
                t,
                node,
                format!(
                    "joins the {} `{}`; tables joined with each other are made with to_table: {LATER}",
                    t.node(table).op.kind(),
                    t.node(table).name
                ),
            ));
        };
        if let Some((other, _)) = t.consumers(table).find(|&(c, _)| c != node) {
            return Err(refuse(
                t,
                other,
                format!("reads the joined table `{}` besides the join: {LATER}", t.node(table).name),
            ));
        }
        let feed = t.node(table).inputs[0];
        let input = input_reaching(t, feed, inputs, segment_of).ok_or_else(|| {
            refuse(t, table, format!("a joined table fed by more than one topic of its sub-topology: {LATER}"))
        })?;
        leads_only_to(t, input, table, segment_of)?;
        let at = inputs.iter().position(|&i| i == input).unwrap_or(0);
        sides.push(TableSide { table, store: store.clone(), input: at });
    }
    let [left, right]: [TableSide; 2] = sides.try_into().map_err(|_| refuse(t, node, "a join reads two tables"))?;
    if left.input == right.input {
        return Err(refuse(t, node, format!("joins two tables fed by the same topic: {LATER}")));
    }
    if inputs.len() != 2 {
        return Err(refuse(t, node, format!("a sub-topology joining two tables reads other topics too: {LATER}")));
    }
    Ok(Some(TablesJoin { node, kind, sides: [left, right] }))
}

/// Checks that each foreign-key join's halves belong together: the responses
/// a [`Op::ForeignResponse`] reads come from a [`Op::JoinForeign`] of the same
/// kind answering the subscriptions of the very table it joins them with.
fn check_foreign_halves(t: &Topology) -> Result<(), TopologyError> {
    let feeder = |n: u32| t.node(n).inputs.first().map(|e| e.node);
    for (n, node) in t.nodes.iter().enumerate() {
        let Op::ForeignResponse { kind } = node.op else { continue };
        let n = n as u32;
        let join = feeder(n).and_then(feeder);
        let extractor = join.and_then(feeder).and_then(feeder);
        let answered = match (join.map(|j| &t.node(j).op), extractor) {
            (Some(Op::JoinForeign { kind: k, .. }), Some(e)) if *k == kind => feeder(e),
            _ => None,
        };
        if answered != node.inputs.get(1).map(|e| e.node) {
            return Err(refuse(
                t,
                n,
                "joins responses with a table other than the one whose foreign keys subscribed (or with a join of \
                 another kind)",
            ));
        }
    }
    Ok(())
}

/// The right half of a foreign-key join in a sub-topology (`part`, reading
/// `inputs`), if it has one: the subscriptions read from their repartition
/// topic, the right table (a `to_table` read by the join alone) fed by the
/// other input, the answers written to a repartition topic and nowhere else.
fn foreign_join<'s>(
    t: &Topology,
    part: &weir_abi::topology::SubTopology,
    inputs: &[u32],
    repartitions: &[Repartition],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Option<ForeignJoin>, TopologyError> {
    let mut found = part.nodes.iter().copied().filter(|&n| matches!(t.node(n).op, Op::JoinForeign { .. }));
    let Some(node) = found.next() else { return Ok(None) };
    if let Some(second) = found.next() {
        return Err(refuse(t, second, format!("a second foreign-key join in one sub-topology: {LATER}")));
    }
    let Op::JoinForeign { kind, store } = &t.node(node).op else { return Ok(None) };
    let (subscriptions, right) = (t.node(node).inputs[0], t.node(node).inputs[1]);
    let Op::ToTable { store: table_store } = &t.node(right.node).op else {
        return Err(refuse(
            t,
            node,
            format!("joins the {} `{}` by foreign key: {LATER}", t.node(right.node).op.kind(), t.node(right.node).name),
        ));
    };
    if let Some((other, _)) = t.consumers(right.node).find(|&(c, _)| c != node) {
        return Err(refuse(
            t,
            other,
            format!("reads the table `{}` besides the foreign-key join: {LATER}", t.node(right.node).name),
        ));
    }
    let feed = t.node(right.node).inputs[0];
    let table_input = input_reaching(t, feed, inputs, segment_of).ok_or_else(|| {
        refuse(t, right.node, format!("a joined table fed by more than one topic of its sub-topology: {LATER}"))
    })?;
    leads_only_to(t, table_input, right.node, segment_of)?;
    if inputs.len() != 2 || table_input == subscriptions.node {
        return Err(refuse(t, node, format!("a foreign-key join's sub-topology reads other topics too: {LATER}")));
    }
    let readers: Vec<u32> = t.consumers(node).map(|(c, _)| c).collect();
    let responses = match readers.as_slice() {
        [one] => repartitions.iter().position(|r| r.node == *one && r.carries == Carries::Responses),
        _ => None,
    }
    .ok_or_else(|| refuse(t, node, "a foreign-key join's answers go to one repartition topic and nowhere else"))?;
    let at = |n: u32| inputs.iter().position(|&i| i == n).unwrap_or(0);
    Ok(Some(ForeignJoin {
        node,
        kind: *kind,
        table: TableSide { table: right.node, store: table_store.clone(), input: at(table_input) },
        store: store.clone(),
        input: at(subscriptions.node),
        responses,
    }))
}

/// The join of two streams in a sub-topology (`part`, reading `inputs`), if
/// it has one: each side read from an input of its own.
fn streams_join<'s>(
    t: &Topology,
    part: &weir_abi::topology::SubTopology,
    inputs: &[u32],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Option<StreamsJoin>, TopologyError> {
    let mut found = part.nodes.iter().copied().filter(|&n| matches!(t.node(n).op, Op::JoinStreams { .. }));
    let Some(node) = found.next() else { return Ok(None) };
    if let Some(second) = found.next() {
        return Err(refuse(t, second, format!("a second join of streams in one sub-topology: {LATER}")));
    }
    let Op::JoinStreams { kind, window, store } = &t.node(node).op else { return Ok(None) };
    let mut sides = [0usize; 2];
    for (side, edge) in t.node(node).inputs.iter().enumerate() {
        let input = input_reaching(t, *edge, inputs, segment_of).ok_or_else(|| {
            refuse(t, node, format!("joins a stream that does not come from one topic of its sub-topology: {LATER}"))
        })?;
        leads_only_to(t, input, node, segment_of)?;
        sides[side] = inputs.iter().position(|&i| i == input).unwrap_or(0);
    }
    if sides[0] == sides[1] {
        return Err(refuse(t, node, format!("joins a stream with itself: {LATER}")));
    }
    if inputs.len() != 2 {
        return Err(refuse(t, node, format!("a sub-topology joining two streams reads other topics too: {LATER}")));
    }
    Ok(Some(StreamsJoin { node, kind: *kind, window: *window, store: store.clone(), sides }))
}

/// The aggregation `agg` of a sub-topology reading `inputs` (input nodes).
fn aggregation<'s>(
    t: &Topology,
    agg: u32,
    inputs: &[u32],
    segment_of: &impl Fn(u32) -> Option<&'s weir_abi::topology::Segment>,
) -> Result<Aggregation, TopologyError> {
    let node = t.node(agg);
    let (store, folds, emit) = match &node.op {
        Op::Aggregate { store, window: Some(spec), emit, .. } => (store, Folds::Windows(*spec), *emit),
        Op::Aggregate { store, window: None, .. } => (store, Folds::Table, Emit::Updates),
        Op::TableAggregate { store, .. } => (store, Folds::Changes, Emit::Updates),
        Op::ToTable { store } => (store, Folds::Latest, Emit::Updates),
        _ => return Err(refuse(t, agg, "internal: not an aggregation")),
    };
    let from = node.inputs[0];
    let direct = inputs.contains(&from.node);
    if !direct && folds == Folds::Changes {
        return Err(refuse(t, agg, format!("a table aggregate reads its repartition topic directly: {LATER}")));
    }
    if !direct && !t.node(from.node).op.is_guest() {
        return Err(refuse(t, agg, format!("an aggregation fed by a {}: {LATER}", t.node(from.node).op.kind())));
    }
    if direct && inputs.len() > 1 {
        return Err(refuse(
            t,
            agg,
            format!("an aggregation reading one of several inputs of its sub-topology directly: {LATER}"),
        ));
    }
    // Everything the inputs lead to: the aggregation, sinks, repartitions, or
    // guest operators that lead only to those.
    let mut split = false;
    for (c, _) in inputs.iter().flat_map(|&input| t.consumers(input)) {
        let reader = t.node(c);
        if c == agg || matches!(reader.op, Op::Sink { .. }) {
            split |= c != agg;
            continue;
        }
        let seg = segment_of(c).filter(|_| reader.op.is_guest()).ok_or_else(|| {
            refuse(
                t,
                c,
                format!("a {} reading the input of a sub-topology with an aggregation: {LATER}", reader.op.kind()),
            )
        })?;
        if let Some(&bad) =
            seg.exits.iter().find(|&&x| x != agg && !matches!(t.node(x).op, Op::Sink { .. } | Op::Repartition { .. }))
        {
            return Err(refuse(t, bad, format!("is fed by the operators before an aggregation: {LATER}")));
        }
        if seg.entries.iter().any(|&e| t.node(e).inputs.iter().any(|i| !inputs.contains(&i.node))) {
            return Err(refuse(
                t,
                c,
                format!("the operators before an aggregation read another host operator: {LATER}"),
            ));
        }
        split |= seg.exits != [agg];
    }
    if split && folds == Folds::Changes {
        return Err(refuse(t, agg, format!("a table aggregate's repartition topic also leads elsewhere: {LATER}")));
    }
    // Fused: the operators before the aggregation run in the call that folds
    // (a table of latest values is folded by the host, after them).
    let fused = !direct && !split && folds != Folds::Latest;
    // Joins look rows up; what reads the rows as updates is one of these.
    let readers: Vec<u32> = t
        .consumers(agg)
        .map(|(c, _)| c)
        .filter(|&c| !matches!(t.node(c).op, Op::JoinTable { .. } | Op::ForeignResponse { .. }))
        .collect();
    let (render_from, render_old) = match readers.as_slice() {
        [] => (None, false),
        [one] if matches!(t.node(*one).op, Op::ToStream) => (Some(Edge { node: *one, port: 0 }), false),
        // A group_by takes old rows out of their groups; a foreign-key
        // extractor unsubscribes them from their foreign keys.
        [one] if matches!(t.node(*one).op, Op::TableGroupBy | Op::ForeignKey) => {
            (Some(Edge { node: agg, port: 0 }), true)
        }
        _ => {
            return Err(refuse(
                t,
                agg,
                format!("an aggregation must be read by one to_stream or one group_by: {LATER}"),
            ));
        }
    };
    if let Some(Edge { node: r, .. }) = render_from.filter(|_| !render_old) {
        for (c, _) in t.consumers(r) {
            if !t.node(c).op.is_guest() {
                return Err(refuse(t, c, format!("reads to_stream directly: {LATER}")));
            }
        }
    }
    let windowing = match folds {
        Folds::Windows(WindowSpec::Tumbling { size_ms, .. }) => Some(Windowing::tumbling(size_ms)),
        Folds::Windows(WindowSpec::Hopping { size_ms, advance_ms, .. }) => {
            Some(Windowing::hopping(size_ms, advance_ms))
        }
        _ => None,
    }
    .transpose()
    .map_err(|e| refuse(t, agg, e.to_string()))?;
    let grace_ms = match folds {
        Folds::Windows(w) => w.grace_ms(),
        _ => 0,
    };
    Ok(Aggregation {
        node: agg,
        store: store.clone(),
        folds,
        windowing,
        grace_ms,
        emit,
        fused,
        split,
        render_from,
        render_old,
    })
}

#[cfg(test)]
mod tests;
