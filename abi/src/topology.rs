//! The topology a plugin declares: a graph of named operators from logical source
//! topics to logical sink topics, and the rules the host checks before it runs one.
//!
//! Nodes are at the grain of the DSL: one node per operator, each with a name the
//! author gave (or the operator's own), so names stay put when a step is added
//! before them. Operators are of two sides:
//!
//! * **guest operators** run user functions in the plugin (`validate`, `filter`, `map`, …,
//!   `split`, `merge`, the selector of a table's `group_by`, and `encode`, which
//!   turns values into their external format before a sink);
//! * **host operators** run in the host: sources, sinks, repartition topics,
//!   aggregations and their stores, `to_stream`.
//!
//! A *segment* is a maximal connected set of guest operators: the host hands a
//! batch of records to the segment's entry node in one call and gets back every
//! record that leaves it towards a host operator. A *sub-topology* is a connected
//! part of the graph after cutting at repartition topics; tasks are (sub-topology,
//! partition).
//!
//! The wire form is postcard (see the crate docs): a [`TopologyFrame`] whose nodes
//! carry their operator as a nested frame, so that an operator this version does not
//! know is refused with the node's name rather than as an unreadable frame.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest node or store name; names become parts of Kafka topic names.
pub const MAX_NAME_LEN: usize = 100;
/// Most nodes in one topology.
pub const MAX_NODES: usize = 1024;
/// Most edges in one topology (the graph checks walk every edge per node).
pub const MAX_EDGES: usize = 4 * MAX_NODES;
/// Most branches of one `split`.
pub const MAX_BRANCHES: usize = 256;
/// Most partitions a plugin may ask of a repartition topic (the host creates it).
pub const MAX_PARTITIONS: u32 = 1024;
/// Most older state schemas a store may declare it migrates from.
pub const MAX_MIGRATES_FROM: usize = 64;
/// Largest window size, advance, gap or grace in milliseconds (~292 years), so
/// that `start + size` cannot overflow.
pub const MAX_WINDOW_MS: u64 = 1 << 53;

/// The changelog topic of store `store` in application `app`:
/// `<app>-<store>-changelog`.
pub fn changelog_topic(app: &str, store: &str) -> String {
    format!("{app}-{store}-changelog")
}

/// The internal topic of repartition node `node` in application `app`:
/// `<app>-<node>-repartition`, or `<app>-<node>` when the node's name ends in
/// `-repartition` already (as the SDK names them).
pub fn repartition_topic(app: &str, node: &str) -> String {
    if node.ends_with("-repartition") { format!("{app}-{node}") } else { format!("{app}-{node}-repartition") }
}

/// A reference to one output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Edge {
    /// Index of the upstream node in [`Topology::nodes`].
    pub node: u32,
    /// Which of its outputs: 0, or a branch of a `split`.
    pub port: u32,
}

/// One operator of a topology.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique, stable name (`[A-Za-z0-9._-]`, at most [`MAX_NAME_LEN`] bytes).
    pub name: String,
    /// Where its records come from (none for a source).
    pub inputs: Vec<Edge>,
    /// What it does.
    pub op: Op,
}

