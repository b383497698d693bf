//! The plugin side of a call: decodes a frame, runs the [`Aggregator`] over it and
//! encodes the answer. Target-independent, so native tests exercise the exact code
//! the host calls through wasm.

use std::fmt;

use weir_abi::{FinishIn, FinishOut, MigrateOut, ProcessIn, ProcessOut, Reject, SlotUpdate};

use crate::Aggregator;

/// Why a whole frame failed (as opposed to one record in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame or a stored accumulator could not be decoded.
    BadFrame(String),
    /// The plugin cannot go on.
    Fatal(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadFrame(m) => write!(f, "bad frame: {m}"),
            FrameError::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

fn bad(what: &str, e: impl fmt::Display) -> FrameError {
    FrameError::BadFrame(format!("{what}: {e}"))
}

/// Runs one `process` batch (a `weir_abi::ProcessIn` frame) and returns the
/// `weir_abi::ProcessOut` frame.
pub fn process_frame<A: Aggregator>(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let input: ProcessIn<'_> = weir_abi::decode(frame).map_err(|e| bad("process frame", e))?;
    let mut accs: Vec<Option<A::Acc>> = (0..input.slots.len()).map(|_| None).collect();
    let mut dirty = vec![false; input.slots.len()];
    let mut reasons: Vec<(u32, String)> = Vec::new();

    for (index, record) in input.records.iter().enumerate() {
        let index = index as u32;
        if let Some(key) = record.key
            && let Err(e) = std::str::from_utf8(key)
        {
            reasons.push((index, format!("key is not UTF-8: {e}")));
            continue;
        }
        let Some(value) = record.value else {
            reasons.push((index, "record has no value".to_owned()));
            continue;
        };
        let parsed: A::Input = match serde_json::from_slice(value) {
            Ok(parsed) => parsed,
            Err(e) => {
                reasons.push((index, format!("invalid value: {e}")));
                continue;
            }
        };
        if let Err(reason) = A::validate(&parsed) {
            reasons.push((index, reason));
            continue;
        }
        if !A::filter(&parsed) {
            continue;
        }
        let first = record.first_ref as usize;
        let refs = first
            .checked_add(record.ref_count as usize)
            .and_then(|end| input.refs.get(first..end))
            .ok_or_else(|| bad("record refers outside the slot table", index))?;
        for &slot in refs {
            let slot = slot as usize;
            let stored = input.slots.get(slot).ok_or_else(|| bad("slot index out of range", slot))?;
            let acc = match &mut accs[slot] {
                Some(acc) => acc,
                empty => empty.insert(match stored {
                    Some(bytes) => postcard::from_bytes(bytes).map_err(|e| bad("stored accumulator", e))?,
                    None => A::Acc::default(),
                }),
            };
            A::add(acc, &parsed);
            dirty[slot] = true;
        }
    }

    let mut encoded: Vec<(u32, Vec<u8>)> = Vec::new();
    for (slot, acc) in accs.iter().enumerate() {
        if let (true, Some(acc)) = (dirty[slot], acc) {
            let bytes =
                postcard::to_allocvec(acc).map_err(|e| FrameError::Fatal(format!("encode accumulator: {e}")))?;
            encoded.push((slot as u32, bytes));
        }
    }
    let out = ProcessOut {
        updates: encoded.iter().map(|(slot, acc)| SlotUpdate { slot: *slot, acc }).collect(),
        rejects: reasons.iter().map(|(record, reason)| Reject { record: *record, reason }).collect(),
    };
    weir_abi::encode(&out).map_err(|e| FrameError::Fatal(format!("encode result: {e}")))
}

/// Runs one `finish` call (a `weir_abi::FinishIn` frame) and returns the
/// `weir_abi::FinishOut` frame.
pub fn finish_frame<A: Aggregator>(frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    let input: FinishIn<'_> = weir_abi::decode(frame).map_err(|e| bad("finish frame", e))?;
    let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(input.slots.len());
    for slot in &input.slots {
        let acc: A::Acc = postcard::from_bytes(slot.acc).map_err(|e| bad("stored accumulator", e))?;
        let key = String::from_utf8_lossy(slot.key);
        let value = match A::finish(&key, slot.window, &acc) {
            Some(output) => {
                Some(serde_json::to_vec(&output).map_err(|e| FrameError::Fatal(format!("encode output: {e}")))?)
            }
            None => None,
        };
        values.push(value);
    }
    let out = FinishOut { values: values.iter().map(|v| v.as_deref()).collect() };
    weir_abi::encode(&out).map_err(|e| FrameError::Fatal(format!("encode result: {e}")))
}

/// Runs one `migrate` call (a `weir_abi::FinishIn` frame of accumulators stored
/// under schema `from`) and returns the `weir_abi::MigrateOut` frame.
pub fn migrate_frame<A: Aggregator>(from: u32, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
    if !A::MIGRATES_FROM.contains(&from) {
        return Err(FrameError::Fatal(format!(
            "asked to migrate from state schema {from}; this plugin migrates from {:?}",
            A::MIGRATES_FROM
        )));
    }
    let input: FinishIn<'_> = weir_abi::decode(frame).map_err(|e| bad("migrate frame", e))?;
    let mut accs: Vec<Option<Vec<u8>>> = Vec::with_capacity(input.slots.len());
    for slot in &input.slots {
        let key = String::from_utf8_lossy(slot.key);
        let acc = A::migrate(from, &key, slot.window, slot.acc)
            .map_err(|e| FrameError::Fatal(format!("migrating {key} {:?}: {e}", slot.window)))?;
        accs.push(match acc {
            Some(acc) => {
                Some(postcard::to_allocvec(&acc).map_err(|e| FrameError::Fatal(format!("encode accumulator: {e}")))?)
            }
            None => None,
        });
    }
    let out = MigrateOut { accs: accs.iter().map(|v| v.as_deref()).collect() };
    weir_abi::encode(&out).map_err(|e| FrameError::Fatal(format!("encode result: {e}")))
}
