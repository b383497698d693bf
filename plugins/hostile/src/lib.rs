//! A test fixture written against the raw `weir:processor` world (no SDK), so it
//! can answer anything, including what the SDK would never send. It counts records
//! per key in 1-second tumbling windows, and misbehaves on request in each phase.
//!
//! A record's value is `{"act": "<act>"}` or `{"act": "<phase>:<act>"}`:
//!
//! Its topology is the one-aggregation shape: `input → acts → windows (tumbling
//! 1 s) → to_stream → render → output`; the host folds records through `acts` in
//! `aggregate` calls, renders windows with `run` and converts them with `migrate`.
//!
//! | act | aggregate (default phase, `process`) | `finish:` (rendering its window) | `migrate:` (migrating its window) |
//! |---|---|---|---|
//! | `count` | counts (the healthy path) | | |
//! | `trap` | panics | panics | panics |
//! | `stack` | recurses until its stack overflows | same | same |
//! | `loop` | spins forever | same | same |
//! | `oom` | allocates until memory runs out | same | same |
//! | `huge` | returns a 4 MiB accumulator | renders a 4 MiB value | migrates to a 4 MiB accumulator |
//! | `garbage` | answers with bytes that are no frame | same | same |
//! | `absurd` | answers 200,000 updates of one slot | 200,000 values | 200,000 accumulators |
//! | `fs`, `env`, `clock` | rejects the record, saying what the sandbox allowed | | |
//! | `late-trap` | counts, but panics once its window holds 20 records | | |
//!
//! A `finish:`/`migrate:` record counts normally; its window remembers the act
//! and misbehaves when rendered or migrated (`finish:clear` and `migrate:clear`
//! make it forget). `describe` misbehaves when the
//! environment variable `HOSTILE_DESCRIBE` (or the marker in [`DESCRIBE`], which a
//! test can overwrite in the built file) names an act: `trap`, `stack`, `loop`,
//! `oom`, `huge` (a 16 MiB name), `absurd` (windows 2^53 ms long advancing 1 ms)
//! or `many` (200,000 state schemas it migrates from). With `HOSTILE=off` every
//! act counts: the same build is then a healthy plugin over the same state.
//! The marker in [`SCHEMA`] (overwritten to `2` by a test) declares state schema
//! 2, migrating from 1: a second version of the same plugin.

use serde::{Deserialize, Serialize};
use weir_abi::MigrateOut;
use weir_abi::calls::{
    AggregateIn, AggregateOut, Emitted, MigrateIn, NodeReject, Rec, RunIn, RunOut, SlotOp, SlotValue,
};
use weir_abi::topology::{Edge, Emit, Fold, Node, Op, StoreSpec, Topology, WindowSpec};

/// Marker a test overwrites in the built component to make `describe` misbehave
/// without any grant (uploads run `describe` with nothing granted).
pub static DESCRIBE: [u8; 32] = *b"WEIR-HOSTILE-DESCRIBE:none      ";

/// Marker a test overwrites (`1` → `2`) to make a build of another state schema.
pub static SCHEMA: [u8; 16] = *b"WEIR-SCHEMA:1   ";

/// The state schema this build declares, and what it migrates from.
pub fn schema() -> (u32, Vec<u32>) {
    let marker: &[u8; 16] = std::hint::black_box(&SCHEMA);
    match marker[12] {
        b'2' => (2, vec![1]),
        _ => (1, Vec::new()),
    }
}

/// Per-window state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Acc {
    /// Records counted.
    pub count: u64,
    /// Act to perform when the window is rendered.
    pub finish: Option<String>,
    /// Act to perform when the window is migrated.
    pub migrate: Option<String>,
    /// Ballast (a string: it encodes as one copy, so making it stays well inside
    /// any CPU budget).
    pub ballast: String,
}

#[derive(Deserialize)]
struct Act {
    act: String,
}

/// Output value.
#[derive(Serialize)]
struct CountOut<'a> {
    key: &'a str,
    window_start: i64,
    count: u64,
}

fn armed() -> bool {
    std::env::var("HOSTILE").map_or(true, |v| v != "off")
}

/// What `describe` should do wrong, if anything (`none`: nothing).
pub fn describe_act() -> String {
    if let Ok(act) = std::env::var("HOSTILE_DESCRIBE") {
        return act;
    }
    // Read through an opaque pointer, so the compiler cannot fold the marker
    // into a constant: the bytes in the file are what counts.
    let marker: &[u8; 32] = std::hint::black_box(&DESCRIBE);
    String::from_utf8_lossy(&marker[22..]).trim().to_owned()
}

