//! Frames of the topology calls: running a segment of guest operators over a
//! batch, folding records into an aggregation's slots, and migrating a store.
//!
//! Values crossing the boundary are opaque to the host. Between guest operators
//! and towards repartition topics a plugin may use any encoding it reads back
//! itself; a record reaching a sink must carry the bytes to write. Aggregates
//! ("slots") are the plugin's own encoding too; the host stores them as they are.

use serde::{Deserialize, Serialize};

use crate::Window;
use crate::topology::Edge;

/// A record at the boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rec<'a> {
    /// The key, if any.
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub key: Option<&'a [u8]>,
    /// The value (for a table update: the new row; `None` deletes it).
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub value: Option<&'a [u8]>,
    /// For a table update: the row it replaces, if any.
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub old: Option<&'a [u8]>,
    /// Event time in milliseconds since the epoch.
    pub timestamp: i64,
    /// For a record of a windowed table: its window.
    pub window: Option<Window>,
}

/// The value of a record on a repartition topic that carries re-grouped table
/// updates (the output of a table's `group_by`): the new row and the row it
/// replaces, so the table aggregate downstream can add one and subtract the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeFrame<'a> {
    /// The new row (`None`: the key's row leaves this group).
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub new: Option<&'a [u8]>,
    /// The row it replaces (`None`: the key had no row in this group).
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub old: Option<&'a [u8]>,
}

/// The value a foreign-key extractor ([`crate::topology::Op::ForeignKey`])
/// hands back for a left table update: the foreign key of the new row and of
/// the row it replaces (`None`: no row, or a row without a foreign key), in
/// the right table's key encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKeys<'a> {
    /// The new row's foreign key.
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub new: Option<&'a [u8]>,
    /// The old row's foreign key.
    #[serde(borrow, serialize_with = "crate::bytes::opt")]
    pub old: Option<&'a [u8]>,
}

/// `run`: a batch of records leaving host node output `from` towards the guest
/// operators that read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIn<'a> {
    /// The host node output the records come from; the plugin reads them the
    /// way that output's stream is written and hands each to every guest
    /// operator reading it.
    pub from: Edge,
    /// The records, in order.
    #[serde(borrow)]
    pub records: Vec<Rec<'a>>,
}

/// A record leaving a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emitted<'a> {
    /// Index (in [`RunIn::records`]) of the input record it came from.
    pub source: u32,
    /// The guest node it leaves from.
    pub node: u32,
    /// The output of that node (a branch of a split; otherwise 0).
    pub port: u32,
    /// The record.
    #[serde(borrow)]
    pub record: Rec<'a>,
}

/// A record one operator could not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReject<'a> {
    /// Index of the input record.
    pub record: u32,
    /// The node that could not use it.
    pub node: u32,
    /// Human-readable reason.
    #[serde(borrow)]
    pub reason: &'a str,
}

/// The answer to `run`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunOut<'a> {
    /// Records leaving towards host operators, in order of their input records.
    #[serde(borrow)]
    pub emitted: Vec<Emitted<'a>>,
    /// Records an operator could not use (decode failures, a validator's no).
    #[serde(borrow)]
    pub rejects: Vec<NodeReject<'a>>,
}

/// One step of an aggregation, in the order the host planned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotOp {
    /// Folds the record's value into the slot (adder).
    Add(u32),
    /// Takes the record's old row out of the slot (a table aggregate's subtractor).
    Subtract(u32),
    /// Sets slot `into` to a copy of slot `from`'s current value (sliding windows).
    Copy {
        /// The new slot.
        into: u32,
        /// The slot copied.
        from: u32,
    },
    /// Folds slot `from` into slot `into` (merging sessions).
    Merge {
        /// The slot that remains.
        into: u32,
        /// The slot merged away.
        from: u32,
    },
}

/// A record of an `aggregate` batch with the steps it takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggRecord<'a> {
    /// The record.
    #[serde(borrow)]
    pub record: Rec<'a>,
    /// Index into [`AggregateIn::ops`] of its first step.
    pub first_op: u32,
    /// How many steps.
    pub op_count: u32,
}

