//! Tasks reading two merged topics, with the SDK itself (natively) as the guest:
//! records of both inputs, read interleaved and in any batches, are counted
//! exactly as a recomputation says — each batch in timestamp order across the
//! inputs (each input's own order kept), stream time the largest event time of
//! either —, each input keeps its own offsets and duplicates, and a dead letter
//! names the topic its record came from.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use weir_sdk::dsl::{StreamsBuilder, Topology as Built, session, tumbling};

use super::planned_tests::{Native, native_env};
use super::*;
use crate::state::MemoryStore;

const SIZE: u64 = 1_000;
const GRACE: u64 = 300;

fn is_even(_: &String, v: &u64) -> bool {
    v.is_multiple_of(2)
}

/// What the merged stream feeds.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `east, west → merge → is_even → count (tumbling)`: fused.
    Fused,
    /// The same, and `is_even → to("evens")` beside the count: split.
    FanOut,
    /// `east, west → merge → is_even → count (sessions)`: planned.
    Sessions,
}

fn merged(shape: Shape) -> Built {
    let b = StreamsBuilder::new();
    let east = b.stream::<String, u64>("east");
    let evens = east.merge(&b.stream::<String, u64>("west")).filter(is_even);
    if matches!(shape, Shape::FanOut) {
        evens.to("evens");
    }
    let grouped = evens.group_by_key();
    let counts = match shape {
        Shape::Sessions => {
            grouped.windowed_by(session(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE))).count()
        }
        _ => grouped.windowed_by(tumbling(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE))).count(),
    };
    counts.named("counts").to_stream().to("counts");
    b.build().unwrap()
}

/// A record as read: (input, key, value, timestamp).
type Read = (usize, String, String, i64);

/// The last count per (key, (window start, window end)).
type Counts = BTreeMap<(String, (i64, i64)), u64>;

/// What a run gave.
#[derive(Debug, Default)]
struct Ran {
    counts: Counts,
    /// (input topic, offset) of each dead letter.
    dead: Vec<(String, i64)>,
    evens: usize,
    /// The task's next offset per input at the end.
    next: [Option<i64>; 2],
}

/// Runs `records` (read in this order; each input's offsets count up from 0)
/// in batches of `cut` through one task reading both inputs, committing after
/// each batch. Every batch is also delivered a second time (a re-fetch): the
/// task must skip it.
fn run(shape: Shape, records: &[Read], cut: usize) -> Ran {
    let built = merged(shape);
    let info = PluginInfo::of("merged".into(), "1".into(), built.describe().clone()).unwrap();
    let sub = &info.shape.subs[0];
    assert_eq!((info.shape.subs.len(), sub.inputs.len()), (1, 2), "{:?}", info.shape);
    let kind = Kind::of(&sub.stage, GRACE).unwrap();
    let mut task = Task::new(
        TaskId { sub: 0, partition: 3 },
        kind,
        GRACE,
        vec![Box::new(MemoryStore::default())],
        &[None, None],
        None,
        1,
    );
    let topics = ["east".to_owned(), "west".to_owned()];
    let mut guest = Native(built);
    let mut offsets = [0i64; 2];
    let mut ran = Ran::default();
    for chunk in records.chunks(cut) {
        let first = offsets;
        for (input, key, value, ts) in chunk {
            assert!(task.accept(*input, offsets[*input], Some(key.as_bytes()), Some(value.as_bytes()), Some(*ts)));
            offsets[*input] += 1;
        }
        let mut again = first;
        for (input, key, value, ts) in chunk {
            assert!(!task.accept(*input, again[*input], Some(key.as_bytes()), Some(value.as_bytes()), Some(*ts)));
            again[*input] += 1;
        }
        let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
        task.process_pending(&mut env, None).unwrap();
        let prepared = task.prepare_commit(&mut env).unwrap();
        task.complete_commit(prepared, &[]).unwrap();
        for out in outbox.records() {
            let key = || String::from_utf8(out.key.clone().unwrap()).unwrap();
            let header = |name: &str| out.headers.iter().find(|h| h.0 == name).unwrap().1.clone();
            match (out.dest, matches!(shape, Shape::FanOut)) {
                (Dest::Sink(0), true) => ran.evens += 1,
                (Dest::Sink(0), false) | (Dest::Sink(1), true) => {
                    let window =
                        (header("weir.window.start").parse().unwrap(), header("weir.window.end").parse().unwrap());
                    match &out.value {
                        Some(v) => {
                            ran.counts.insert((key(), window), String::from_utf8(v.clone()).unwrap().parse().unwrap())
                        }
                        None => ran.counts.remove(&(key(), window)),
                    };
                }
                (Dest::DeadLetter, _) => {
                    assert_eq!(header("weir.source.partition"), "3");
                    ran.dead.push((header("weir.source.topic"), header("weir.source.offset").parse().unwrap()));
                }
                (Dest::Changelog(0, 0), _) => {}
                other => panic!("unexpected {other:?}: {out:?}"),
            }
        }
    }
    ran.next = [task.next_offset(0), task.next_offset(1)];
    ran
}