/// What a node does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Reads the logical topic `topic` (a pipeline maps it to a real one).
    Source {
        /// Logical topic name.
        topic: String,
    },
    /// Writes to the logical topic `topic`.
    Sink {
        /// Logical topic name.
        topic: String,
    },
    /// Checks each record; a record it refuses goes to the dead-letter topic
    /// with the reason it gives.
    Validate,
    /// Keeps records the user's predicate accepts.
    Filter,
    /// Keeps records the user's predicate rejects.
    FilterNot,
    /// Maps key and value to a new key and value (re-keys).
    Map,
    /// Maps the value, keeping the key.
    MapValues,
    /// Maps one record to any number of records (re-keys).
    FlatMap,
    /// Maps one value to any number of values, keeping the key.
    FlatMapValues,
    /// Sets a new key computed from the record (re-keys).
    SelectKey,
    /// Calls the user's function for each record and passes the record on.
    Peek,
    /// Sends each record to the first branch whose predicate accepts it (port
    /// `i` for `branches[i]`), or to the default branch (port `branches.len()`)
    /// if there is one; otherwise drops it.
    Split {
        /// Branch names, in the order their predicates are tried.
        branches: Vec<String>,
        /// Whether unmatched records go to a last, default port.
        default_branch: bool,
    },
    /// The union of its inputs.
    Merge,
    /// Turns values into the format a sink writes (inserted by an SDK where a
    /// host operator feeds a sink directly).
    Encode,
    /// Writes its input to the internal topic `<application-id>-<name>-repartition`
    /// and reads it back as the start of another sub-topology, so that records
    /// are partitioned by their (new) key.
    Repartition {
        /// Partition count; `None` takes the largest partition count of the
        /// sub-topology's source topics.
        partitions: Option<u32>,
    },
    /// Folds a keyed stream into a table (latest value per key) or, windowed,
    /// into a table per window.
    Aggregate {
        /// The store holding the aggregates.
        store: StoreSpec,
        /// How the aggregation folds (for the description; all run the same way).
        fold: Fold,
        /// Event-time windows; `None` aggregates per key for ever.
        window: Option<WindowSpec>,
        /// When results are sent downstream.
        emit: Emit,
    },
    /// The selector of a table's `group_by`: for each table update it selects a
    /// new key and value from the old and the new row; the result must go
    /// through a repartition into a [`Op::TableAggregate`].
    TableGroupBy,
    /// Folds the updates of a re-grouped table with an adder (new rows) and a
    /// subtractor (old rows).
    TableAggregate {
        /// The store holding the aggregates.
        store: StoreSpec,
        /// How the aggregation folds.
        fold: Fold,
    },
    /// The stream of a table's updates.
    ToStream,
    /// Materialises a keyed stream as a table in the host: each record's value
    /// replaces its key's row (stored as the bytes it arrived as), a null value
    /// deletes it, a record without a key is dead-lettered.
    ToTable {
        /// The store holding the rows.
        store: StoreSpec,
    },
    /// Joins each record of a stream (input 0) with its key's row in a table
    /// (input 1), as of the record's place in its task's time order: the host
    /// looks the row up and hands the record on with the row beside it (in
    /// [`crate::calls::Rec::old`]) to the [`Op::Joiner`] reading it. An inner
    /// join drops a record whose key has no row; a left join hands it on without one.
    JoinTable {
        /// Whether records without a row are kept (a left join).
        left: bool,
    },
    /// Calls the user's value joiner with a record's value and the row its join
    /// found; reads a join's output.
    Joiner,
    /// Joins two tables on their key: input 0 (left) and input 1 (right), each
    /// a [`Op::ToTable`] read by nothing else. Every update of either side is
    /// joined with the other side's current row and handed on (left row in
    /// [`crate::calls::Rec::value`], right row in [`crate::calls::Rec::old`])
    /// to the [`Op::Joiner`] reading it; an update that ends a match it had
    /// made is handed on with neither row, for a tombstone.
    JoinTables {
        /// Which updates make a result.
        kind: JoinKind,
    },
    /// Joins two streams within a time window: a record of input 0 (left) at
    /// `t` meets every record of input 1 (right) with its key at `t -
    /// before_ms ..= t + after_ms` (and a right record at `t` the left ones at
    /// `t - after_ms ..= t + before_ms`), whichever arrives first. Both sides
    /// are kept in `store` until they can meet nothing more; each meeting is
    /// handed on (left value, right value beside it) to the [`Op::Joiner`]
    /// reading it. A record that met nothing by the time its window closed
    /// (`t + after + grace` for a left one, `t + before + grace` for a right
    /// one, behind stream time) is handed on alone if the kind keeps it: the
    /// left ones of a left join, both sides' of an outer join.
    JoinStreams {
        /// Which records make a result.
        kind: JoinKind,
        /// The time difference and grace.
        window: JoinWindow,
        /// The store holding both sides and the records still unmatched.
        store: StoreSpec,
    },
    /// Reads the logical topic `topic` whole, on every host, as a table (a
    /// global table): read only by [`Op::JoinGlobal`]s.
    GlobalTable {
        /// Logical topic name.
        topic: String,
        /// The store holding the rows.
        store: StoreSpec,
    },
    /// The user's key selector of a join with a global table: each record
    /// leaves with the key of the row it joins as its key, and its own key
    /// beside it (in [`crate::calls::Rec::old`]), towards the join.
    GlobalKey,
    /// Joins each record (from a [`Op::GlobalKey`], input 0) with the row of
    /// its selected key in a global table (input 1): the host looks it up and
    /// hands the record on under its own key with the row beside it, to the
    /// [`Op::Joiner`] reading it. An inner join drops a record without a row.
    JoinGlobal {
        /// Whether records without a row are kept (a left join).
        left: bool,
    },
    /// The user's foreign-key extractor of a foreign-key join, reading the
    /// updates of the left table (a [`Op::ToTable`], with the rows they
    /// replace): for each update it hands back the foreign keys of the new and
    /// the old row as a [`crate::calls::ForeignKeys`] value, towards the
    /// repartition topic of the join's subscriptions (the host writes the
    /// subscriptions themselves).
    ForeignKey,
    /// The right half of a foreign-key join: reads the subscriptions (input 0,
    /// the repartition topic after a [`Op::ForeignKey`], keyed by foreign key)
    /// and the right table (input 1, a [`Op::ToTable`] read by nothing else,
    /// co-partitioned with them). It keeps who subscribes to which foreign
    /// key in `store`, and answers each subscription — and, for every
    /// subscriber, each update of the right table — with the right row,
    /// towards the repartition topic of responses it feeds (keyed by the left
    /// key, written to the left row's partition).
    JoinForeign {
        /// Inner or left (a foreign-key join has no outer kind).
        kind: JoinKind,
        /// Who subscribes to which foreign key.
        store: StoreSpec,
    },
    /// The left half of a foreign-key join: reads the responses (input 0, the
    /// repartition topic after a [`Op::JoinForeign`]) and the left table
    /// (input 1, the table the [`Op::ForeignKey`] reads). A response that
    /// answers the left row as it is now (its hash matches) is handed on,
    /// left row as the value and right row beside it, to the [`Op::Joiner`]
    /// reading it; one for a row since changed is dropped; one that ends a
    /// match is handed on with neither row, for a tombstone.
    ForeignResponse {
        /// Inner or left: as the [`Op::JoinForeign`] answering it.
        kind: JoinKind,
    },
}