/// `aggregate`: records folded into the aggregation node `node`'s slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateIn<'a> {
    /// Index of the aggregation node.
    pub node: u32,
    /// When set, the records come from this host node output instead and pass
    /// through guest operators (which keep keys and timestamps) before they
    /// reach the aggregation; each record that reaches it takes its input
    /// record's steps. Unset, they are the aggregation's own input.
    pub via: Option<Edge>,
    /// Current value of each slot; `None` when it is new (the initializer's).
    #[serde(borrow, serialize_with = "crate::bytes::opts")]
    pub slots: Vec<Option<&'a [u8]>>,
    /// The records, in order.
    #[serde(borrow)]
    pub records: Vec<AggRecord<'a>>,
    /// The steps, referred to by ranges in [`AggRecord`].
    pub ops: Vec<SlotOp>,
}

/// A slot's new value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotValue<'a> {
    /// Index into [`AggregateIn::slots`].
    pub slot: u32,
    /// The new aggregate.
    #[serde(borrow, serialize_with = "crate::bytes::one")]
    pub value: &'a [u8],
}

/// The answer to `aggregate`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AggregateOut<'a> {
    /// Slots that changed.
    #[serde(borrow)]
    pub updates: Vec<SlotValue<'a>>,
    /// Records that could not be used.
    #[serde(borrow)]
    pub rejects: Vec<NodeReject<'a>>,
}

/// A stored aggregate to convert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSlot<'a> {
    /// The grouping key.
    #[serde(borrow, serialize_with = "crate::bytes::one")]
    pub key: &'a [u8],
    /// Its window, for a windowed store.
    pub window: Option<Window>,
    /// The stored value.
    #[serde(borrow, serialize_with = "crate::bytes::one")]
    pub value: &'a [u8],
}

/// `migrate-store`: aggregates of store `node` stored under schema `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateIn<'a> {
    /// Index of the node owning the store.
    pub node: u32,
    /// The schema they were stored under.
    pub from: u32,
    /// The stored aggregates.
    #[serde(borrow)]
    pub slots: Vec<StoredSlot<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Bytes = Option<Vec<u8>>;

    fn rec() -> impl Strategy<Value = (Bytes, Bytes, Bytes, i64, Option<(i64, i64)>)> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            any::<i64>(),
            proptest::option::of((any::<i64>(), any::<i64>())),
        )
    }

    proptest! {
        #[test]
        fn change_frames_round_trip(
            new in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            old in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        ) {
            let frame = ChangeFrame { new: new.as_deref(), old: old.as_deref() };
            let bytes = crate::encode(&frame).unwrap();
            prop_assert_eq!(crate::decode::<ChangeFrame<'_>>(&bytes).unwrap(), frame);
        }

        #[test]
        fn aggregate_in_round_trips(
            records in proptest::collection::vec(rec(), 0..8),
            slots in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)), 0..6),
            ops in proptest::collection::vec((0u8..4, any::<u32>(), any::<u32>()), 0..12),
            via in proptest::option::of((any::<u32>(), any::<u32>())),
        ) {
            let frame = AggregateIn {
                node: 3,
                via: via.map(|(node, port)| Edge { node, port }),
                slots: slots.iter().map(|s| s.as_deref()).collect(),
                records: records.iter().enumerate().map(|(i, (k, v, o, ts, w))| AggRecord {
                    record: Rec {
                        key: k.as_deref(), value: v.as_deref(), old: o.as_deref(), timestamp: *ts,
                        window: w.map(|(start, end)| Window { start, end }),
                    },
                    first_op: i as u32,
                    op_count: 1,
                }).collect(),
                ops: ops.iter().map(|&(kind, a, b)| match kind {
                    0 => SlotOp::Add(a),
                    1 => SlotOp::Subtract(a),
                    2 => SlotOp::Copy { into: a, from: b },
                    _ => SlotOp::Merge { into: a, from: b },
                }).collect(),
            };
            let bytes = crate::encode(&frame).unwrap();
            prop_assert_eq!(crate::decode::<AggregateIn<'_>>(&bytes).unwrap(), frame);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = crate::decode::<RunIn<'_>>(&bytes);
            let _ = crate::decode::<RunOut<'_>>(&bytes);
            let _ = crate::decode::<AggregateOut<'_>>(&bytes);
            let _ = crate::topology::Topology::decode(&bytes);
        }
    }
}