/// The order a batch is processed in: while records are left, the first left
/// of one input or the other — whichever has the smaller timestamp, the one
/// read first on a tie.
fn processing_order(batch: &[Read]) -> Vec<&Read> {
    let mut left: Vec<(usize, &Read)> = batch.iter().enumerate().collect();
    let mut order = Vec::new();
    while !left.is_empty() {
        let heads = [0, 1].map(|input| left.iter().position(|(_, r)| r.0 == input));
        let pick = heads.into_iter().flatten().min_by_key(|&at| (left[at].1.3, left[at].0)).unwrap();
        order.push(left.remove(pick).1);
    }
    order
}

/// Tumbling counts of even values, the records taken in batches of `cut` in
/// their processing order, dropping a record whose window closed (end plus
/// grace at or before the largest timestamp processed so far, of either input —
/// odd records included).
fn tumbling_counts(records: &[Read], cut: usize) -> Counts {
    let (mut counts, mut stream_time) = (BTreeMap::new(), i64::MIN);
    for (_, key, value, ts) in records.chunks(cut).flat_map(processing_order) {
        let Ok(value) = value.parse::<u64>() else { continue };
        stream_time = stream_time.max(*ts);
        let start = ts - ts.rem_euclid(SIZE as i64);
        if value % 2 == 1 || start + (SIZE + GRACE) as i64 <= stream_time {
            continue;
        }
        *counts.entry((key.clone(), (start, start + SIZE as i64))).or_default() += 1;
    }
    counts
}

fn reads() -> impl Strategy<Value = Vec<Read>> {
    proptest::collection::vec((0usize..2, 0u8..3, 0u64..10, 0i64..4_000), 1..60).prop_map(|records| {
        records.into_iter().map(|(input, k, v, ts)| (input, format!("k{k}"), v.to_string(), ts)).collect()
    })
}

/// Each input's next offset: how many of its records were read.
fn next_offsets(records: &[Read]) -> [Option<i64>; 2] {
    let count = |input| records.iter().filter(|r| r.0 == input).count() as i64;
    [0, 1].map(|input| Some(count(input)).filter(|&n| n > 0))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn two_merged_inputs_are_counted_exactly_in_timestamp_order_across_them(records in reads(), cut in 1usize..9) {
        let ran = run(Shape::Fused, &records, cut);
        prop_assert_eq!(ran.counts, tumbling_counts(&records, cut));
        prop_assert_eq!(ran.next, next_offsets(&records));
    }

    #[test]
    fn two_merged_inputs_feeding_a_sink_and_windows_write_each_once_and_count_exactly(
        records in reads(),
        cut in 1usize..9,
    ) {
        let ran = run(Shape::FanOut, &records, cut);
        prop_assert_eq!(ran.evens, records.iter().filter(|r| r.2.parse::<u64>().unwrap() % 2 == 0).count());
        prop_assert_eq!(ran.counts, tumbling_counts(&records, cut));
        prop_assert_eq!(ran.next, next_offsets(&records));
    }
}

