//! Native test helpers: run an [`Aggregator`] through the same frame code the host
//! calls in wasm, without building wasm.

use serde::Serialize;
use weir_abi::{FinishIn, FinishOut, FinishSlot, MigrateOut, ProcessIn, ProcessOut, RecordIn, Window};

use crate::Aggregator;
use crate::runtime::{FrameError, finish_frame, migrate_frame, process_frame};

/// What a test run of [`process`] produced.
#[derive(Debug)]
pub struct Processed<Acc> {
    /// The accumulator after the batch, if any record counted.
    pub acc: Option<Acc>,
    /// `(index, reason)` of every rejected record.
    pub rejects: Vec<(usize, String)>,
}

/// Feeds JSON values (all with key `"k"`, all in one window) through `process`.
pub fn process<A: Aggregator>(values: &[&str]) -> Result<Processed<A::Acc>, FrameError> {
    let records = values
        .iter()
        .map(|v| RecordIn { key: Some(b"k"), value: Some(v.as_bytes()), timestamp: 0, first_ref: 0, ref_count: 1 })
        .collect();
    let frame = ProcessIn { slots: vec![None], records, refs: vec![0] };
    let bytes = weir_abi::encode(&frame).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    let out = process_frame::<A>(&bytes)?;
    let out: ProcessOut<'_> = weir_abi::decode(&out).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    let acc = match out.updates.first() {
        Some(update) => Some(postcard::from_bytes(update.acc).map_err(|e| FrameError::BadFrame(e.to_string()))?),
        None => None,
    };
    let rejects = out.rejects.iter().map(|r| (r.record as usize, r.reason.to_owned())).collect();
    Ok(Processed { acc, rejects })
}

/// Folds JSON values into one accumulator; fails if any value is rejected.
pub fn fold<A: Aggregator>(values: &[&str]) -> Result<A::Acc, FrameError> {
    let processed = process::<A>(values)?;
    if let Some((index, reason)) = processed.rejects.first() {
        return Err(FrameError::Fatal(format!("value {index} rejected: {reason}")));
    }
    Ok(processed.acc.unwrap_or_default())
}

/// Renders an accumulator through `finish` and returns the output JSON, if any.
pub fn finish<A: Aggregator>(key: &str, window: Window, acc: &A::Acc) -> Result<Option<String>, FrameError> {
    let acc = postcard::to_allocvec(acc).map_err(|e| FrameError::Fatal(e.to_string()))?;
    let frame = FinishIn { slots: vec![FinishSlot { key: key.as_bytes(), window, acc: &acc }] };
    let bytes = weir_abi::encode(&frame).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    let out = finish_frame::<A>(&bytes)?;
    let out: FinishOut<'_> = weir_abi::decode(&out).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    Ok(out.values.first().copied().flatten().map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// Migrates `old` (a value of the previous version's accumulator type, stored as
/// that version stored it under state schema `from`) through `migrate`.
pub fn migrate<A: Aggregator>(
    from: u32,
    key: &str,
    window: Window,
    old: &impl Serialize,
) -> Result<Option<A::Acc>, FrameError> {
    let acc = postcard::to_allocvec(old).map_err(|e| FrameError::Fatal(e.to_string()))?;
    let frame = FinishIn { slots: vec![FinishSlot { key: key.as_bytes(), window, acc: &acc }] };
    let bytes = weir_abi::encode(&frame).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    let out = migrate_frame::<A>(from, &bytes)?;
    let out: MigrateOut<'_> = weir_abi::decode(&out).map_err(|e| FrameError::BadFrame(e.to_string()))?;
    match out.accs.first().copied().flatten() {
        Some(acc) => Ok(Some(postcard::from_bytes(acc).map_err(|e| FrameError::BadFrame(e.to_string()))?)),
        None => Ok(None),
    }
}