/// The window of a join of two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinWindow {
    /// How long before a left record a right one may be.
    pub before_ms: u64,
    /// How long after a left record a right one may be.
    pub after_ms: u64,
    /// How long after a record's window ends late records are still joined.
    pub grace_ms: u64,
}

impl fmt::Display for JoinWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms before to {} ms after, grace {} ms", self.before_ms, self.after_ms, self.grace_ms)
    }
}

/// Which rows of a table–table join make a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinKind {
    /// A key with a row on both sides.
    Inner,
    /// A key with a left row (the right one if any).
    Left,
    /// A key with a row on either side.
    Outer,
}

impl JoinKind {
    /// Whether rows present on the left and right (`l`, `r`) make a result.
    pub fn matches(self, l: bool, r: bool) -> bool {
        match self {
            JoinKind::Inner => l && r,
            JoinKind::Left => l,
            JoinKind::Outer => l || r,
        }
    }
}

/// How an aggregation folds values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fold {
    /// Counts records.
    Count,
    /// Combines values of the same type.
    Reduce,
    /// Folds into an accumulator of another type.
    Aggregate,
}

/// A named state store with a compacted changelog topic
/// `<application-id>-<name>-changelog`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// Unique, stable name.
    pub name: String,
    /// Version of the stored values' encoding.
    pub schema: u32,
    /// Older schemas the plugin's `migrate` converts from.
    pub migrates_from: Vec<u32>,
    /// Whether the store is backed by a changelog; the host runs only stores
    /// that are (exactly-once restore needs it).
    pub changelog: bool,
}

/// Event-time windows of an aggregation.
///
/// Every window is half-open, `[start, end)`. A sliding window Kafka Streams
/// calls `[s, s + D]` is `[s, s + D + 1)` here; a session `[a, b]` is `[a, b + 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowSpec {
    /// Back-to-back windows aligned to the epoch.
    Tumbling {
        /// Window length.
        size_ms: u64,
        /// How long after a window's end late records are still accepted.
        grace_ms: u64,
    },
    /// Overlapping windows aligned to the epoch, one starting every `advance_ms`.
    Hopping {
        /// Window length.
        size_ms: u64,
        /// Distance between window starts (at most `size_ms`).
        advance_ms: u64,
        /// Grace period.
        grace_ms: u64,
    },
    /// Kafka Streams' sliding windows: a window per distinct set of records no
    /// more than `difference_ms` apart.
    Sliding {
        /// Largest time difference between two records of one window.
        difference_ms: u64,
        /// Grace period.
        grace_ms: u64,
    },
    /// Sessions: records of a key no more than `gap_ms` apart, merged.
    Session {
        /// Inactivity gap that closes a session.
        gap_ms: u64,
        /// Grace period.
        grace_ms: u64,
    },
}

impl WindowSpec {
    /// The grace period.
    pub fn grace_ms(&self) -> u64 {
        match *self {
            WindowSpec::Tumbling { grace_ms, .. }
            | WindowSpec::Hopping { grace_ms, .. }
            | WindowSpec::Sliding { grace_ms, .. }
            | WindowSpec::Session { grace_ms, .. } => grace_ms,
        }
    }

    fn check(&self) -> Result<(), String> {
        let in_range = |what: &str, v: u64, zero_ok: bool| {
            if (v == 0 && !zero_ok) || v > MAX_WINDOW_MS {
                Err(format!(
                    "{what} is {v} ms; it must be between {} ms and {MAX_WINDOW_MS} ms",
                    if zero_ok { 0 } else { 1 }
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            WindowSpec::Tumbling { size_ms, grace_ms } => {
                in_range("window size", size_ms, false)?;
                in_range("grace", grace_ms, true)
            }
            WindowSpec::Hopping { size_ms, advance_ms, grace_ms } => {
                in_range("window size", size_ms, false)?;
                in_range("window advance", advance_ms, false)?;
                in_range("grace", grace_ms, true)?;
                if advance_ms > size_ms {
                    return Err(format!(
                        "window advance ({advance_ms} ms) is larger than its size ({size_ms} ms): records between \
                         windows would belong to none"
                    ));
                }
                Ok(())
            }
            WindowSpec::Sliding { difference_ms, grace_ms } => {
                in_range("sliding window time difference", difference_ms, false)?;
                in_range("grace", grace_ms, true)
            }
            WindowSpec::Session { gap_ms, grace_ms } => {
                in_range("session gap", gap_ms, false)?;
                in_range("grace", grace_ms, true)
            }
        }
    }
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WindowSpec::Tumbling { size_ms, grace_ms } => write!(f, "tumbling {size_ms} ms, grace {grace_ms} ms"),
            WindowSpec::Hopping { size_ms, advance_ms, grace_ms } => {
                write!(f, "hopping {size_ms} ms every {advance_ms} ms, grace {grace_ms} ms")
            }
            WindowSpec::Sliding { difference_ms, grace_ms } => {
                write!(f, "sliding, time difference {difference_ms} ms, grace {grace_ms} ms")
            }
            WindowSpec::Session { gap_ms, grace_ms } => write!(f, "session, gap {gap_ms} ms, grace {grace_ms} ms"),
        }
    }
}

/// When an aggregation sends its results downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Emit {
    /// At every commit, the latest value of every row that changed since the last.
    Updates,
    /// Once per window, when it closes (stream time passed its end and grace).
    Final,
}