/// Misbehaves as `act` says; returns an answer for the acts that answer.
fn misbehave(act: &str, absurd: impl FnOnce() -> Vec<u8>) -> Option<Vec<u8>> {
    match act {
        #[allow(clippy::panic)] // The point of this fixture.
        "trap" => panic!("hostile fixture: trap"),
        "stack" => Some(vec![recurse(1 << 24, [7; 2048]) as u8]),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "oom" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "garbage" => Some(vec![0xff; 64]),
        "absurd" => Some(absurd()),
        _ => None,
    }
}

/// Recursion with a large frame on the shadow stack.
fn recurse(depth: u64, frame: [u8; 2048]) -> u64 {
    let frame = std::hint::black_box(frame);
    if depth == 0 {
        return u64::from(frame[0]);
    }
    // Opaque, so the recursion cannot be turned into a loop.
    std::hint::black_box(recurse(depth - 1, frame)) + u64::from(frame[(depth % 2048) as usize])
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    weir_abi::encode(value).map_err(|e| e.to_string())
}

fn decode_acc(bytes: Option<&[u8]>) -> Acc {
    bytes.and_then(|b| postcard::from_bytes(b).ok()).unwrap_or_default()
}

/// Node indices of the topology.
const ACTS: u32 = 1;
const RENDER: u32 = 4;

/// The topology `describe` declares.
pub fn topology(window: WindowSpec, schema: u32, migrates_from: Vec<u32>) -> Topology {
    let node = |name: &str, input: Option<u32>, op: Op| Node {
        name: name.into(),
        inputs: input.map(|node| Edge { node, port: 0 }).into_iter().collect(),
        op,
    };
    Topology {
        nodes: vec![
            node("input", None, Op::Source { topic: "input".into() }),
            node("acts", Some(0), Op::Peek),
            node(
                "windows",
                Some(ACTS),
                Op::Aggregate {
                    store: StoreSpec { name: "windows".into(), schema, migrates_from, changelog: true },
                    fold: Fold::Count,
                    window: Some(window),
                    emit: Emit::Updates,
                },
            ),
            node("to_stream", Some(2), Op::ToStream),
            node("render", Some(3), Op::MapValues),
            node("output", Some(RENDER), Op::Sink { topic: "output".into() }),
        ],
    }
}

/// The `aggregate` call.
pub fn aggregate(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: AggregateIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut accs: Vec<Option<Acc>> = input.slots.iter().map(|_| None).collect();
    let mut rejects: Vec<(u32, String)> = Vec::new();
    for (index, agg) in input.records.iter().enumerate() {
        let record = &agg.record;
        let act = record
            .value
            .and_then(|v| serde_json::from_slice::<Act>(v).ok())
            .map_or_else(|| "count".to_owned(), |a| a.act);
        let act = if armed() { act } else { "count".to_owned() };
        let (phase, what) = act.split_once(':').unwrap_or(("process", act.as_str()));
        if phase == "process" {
            let reason = match what {
                "fs" => Some(match std::fs::read_to_string("/etc/hostname") {
                    Ok(text) => format!("SANDBOX BREACH: read /etc/hostname = {text:?}"),
                    Err(e) => format!("file access denied: {e}"),
                }),
                "env" => {
                    let vars: Vec<String> =
                        std::env::vars().map(|(k, _)| k).filter(|k| !k.starts_with("HOSTILE")).collect();
                    Some(if vars.is_empty() {
                        "environment is empty".to_owned()
                    } else {
                        format!("SANDBOX BREACH: environment has {vars:?}")
                    })
                }
                "clock" => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    Some(if now < 1_000_000 {
                        format!("clock is frozen at {now} s")
                    } else {
                        format!("SANDBOX BREACH: wall clock reads {now} s")
                    })
                }
                _ => None,
            };
            if let Some(reason) = reason {
                rejects.push((index as u32, reason));
                continue;
            }
            let absurd = || {
                let updates: Vec<SlotValue<'_>> = (0..200_000).map(|_| SlotValue { slot: 0, value: &[] }).collect();
                encode(&AggregateOut { updates, rejects: Vec::new() }).unwrap_or_default()
            };
            if let Some(answer) = misbehave(what, absurd) {
                return Ok(answer);
            }
        }
        let first = agg.first_op as usize;
        let ops = input.ops.get(first..first + agg.op_count as usize).ok_or("ops out of range")?;
        for op in ops {
            let SlotOp::Add(slot) = *op else { return Err(format!("unexpected step {op:?}")) };
            let slot = slot as usize;
            let stored = *input.slots.get(slot).ok_or("slot out of range")?;
            let acc = accs[slot].get_or_insert_with(|| decode_acc(stored));
            acc.count += 1;
            if (phase, what) == ("process", "late-trap") && acc.count >= 20 {
                #[allow(clippy::panic)] // The point of this fixture.
                {
                    panic!("hostile fixture: the window holds {} records", acc.count);
                }
            }
            match (phase, what) {
                ("process", "huge") => acc.ballast.push_str(&"x".repeat(4 << 20)),
                ("finish", "clear") => acc.finish = None,
                ("migrate", "clear") => acc.migrate = None,
                ("finish", act) => acc.finish = Some(act.to_owned()),
                ("migrate", act) => acc.migrate = Some(act.to_owned()),
                _ => {}
            }
        }
    }
    let encoded: Vec<(u32, Vec<u8>)> = accs
        .iter()
        .enumerate()
        .filter_map(|(slot, acc)| acc.as_ref().map(|acc| (slot as u32, postcard::to_allocvec(acc).unwrap_or_default())))
        .collect();
    let out = AggregateOut {
        updates: if rejects.is_empty() {
            encoded.iter().map(|(slot, value)| SlotValue { slot: *slot, value }).collect()
        } else {
            Vec::new()
        },
        rejects: rejects.iter().map(|(record, reason)| NodeReject { record: *record, node: ACTS, reason }).collect(),
    };
    encode(&out)
}

