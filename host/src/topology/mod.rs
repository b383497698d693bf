//! What the host runs of a plugin's topology: the [`Shape`] it derives from the
//! graph `describe` returned, checked when the plugin is loaded (so a topology the
//! host cannot run is refused at upload, never at the first record).
//!
//! This version runs topologies of **one sub-topology** with **one source** and
//! at most **one windowed aggregation** (tumbling, hopping, sliding or session):
//!
//! ```text
//! source → [guest operators] → sinks                                      (stateless)
//! source → [guest operators] → windowed aggregate → to_stream → [guest operators] → sinks
//! ```
//!
//! The guest operators before the aggregation run in the same call that folds
//! records into it (they keep keys and timestamps, so the host plans windows from
//! the source record); those after it render the rows the aggregation emits at a
//! commit. (Sliding and session windows depend on which records reach them, so
//! the operators before them run in a call of their own first.) Repartitions and
//! tables are described and validated by the model (`weir_abi::topology`) but
//! refused here, with the node named, until the host runs them.

pub mod describe;

use std::collections::BTreeMap;

use weir_abi::topology::{Edge, Emit, Op, StoreSpec, Topology, TopologyError, WindowSpec};

use crate::window::Windowing;

/// A logical topic the topology reads or writes, and the node that does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The source or sink node.
    pub node: u32,
    /// Its logical topic name.
    pub topic: String,
}

/// The aggregation of a one-stage topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowedStage {
    /// The aggregation node.
    pub node: u32,
    /// Its store (name, schema, migrations).
    pub store: StoreSpec,
    /// The windows as declared.
    pub spec: WindowSpec,
    /// Tumbling or hopping windows, ready to assign records (none for sliding
    /// and session windows, which are planned per key).
    pub windowing: Option<Windowing>,
    /// Grace period as declared.
    pub grace_ms: u64,
    /// When rows are emitted.
    pub emit: Emit,
    /// Where the records folded into it come from: the source output, through
    /// guest operators (`via`), or directly.
    pub via: Option<Edge>,
    /// The output of `to_stream` the emitted rows leave through.
    pub render_from: Edge,
}

/// What runs between the source and the sinks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Guest operators only.
    Stateless,
    /// One windowed aggregation.
    Windowed(WindowedStage),
}

/// The plan the host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// The source.
    pub source: Endpoint,
    /// The sinks, in node order; a record's sink is an index into this.
    pub sinks: Vec<Endpoint>,
    /// Which sinks read each node output.
    pub sink_at: BTreeMap<(u32, u32), Vec<usize>>,
    /// What runs in between.
    pub stage: Stage,
}

impl Shape {
    /// The aggregation, if any.
    pub fn windowed(&self) -> Option<&WindowedStage> {
        match &self.stage {
            Stage::Windowed(w) => Some(w),
            Stage::Stateless => None,
        }
    }

    /// The store, if any.
    pub fn store(&self) -> Option<&StoreSpec> {
        self.windowed().map(|w| &w.store)
    }

    /// The source output records enter the guest from (stateless stage).
    pub fn source_edge(&self) -> Edge {
        Edge { node: self.source.node, port: 0 }
    }

    /// The sinks a record leaving `node`'s output `port` goes to.
    pub fn sinks_of(&self, node: u32, port: u32) -> &[usize] {
        self.sink_at.get(&(node, port)).map_or(&[], Vec::as_slice)
    }

    /// What keeps this version from taking over from `old` at a transaction
    /// boundary: a different stateful shape (stores and their windows, found by
    /// name) or other topics — as the pipeline maps them (`real` gives a shape's
    /// source topic and sink topics), so two builds naming their topics
    /// differently can still swap. Stateless steps may differ freely.
    pub fn swap_difference(&self, old: &Shape, real: impl Fn(&Shape) -> (String, Vec<String>)) -> Option<String> {
        let ((source, sinks), (old_source, old_sinks)) = (real(self), real(old));
        if source != old_source {
            return Some(format!("it reads `{source}` where the running version reads `{old_source}`"));
        }
        if sinks != old_sinks {
            return Some(format!("it writes {sinks:?} where the running version writes {old_sinks:?}"));
        }
        match (self.windowed(), old.windowed()) {
            (None, None) => None,
            (Some(w), None) => Some(format!("it adds the aggregation `{}` to a pipeline that has none", w.store.name)),
            (None, Some(o)) => Some(format!("it drops the aggregation `{}`", o.store.name)),
            (Some(w), Some(o)) if w.store.name != o.store.name => Some(format!(
                "its aggregation is named `{}` where the running one is `{}`: stores are found by name",
                w.store.name, o.store.name
            )),
            (Some(w), Some(o)) if w.spec != o.spec => Some(format!(
                "the windows of `{}` are {} where the running version's are {}",
                w.store.name, w.spec, o.spec
            )),
            _ => None,
        }
    }
}

/// Why the host cannot run a topology.
fn refuse(t: &Topology, node: u32, reason: impl Into<String>) -> TopologyError {
    TopologyError { node: Some(t.node(node).name.clone()), reason: reason.into() }
}

