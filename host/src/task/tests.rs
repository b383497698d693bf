//! Task semantics without wasm or a broker: a native guest that counts records per
//! window (and fails where a test tells it to) stands in for the plugin, and the
//! outbox shows what a commit would write.

use weir_abi::calls::{AggregateIn, AggregateOut, Emitted, NodeReject, SlotOp, SlotValue};
use weir_abi::topology::{Edge, Emit, Fold, Node, Op, StoreSpec, Topology, WindowSpec};

use super::*;
use crate::state::MemoryStore;

/// The native guest's topology: `in → windows (tumbling 1 s) → to_stream → render → out`.
fn info() -> PluginInfo {
    let node = |name: &str, input: Option<u32>, op: Op| Node {
        name: name.into(),
        inputs: input.map(|node| Edge { node, port: 0 }).into_iter().collect(),
        op,
    };
    let store = StoreSpec { name: "windows".into(), schema: 1, migrates_from: vec![], changelog: true };
    let window = Some(WindowSpec::Tumbling { size_ms: 1_000, grace_ms: 0 });
    let topology = Topology {
        nodes: vec![
            node("in", None, Op::Source { topic: "in".into() }),
            node("windows", Some(0), Op::Aggregate { store, fold: Fold::Count, window, emit: Emit::Updates }),
            node("to_stream", Some(1), Op::ToStream),
            node("render", Some(2), Op::MapValues),
            node("out", Some(RENDER), Op::Sink { topic: "out".into() }),
        ],
    };
    PluginInfo::of("counter".into(), "1".into(), topology).unwrap()
}

const WINDOWS: u32 = 1;
const RENDER: u32 = 3;

/// What the native guest does wrong, and when.
#[derive(Default, Clone, Copy)]
struct Faults {
    /// A record valued `poison` traps once its window holds this many records.
    poison_at: Option<u64>,
    /// Every `process` call of more than one record traps.
    fail_batches: bool,
    /// A record valued `dup` makes the answer update its slot twice.
    duplicate_update: bool,
    /// Rendering key `explode` traps; key `huge` renders a value over the limit.
    render_faults: bool,
    /// Largest frame the guest takes.
    max_frame: Option<usize>,
    /// `migrate` converts every accumulator to this many bytes.
    migrate_to: Option<usize>,
}

/// Counts records per slot; accumulators are postcard `u64`s.
struct Counter {
    faults: Faults,
    calls: usize,
    renewals: usize,
}

impl Counter {
    fn new(faults: Faults) -> Self {
        Self { faults, calls: 0, renewals: 0 }
    }
}

fn trap(what: &str) -> GuestError {
    GuestError::Trap(what.to_owned())
}

