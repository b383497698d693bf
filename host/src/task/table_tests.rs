//! Tables, re-grouped tables and re-keyed streams through tasks, with the SDK
//! itself (natively) as the guest: a two-stage topology (windowed sums
//! re-grouped per window into a ranking) runs as two tasks, the second fed
//! exactly what the first wrote to the repartition topic, and the final rankings
//! are compared with an independent recomputation, batches and commits cut at
//! random; a table counts per key; a stream re-keyed through a repartition topic
//! is counted under its new key.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use weir_sdk::Windowed;
use weir_sdk::dsl::{StreamsBuilder, Topology as Built, tumbling};

use super::planned_tests::{Native, native_env};
use super::*;
use crate::state::MemoryStore;

const SIZE: u64 = 1_000;
const GRACE: u64 = 500;
const TOP: usize = 2;

fn sum(acc: &mut u64, _: &String, v: &u64) {
    *acc += v;
}

fn by_window(k: &Windowed<String>, total: &u64) -> (i64, (String, u64)) {
    (k.window.start, (k.key.clone(), *total))
}

/// A window's sums by key, and their total (which only an exact subtraction of
/// every replaced row keeps right).
type Best = (BTreeMap<String, u64>, u64);

fn add(best: &mut Best, _: &i64, row: &(String, u64)) {
    best.0.insert(row.0.clone(), row.1);
    best.1 += row.1;
}

fn remove(best: &mut Best, _: &i64, row: &(String, u64)) {
    if best.0.get(&row.0) == Some(&row.1) {
        best.0.remove(&row.0);
    }
    best.1 = best.1.wrapping_sub(row.1);
}

/// The window's total and its `TOP` keys by sum, descending, ties by key.
fn rank(_: &i64, best: Best) -> (u64, Vec<(String, u64)>) {
    let mut rows: Vec<(String, u64)> = best.0.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows.truncate(TOP);
    (best.1, rows)
}

/// `in → sums (tumbling) → by_window → best-repartition → best → to_stream → rank → out`.
fn ranking() -> Built {
    let b = StreamsBuilder::new();
    b.stream::<String, u64>("in")
        .group_by_key()
        .windowed_by(tumbling(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE)))
        .aggregate(sum)
        .named("sums")
        .group_by(by_window)
        .aggregate(add, remove)
        .named("best")
        .to_stream()
        .map_values(rank)
        .to("out");
    b.build().unwrap()
}

fn env<'a>(info: &'a PluginInfo, guest: &'a mut Native, outbox: &'a mut Outbox, metrics: &'a Metrics) -> Env<'a> {
    native_env(info, guest, outbox, metrics, &*super::tests::INPUTS)
}

/// A record written to a topic: key, value, timestamp.
type Written = (Option<Vec<u8>>, Option<Vec<u8>>, Option<i64>);

/// Two tasks of the ranking, the second reading what the first writes.
struct Stages {
    info: PluginInfo,
    guest: Native,
    first: Task,
    second: Task,
    /// The repartition topic: (key, value) in the order written.
    repartition: Vec<Written>,
    read: usize,
    offset: i64,
    /// The output topic: the latest ranking per window start.
    output: BTreeMap<i64, (u64, Vec<(String, u64)>)>,
}

impl Stages {
    fn new() -> Self {
        let built = ranking();
        let info = PluginInfo::of("ranking".into(), "1".into(), built.describe().clone()).unwrap();
        let task = |sub: usize| {
            let grace = info.shape.subs[sub].aggregation().unwrap().grace_ms;
            let kind = Kind::of(&info.shape.subs[sub].stage, grace).unwrap();
            Task::new(
                TaskId { sub, partition: 0 },
                kind,
                grace,
                vec![Box::new(MemoryStore::default())],
                &[None],
                None,
                1,
            )
        };
        let (first, second) = (task(0), task(1));
        Self {
            info,
            guest: Native(built),
            first,
            second,
            repartition: Vec::new(),
            read: 0,
            offset: 0,
            output: BTreeMap::new(),
        }
    }

