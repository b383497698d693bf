//! Native test helpers: run an [`Aggregator`] (this module) or any topology
//! ([`topology`]) through the same frame code the host calls in wasm, without
//! building wasm.

pub mod topology;

pub use topology::{Out, Reject, Updates, aggregate, names, rec, run, stores};

use serde::Serialize;
use weir_abi::calls::{AggRecord, AggregateIn, AggregateOut, MigrateIn, Rec, RunIn, RunOut, SlotOp, StoredSlot};
use weir_abi::topology::Edge;
use weir_abi::{MigrateOut, Window};

use crate::dsl::Topology;
use crate::graph::FrameError;
use crate::{Aggregator, Plugin, shorthand};

/// What a test run of [`process`] produced.
#[derive(Debug)]
pub struct Processed<Acc> {
    /// The accumulator after the batch, if any record counted.
    pub acc: Option<Acc>,
    /// `(index, reason)` of every rejected record.
    pub rejects: Vec<(usize, String)>,
}

fn frame_err(e: impl std::fmt::Display) -> FrameError {
    FrameError::BadFrame(e.to_string())
}

fn built<P: Plugin>() -> Result<Topology, FrameError> {
    P::topology().map_err(|e| FrameError::Fatal(format!("the topology does not build: {e}")))
}

fn node(t: &Topology, name: &str) -> Result<u32, FrameError> {
    t.describe().find(name).ok_or_else(|| FrameError::Fatal(format!("no node `{name}`")))
}

/// Feeds JSON values (all with key `"k"`, all in one window) through the
/// aggregator's validation, filter and `add`, in one `aggregate` call.
pub fn process<A: Aggregator + 'static>(values: &[&str]) -> Result<Processed<A::Acc>, FrameError> {
    let t = built::<A>()?;
    let records = values
        .iter()
        .map(|v| AggRecord {
            record: Rec { key: Some(b"k"), value: Some(v.as_bytes()), old: None, timestamp: 0, window: None },
            first_op: 0,
            op_count: 1,
        })
        .collect();
    let frame = AggregateIn {
        node: node(&t, shorthand::STORE)?,
        via: Some(Edge { node: node(&t, "input")?, port: 0 }),
        slots: vec![None],
        records,
        ops: vec![SlotOp::Add(0)],
    };
    let out = t.aggregate_frame(&weir_abi::encode(&frame).map_err(frame_err)?)?;
    let out: AggregateOut<'_> = weir_abi::decode(&out).map_err(frame_err)?;
    let acc = match out.updates.first() {
        Some(update) => Some(postcard::from_bytes(update.value).map_err(frame_err)?),
        None => None,
    };
    let rejects = out.rejects.iter().map(|r| (r.record as usize, r.reason.to_owned())).collect();
    Ok(Processed { acc, rejects })
}

/// Folds JSON values into one accumulator; fails if any value is rejected.
pub fn fold<A: Aggregator + 'static>(values: &[&str]) -> Result<A::Acc, FrameError> {
    let processed = process::<A>(values)?;
    if let Some((index, reason)) = processed.rejects.first() {
        return Err(FrameError::Fatal(format!("value {index} rejected: {reason}")));
    }
    Ok(processed.acc.unwrap_or_default())
}

/// Renders an accumulator through `finish` and returns the output JSON, if any.
pub fn finish<A: Aggregator + 'static>(key: &str, window: Window, acc: &A::Acc) -> Result<Option<String>, FrameError> {
    let t = built::<A>()?;
    let acc = postcard::to_allocvec(acc).map_err(|e| FrameError::Fatal(e.to_string()))?;
    let frame = RunIn {
        from: Edge { node: node(&t, "to_stream-1")?, port: 0 },
        records: vec![Rec {
            key: Some(key.as_bytes()),
            value: Some(&acc),
            old: None,
            timestamp: 0,
            window: Some(window),
        }],
    };
    let out = t.run_frame(&weir_abi::encode(&frame).map_err(frame_err)?)?;
    let out: RunOut<'_> = weir_abi::decode(&out).map_err(frame_err)?;
    if let Some(r) = out.rejects.first() {
        return Err(FrameError::Fatal(r.reason.to_owned()));
    }
    Ok(out.emitted.first().and_then(|e| e.record.value).map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// Migrates `old` (a value of the previous version's accumulator type, stored as
/// that version stored it under state schema `from`) through `migrate`.
pub fn migrate<A: Aggregator + 'static>(
    from: u32,
    key: &str,
    window: Window,
    old: &impl Serialize,
) -> Result<Option<A::Acc>, FrameError> {
    let t = built::<A>()?;
    let value = postcard::to_allocvec(old).map_err(|e| FrameError::Fatal(e.to_string()))?;
    let frame = MigrateIn {
        node: node(&t, shorthand::STORE)?,
        from,
        slots: vec![StoredSlot { key: key.as_bytes(), window: Some(window), value: &value }],
    };
    let out = t.migrate_frame(&weir_abi::encode(&frame).map_err(frame_err)?)?;
    let out: MigrateOut<'_> = weir_abi::decode(&out).map_err(frame_err)?;
    match out.accs.first().copied().flatten() {
        Some(acc) => Ok(Some(postcard::from_bytes(acc).map_err(frame_err)?)),
        None => Ok(None),
    }
}