#[test]
fn sessions_of_two_merged_inputs_join_records_of_either() {
    // In time order, nothing late: a's session spans both inputs.
    let records: Vec<Read> =
        [(0, "a", 2, 0), (1, "a", 4, 600), (1, "b", 6, 700), (0, "a", 8, 1_500), (0, "a", 1, 1_600)]
            .iter()
            .map(|&(input, k, v, t)| (input, k.to_owned(), u64::to_string(&v), t))
            .collect();
    for cut in [1, 2, 5] {
        let ran = run(Shape::Sessions, &records, cut);
        let want: Counts = [(("a".to_owned(), (0, 1_501)), 3), (("b".to_owned(), (700, 701)), 1)].into_iter().collect();
        assert_eq!(ran.counts, want, "cut {cut}");
    }
}

#[test]
fn a_dead_letter_names_the_topic_and_offset_its_record_was_read_from() {
    let records: Vec<Read> = [(0, "a", "2", 0), (1, "a", "x", 10), (0, "b", "y", 20), (1, "b", "4", 30)]
        .iter()
        .map(|&(input, k, v, t)| (input, k.to_owned(), v.to_owned(), t))
        .collect();
    let ran = run(Shape::Fused, &records, 4);
    assert_eq!(ran.dead, [("west".to_owned(), 0), ("east".to_owned(), 1)]);
    assert_eq!(ran.counts, tumbling_counts(&records, 4));
    assert_eq!(ran.next, [Some(2), Some(2)]);
}

#[test]
fn a_task_of_two_inputs_waits_for_an_input_still_on_its_way_and_keeps_offsets_apart() {
    let built = merged(Shape::Fused);
    let info = PluginInfo::of("merged".into(), "1".into(), built.describe().clone()).unwrap();
    let kind = Kind::of(&info.shape.subs[0].stage, GRACE).unwrap();
    let mut task = Task::new(
        TaskId { sub: 0, partition: 0 },
        kind,
        GRACE,
        vec![Box::new(MemoryStore::default())],
        &[Some(5), None],
        None,
        1,
    );
    let topics = ["east".to_owned(), "west".to_owned()];
    let mut guest = Native(built);
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &topics);
    assert_eq!(task.positions(), [Some(5), None]);
    assert!(!task.accept(0, 4, Some(b"k"), Some(b"2"), Some(1)), "before the committed offset of east");
    assert!(task.accept(0, 5, Some(b"k"), Some(b"2"), Some(1)));
    task.process_pending(&mut env, Some(&[true, false])).unwrap();
    assert_eq!((task.pending_len(), task.next_offset(0)), (1, Some(5)), "west may still have an earlier record");
    assert!(task.accept(1, 0, Some(b"k"), Some(b"4"), Some(3)), "west has offsets of its own");
    assert!(task.accept(0, 6, Some(b"k"), Some(b"6"), Some(5)));
    assert_eq!(task.positions(), [Some(7), Some(1)]);
    task.process_pending(&mut env, Some(&[false, false])).unwrap();
    assert_eq!(
        (task.pending_len(), task.next_offset(0), task.next_offset(1)),
        (1, Some(6), Some(1)),
        "east@1 and west@3 go; east@5 waits for west, which may have a record before it"
    );
    assert_eq!(task.stream_time(), Some(3));
    task.process_pending(&mut env, Some(&[false, true])).unwrap();
    assert_eq!((task.pending_len(), task.next_offset(0), task.stream_time()), (0, Some(7), Some(5)));
    assert!(task.accept(1, 1, Some(b"k"), Some(b"8"), Some(9)));
    task.rewind();
    assert_eq!((task.pending_len(), task.next_offset(0), task.next_offset(1)), (0, Some(5), None));
    assert!(task.accept(1, 0, Some(b"k"), Some(b"2"), Some(1)), "a rewind forgets what was buffered");
}
