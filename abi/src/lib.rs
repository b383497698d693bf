//! The framed batch encoding shared by the Weir host and the guest SDK.
//!
//! The WIT world passes each batch as one `list<u8>`; this crate owns what is inside
//! it. Frames are postcard-encoded and decode without copying: keys, values and
//! accumulators are borrowed from the frame. Both sides depend on this one crate, so
//! the encoding cannot drift between them.

pub mod bytes;
pub mod calls;
pub mod topology;

use serde::{Deserialize, Serialize};

/// Errors from encoding or decoding a frame.
pub type Error = postcard::Error;

/// A half-open event-time interval `[start, end)` in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    /// Inclusive start.
    pub start: i64,
    /// Exclusive end.
    pub end: i64,
}

/// One input record of a `process` batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordIn<'a> {
    /// The Kafka key, if any.
    #[serde(borrow)]
    pub key: Option<&'a [u8]>,
    /// The Kafka value, if any.
    #[serde(borrow)]
    pub value: Option<&'a [u8]>,
    /// Event time in milliseconds since the epoch.
    pub timestamp: i64,
    /// Index into [`ProcessIn::refs`] of this record's first slot reference.
    pub first_ref: u32,
    /// How many slot references this record has (the windows it falls into).
    pub ref_count: u32,
}

/// A `process` batch: records, and the accumulators ("slots") they touch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessIn<'a> {
    /// Current accumulator of each slot; `None` when the slot is new.
    #[serde(borrow)]
    pub slots: Vec<Option<&'a [u8]>>,
    /// The records, in offset order.
    #[serde(borrow)]
    pub records: Vec<RecordIn<'a>>,
    /// Slot indices, referred to by ranges in [`RecordIn`].
    pub refs: Vec<u32>,
}

/// A record the plugin could not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject<'a> {
    /// Index of the record in [`ProcessIn::records`].
    pub record: u32,
    /// Human-readable reason, e.g. `missing field "price" at line 1 column 40`.
    #[serde(borrow)]
    pub reason: &'a str,
}

/// A changed accumulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotUpdate<'a> {
    /// Index of the slot in [`ProcessIn::slots`].
    pub slot: u32,
    /// The new accumulator.
    #[serde(borrow)]
    pub acc: &'a [u8],
}

/// The answer to a `process` batch.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessOut<'a> {
    /// Accumulators that changed.
    #[serde(borrow)]
    pub updates: Vec<SlotUpdate<'a>>,
    /// Records that were not used because they are malformed.
    #[serde(borrow)]
    pub rejects: Vec<Reject<'a>>,
}

/// One accumulator to turn into an output value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishSlot<'a> {
    /// The grouping key.
    #[serde(borrow)]
    pub key: &'a [u8],
    /// The window the accumulator belongs to.
    pub window: Window,
    /// The accumulator.
    #[serde(borrow)]
    pub acc: &'a [u8],
}

/// A `finish` call: the accumulators to render.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishIn<'a> {
    /// Slots to render.
    #[serde(borrow)]
    pub slots: Vec<FinishSlot<'a>>,
}

/// The answer to a `finish` call: one output value per input slot, in order;
/// `None` emits nothing for that slot.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FinishOut<'a> {
    /// Output values, parallel to [`FinishIn::slots`].
    #[serde(borrow)]
    pub values: Vec<Option<&'a [u8]>>,
}

/// The answer to a `migrate` call (whose input is a [`FinishIn`] of the stored
/// accumulators): one converted accumulator per input slot, in order; `None`
/// drops that window's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MigrateOut<'a> {
    /// Accumulators in the plugin's own state schema, parallel to [`FinishIn::slots`].
    #[serde(borrow, serialize_with = "crate::bytes::opts")]
    pub accs: Vec<Option<&'a [u8]>>,
}

/// Encodes a frame.
pub fn encode<T: Serialize>(frame: &T) -> Result<Vec<u8>, Error> {
    postcard::to_allocvec(frame)
}

/// Encodes a frame, appending to `buf` (which is cleared first) to reuse its allocation.
pub fn encode_into<T: Serialize>(frame: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
    buf.clear();
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(frame, taken)?;
    Ok(())
}

/// Decodes a frame, borrowing from `bytes`.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = (Option<Vec<u8>>, Option<Vec<u8>>, i64, u32, u32)> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            any::<i64>(),
            any::<u32>(),
            any::<u32>(),
        )
    }

    proptest! {
        #[test]
        fn process_in_round_trips(
            slots in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)), 0..8),
            records in proptest::collection::vec(record(), 0..8),
            refs in proptest::collection::vec(any::<u32>(), 0..16),
        ) {
            let frame = ProcessIn {
                slots: slots.iter().map(|s| s.as_deref()).collect(),
                records: records.iter().map(|(k, v, ts, f, n)| RecordIn {
                    key: k.as_deref(), value: v.as_deref(), timestamp: *ts, first_ref: *f, ref_count: *n,
                }).collect(),
                refs,
            };
            let mut buf = vec![1, 2, 3];
            encode_into(&frame, &mut buf).unwrap();
            let back: ProcessIn<'_> = decode(&buf).unwrap();
            prop_assert_eq!(back, frame);
        }

        #[test]
        fn finish_round_trips(key in proptest::collection::vec(any::<u8>(), 0..16), start in any::<i64>(), end in any::<i64>(), acc in proptest::collection::vec(any::<u8>(), 0..32)) {
            let frame = FinishIn { slots: vec![FinishSlot { key: &key, window: Window { start, end }, acc: &acc }] };
            let bytes = encode(&frame).unwrap();
            prop_assert_eq!(decode::<FinishIn<'_>>(&bytes).unwrap(), frame);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<ProcessIn<'_>>(&bytes);
            let _ = decode::<ProcessOut<'_>>(&bytes);
        }
    }
}