impl Guest for Counter {
    fn aggregate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.calls += 1;
        let input: AggregateIn<'_> = weir_abi::decode(frame).map_err(|e| GuestError::BadFrame(e.to_string()))?;
        assert_eq!(input.node, WINDOWS);
        if self.faults.fail_batches && input.records.len() > 1 {
            return Err(trap("fails on batches"));
        }
        let mut accs: Vec<Option<u64>> =
            input.slots.iter().map(|s| s.map(|b| postcard::from_bytes::<u64>(b).unwrap_or(0))).collect();
        let mut touched = vec![0u32; accs.len()];
        let mut rejects = Vec::new();
        for (index, agg) in input.records.iter().enumerate() {
            let record = &agg.record;
            if record.value == Some(b"bad") {
                rejects.push(NodeReject { record: index as u32, node: WINDOWS, reason: "bad value" });
                continue;
            }
            let first = agg.first_op as usize;
            for op in &input.ops[first..first + agg.op_count as usize] {
                let SlotOp::Add(slot) = *op else { return Err(trap("unexpected step")) };
                let acc = accs[slot as usize].get_or_insert(0);
                *acc += 1;
                touched[slot as usize] += 1;
                if record.value == Some(b"poison") && self.faults.poison_at.is_some_and(|n| *acc >= n) {
                    return Err(trap("poisoned window"));
                }
                if record.value == Some(b"dup") && self.faults.duplicate_update {
                    touched[slot as usize] += 100;
                }
            }
        }
        let encoded: Vec<(u32, Vec<u8>)> = accs
            .iter()
            .enumerate()
            .filter(|(slot, _)| touched[*slot] > 0)
            .flat_map(|(slot, acc)| {
                let bytes = postcard::to_allocvec(&acc.unwrap_or(0)).unwrap_or_default();
                // A `dup` record makes the slot appear twice in the answer.
                let times = if touched[slot] > 100 { 2 } else { 1 };
                std::iter::repeat_n((slot as u32, bytes), times)
            })
            .collect();
        let out = AggregateOut {
            updates: encoded.iter().map(|(slot, value)| SlotValue { slot: *slot, value }).collect(),
            rejects,
        };
        Ok(weir_abi::encode(&out).unwrap_or_default())
    }

    fn run(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.calls += 1;
        let input: RunIn<'_> = weir_abi::decode(frame).map_err(|e| GuestError::BadFrame(e.to_string()))?;
        let mut values = Vec::new();
        for record in &input.records {
            let key = record.key.unwrap_or_default();
            let count: u64 = postcard::from_bytes(record.value.unwrap_or_default()).unwrap_or(0);
            if self.faults.render_faults && key == b"explode" {
                return Err(trap("explodes"));
            }
            if self.faults.render_faults && key == b"huge" {
                values.push(vec![b'x'; self.max_value_bytes() + 1]);
                continue;
            }
            let start = record.window.map_or(-1, |w| w.start);
            let key = String::from_utf8_lossy(key);
            values.push(format!(r#"{{"key":"{key}","start":{start},"count":{count}}}"#).into_bytes());
        }
        let emitted = input
            .records
            .iter()
            .zip(&values)
            .enumerate()
            .map(|(i, (r, v))| Emitted {
                source: i as u32,
                node: RENDER,
                port: 0,
                record: Rec { key: r.key, value: Some(v), old: None, timestamp: r.timestamp, window: r.window },
            })
            .collect();
        Ok(weir_abi::encode(&RunOut { emitted, rejects: Vec::new() }).unwrap_or_default())
    }

    fn migrate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        let Some(size) = self.faults.migrate_to else { return Err(trap("no migrations")) };
        let input: MigrateIn<'_> = weir_abi::decode(frame).map_err(|e| GuestError::BadFrame(e.to_string()))?;
        let acc = vec![1u8; size];
        let out = weir_abi::MigrateOut { accs: input.slots.iter().map(|_| Some(acc.as_slice())).collect() };
        Ok(weir_abi::encode(&out).unwrap_or_default())
    }

    fn renew(&mut self) {
        self.renewals += 1;
    }

    fn max_value_bytes(&self) -> usize {
        1024
    }

    fn max_frame_bytes(&self) -> usize {
        self.faults.max_frame.unwrap_or(1 << 20)
    }
}

fn policy() -> Policy {
    Policy { retries: 1, probation: false, on_failure: FailurePolicy::DeadLetter, emit: EmitMode::Updates }
}

/// The input topic the tasks of these tests read (named in dead letters).
pub(super) static INPUTS: std::sync::LazyLock<[String; 1]> = std::sync::LazyLock::new(|| ["in".to_owned()]);

fn task() -> Task {
    let windowing = Windowing::tumbling(1_000).unwrap();
    Task::new(
        TaskId { sub: 0, partition: 0 },
        Kind::Time(windowing),
        0,
        vec![Box::new(MemoryStore::default())],
        &[None],
        None,
        1,
    )
}

struct Run {
    task: Task,
    info: PluginInfo,
    guest: Counter,
    outbox: Outbox,
    metrics: Metrics,
    policy: Policy,
}

impl Run {
    fn new(faults: Faults) -> Self {
        Self {
            task: task(),
            info: info(),
            guest: Counter::new(faults),
            outbox: Outbox::default(),
            metrics: Metrics::default(),
            policy: policy(),
        }
    }

    fn feed(&mut self, records: &[(&str, &str, i64)]) {
        let base = self.task.next_offset(0).unwrap_or(0) + self.task.pending_len() as i64;
        for (i, (key, value, ts)) in records.iter().enumerate() {
            assert!(self.task.accept(0, base + i as i64, Some(key.as_bytes()), Some(value.as_bytes()), Some(*ts)));
        }
    }

    fn env(&mut self) -> Env<'_> {
        Env {
            info: &self.info,
            guest: &mut self.guest,
            outbox: &mut self.outbox,
            metrics: &self.metrics,
            input_topics: &*INPUTS,
            policy: self.policy,
            globals: super::planned_tests::no_globals(),
        }
    }

    fn process(&mut self) -> Result<(), TaskError> {
        let mut task = std::mem::replace(&mut self.task, task());
        let result = task.process_pending(&mut self.env(), None);
        self.task = task;
        result
    }

    fn prepare(&mut self) -> Result<PreparedCommit, TaskError> {
        let mut task = std::mem::replace(&mut self.task, task());
        let result = task.prepare_commit(&mut self.env());
        self.task = task;
        result
    }

    fn count(&self, key: &str, start: i64) -> Option<u64> {
        let mut k = Vec::new();
        crate::state::window_key(&mut k, Window { start, end: start + 1_000 }, key.as_bytes());
        self.task.current(&k).unwrap().map(|acc| postcard::from_bytes(&acc).unwrap())
    }

    fn of(&self, dest: Dest) -> Vec<&Out> {
        self.outbox.records().iter().filter(|o| o.dest == dest).collect()
    }
}