    fn commit(task: &mut Task, info: &PluginInfo, guest: &mut Native) -> Vec<Out> {
        let (mut outbox, metrics) = (Outbox::default(), Metrics::default());
        task.process_pending(&mut env(info, guest, &mut outbox, &metrics), None).unwrap();
        let prepared = task.prepare_commit(&mut env(info, guest, &mut outbox, &metrics)).unwrap();
        task.complete_commit(prepared, &[]).unwrap();
        let out = outbox.records().to_vec();
        assert!(!out.iter().any(|o| o.dest == Dest::DeadLetter), "{out:?}");
        out
    }

    /// The first stage takes `records` and commits; the second reads `lag` fewer
    /// of the repartition records than there are, and commits.
    fn step(&mut self, records: &[(String, u64, i64)], lag: usize) {
        for (key, value, ts) in records {
            let v = value.to_string();
            assert!(self.first.accept(0, self.offset, Some(key.as_bytes()), Some(v.as_bytes()), Some(*ts)));
            self.offset += 1;
        }
        for out in Self::commit(&mut self.first, &self.info, &mut self.guest) {
            if out.dest == Dest::Repartition(0) {
                self.repartition.push((out.key, out.value, out.timestamp));
            }
        }
        let until = self.repartition.len().saturating_sub(lag).max(self.read);
        for (i, (key, value, ts)) in self.repartition[self.read..until].iter().enumerate() {
            assert!(self.second.accept(0, (self.read + i) as i64, key.as_deref(), value.as_deref(), *ts));
        }
        self.read = until;
        for out in Self::commit(&mut self.second, &self.info, &mut self.guest) {
            assert!(out.dest == Dest::Changelog(1, 0) || out.dest == Dest::Sink(0), "{out:?}");
            if out.dest == Dest::Sink(0) {
                let day: i64 = String::from_utf8(out.key.unwrap()).unwrap().parse().unwrap();
                self.output.insert(day, serde_json::from_slice(&out.value.unwrap()).unwrap());
            }
        }
    }
}

