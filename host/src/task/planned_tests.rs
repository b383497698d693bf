//! Sliding and session windows through a task, with the SDK itself (natively) as
//! the guest: records go in batches and commits, out of order, and what the task
//! stores and emits is compared with a brute-force recomputation.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use weir_sdk::dsl::{StreamsBuilder, Topology as Built, session, sliding};

use super::*;
use crate::state::MemoryStore;

/// A topology's SDK build as the task's guest.
pub(super) struct Native(pub(super) Built);

/// What a task with the SDK as its guest works with: failures dead-lettered,
/// updates emitted, `inputs` named in dead letters.
pub(super) fn native_env<'a>(
    info: &'a PluginInfo,
    guest: &'a mut Native,
    outbox: &'a mut Outbox,
    metrics: &'a Metrics,
    inputs: &'a [String],
) -> Env<'a> {
    let policy =
        Policy { retries: 0, probation: false, on_failure: FailurePolicy::DeadLetter, emit: EmitMode::Updates };
    Env { info, guest, outbox, metrics, input_topics: inputs, policy, globals: no_globals() }
}

/// No global tables (leaked: a test's environment borrows them).
pub(super) fn no_globals() -> &'static crate::global::Globals {
    Box::leak(Box::new(crate::global::Globals::none(crate::kafka::health::Health::new("test", Default::default()))))
}

impl Guest for Native {
    fn run(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.0.run_frame(frame).map_err(|e| GuestError::Plugin(e.to_string()))
    }
    fn aggregate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.0.aggregate_frame(frame).map_err(|e| GuestError::Plugin(e.to_string()))
    }
    fn migrate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.0.migrate_frame(frame).map_err(|e| GuestError::Plugin(e.to_string()))
    }
    fn renew(&mut self) {}
    fn max_value_bytes(&self) -> usize {
        1 << 20
    }
    fn max_frame_bytes(&self) -> usize {
        1 << 20
    }
}

fn is_even(_: &String, v: &u64) -> bool {
    v.is_multiple_of(2)
}

/// Counts values per key in `windows`; values that are odd are filtered out
/// first when `filtered`.
fn counting(windows: WindowSpec, filtered: bool) -> Built {
    let b = StreamsBuilder::new();
    let s = b.stream::<String, u64>("in");
    let s = if filtered { s.filter(is_even) } else { s };
    let grouped = s.group_by_key();
    let table = match windows {
        WindowSpec::Session { gap_ms, grace_ms } => {
            grouped.windowed_by(session(Duration::from_millis(gap_ms)).grace(Duration::from_millis(grace_ms))).count()
        }
        WindowSpec::Sliding { difference_ms, grace_ms } => grouped
            .windowed_by(sliding(Duration::from_millis(difference_ms)).grace(Duration::from_millis(grace_ms)))
            .count(),
        _ => unreachable!(),
    };
    table.named("counts").to_stream().to("out");
    b.build().unwrap()
}

struct Harness {
    task: Task,
    guest: Native,
    info: PluginInfo,
    outbox: Outbox,
    metrics: Metrics,
    offset: i64,
    /// What the output topic would hold last per (key, window): count, or none.
    output: BTreeMap<(String, Window), Option<u64>>,
}

impl Harness {
    fn new(windows: WindowSpec, filtered: bool) -> Self {
        let built = counting(windows, filtered);
        let info = PluginInfo::of("counting".into(), "1".into(), built.describe().clone()).unwrap();
        let kind = Kind::of(&info.shape.subs[0].stage, windows.grace_ms()).unwrap();
        Self {
            task: Task::new(
                TaskId { sub: 0, partition: 0 },
                kind,
                windows.grace_ms(),
                vec![Box::new(MemoryStore::default())],
                &[None],
                None,
                1,
            ),
            guest: Native(built),
            info,
            outbox: Outbox::default(),
            metrics: Metrics::default(),
            offset: 0,
            output: BTreeMap::new(),
        }
    }