/// The kind of records an output carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keyed records.
    Stream,
    /// Updates of a table (latest value per key).
    Table,
    /// Updates of a table of windows.
    WindowedTable,
    /// Re-grouped table updates (old and new row) on their way to a table aggregate.
    Changes,
    /// Stream records with the table row a join found for them, on their way
    /// to a joiner.
    Joined,
    /// A global table (only joins read it).
    Global,
    /// Stream records under the key of the global table row they join.
    Selected,
    /// A left table's updates with their foreign keys, on their way to a
    /// foreign-key join.
    Subscriptions,
    /// A foreign-key join's answers, on their way back to the left table.
    Responses,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flow::Stream => "a stream",
            Flow::Table => "a table",
            Flow::WindowedTable => "a windowed table",
            Flow::Changes => "re-grouped table updates",
            Flow::Joined => "joined records",
            Flow::Global => "a global table",
            Flow::Selected => "records keyed for a global table",
            Flow::Subscriptions => "foreign-key subscriptions",
            Flow::Responses => "foreign-key join responses",
        })
    }
}

impl Op {
    /// The operator's name in descriptions and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Source { .. } => "source",
            Op::Sink { .. } => "sink",
            Op::Validate => "validate",
            Op::Filter => "filter",
            Op::FilterNot => "filter_not",
            Op::Map => "map",
            Op::MapValues => "map_values",
            Op::FlatMap => "flat_map",
            Op::FlatMapValues => "flat_map_values",
            Op::SelectKey => "select_key",
            Op::Peek => "peek",
            Op::Split { .. } => "split",
            Op::Merge => "merge",
            Op::Encode => "encode",
            Op::Repartition { .. } => "repartition",
            Op::Aggregate { window: None, .. } => "aggregate",
            Op::Aggregate { window: Some(_), .. } => "windowed aggregate",
            Op::TableGroupBy => "table group_by",
            Op::TableAggregate { .. } => "table aggregate",
            Op::ToStream => "to_stream",
            Op::ToTable { .. } => "to_table",
            Op::JoinTable { left: false } => "stream-table join",
            Op::JoinTable { left: true } => "stream-table left join",
            Op::Joiner => "joiner",
            Op::JoinTables { kind: JoinKind::Inner } => "table-table join",
            Op::JoinTables { kind: JoinKind::Left } => "table-table left join",
            Op::JoinTables { kind: JoinKind::Outer } => "table-table outer join",
            Op::JoinStreams { kind: JoinKind::Inner, .. } => "stream-stream join",
            Op::JoinStreams { kind: JoinKind::Left, .. } => "stream-stream left join",
            Op::JoinStreams { kind: JoinKind::Outer, .. } => "stream-stream outer join",
            Op::GlobalTable { .. } => "global table",
            Op::GlobalKey => "global key",
            Op::JoinGlobal { left: false } => "stream-global join",
            Op::JoinGlobal { left: true } => "stream-global left join",
            Op::ForeignKey => "foreign key",
            Op::JoinForeign { kind: JoinKind::Left, .. } => "foreign-key left join",
            Op::JoinForeign { .. } => "foreign-key join",
            Op::ForeignResponse { .. } => "foreign-key join response",
        }
    }

    /// Whether the plugin runs this operator (as opposed to the host).
    pub fn is_guest(&self) -> bool {
        matches!(
            self,
            Op::Validate
                | Op::Filter
                | Op::FilterNot
                | Op::Map
                | Op::MapValues
                | Op::FlatMap
                | Op::FlatMapValues
                | Op::SelectKey
                | Op::Peek
                | Op::Split { .. }
                | Op::Merge
                | Op::Encode
                | Op::TableGroupBy
                | Op::Joiner
                | Op::GlobalKey
                | Op::ForeignKey
        )
    }

    /// Whether the operator may give records a new key (so grouping after it
    /// needs a repartition).
    pub fn changes_key(&self) -> bool {
        matches!(self, Op::Map | Op::FlatMap | Op::SelectKey | Op::TableGroupBy | Op::GlobalKey | Op::ForeignKey)
    }

    /// The store the operator owns, if any.
    pub fn store(&self) -> Option<&StoreSpec> {
        match self {
            Op::Aggregate { store, .. }
            | Op::TableAggregate { store, .. }
            | Op::ToTable { store }
            | Op::JoinStreams { store, .. }
            | Op::JoinForeign { store, .. }
            | Op::GlobalTable { store, .. } => Some(store),
            _ => None,
        }
    }

    /// How many outputs (ports) the operator has.
    pub fn ports(&self) -> u32 {
        match self {
            Op::Sink { .. } => 0,
            Op::Split { branches, default_branch } => branches.len() as u32 + u32::from(*default_branch),
            _ => 1,
        }
    }
}

/// A topology that breaks a rule, naming the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyError {
    /// The node at fault, if the fault is one node's.
    pub node: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "node `{node}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for TopologyError {}

fn at(node: &Node, reason: impl Into<String>) -> TopologyError {
    TopologyError { node: Some(node.name.clone()), reason: reason.into() }
}