/// What the output must end as: per window, the `TOP` keys by their sums (a
/// record whose window closed — its end plus grace at or before the highest
/// timestamp so far — is dropped).
fn recompute(records: &[(String, u64, i64)]) -> BTreeMap<i64, (u64, Vec<(String, u64)>)> {
    let mut sums: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
    let mut stream_time = i64::MIN;
    for (key, value, ts) in records {
        stream_time = stream_time.max(*ts);
        let start = ts - ts.rem_euclid(SIZE as i64);
        if start + (SIZE + GRACE) as i64 <= stream_time {
            continue;
        }
        *sums.entry(start).or_default().entry(key.clone()).or_default() += value;
    }
    sums.into_iter()
        .map(|(start, keys)| {
            let total = keys.values().sum();
            let mut rows: Vec<(String, u64)> = keys.into_iter().collect();
            rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            rows.truncate(TOP);
            (start, (total, rows))
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_regrouped_table_ranks_exactly_what_a_recomputation_ranks(
        records in proptest::collection::vec((0u8..5, 1u64..20, 0i64..3_000), 1..60),
        cuts in proptest::collection::vec(1usize..12, 1..10),
        lag in 0usize..3,
    ) {
        let records: Vec<(String, u64, i64)> =
            records.into_iter().map(|(k, v, ts)| (format!("k{k}"), v, ts)).collect();
        let mut stages = Stages::new();
        let mut at = 0;
        for cut in cuts.iter().cycle() {
            if at >= records.len() {
                break;
            }
            let end = (at + cut).min(records.len());
            stages.step(&records[at..end], lag);
            at = end;
        }
        // The second stage catches up.
        stages.step(&[], 0);
        prop_assert_eq!(stages.output, recompute(&records));
    }
}

#[test]
fn a_table_counts_per_key_for_ever_and_emits_each_change() {
    fn count() -> Built {
        let b = StreamsBuilder::new();
        b.stream::<String, String>("in").group_by_key().count().named("counts").to_stream().to("out");
        b.build().unwrap()
    }
    let built = count();
    let info = PluginInfo::of("count".into(), "1".into(), built.describe().clone()).unwrap();
    let mut guest = Native(built);
    let kind = Kind::of(&info.shape.subs[0].stage, 0).unwrap();
    assert!(matches!(kind, Kind::Table { changes: false }));
    let mut task =
        Task::new(TaskId { sub: 0, partition: 0 }, kind, 0, vec![Box::new(MemoryStore::default())], &[None], None, 1);
    let mut latest = BTreeMap::new();
    for (offset, key) in ["a", "b", "a", "a", "c", "b"].iter().enumerate() {
        // No timestamp at all: a table needs none.
        assert!(task.accept(0, offset as i64, Some(key.as_bytes()), Some(b"x"), None));
        if offset % 2 == 1 {
            for out in Stages::commit(&mut task, &info, &mut guest) {
                if out.dest == Dest::Sink(0) {
                    assert!(out.headers.is_empty(), "a table row has no window");
                    latest.insert(
                        String::from_utf8(out.key.unwrap()).unwrap(),
                        String::from_utf8(out.value.unwrap()).unwrap(),
                    );
                }
            }
        }
    }
    let want: BTreeMap<String, String> =
        [("a", "3"), ("b", "2"), ("c", "1")].iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    assert_eq!(latest, want);
}

/// `in → parity (select_key) → counts-repartition → counts (tumbling) → out`:
/// a stream re-keyed through a repartition topic.
fn rekeyed() -> Built {
    fn parity(_: &String, v: &u64) -> String {
        if v.is_multiple_of(2) { "even".into() } else { "odd".into() }
    }
    let b = StreamsBuilder::new();
    b.stream::<String, u64>("in")
        .group_by(parity)
        .windowed_by(tumbling(Duration::from_millis(SIZE)).grace(Duration::from_millis(GRACE)))
        .count()
        .named("counts")
        .to_stream()
        .to("out");
    b.build().unwrap()
}

#[test]
fn a_rekeyed_stream_is_counted_under_its_new_key_after_the_repartition() {
    let built = rekeyed();
    let info = PluginInfo::of("rekeyed".into(), "1".into(), built.describe().clone()).unwrap();
    assert_eq!(info.shape.subs.len(), 2);
    assert_eq!(
        info.shape.repartitions[0].carries,
        crate::topology::Carries::Records,
        "plain records go through the repartition"
    );
    let mut guest = Native(built);
    let task = |sub: usize| {
        let grace = info.shape.subs[sub].aggregation().map_or(0, |a| a.grace_ms);
        let kind = Kind::of(&info.shape.subs[sub].stage, grace).unwrap();
        Task::new(TaskId { sub, partition: 0 }, kind, grace, vec![Box::new(MemoryStore::default())], &[None], None, 1)
    };
    let (mut first, mut second) = (task(0), task(1));
    let records: [(&str, u64, i64); 6] =
        [("a", 1, 10), ("b", 2, 20), ("c", 4, 30), ("a", 3, 1_500), ("d", 6, 1_600), ("e", 8, 40)];
    for (i, (key, value, ts)) in records.iter().enumerate() {
        let v = value.to_string();
        assert!(first.accept(0, i as i64, Some(key.as_bytes()), Some(v.as_bytes()), Some(*ts)));
    }
    let repartitioned: Vec<Out> =
        Stages::commit(&mut first, &info, &mut guest).into_iter().filter(|o| o.dest == Dest::Repartition(0)).collect();
    assert_eq!(repartitioned.len(), records.len(), "every record goes through the repartition topic");
    for (i, out) in repartitioned.iter().enumerate() {
        assert!(second.accept(0, i as i64, out.key.as_deref(), out.value.as_deref(), out.timestamp));
    }
    let mut counts = BTreeMap::new();
    for out in Stages::commit(&mut second, &info, &mut guest) {
        if out.dest == Dest::Sink(0) {
            let start: i64 = out.headers.iter().find(|h| h.0 == "weir.window.start").unwrap().1.parse().unwrap();
            let key = String::from_utf8(out.key.unwrap()).unwrap();
            counts.insert((key, start), String::from_utf8(out.value.unwrap()).unwrap());
        }
    }
    // ("e", 8, 40) came after stream time 1,600: its window [0, 1000) closed at
    // 1000 + 500 grace <= 1600, so it is late and not counted.
    let want: BTreeMap<(String, i64), String> = [
        (("odd".to_owned(), 0), "1".to_owned()),
        (("even".to_owned(), 0), "2".to_owned()),
        (("odd".to_owned(), 1_000), "1".to_owned()),
        (("even".to_owned(), 1_000), "1".to_owned()),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
}