    fn env(&mut self) -> Env<'_> {
        native_env(&self.info, &mut self.guest, &mut self.outbox, &self.metrics, &*super::tests::INPUTS)
    }

    /// Feeds one batch and commits it.
    fn batch(&mut self, records: &[(&str, u64, i64)]) {
        for (key, value, ts) in records {
            let v = value.to_string();
            assert!(self.task.accept(0, self.offset, Some(key.as_bytes()), Some(v.as_bytes()), Some(*ts)));
            self.offset += 1;
        }
        let mut task = std::mem::replace(
            &mut self.task,
            Task::new(
                TaskId { sub: 0, partition: 0 },
                Kind::Stateless,
                0,
                vec![Box::new(MemoryStore::default())],
                &[None],
                None,
                1,
            ),
        );
        task.process_pending(&mut self.env(), None).unwrap();
        let prepared = task.prepare_commit(&mut self.env()).unwrap();
        task.complete_commit(prepared, &[Some(self.offset)]).unwrap();
        self.task = task;
        for out in self.outbox.records() {
            if out.dest == Dest::Sink(0) {
                let key = String::from_utf8(out.key.clone().unwrap()).unwrap();
                let window = header_window(out);
                let count = out.value.as_ref().map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap());
                self.output.insert((key, window), count);
            }
        }
        self.outbox.clear();
    }

    /// The store's windows and counts.
    fn stored(&self) -> BTreeMap<(String, Window), u64> {
        let mut out = BTreeMap::new();
        for key in self.task.store.keys().unwrap() {
            let (window, record_key) = split_window_key(&key).unwrap();
            let value = self.task.store.get(&key).unwrap().unwrap();
            let (_, acc) = split_meta(&value).unwrap();
            out.insert((String::from_utf8(record_key.to_vec()).unwrap(), window), postcard::from_bytes(acc).unwrap());
        }
        out
    }

    /// The output's live rows (deleted ones dropped).
    fn live_output(&self) -> BTreeMap<(String, Window), u64> {
        self.output.iter().filter_map(|(k, v)| v.map(|v| (k.clone(), v))).collect()
    }
}

/// The window a windowed sink record names in its headers.
fn header_window(out: &Out) -> Window {
    let get = |name: &str| -> i64 {
        out.headers.iter().find(|(k, _)| *k == name).and_then(|(_, v)| v.parse().ok()).unwrap_or(i64::MIN)
    };
    Window { start: get("weir.window.start"), end: get("weir.window.end") }
}

/// Kafka Streams' sessions of `records` (timestamps per key), brute force.
fn sessions(records: &[(&str, u64, i64)], gap: i64) -> BTreeMap<(String, Window), u64> {
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (k, _, t) in records {
        by_key.entry(k).or_default().push(*t);
    }
    let mut out = BTreeMap::new();
    for (k, mut ts) in by_key {
        ts.sort_unstable();
        let mut start = ts[0];
        let mut prev = ts[0];
        let mut n = 0;
        for t in ts {
            if t - prev > gap {
                out.insert((k.to_owned(), Window { start, end: prev + 1 }), n);
                start = t;
                n = 0;
            }
            n += 1;
            prev = t;
        }
        out.insert((k.to_owned(), Window { start, end: prev + 1 }), n);
    }
    out
}

/// Kafka Streams' sliding windows of `records`, brute force: a left window per
/// record (`[t − D, t]`, early records share `[0, D]`) and a right window after
/// each record that has a later one within `D + 1`, each counting the records it
/// holds.
fn sliding_windows(records: &[(&str, u64, i64)], d: i64) -> BTreeMap<(String, Window), u64> {
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (k, _, t) in records {
        by_key.entry(k).or_default().push(*t);
    }
    let mut out = BTreeMap::new();
    for (k, ts) in by_key {
        let mut starts = std::collections::BTreeSet::new();
        for &t in &ts {
            starts.insert((t - d).max(0));
            if ts.iter().any(|&u| u > t && u <= t + 1 + d) {
                starts.insert(t + 1);
            }
        }
        for s in starts {
            let n = ts.iter().filter(|&&t| t >= s && t <= s + d).count() as u64;
            out.insert((k.to_owned(), Window { start: s, end: s + d + 1 }), n);
        }
    }
    out
}

