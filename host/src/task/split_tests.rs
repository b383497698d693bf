//! Aggregations whose input also leads elsewhere, with the SDK itself (natively)
//! as the guest: the operators reading the input run first, the records they
//! send to a sink are written once each, and what reaches the aggregation is
//! folded exactly as a recomputation says — for time windows (folded in batch)
//! and sessions (planned), with late records judged by the stream time of the
//! input they came from.

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

/// `in → is_even → { to("evens"), count per key in windows (tumbling or session) }`.
fn fan_out(sessions: bool) -> Built {
    let b = StreamsBuilder::new();
    let evens = b.stream::<String, u64>("in").filter(is_even);
    evens.to("evens");
    let grouped = evens.group_by_key();
    let counts = if sessions {
        grouped.windowed_by(session(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE))).count()
    } else {
        grouped.windowed_by(tumbling(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE))).count()
    };
    counts.named("counts").to_stream().to("counts");
    b.build().unwrap()
}

/// Runs `records` in batches of `cut` through a task of `fan_out`; returns what
/// reached the `evens` sink and the last count per (key, window).
fn run(sessions: bool, records: &[(String, u64, i64)], cut: usize) -> (Vec<(String, u64)>, Counts) {
    let built = fan_out(sessions);
    let info = PluginInfo::of("fan-out".into(), "1".into(), built.describe().clone()).unwrap();
    let stage = info.shape.subs[0].aggregation().unwrap();
    assert!(stage.split, "{stage:?}");
    let kind = Kind::of(&info.shape.subs[0].stage, GRACE).unwrap();
    let mut task = Task::new(
        TaskId { sub: 0, partition: 0 },
        kind,
        GRACE,
        vec![Box::new(MemoryStore::default())],
        &[None],
        None,
        1,
    );
    let mut guest = Native(built);
    let (mut evens, mut counts) = (Vec::new(), BTreeMap::new());
    for (n, chunk) in records.chunks(cut).enumerate() {
        for (i, (key, value, ts)) in chunk.iter().enumerate() {
            let v = value.to_string();
            assert!(task.accept(0, (n * cut + i) as i64, Some(key.as_bytes()), Some(v.as_bytes()), Some(*ts)));
        }
        let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
        let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &*super::tests::INPUTS);
        task.process_pending(&mut env, None).unwrap();
        let prepared = task.prepare_commit(&mut env).unwrap();
        task.complete_commit(prepared, &[]).unwrap();
        for out in outbox.records() {
            let key = || String::from_utf8(out.key.clone().unwrap()).unwrap();
            match out.dest {
                Dest::Sink(0) => {
                    evens.push((key(), String::from_utf8(out.value.clone().unwrap()).unwrap().parse().unwrap()))
                }
                Dest::Sink(1) => {
                    let header =
                        |name: &str| -> i64 { out.headers.iter().find(|h| h.0 == name).unwrap().1.parse().unwrap() };
                    let start = (header("weir.window.start"), header("weir.window.end"));
                    match &out.value {
                        Some(v) => {
                            counts.insert((key(), start), String::from_utf8(v.clone()).unwrap().parse().unwrap())
                        }
                        None => counts.remove(&(key(), start)),
                    };
                }
                Dest::Changelog(0, 0) => {}
                other => panic!("unexpected {other:?}: {out:?}"),
            }
        }
    }
    (evens, counts)
}

/// The last count per (key, (window start, window end)).
type Counts = BTreeMap<(String, (i64, i64)), u64>;