fn whole(reason: impl Into<String>) -> TopologyError {
    TopologyError { node: None, reason: reason.into() }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("{what} must be 1 to {MAX_NAME_LEN} bytes long"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{what} `{name}` has the character {c:?}; names may use A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

/// One sub-topology: the nodes tasks of one kind run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTopology {
    /// Its nodes, in topological order.
    pub nodes: Vec<u32>,
    /// Source nodes reading topics.
    pub sources: Vec<u32>,
    /// Repartition nodes whose topic it reads.
    pub reads_repartitions: Vec<u32>,
    /// Repartition nodes whose topic it writes.
    pub writes_repartitions: Vec<u32>,
}

/// A segment: guest operators the host runs in one call per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Nodes where records from the host enter the segment.
    pub entries: Vec<u32>,
    /// Every node of the segment, in topological order.
    pub nodes: Vec<u32>,
    /// Host nodes that records leave the segment to.
    pub exits: Vec<u32>,
}

/// A plugin's graph of operators. Build it with an SDK; check it with
/// [`Topology::validate`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Topology {
    /// The operators; edges refer to them by index.
    pub nodes: Vec<Node>,
}

impl Topology {
    /// The node named `name`.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.nodes.iter().position(|n| n.name == name).map(|i| i as u32)
    }

    /// The node at `index`.
    pub fn node(&self, index: u32) -> &Node {
        &self.nodes[index as usize]
    }

    /// Nodes that read `index`'s outputs, with the port they read.
    pub fn consumers(&self, index: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(move |(i, n)| n.inputs.iter().filter(move |e| e.node == index).map(move |e| (i as u32, e.port)))
    }

    /// Node indices in an order where every node comes after its inputs, or the
    /// name of a node on a cycle.
    pub fn topological_order(&self) -> Result<Vec<u32>, TopologyError> {
        let n = self.nodes.len();
        let mut indegree: Vec<usize> = self.nodes.iter().map(|node| node.inputs.len()).collect();
        let mut ready: Vec<u32> = (0..n as u32).filter(|&i| indegree[i as usize] == 0).rev().collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = ready.pop() {
            order.push(i);
            let mut next: Vec<u32> = Vec::new();
            for (consumer, _) in self.consumers(i) {
                let d = &mut indegree[consumer as usize];
                *d -= 1;
                if *d == 0 {
                    next.push(consumer);
                }
            }
            next.sort_unstable();
            next.dedup();
            ready.extend(next.into_iter().rev());
        }
        if order.len() < n {
            let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
            return Err(at(
                &self.nodes[stuck],
                "is on a cycle: records would flow back into it; a topology must be acyclic",
            ));
        }
        Ok(order)
    }

    /// Checks every rule a topology must follow before a host runs it, and
    /// returns the first broken one with the node named.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.nodes.is_empty() {
            return Err(whole("the topology has no nodes"));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(whole(format!("the topology has {} nodes; the limit is {MAX_NODES}", self.nodes.len())));
        }
        let edges: usize = self.nodes.iter().map(|n| n.inputs.len()).sum();
        if edges > MAX_EDGES {
            return Err(whole(format!("the topology has {edges} edges; the limit is {MAX_EDGES}")));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut stores: HashMap<&str, &str> = HashMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            check_name("a node name", &node.name)
                .map_err(|r| TopologyError { node: Some(node.name.clone()), reason: r })?;
            if names.insert(&node.name, i).is_some() {
                return Err(at(node, "the name is used by two nodes; node names must be unique"));
            }
            for edge in &node.inputs {
                let Some(upstream) = self.nodes.get(edge.node as usize) else {
                    return Err(at(node, format!("reads node #{}, which does not exist", edge.node)));
                };
                if edge.port >= upstream.op.ports() {
                    return Err(at(
                        node,
                        format!(
                            "reads output {} of `{}`, which has {} output(s)",
                            edge.port,
                            upstream.name,
                            upstream.op.ports()
                        ),
                    ));
                }
            }
            if let Some(store) = node.op.store() {
                check_name("a store name", &store.name).map_err(|r| at(node, r))?;
                if let Some(other) = stores.insert(&store.name, &node.name) {
                    return Err(at(node, format!("its store `{}` is also the store of `{other}`", store.name)));
                }
                if !store.changelog {
                    return Err(at(
                        node,
                        format!(
                            "its store `{}` has no changelog; Weir restores every store from its changelog, so \
                             each must have one",
                            store.name
                        ),
                    ));
                }
                if store.migrates_from.len() > MAX_MIGRATES_FROM {
                    return Err(at(
                        node,
                        format!(
                            "its store migrates from {} schemas; the limit is {MAX_MIGRATES_FROM}",
                            store.migrates_from.len()
                        ),
                    ));
                }
            }
            match &node.op {
                Op::Source { topic } | Op::Sink { topic } | Op::GlobalTable { topic, .. } => {
                    check_name("a topic name", topic).map_err(|r| at(node, r))?;
                }
                Op::Split { branches, .. } => {
                    if branches.len() > MAX_BRANCHES {
                        return Err(at(node, format!("{} branches; the limit is {MAX_BRANCHES}", branches.len())));
                    }
                    for b in branches {
                        check_name("a branch name", b).map_err(|r| at(node, r))?;
                    }
                    if node.op.ports() == 0 {
                        return Err(at(node, "a split needs at least one branch"));
                    }
                }
                Op::Aggregate { window: Some(w), .. } => w.check().map_err(|r| at(node, r))?,
                Op::JoinStreams { window, .. } => {
                    for (what, v) in
                        [("before", window.before_ms), ("after", window.after_ms), ("grace", window.grace_ms)]
                    {
                        if v > MAX_WINDOW_MS {
                            return Err(at(
                                node,
                                format!("the join window's {what} is {v} ms; the limit is {MAX_WINDOW_MS} ms"),
                            ));
                        }
                    }
                }
                Op::Repartition { partitions: Some(0) } => {
                    return Err(at(node, "a repartition topic needs at least one partition"));
                }
                Op::Repartition { partitions: Some(p) } if *p > MAX_PARTITIONS => {
                    return Err(at(
                        node,
                        format!("a repartition topic of {p} partitions; the limit is {MAX_PARTITIONS}"),
                    ));
                }
                _ => {}
            }
            let inputs = node.inputs.len();
            match &node.op {
                Op::Source { .. } | Op::GlobalTable { .. } if inputs > 0 => {
                    return Err(at(node, "a source reads a topic, not other nodes"));
                }
                Op::Source { .. } | Op::GlobalTable { .. } => {}
                Op::Merge if inputs == 0 => return Err(at(node, "a merge needs inputs")),
                Op::Merge => {}
                Op::JoinTable { .. }
                | Op::JoinTables { .. }
                | Op::JoinStreams { .. }
                | Op::JoinGlobal { .. }
                | Op::JoinForeign { .. }
                | Op::ForeignResponse { .. }
                    if inputs != 2 =>
                {
                    return Err(at(node, format!("a join reads two inputs; it has {inputs}")));
                }
                Op::JoinTable { .. }
                | Op::JoinTables { .. }
                | Op::JoinStreams { .. }
                | Op::JoinGlobal { .. }
                | Op::JoinForeign { .. }
                | Op::ForeignResponse { .. } => {}
                _ if inputs == 0 => {
                    return Err(at(node, format!("no path reaches this {}: it has no input", node.op.kind())));
                }
                _ if inputs != 1 => {
                    return Err(at(node, format!("a {} reads exactly one input; it has {inputs}", node.op.kind())));
                }
                _ => {}
            }
        }
        let order = self.topological_order()?;
        self.check_flows(&order)?;
        if !self.nodes.iter().any(|n| matches!(n.op, Op::Sink { .. })) {
            return Err(whole("the topology writes nowhere: it has no sink"));
        }
        Ok(())
    }

    /// What each node's output carries, checking that each node reads what it can.
    pub fn flows(&self) -> Result<Vec<Flow>, TopologyError> {
        let order = self.topological_order()?;
        self.check_flows(&order)
    }

    fn check_flows(&self, order: &[u32]) -> Result<Vec<Flow>, TopologyError> {
        let mut flow = vec![Flow::Stream; self.nodes.len()];
        // Whether a key-changing operator lies between the node and the last
        // source or repartition on some path.
        let mut rekeyed = vec![false; self.nodes.len()];
        for &i in order {
            let node = &self.nodes[i as usize];
            let input_flows: Vec<Flow> = node.inputs.iter().map(|e| flow[e.node as usize]).collect();
            let input_rekeyed = node.inputs.iter().any(|e| rekeyed[e.node as usize]);
            let first = input_flows.first().copied();
            let needs = |want: &[Flow]| -> Result<(), TopologyError> {
                match input_flows.iter().find(|f| !want.contains(f)) {
                    Some(got) => Err(at(
                        node,
                        format!(
                            "a {} reads {}, but its input carries {got}",
                            node.op.kind(),
                            want.iter().map(ToString::to_string).collect::<Vec<_>>().join(" or ")
                        ),
                    )),
                    None => Ok(()),
                }
            };
            let out = match &node.op {
                Op::Source { .. } => Flow::Stream,
                Op::GlobalTable { .. } => Flow::Global,
                Op::GlobalKey => {
                    needs(&[Flow::Stream])?;
                    Flow::Selected
                }
                Op::JoinGlobal { .. } => {
                    let (stream, table) = (input_flows.first().copied(), input_flows.get(1).copied());
                    if stream != Some(Flow::Selected) || table != Some(Flow::Global) {
                        return Err(at(
                            node,
                            "a join with a global table reads a global key selector (first) and a global table \
                             (second)",
                        ));
                    }
                    Flow::Joined
                }
                Op::Sink { .. } | Op::Encode => {
                    needs(&[Flow::Stream])?;
                    Flow::Stream
                }
                Op::Validate
                | Op::Filter
                | Op::FilterNot
                | Op::Map
                | Op::MapValues
                | Op::FlatMap
                | Op::FlatMapValues
                | Op::SelectKey
                | Op::Peek
                | Op::Split { .. } => {
                    needs(&[Flow::Stream])?;
                    Flow::Stream
                }
                Op::Merge => {
                    needs(&[Flow::Stream])?;
                    Flow::Stream
                }
                Op::Repartition { .. } => {
                    needs(&[Flow::Stream, Flow::Changes, Flow::Subscriptions, Flow::Responses])?;
                    first.unwrap_or(Flow::Stream)
                }
                Op::ForeignKey => {
                    needs(&[Flow::Table])?;
                    Flow::Subscriptions
                }
                Op::JoinForeign { kind, .. } | Op::ForeignResponse { kind } => {
                    if *kind == JoinKind::Outer {
                        return Err(at(node, "a foreign-key join is inner or left; it has no outer kind"));
                    }
                    let want = match node.op {
                        Op::JoinForeign { .. } => (Flow::Subscriptions, Flow::Responses),
                        _ => (Flow::Responses, Flow::Joined),
                    };
                    let (from, table) = (input_flows.first().copied(), input_flows.get(1).copied());
                    let through_repartition =
                        node.inputs.first().is_some_and(|e| matches!(self.node(e.node).op, Op::Repartition { .. }));
                    if from != Some(want.0) || table != Some(Flow::Table) || !through_repartition {
                        return Err(at(
                            node,
                            format!(
                                "a {} reads {} through a repartition topic (first) and a table (second)",
                                node.op.kind(),
                                want.0
                            ),
                        ));
                    }
                    want.1
                }
                Op::Aggregate { window, .. } => {
                    needs(&[Flow::Stream])?;
                    if input_rekeyed {
                        return Err(at(
                            node,
                            "groups records whose key was changed upstream without a repartition in between: a \
                             partition would not hold every record of a key (group through a repartition)",
                        ));
                    }
                    if window.is_some() { Flow::WindowedTable } else { Flow::Table }
                }
                Op::TableGroupBy => {
                    needs(&[Flow::Table, Flow::WindowedTable])?;
                    Flow::Changes
                }
                Op::TableAggregate { .. } => {
                    needs(&[Flow::Changes])?;
                    if input_rekeyed {
                        return Err(at(
                            node,
                            "aggregates re-grouped table updates that did not go through a repartition",
                        ));
                    }
                    Flow::Table
                }
                Op::ToStream => {
                    needs(&[Flow::Table, Flow::WindowedTable])?;
                    Flow::Stream
                }
                Op::ToTable { .. } => {
                    needs(&[Flow::Stream])?;
                    if input_rekeyed {
                        return Err(at(
                            node,
                            "makes a table of records whose key was changed upstream without a repartition in \
                             between: a partition would not hold every update of a key (repartition first)",
                        ));
                    }
                    Flow::Table
                }
                Op::JoinTable { .. } => {
                    let (stream, table) = (input_flows.first().copied(), input_flows.get(1).copied());
                    if stream != Some(Flow::Stream) || table != Some(Flow::Table) {
                        return Err(at(
                            node,
                            format!(
                                "a join reads a stream (first) and a table (second); its inputs carry {} and {}",
                                stream.map_or_else(|| "nothing".to_owned(), |f| f.to_string()),
                                table.map_or_else(|| "nothing".to_owned(), |f| f.to_string())
                            ),
                        ));
                    }
                    if node.inputs.first().is_some_and(|e| rekeyed[e.node as usize]) {
                        return Err(at(
                            node,
                            "joins records whose key was changed upstream without a repartition in between: the \
                             table's row for a key may be in another task (repartition first)",
                        ));
                    }
                    Flow::Joined
                }
                Op::JoinTables { .. } => {
                    needs(&[Flow::Table])?;
                    Flow::Joined
                }
                Op::JoinStreams { .. } => {
                    needs(&[Flow::Stream])?;
                    if input_rekeyed {
                        return Err(at(
                            node,
                            "joins records whose key was changed upstream without a repartition in between: records \
                             of one key may be in different tasks (repartition first)",
                        ));
                    }
                    Flow::Joined
                }
                Op::Joiner => {
                    needs(&[Flow::Joined])?;
                    Flow::Stream
                }
            };
            flow[i as usize] = out;
            rekeyed[i as usize] = match &node.op {
                Op::Source { .. } | Op::Repartition { .. } | Op::GlobalTable { .. } => false,
                // Records leave a join with a global table under their own key
                // again: as they reached its key selector.
                Op::JoinGlobal { .. } => node
                    .inputs
                    .first()
                    .and_then(|e| self.nodes[e.node as usize].inputs.first())
                    .is_some_and(|e| rekeyed[e.node as usize]),
                op => input_rekeyed || op.changes_key(),
            };
        }
        Ok(flow)
    }

    /// The sub-topologies: the graph's connected parts once cut at repartition
    /// topics (a repartition node belongs to the part that writes it). Ordered by
    /// their first node.
    pub fn subtopologies(&self) -> Result<Vec<SubTopology>, TopologyError> {
        let order = self.topological_order()?;
        // Connected over every edge except those out of a repartition or a
        // global table (which every task reads whole).
        let mut parent =
            self.components(|from, _| !matches!(self.nodes[from].op, Op::Repartition { .. } | Op::GlobalTable { .. }));
        let mut parts: Vec<(usize, SubTopology)> = Vec::new();
        for &i in &order {
            let r = root(&mut parent, i as usize);
            let at = match parts.iter().position(|(root, _)| *root == r) {
                Some(at) => at,
                None => {
                    parts.push((
                        r,
                        SubTopology {
                            nodes: vec![],
                            sources: vec![],
                            reads_repartitions: vec![],
                            writes_repartitions: vec![],
                        },
                    ));
                    parts.len() - 1
                }
            };
            let part = &mut parts[at].1;
            part.nodes.push(i);
            let node = &self.nodes[i as usize];
            if matches!(node.op, Op::Source { .. }) {
                part.sources.push(i);
            }
            if matches!(node.op, Op::Repartition { .. }) {
                part.writes_repartitions.push(i);
            }
            for e in &node.inputs {
                if matches!(self.nodes[e.node as usize].op, Op::Repartition { .. })
                    && !part.reads_repartitions.contains(&e.node)
                {
                    part.reads_repartitions.push(e.node);
                }
            }
        }
        let mut parts: Vec<SubTopology> = parts.into_iter().map(|(_, p)| p).collect();
        parts.sort_by_key(|p| p.nodes.iter().min().copied());
        Ok(parts)
    }

    /// The segments: maximal connected sets of guest operators.
    pub fn segments(&self) -> Result<Vec<Segment>, TopologyError> {
        let order = self.topological_order()?;
        let guest = |i: usize| self.nodes[i].op.is_guest();
        let mut parent = self.components(|from, to| guest(from) && guest(to));
        let mut segments: Vec<(usize, Segment)> = Vec::new();
        for &i in &order {
            if !guest(i as usize) {
                continue;
            }
            let r = root(&mut parent, i as usize);
            let at = match segments.iter().position(|(root, _)| *root == r) {
                Some(at) => at,
                None => {
                    segments.push((r, Segment { entries: vec![], nodes: vec![], exits: vec![] }));
                    segments.len() - 1
                }
            };
            let seg = &mut segments[at].1;
            seg.nodes.push(i);
            let node = &self.nodes[i as usize];
            if node.inputs.iter().any(|e| !guest(e.node as usize)) {
                seg.entries.push(i);
            }
            let exits: BTreeSet<u32> = self.consumers(i).map(|(c, _)| c).filter(|&c| !guest(c as usize)).collect();
            for c in exits {
                if !seg.exits.contains(&c) {
                    seg.exits.push(c);
                }
            }
        }
        Ok(segments.into_iter().map(|(_, s)| s).collect())
    }
}