/// Derives the shape of a validated topology, or says (naming the node) what
/// this host cannot run yet.
pub fn shape(t: &Topology) -> Result<Shape, TopologyError> {
    t.validate()?;
    let later = "this version of Weir runs topologies of one sub-topology with at most one windowed aggregation; \
                 repartitions and tables run in the next";
    for (i, n) in t.nodes.iter().enumerate() {
        let unsupported = match &n.op {
            Op::Repartition { .. } | Op::TableGroupBy | Op::TableAggregate { .. } => true,
            Op::Aggregate { window, .. } => window.is_none(),
            _ => false,
        };
        if unsupported {
            return Err(refuse(t, i as u32, format!("a {}: {later}", n.op.kind())));
        }
    }
    let sources: Vec<u32> = (0..t.nodes.len() as u32).filter(|&i| matches!(t.node(i).op, Op::Source { .. })).collect();
    let source = match sources.as_slice() {
        [one] => *one,
        [_, second, ..] => return Err(refuse(t, *second, format!("a second source: {later}"))),
        [] => return Err(TopologyError { node: None, reason: "the topology reads no topic".into() }),
    };
    let aggregates: Vec<u32> =
        (0..t.nodes.len() as u32).filter(|&i| matches!(t.node(i).op, Op::Aggregate { .. })).collect();
    if let [_, second, ..] = aggregates.as_slice() {
        return Err(refuse(t, *second, format!("a second aggregation: {later}")));
    }
    let segments = t.segments()?;
    let segment_of = |node: u32| segments.iter().find(|s| s.nodes.contains(&node));
    let mut sinks = Vec::new();
    let mut sink_at: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, n) in t.nodes.iter().enumerate() {
        if let Op::Sink { topic } = &n.op {
            let input = n.inputs[0];
            let from = t.node(input.node);
            if !(from.op.is_guest() || input.node == source) {
                return Err(refuse(t, i as u32, format!("a sink fed by a {}: {later}", from.op.kind())));
            }
            sink_at.entry((input.node, input.port)).or_default().push(sinks.len());
            sinks.push(Endpoint { node: i as u32, topic: topic.clone() });
        }
    }
    let stage = match aggregates.first() {
        None => Stage::Stateless,
        Some(&agg) => {
            let node = t.node(agg);
            let Op::Aggregate { store, window: Some(spec), emit, .. } = &node.op else {
                return Err(refuse(t, agg, later));
            };
            let input = node.inputs[0];
            let via = if input.node == source {
                None
            } else {
                // The guest operators before the aggregation must lead nowhere else.
                let seg = segment_of(input.node).ok_or_else(|| refuse(t, agg, later))?;
                if seg.exits != [agg] || seg.entries.iter().any(|&e| t.node(e).inputs.iter().any(|i| i.node != source))
                {
                    return Err(refuse(
                        t,
                        agg,
                        format!(
                            "the operators before it also lead elsewhere ({}): {later}",
                            seg.exits.iter().map(|&e| format!("`{}`", t.node(e).name)).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                Some(Edge { node: source, port: 0 })
            };
            let to_stream: Vec<u32> = t.consumers(agg).map(|(c, _)| c).collect();
            let render = match to_stream.as_slice() {
                [one] if matches!(t.node(*one).op, Op::ToStream) => *one,
                _ => return Err(refuse(t, agg, format!("the aggregation must be read by one to_stream: {later}"))),
            };
            for (c, _) in t.consumers(render) {
                if !t.node(c).op.is_guest() {
                    return Err(refuse(t, c, format!("reads to_stream directly: {later}")));
                }
                let seg = segment_of(c).ok_or_else(|| refuse(t, c, later))?;
                if let Some(&bad) = seg.exits.iter().find(|&&e| !matches!(t.node(e).op, Op::Sink { .. })) {
                    return Err(refuse(t, bad, format!("is fed by the operators after an aggregation: {later}")));
                }
            }
            let windowing = match *spec {
                WindowSpec::Tumbling { size_ms, .. } => Some(Windowing::tumbling(size_ms)),
                WindowSpec::Hopping { size_ms, advance_ms, .. } => Some(Windowing::hopping(size_ms, advance_ms)),
                WindowSpec::Sliding { .. } | WindowSpec::Session { .. } => None,
            }
            .transpose()
            .map_err(|e| refuse(t, agg, e.to_string()))?;
            let grace_ms = spec.grace_ms();
            Stage::Windowed(WindowedStage {
                node: agg,
                store: store.clone(),
                spec: *spec,
                windowing,
                grace_ms,
                emit: *emit,
                via,
                render_from: Edge { node: render, port: 0 },
            })
        }
    };
    if matches!(stage, Stage::Stateless) {
        // Every guest segment must start at the source and end at sinks.
        for seg in &segments {
            if let Some(&bad) = seg.exits.iter().find(|&&e| !matches!(t.node(e).op, Op::Sink { .. })) {
                return Err(refuse(t, bad, later));
            }
        }
    }
    let topic = match &t.node(source).op {
        Op::Source { topic } => topic.clone(),
        _ => String::new(),
    };
    Ok(Shape { source: Endpoint { node: source, topic }, sinks, sink_at, stage })
}

#[cfg(test)]
mod tests;