fn header<'a>(out: &'a Out, name: &str) -> &'a str {
    out.headers.iter().find(|(k, _)| *k == name).map_or("", |(_, v)| v.as_str())
}

#[test]
fn a_failure_that_depends_on_state_built_up_within_the_batch_is_pinned_to_its_record() {
    let mut run = Run::new(Faults { poison_at: Some(20), ..Faults::default() });
    let mut records: Vec<(&str, &str, i64)> = (0..30).map(|i| ("k", "ok", i)).collect();
    records[25] = ("k", "poison", 25);
    run.feed(&records);
    run.process().unwrap();
    // Alone from the batch's starting state the poison record would pass: only the
    // in-order replay (24 records before it) makes it fail, and pins it.
    let dead = run.of(Dest::DeadLetter);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(header(dead[0], "weir.source.offset"), "25");
    assert!(header(dead[0], "weir.error").contains("poisoned window"), "{dead:?}");
    assert_eq!(run.count("k", 0), Some(29), "every other record counts once");
    assert_eq!(run.task.next_offset(0), Some(30));
}

#[test]
fn a_failure_no_single_record_reproduces_stops_and_says_so() {
    let mut run = Run::new(Faults { fail_batches: true, ..Faults::default() });
    run.feed(&[("a", "ok", 1), ("b", "ok", 2), ("c", "ok", 3)]);
    let err = run.process().unwrap_err().to_string();
    assert!(err.contains("none of them alone") && err.contains("offsets 0..=2"), "{err}");
    assert!(run.of(Dest::DeadLetter).is_empty());
}

#[test]
fn rejected_records_are_dead_lettered_and_do_not_count() {
    let mut run = Run::new(Faults::default());
    run.feed(&[("k", "ok", 1), ("k", "bad", 2), ("k", "ok", 3)]);
    run.process().unwrap();
    assert_eq!(run.count("k", 0), Some(2));
    let dead = run.of(Dest::DeadLetter);
    assert_eq!((dead.len(), header(dead[0], "weir.error")), (1, "bad value"));
}

#[test]
fn a_malformed_answer_is_a_plugin_failure_pinned_to_its_record() {
    let mut run = Run::new(Faults { duplicate_update: true, ..Faults::default() });
    run.feed(&[("k", "ok", 1), ("k", "dup", 2), ("k", "ok", 3)]);
    run.process().unwrap();
    let dead = run.of(Dest::DeadLetter);
    assert_eq!(dead.len(), 1);
    assert!(header(dead[0], "weir.error").contains("updated twice"), "{dead:?}");
    assert_eq!(run.count("k", 0), Some(2));
}

#[test]
fn chunks_within_the_frame_budget_give_the_same_result_as_one_call() {
    let records: Vec<(String, i64)> = (0..200).map(|i| (format!("key-{}", i % 17), i * 37)).collect();
    let feed: Vec<(&str, &str, i64)> = records.iter().map(|(k, ts)| (k.as_str(), "ok", *ts)).collect();
    let mut whole = Run::new(Faults::default());
    whole.feed(&feed);
    whole.process().unwrap();
    let mut chunked = Run::new(Faults { max_frame: Some(400), ..Faults::default() });
    chunked.feed(&feed);
    chunked.process().unwrap();
    assert_eq!(whole.guest.calls, 1);
    assert!(chunked.guest.calls > 10, "{} calls", chunked.guest.calls);
    assert_eq!(whole.task.dirty, chunked.task.dirty);
    assert_eq!(whole.task.stream_time(), chunked.task.stream_time());
}

#[test]
fn a_record_whose_frame_alone_is_over_the_budget_is_dead_lettered() {
    let mut run = Run::new(Faults { max_frame: Some(100), ..Faults::default() });
    let key = "k".repeat(200);
    run.feed(&[("small", "ok", 1), (key.as_str(), "ok", 2), ("small", "ok", 3)]);
    run.process().unwrap();
    let dead = run.of(Dest::DeadLetter);
    assert_eq!(dead.len(), 1);
    assert!(header(dead[0], "weir.error").contains("frame limit is 100 bytes"), "{dead:?}");
    assert_eq!(run.count("small", 0), Some(2));
}

