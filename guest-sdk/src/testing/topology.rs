//! Driving a built [`Topology`] natively through the frames the host sends it
//! (`run` and `aggregate`), with node names instead of indices: what a plugin's
//! unit tests use to check its operators without wasm or a host.
//!
//! These are test helpers: they panic, with the reason, when a frame fails, as
//! an assertion would.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

use crate::dsl::Topology;
use weir_abi::Window;
use weir_abi::calls::{AggRecord, AggregateIn, AggregateOut, Rec, RunIn, RunOut, SlotOp};
use weir_abi::topology::Edge;

/// A record leaving the guest towards a host node: (node it left, key, value, window).
pub type Out = (String, Option<Vec<u8>>, Option<Vec<u8>>, Option<Window>);

/// A rejected record: (index in the batch, node named, reason).
pub type Reject = (u32, String, String);

/// Updated slots of an aggregation: (slot, stored value).
pub type Updates = Vec<(u32, Vec<u8>)>;

fn node(t: &Topology, name: &str) -> u32 {
    t.describe().find(name).unwrap_or_else(|| panic!("no node `{name}`"))
}

fn name(t: &Topology, index: u32) -> String {
    t.describe().node(index).name.clone()
}

/// A record with a key, a value and a timestamp.
pub fn rec<'a>(key: &'a [u8], value: &'a [u8], timestamp: i64) -> Rec<'a> {
    Rec { key: Some(key), value: Some(value), old: None, timestamp, window: None }
}

/// Runs `records`, leaving host node `from`, through the guest operators reading it.
pub fn run(t: &Topology, from: &str, records: Vec<Rec<'_>>) -> (Vec<Out>, Vec<Reject>) {
    let frame = RunIn { from: Edge { node: node(t, from), port: 0 }, records };
    let out = t.run_frame(&weir_abi::encode(&frame).expect("a test frame")).expect("a test frame");
    let out: RunOut<'_> = weir_abi::decode(&out).expect("a test frame");
    let emitted = out
        .emitted
        .iter()
        .map(|e| {
            let r = &e.record;
            (name(t, e.node), r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec), r.window)
        })
        .collect();
    let rejects = out.rejects.iter().map(|r| (r.record, name(t, r.node), r.reason.to_owned())).collect();
    (emitted, rejects)
}

/// Folds `records` (each with its slot ops) into the slots of aggregation `agg`,
/// through the guest operators after host node `via` if given. Returns the
/// updated slots and the rejects.
pub fn aggregate(
    t: &Topology,
    agg: &str,
    via: Option<&str>,
    slots: &[Option<Vec<u8>>],
    records: Vec<(Rec<'_>, Vec<SlotOp>)>,
) -> (Updates, Vec<Reject>) {
    let mut ops = Vec::new();
    let records = records
        .into_iter()
        .map(|(record, steps)| {
            let first_op = ops.len() as u32;
            ops.extend(steps.iter().copied());
            AggRecord { record, first_op, op_count: steps.len() as u32 }
        })
        .collect();
    let frame = AggregateIn {
        node: node(t, agg),
        via: via.map(|v| Edge { node: node(t, v), port: 0 }),
        slots: slots.iter().map(|s| s.as_deref()).collect(),
        records,
        ops,
    };
    let out = t.aggregate_frame(&weir_abi::encode(&frame).expect("a test frame")).expect("a test frame");
    let out: AggregateOut<'_> = weir_abi::decode(&out).expect("a test frame");
    let updates = out.updates.iter().map(|u| (u.slot, u.value.to_vec())).collect();
    let rejects = out.rejects.iter().map(|r| (r.record, name(t, r.node), r.reason.to_owned())).collect();
    (updates, rejects)
}

/// The names of the topology's nodes, in order.
pub fn names(t: &Topology) -> Vec<String> {
    t.describe().nodes.iter().map(|n| n.name.clone()).collect()
}

/// The names of the topology's stores, in order.
pub fn stores(t: &Topology) -> Vec<String> {
    t.describe().nodes.iter().filter_map(|n| n.op.store()).map(|s| s.name.clone()).collect()
}