/// The `run` call: renders windows leaving `to_stream`.
pub fn run(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: RunIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut values = Vec::with_capacity(input.records.len());
    for record in &input.records {
        let acc = decode_acc(record.value);
        let key = String::from_utf8_lossy(record.key.unwrap_or_default());
        if armed()
            && let Some(act) = &acc.finish
        {
            let absurd = || {
                let empty = Rec { key: None, value: None, old: None, timestamp: 0, window: None };
                let emitted: Vec<Emitted<'_>> =
                    (0..200_000).map(|_| Emitted { source: 0, node: RENDER, port: 0, record: empty.clone() }).collect();
                encode(&RunOut { emitted, rejects: Vec::new() }).unwrap_or_default()
            };
            if act == "huge" {
                values.push(vec![b'x'; 4 << 20]);
                continue;
            }
            if let Some(answer) = misbehave(act, absurd) {
                return Ok(answer);
            }
        }
        let window_start = record.window.map_or(0, |w| w.start);
        let out = CountOut { key: &key, window_start, count: acc.count };
        values.push(serde_json::to_vec(&out).map_err(|e| e.to_string())?);
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
    encode(&RunOut { emitted, rejects: Vec::new() })
}

/// The `migrate` call.
pub fn migrate(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: MigrateIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut accs = Vec::with_capacity(input.slots.len());
    for slot in &input.slots {
        let mut acc = decode_acc(Some(slot.value));
        if armed()
            && let Some(act) = acc.migrate.take()
        {
            let absurd = || {
                let accs: Vec<Option<&[u8]>> = (0..200_000).map(|_| None).collect();
                encode(&MigrateOut { accs }).unwrap_or_default()
            };
            if act == "huge" {
                acc.ballast = "x".repeat(4 << 20);
            } else if let Some(answer) = misbehave(&act, absurd) {
                return Ok(answer);
            }
        }
        accs.push(postcard::to_allocvec(&acc).map_err(|e| e.to_string())?);
    }
    encode(&MigrateOut { accs: accs.iter().map(|a| Some(a.as_slice())).collect() })
}

// The generated bindings are the only unsafe code here.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component {
    wit_bindgen::generate!({ world: "processor", path: "../../wit" });

    use weir_abi::topology::WindowSpec;

    struct Hostile;

    impl Guest for Hostile {
        fn describe() -> Result<PluginInfo, String> {
            let (schema, mut migrates_from) = super::schema();
            let mut name = "hostile".to_owned();
            let mut window = WindowSpec::Tumbling { size_ms: 1_000, grace_ms: 0 };
            match super::describe_act().as_str() {
                "huge" => name = "h".repeat(16 << 20),
                "absurd" => window = WindowSpec::Hopping { size_ms: 1 << 53, advance_ms: 1, grace_ms: 0 },
                "many" => migrates_from = (0..200_000).collect(),
                other => {
                    super::misbehave(other, Vec::new);
                }
            }
            let topology = super::topology(window, schema, migrates_from).encode().map_err(|e| e.to_string())?;
            Ok(PluginInfo { name, version: "0.1.0".into(), topology })
        }

        fn run(batch: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::run(&batch).map_err(ProcessorError::BadFrame)
        }

        fn aggregate(batch: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::aggregate(&batch).map_err(ProcessorError::BadFrame)
        }

        fn migrate(batch: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::migrate(&batch).map_err(ProcessorError::BadFrame)
        }
    }

    export!(Hostile);
}