/// Tumbling counts of even values, dropping a record whose window closed (end
/// plus grace at or before the highest timestamp read so far — odd records
/// included: every record read moves stream time).
fn tumbling_counts(records: &[(String, u64, i64)]) -> Counts {
    let (mut counts, mut stream_time) = (BTreeMap::new(), i64::MIN);
    for (key, value, ts) in records {
        stream_time = stream_time.max(*ts);
        let start = ts - ts.rem_euclid(SIZE as i64);
        if value % 2 == 1 || start + (SIZE + GRACE) as i64 <= stream_time {
            continue;
        }
        *counts.entry((key.clone(), (start, start + SIZE as i64))).or_default() += 1;
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_filter_feeding_a_sink_and_windows_writes_each_once_and_counts_exactly(
        records in proptest::collection::vec((0u8..3, 0u64..10, 0i64..4_000), 1..60),
        cut in 1usize..9,
    ) {
        let records: Vec<(String, u64, i64)> = records.into_iter().map(|(k, v, ts)| (format!("k{k}"), v, ts)).collect();
        let (evens, counts) = run(false, &records, cut);
        let want: Vec<(String, u64)> =
            records.iter().filter(|r| r.1 % 2 == 0).map(|r| (r.0.clone(), r.1)).collect();
        prop_assert_eq!(evens, want);
        prop_assert_eq!(counts, tumbling_counts(&records));
    }
}

#[test]
fn sessions_behind_a_fan_out_count_what_reaches_them() {
    // In time order, so nothing is late: sessions of even values per key.
    let records: Vec<(String, u64, i64)> =
        [("a", 2, 0), ("a", 1, 100), ("b", 4, 200), ("a", 6, 900), ("a", 8, 3_000), ("b", 3, 3_100)]
            .iter()
            .map(|(k, v, t)| ((*k).to_owned(), *v, *t))
            .collect();
    let (evens, counts) = run(true, &records, 2);
    assert_eq!(evens.len(), 4);
    let want: Counts =
        [(("a".to_owned(), (0, 901)), 2), (("b".to_owned(), (200, 201)), 1), (("a".to_owned(), (3_000, 3_001)), 1)]
            .into_iter()
            .collect();
    assert_eq!(counts, want);
}

/// A key far over the value limit for the value 7; the key itself otherwise.
#[allow(clippy::ptr_arg)] // the DSL hands a `&K`
fn widen(k: &String, v: &u64) -> String {
    if *v == 7 { "k".repeat(2 << 20) } else { k.clone() }
}

#[test]
fn a_key_over_the_value_limit_is_dead_lettered_like_a_value() {
    let b = StreamsBuilder::new();
    b.stream::<String, u64>("in").select_key(widen).to("out");
    let built = b.build().unwrap();
    let info = PluginInfo::of("wide-keys".into(), "1".into(), built.describe().clone()).unwrap();
    let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
    let mut task =
        Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![Box::new(MemoryStore::default())], &[None], None, 1);
    let mut guest = Native(built);
    for (offset, v) in ["1", "7", "2"].into_iter().enumerate() {
        assert!(task.accept(0, offset as i64, Some(b"k"), Some(v.as_bytes()), Some(0)));
    }
    let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
    let mut env = native_env(&info, &mut guest, &mut outbox, &metrics, &*super::tests::INPUTS);
    task.process_pending(&mut env, None).unwrap();
    let written: Vec<(Dest, usize, Option<Vec<u8>>)> =
        outbox.records().iter().map(|o| (o.dest, o.key.as_ref().map_or(0, Vec::len), o.value.clone())).collect();
    let sunk: Vec<_> = written.iter().filter(|w| w.0 == Dest::Sink(0)).map(|w| (w.1, w.2.clone())).collect();
    assert_eq!(sunk, [(1, Some(b"1".to_vec())), (1, Some(b"2".to_vec()))], "{written:?}");
    let letters: Vec<_> = outbox.records().iter().filter(|o| o.dest == Dest::DeadLetter).collect();
    assert_eq!(
        (letters.len(), letters[0].value.as_deref()),
        (1, Some(&b"7"[..])),
        "the input record, not the wide key"
    );
    let letter = letters[0];
    let reason = &letter.headers.iter().find(|h| h.0 == "weir.error").unwrap().1;
    assert!(reason.contains(&format!("{}-byte value", 2 << 20)), "{reason}");
}