#[test]
fn a_window_that_fails_to_render_is_dead_lettered_and_the_rest_commits() {
    let mut run = Run::new(Faults { render_faults: true, ..Faults::default() });
    run.feed(&[("a", "ok", 10), ("explode", "ok", 20), ("huge", "ok", 30), ("c", "ok", 1_500)]);
    run.process().unwrap();
    let prepared = run.prepare().unwrap();
    let mut outputs: Vec<String> = run
        .of(Dest::Sink(0))
        .iter()
        .map(|o| String::from_utf8_lossy(o.value.as_deref().unwrap()).into_owned())
        .collect();
    outputs.sort();
    assert_eq!(outputs, vec![r#"{"key":"a","start":0,"count":1}"#, r#"{"key":"c","start":1000,"count":1}"#]);
    let dead = run.of(Dest::DeadLetter);
    let mut reasons: Vec<(String, &str, &str)> = dead
        .iter()
        .map(|o| {
            (
                String::from_utf8_lossy(o.key.as_deref().unwrap()).into_owned(),
                header(o, "weir.window.start"),
                header(o, "weir.error"),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert_eq!((reasons[0].0.as_str(), reasons[0].1), ("explode", "0"));
    assert!(reasons[0].2.contains("explodes"), "{reasons:?}");
    assert_eq!(reasons[1].0, "huge");
    assert!(reasons[1].2.contains("the limit is 1024 bytes"), "{reasons:?}");
    // Their state is kept: the changelog carries every window.
    assert_eq!(run.of(Dest::Changelog(0, 0)).len(), 4);
    run.task.complete_commit(prepared, &[Some(4)]).unwrap();
    assert!(!run.task.has_progress());
}

#[test]
fn a_render_failure_stops_under_pause_and_rolls_back_on_probation() {
    for (on_failure, probation, want) in
        [(FailurePolicy::Pause, false, "on_failure = pause"), (FailurePolicy::DeadLetter, true, "explodes")]
    {
        let mut run = Run::new(Faults { render_faults: true, ..Faults::default() });
        run.policy = Policy { on_failure, probation, ..policy() };
        run.feed(&[("a", "ok", 10), ("explode", "ok", 20)]);
        run.process().unwrap();
        let err = run.prepare().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(want), "{err}");
        assert!(run.of(Dest::DeadLetter).is_empty());
    }
}

#[test]
fn rewinding_after_a_failed_commit_leaves_the_task_at_its_last_commit() {
    let mut run = Run::new(Faults::default());
    run.feed(&[("k", "ok", 1), ("k", "ok", 2)]);
    run.process().unwrap();
    let prepared = run.prepare().unwrap();
    run.task.complete_commit(prepared, &[Some(1)]).unwrap();
    run.outbox.clear();
    let committed = (run.task.committed_offset(0), run.count("k", 0), run.task.stream_time());

    run.feed(&[("k", "ok", 5_000), ("k", "ok", 5_001)]);
    run.process().unwrap();
    let _lost = run.prepare().unwrap(); // the commit then fails somewhere
    run.task.rewind();
    assert!(!run.task.has_progress());
    assert_eq!((run.task.committed_offset(0), run.count("k", 0), run.task.stream_time()), committed);
    assert_eq!(run.count("k", 5_000), None);
    // Processing the same records again gives the same result once.
    run.feed(&[("k", "ok", 5_000), ("k", "ok", 5_001)]);
    run.process().unwrap();
    assert_eq!(run.count("k", 5_000), Some(2));
}

#[test]
fn a_migration_whose_output_would_not_fit_in_memory_fails_and_names_the_limit() {
    let mut run = Run::new(Faults { migrate_to: Some(600), ..Faults::default() });
    let mut changes = Vec::new();
    for i in 0..10 {
        let mut key = Vec::new();
        crate::state::window_key(&mut key, Window { start: i * 1_000, end: i * 1_000 + 1_000 }, b"k");
        changes.push((key, Some(postcard::to_allocvec(&1u64).unwrap())));
    }
    run.task.store.write(changes, Some(10)).unwrap();
    let metrics = Metrics::default();
    let err = run.task.evolve(&mut run.guest, WINDOWS, &metrics, 2, false, 4_000).unwrap_err().to_string();
    assert!(err.contains("uncommitted_mb"), "{err}");
    run.task.rewind();
    // With room for it, every stored window is converted.
    assert_eq!(run.task.evolve(&mut run.guest, WINDOWS, &metrics, 2, false, 1 << 20).unwrap(), 10);
    assert_eq!(run.task.state_schema(), 2);
}
