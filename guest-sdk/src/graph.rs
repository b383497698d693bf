//! Runs a built [`Topology`] over the host's frames: `run` (a batch through a
//! segment of guest operators), `aggregate` (records folded into an
//! aggregation's slots, optionally through the guest operators before it) and
//! `migrate` (a store's values from an older schema). Target-independent, so
//! native tests exercise the exact code the host calls through wasm.

use weir_abi::calls::{
    AggregateIn, AggregateOut, Emitted, MigrateIn, NodeReject, Rec, RunIn, RunOut, SlotOp, SlotValue,
};
use weir_abi::topology::Edge;
use weir_abi::{MigrateOut, Window};

use crate::dsl::{Item, Obj, Run, Topology};

/// Why a whole frame failed (as opposed to one record in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame or a stored value could not be decoded.
    BadFrame(String),
    /// The plugin cannot go on.
    Fatal(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadFrame(m) => write!(f, "bad frame: {m}"),
            FrameError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for FrameError {}

fn bad(what: &str, e: impl std::fmt::Display) -> FrameError {
    FrameError::BadFrame(format!("{what}: {e}"))
}

fn fatal(e: impl std::fmt::Display) -> FrameError {
    FrameError::Fatal(e.to_string())
}

/// A record leaving towards the host, owned.
struct Out {
    source: u32,
    node: u32,
    port: u32,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    old: Option<Vec<u8>>,
    timestamp: i64,
    window: Option<Window>,
}

/// Where records reaching a host node go during one call.
struct Sinks {
    /// The aggregation node whose records are kept (fused `aggregate`).
    catch: Option<u32>,
    caught: Vec<Item>,
    out: Vec<Out>,
    rejects: Vec<(u32, u32, String)>,
    /// Buffers for operators' outputs, reused (a call allocates them once).
    pool: Vec<Vec<(u32, Item)>>,
}

impl Sinks {
    fn new(catch: Option<u32>) -> Self {
        Self { catch, caught: Vec::new(), out: Vec::new(), rejects: Vec::new(), pool: Vec::new() }
    }
}

impl Topology {
    fn is_guest(&self, node: u32) -> bool {
        matches!(self.runs.get(node as usize), Some((_, Run::Step(_))))
    }

    /// Hands `item` (from input record `source`) to guest node `node`.
    fn push(&self, node: u32, item: Item, source: u32, sinks: &mut Sinks) -> Result<(), FrameError> {
        let Some((_, Run::Step(step))) = self.runs.get(node as usize) else {
            return Err(fatal(format!("internal: node #{node} is not a guest operator")));
        };
        let mut produced = sinks.pool.pop().unwrap_or_default();
        if let Err(reason) = step(item, &mut produced) {
            sinks.rejects.push((source, node, reason));
            produced.clear();
            sinks.pool.push(produced);
            return Ok(());
        }
        let mut result = Ok(());
        for (port, item) in produced.drain(..) {
            if result.is_ok() {
                result = self.forward(Edge { node, port }, item, source, sinks);
            }
        }
        sinks.pool.push(produced);
        result
    }

    /// Sends `item`, an output of `from`, to every node reading it.
    fn forward(&self, from: Edge, item: Item, source: u32, sinks: &mut Sinks) -> Result<(), FrameError> {
        let consumers = self
            .consumers
            .get(from.node as usize)
            .and_then(|ports| ports.get(from.port as usize))
            .ok_or_else(|| fatal(format!("internal: no output {} of node #{}", from.port, from.node)))?;
        let codec = || {
            self.runs[from.node as usize]
                .0
                .as_ref()
                .ok_or_else(|| fatal(format!("internal: node #{} has no output", from.node)))
        };
        let guests = consumers.iter().filter(|&&c| self.is_guest(c)).count();
        let to_host = consumers.iter().any(|&c| !self.is_guest(c) && Some(c) != sinks.catch);
        let caught = sinks.catch.is_some_and(|c| consumers.contains(&c));
        let copies = guests + usize::from(to_host) + usize::from(caught);
        let mut item = Some(item);
        let mut next = |remaining: &mut usize| -> Result<Item, FrameError> {
            *remaining -= 1;
            let it = item.as_ref().ok_or_else(|| fatal("internal: record used up"))?;
            if *remaining == 0 {
                item.take().ok_or_else(|| fatal("internal: record used up"))
            } else {
                codec()?.clone_item(it).map_err(fatal)
            }
        };
        let mut remaining = copies;
        if to_host {
            let it = next(&mut remaining)?;
            match codec()?.encode(&it) {
                Ok((key, value, old, window)) => sinks.out.push(Out {
                    source,
                    node: from.node,
                    port: from.port,
                    key,
                    value,
                    old,
                    timestamp: it.timestamp,
                    window,
                }),
                Err(reason) => sinks.rejects.push((source, from.node, format!("cannot write the result: {reason}"))),
            }
        }
        if caught {
            sinks.caught.push(next(&mut remaining)?);
        }
        for &g in consumers.iter().filter(|&&c| self.is_guest(c)) {
            let it = next(&mut remaining)?;
            self.push(g, it, source, sinks)?;
        }
        Ok(())
    }

    /// Reads a record arriving from host output `from`.
    fn decode(&self, from: Edge, rec: &Rec<'_>) -> Result<Result<Item, String>, FrameError> {
        let (codec, _) = self.runs.get(from.node as usize).ok_or_else(|| bad("no such node", from.node))?;
        let codec = codec.as_ref().ok_or_else(|| bad("node has no output", from.node))?;
        Ok(codec.decode(rec))
    }

    /// Runs one `run` frame and returns the `RunOut` frame.
    pub fn run_frame(&self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let input: RunIn<'_> = weir_abi::decode(frame).map_err(|e| bad("run frame", e))?;
        let mut sinks = Sinks::new(None);
        // Host outputs are read by guest operators only through here.
        let guests = self.guests_of(input.from);
        for (i, rec) in input.records.iter().enumerate() {
            let i = i as u32;
            match self.decode(input.from, rec)? {
                Ok(item) => self.push_all(&guests, input.from, item, i, &mut sinks)?,
                Err(reason) => sinks.rejects.push((i, first_guest(self, input.from), reason)),
            }
        }
        let out = RunOut {
            emitted: sinks
                .out
                .iter()
                .map(|o| Emitted {
                    source: o.source,
                    node: o.node,
                    port: o.port,
                    record: Rec {
                        key: o.key.as_deref(),
                        value: o.value.as_deref(),
                        old: o.old.as_deref(),
                        timestamp: o.timestamp,
                        window: o.window,
                    },
                })
                .collect(),
            rejects: sinks
                .rejects
                .iter()
                .map(|(record, node, reason)| NodeReject { record: *record, node: *node, reason })
                .collect(),
        };
        weir_abi::encode(&out).map_err(|e| fatal(format!("encode result: {e}")))
    }

    /// The guest operators reading host output `from`.
    fn guests_of(&self, from: Edge) -> Vec<u32> {
        self.consumers
            .get(from.node as usize)
            .and_then(|p| p.get(from.port as usize))
            .map(|c| c.iter().copied().filter(|&c| self.is_guest(c)).collect())
            .unwrap_or_default()
    }

    fn push_all(
        &self,
        guests: &[u32],
        from: Edge,
        item: Item,
        source: u32,
        sinks: &mut Sinks,
    ) -> Result<(), FrameError> {
        let Some((last, rest)) = guests.split_last() else { return Ok(()) };
        let codec =
            self.runs[from.node as usize].0.as_ref().ok_or_else(|| fatal("internal: host output without codec"))?;
        for &g in rest {
            let copy = codec.clone_item(&item).map_err(fatal)?;
            self.push(g, copy, source, sinks)?;
        }
        self.push(*last, item, source, sinks)
    }

    /// Runs one `aggregate` frame and returns the `AggregateOut` frame.
    pub fn aggregate_frame(&self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let input: AggregateIn<'_> = weir_abi::decode(frame).map_err(|e| bad("aggregate frame", e))?;
        let Some((_, Run::Fold(fold))) = self.runs.get(input.node as usize) else {
            return Err(bad("not an aggregation node", input.node));
        };
        let own_input = self.description.nodes.get(input.node as usize).and_then(|n| n.inputs.first().copied());
        let mut slots: Vec<Option<Obj>> = (0..input.slots.len()).map(|_| None).collect();
        let mut dirty = vec![false; input.slots.len()];
        let mut sinks = Sinks::new(Some(input.node));
        let from = input.via.or(own_input).ok_or_else(|| bad("aggregation without input", input.node))?;
        let guests = self.guests_of(from);
        let mut reached: Vec<Item> = Vec::new();

        for (i, r) in input.records.iter().enumerate() {
            let i = i as u32;
            let item = match self.decode(from, &r.record)? {
                Ok(item) => item,
                Err(reason) => {
                    let at = if input.via.is_some() { first_guest(self, from) } else { input.node };
                    sinks.rejects.push((i, at, reason));
                    continue;
                }
            };
            reached.clear();
            if input.via.is_some() {
                self.push_all(&guests, from, item, i, &mut sinks)?;
                if !sinks.out.is_empty() {
                    return Err(fatal("internal: records left the fused operators towards another host operator"));
                }
                reached.append(&mut sinks.caught);
            } else {
                reached.push(item);
            }
            let first = r.first_op as usize;
            let ops = first
                .checked_add(r.op_count as usize)
                .and_then(|end| input.ops.get(first..end))
                .ok_or_else(|| bad("record refers outside the step table", i))?;
            for item in &reached {
                for op in ops {
                    let slot = |s: u32, slots: &mut Vec<Option<Obj>>| -> Result<usize, FrameError> {
                        let s = s as usize;
                        let stored = input.slots.get(s).ok_or_else(|| bad("slot index out of range", s))?;
                        if slots[s].is_none() {
                            slots[s] = Some(match stored {
                                Some(bytes) => (fold.decode)(bytes).map_err(|e| bad("stored aggregate", e))?,
                                None => (fold.init)(),
                            });
                        }
                        Ok(s)
                    };
                    let result = match *op {
                        SlotOp::Add(s) => {
                            let s = slot(s, &mut slots)?;
                            dirty[s] = true;
                            slots[s].as_mut().map(|acc| (fold.add)(acc, item))
                        }
                        SlotOp::Subtract(s) => {
                            let s = slot(s, &mut slots)?;
                            dirty[s] = true;
                            slots[s].as_mut().map(|acc| (fold.subtract)(acc, item))
                        }
                        SlotOp::Copy { into, from } => {
                            let from = slot(from, &mut slots)?;
                            let into = into as usize;
                            if into >= slots.len() {
                                return Err(bad("slot index out of range", into));
                            }
                            let copy =
                                slots[from].as_ref().map(|v| (fold.clone)(v.as_ref())).transpose().map_err(fatal)?;
                            slots[into] = copy;
                            dirty[into] = true;
                            Some(Ok(()))
                        }
                        SlotOp::Merge { into, from } => {
                            let from = slot(from, &mut slots)?;
                            let into = slot(into, &mut slots)?;
                            let other = slots[from].take();
                            let r = match (&mut slots[into], &other) {
                                (Some(acc), Some(o)) => Some((fold.merge)(acc, o.as_ref())),
                                _ => None,
                            };
                            slots[from] = other;
                            dirty[into] = true;
                            r
                        }
                    };
                    if let Some(Err(e)) = result {
                        return Err(fatal(e));
                    }
                }
            }
        }

        let mut encoded: Vec<(u32, Vec<u8>)> = Vec::new();
        for (s, value) in slots.iter().enumerate() {
            if let (true, Some(v)) = (dirty[s], value)
                && let Some(bytes) = (fold.encode)(v.as_ref()).map_err(fatal)?
            {
                encoded.push((s as u32, bytes));
            }
        }
        let out = AggregateOut {
            updates: encoded.iter().map(|(slot, value)| SlotValue { slot: *slot, value }).collect(),
            rejects: sinks
                .rejects
                .iter()
                .map(|(record, node, reason)| NodeReject { record: *record, node: *node, reason })
                .collect(),
        };
        weir_abi::encode(&out).map_err(|e| fatal(format!("encode result: {e}")))
    }

    /// Runs one `migrate` frame and returns the `MigrateOut` frame.
    pub fn migrate_frame(&self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        let input: MigrateIn<'_> = weir_abi::decode(frame).map_err(|e| bad("migrate frame", e))?;
        let node = self.description.nodes.get(input.node as usize).ok_or_else(|| bad("no such node", input.node))?;
        let store = node.op.store().ok_or_else(|| bad("node has no store", &node.name))?;
        if !store.migrates_from.contains(&input.from) {
            return Err(fatal(format!(
                "asked to migrate store `{}` from state schema {}; it migrates from {:?}",
                store.name, input.from, store.migrates_from
            )));
        }
        let Some((_, Run::Fold(fold))) = self.runs.get(input.node as usize) else {
            return Err(bad("not an aggregation node", input.node));
        };
        let migrate = fold.migrate.as_ref().ok_or_else(|| fatal(format!("store `{}` has no migration", store.name)))?;
        let mut accs = Vec::with_capacity(input.slots.len());
        for slot in &input.slots {
            let acc = migrate(input.from, Some(slot.key), slot.window, slot.value)
                .map_err(|e| fatal(format!("migrating store `{}`: {e}", store.name)))?;
            accs.push(acc);
        }
        let out = MigrateOut { accs: accs.iter().map(|v| v.as_deref()).collect() };
        weir_abi::encode(&out).map_err(|e| fatal(format!("encode result: {e}")))
    }
}

/// The first guest operator reading host output `from` (named in a reject of a
/// record that does not decode).
fn first_guest(t: &Topology, from: Edge) -> u32 {
    t.consumers
        .get(from.node as usize)
        .and_then(|p| p.get(from.port as usize))
        .and_then(|c| c.iter().copied().find(|&c| t.is_guest(c)))
        .unwrap_or(from.node)
}