#[test]
fn sessions_merge_and_emit_tombstones_for_the_merged() {
    let mut h = Harness::new(WindowSpec::Session { gap_ms: 10, grace_ms: 1_000 }, false);
    h.batch(&[("k", 1, 0), ("k", 1, 5), ("k", 1, 30)]);
    h.batch(&[("k", 1, 18)]);
    assert_eq!(h.stored().len(), 3);
    let before = h.outbox.records().len();
    assert_eq!(before, 0);
    // 25 bridges [18] and [30]: one session [18, 30] of three records.
    h.batch(&[("k", 1, 25)]);
    let want = sessions(&[("k", 1, 0), ("k", 1, 5), ("k", 1, 30), ("k", 1, 18), ("k", 1, 25)], 10);
    assert_eq!(h.stored(), want);
    assert_eq!(want.get(&("k".to_owned(), Window { start: 18, end: 31 })), Some(&3));
    // The merged-away sessions were deleted downstream (tombstones naming their
    // windows), the new one written: the output's live rows are the store's.
    assert_eq!(h.output.get(&("k".to_owned(), Window { start: 18, end: 19 })), Some(&None));
    assert_eq!(h.output.get(&("k".to_owned(), Window { start: 30, end: 31 })), Some(&None));
    assert_eq!(h.live_output(), want);
}

#[test]
fn filtered_records_open_no_windows() {
    let mut h = Harness::new(WindowSpec::Session { gap_ms: 10, grace_ms: 1_000 }, true);
    // 1 and 3 are odd: filtered before the aggregation; the sessions are 0 and 40.
    h.batch(&[("k", 2, 0), ("k", 1, 8), ("k", 3, 16), ("k", 4, 40)]);
    assert_eq!(h.stored(), sessions(&[("k", 2, 0), ("k", 4, 40)], 10));
}

/// Feeds `records` in batches of the sizes `cuts` gives (cycling), each committed.
fn in_batches(h: &mut Harness, records: &[(&str, u64, i64)], cuts: &[usize]) {
    let mut at = 0;
    for cut in cuts.iter().cycle() {
        if at >= records.len() {
            break;
        }
        let end = (at + cut).min(records.len());
        h.batch(&records[at..end]);
        at = end;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Out-of-order records in random batches, nothing late: the store holds
    /// exactly Kafka Streams' sessions, and the output's live rows are them.
    #[test]
    fn sessions_match_brute_force(
        records in proptest::collection::vec((0usize..3, 0i64..400), 1..60),
        cuts in proptest::collection::vec(1usize..8, 1..20),
    ) {
        let keys = ["a", "b", "c"];
        let records: Vec<(&str, u64, i64)> = records.iter().map(|&(k, t)| (keys[k], 2, t)).collect();
        let mut h = Harness::new(WindowSpec::Session { gap_ms: 15, grace_ms: 10_000 }, false);
        in_batches(&mut h, &records, &cuts);
        let want = sessions(&records, 15);
        prop_assert_eq!(h.stored(), want.clone());
        prop_assert_eq!(h.live_output(), want);
    }

    /// The same for sliding windows.
    #[test]
    fn sliding_windows_match_brute_force(
        records in proptest::collection::vec((0usize..2, 0i64..300), 1..50),
        cuts in proptest::collection::vec(1usize..8, 1..20),
    ) {
        let keys = ["a", "b"];
        let records: Vec<(&str, u64, i64)> = records.iter().map(|&(k, t)| (keys[k], 2, t)).collect();
        let mut h = Harness::new(WindowSpec::Sliding { difference_ms: 20, grace_ms: 10_000 }, false);
        in_batches(&mut h, &records, &cuts);
        let want = sliding_windows(&records, 20);
        prop_assert_eq!(h.stored(), want.clone());
        prop_assert_eq!(h.live_output(), want);
    }
}