/// The root of `i`'s set in a union-find forest (halving paths on the way).
fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

impl Topology {
    /// Union-find over the edges `joins(from, to)` accepts: call [`root`] on the
    /// result for a node's set.
    fn components(&self, joins: impl Fn(usize, usize) -> bool) -> Vec<usize> {
        let mut parent: Vec<usize> = (0..self.nodes.len()).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for e in &node.inputs {
                if joins(e.node as usize, i) {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, e.node as usize));
                    parent[a] = b;
                }
            }
        }
        parent
    }
}

/// A node as it travels: its operator is a nested frame, decoded on its own so
/// that an unknown operator is reported with the node's name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeFrame<'a> {
    /// The node's name.
    #[serde(borrow)]
    pub name: &'a str,
    /// Its inputs.
    pub inputs: Vec<Edge>,
    /// The postcard encoding of its [`Op`].
    #[serde(borrow)]
    pub op: &'a [u8],
}

/// A topology as `describe` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyFrame<'a> {
    /// The nodes.
    #[serde(borrow)]
    pub nodes: Vec<NodeFrame<'a>>,
}

impl Topology {
    /// The wire form of this topology.
    pub fn encode(&self) -> Result<Vec<u8>, crate::Error> {
        let ops: Vec<Vec<u8>> = self.nodes.iter().map(|n| crate::encode(&n.op)).collect::<Result<_, _>>()?;
        let frame = TopologyFrame {
            nodes: self
                .nodes
                .iter()
                .zip(&ops)
                .map(|(n, op)| NodeFrame { name: &n.name, inputs: n.inputs.clone(), op })
                .collect(),
        };
        crate::encode(&frame)
    }

    /// Reads the wire form; an operator this version does not know is refused
    /// with its node's name.
    pub fn decode(bytes: &[u8]) -> Result<Self, TopologyError> {
        let frame: TopologyFrame<'_> =
            crate::decode(bytes).map_err(|e| whole(format!("the topology does not decode: {e}")))?;
        if frame.nodes.len() > MAX_NODES {
            return Err(whole(format!("the topology has {} nodes; the limit is {MAX_NODES}", frame.nodes.len())));
        }
        let edges: usize = frame.nodes.iter().map(|n| n.inputs.len()).sum();
        if edges > MAX_EDGES {
            return Err(whole(format!("the topology has {edges} edges; the limit is {MAX_EDGES}")));
        }
        let mut nodes = Vec::with_capacity(frame.nodes.len());
        for (i, n) in frame.nodes.into_iter().enumerate() {
            let op: Op = crate::decode(n.op).map_err(|e| TopologyError {
                node: Some(if n.name.len() <= MAX_NAME_LEN { n.name.to_owned() } else { format!("#{i}") }),
                reason: format!(
                    "unknown operator (the plugin may be built for a newer Weir, or its description is damaged): {e}"
                ),
            })?;
            nodes.push(Node { name: n.name.to_owned(), inputs: n.inputs, op });
        }
        Ok(Self { nodes })
    }
}

#[cfg(test)]
mod tests;
