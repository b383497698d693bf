//! A test fixture written against the raw `weir:processor` world (no SDK), so it
//! can answer anything, including what the SDK would never send. It counts records
//! per key in 1-second tumbling windows, and misbehaves on request in each phase.
//!
//! A record's value is `{"act": "<act>"}` or `{"act": "<phase>:<act>"}`:
//!
//! | act | process (default phase) | `finish:` (rendering its window) | `migrate:` (migrating its window) |
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

/// The `process` call.
pub fn process(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: weir_abi::ProcessIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut accs: Vec<Option<Acc>> = input.slots.iter().map(|_| None).collect();
    let mut rejects: Vec<(u32, String)> = Vec::new();
    for (index, record) in input.records.iter().enumerate() {
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
                let updates: Vec<weir_abi::SlotUpdate<'_>> =
                    (0..200_000).map(|_| weir_abi::SlotUpdate { slot: 0, acc: &[] }).collect();
                encode(&weir_abi::ProcessOut { updates, rejects: Vec::new() }).unwrap_or_default()
            };
            if let Some(answer) = misbehave(what, absurd) {
                return Ok(answer);
            }
        }
        let first = record.first_ref as usize;
        let refs = input.refs.get(first..first + record.ref_count as usize).ok_or("refs out of range")?;
        for &slot in refs {
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
    let out = weir_abi::ProcessOut {
        updates: if rejects.is_empty() {
            encoded.iter().map(|(slot, acc)| weir_abi::SlotUpdate { slot: *slot, acc }).collect()
        } else {
            Vec::new()
        },
        rejects: rejects.iter().map(|(record, reason)| weir_abi::Reject { record: *record, reason }).collect(),
    };
    encode(&out)
}

/// The `finish` call.
pub fn finish(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: weir_abi::FinishIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut values = Vec::with_capacity(input.slots.len());
    for slot in &input.slots {
        let acc = decode_acc(Some(slot.acc));
        let key = String::from_utf8_lossy(slot.key);
        if armed()
            && let Some(act) = &acc.finish
        {
            let absurd = || {
                let values: Vec<Option<&[u8]>> = (0..200_000).map(|_| None).collect();
                encode(&weir_abi::FinishOut { values }).unwrap_or_default()
            };
            if act == "huge" {
                values.push(vec![b'x'; 4 << 20]);
                continue;
            }
            if let Some(answer) = misbehave(act, absurd) {
                return Ok(answer);
            }
        }
        let out = CountOut { key: &key, window_start: slot.window.start, count: acc.count };
        values.push(serde_json::to_vec(&out).map_err(|e| e.to_string())?);
    }
    encode(&weir_abi::FinishOut { values: values.iter().map(|v| Some(v.as_slice())).collect() })
}

/// The `migrate` call.
pub fn migrate(frame: &[u8]) -> Result<Vec<u8>, String> {
    let input: weir_abi::FinishIn<'_> = weir_abi::decode(frame).map_err(|e| e.to_string())?;
    let mut accs = Vec::with_capacity(input.slots.len());
    for slot in &input.slots {
        let mut acc = decode_acc(Some(slot.acc));
        if armed()
            && let Some(act) = acc.migrate.take()
        {
            let absurd = || {
                let accs: Vec<Option<&[u8]>> = (0..200_000).map(|_| None).collect();
                encode(&weir_abi::MigrateOut { accs }).unwrap_or_default()
            };
            if act == "huge" {
                acc.ballast = "x".repeat(4 << 20);
            } else if let Some(answer) = misbehave(&act, absurd) {
                return Ok(answer);
            }
        }
        accs.push(postcard::to_allocvec(&acc).map_err(|e| e.to_string())?);
    }
    encode(&weir_abi::MigrateOut { accs: accs.iter().map(|a| Some(a.as_slice())).collect() })
}

// The generated bindings are the only unsafe code here.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod component {
    wit_bindgen::generate!({ world: "processor", path: "../../wit" });

    use weir::processor::types::{HoppingWindows, TumblingWindows, Windowing};

    struct Hostile;

    impl Guest for Hostile {
        fn describe() -> PluginInfo {
            let (state_schema, mut migrates_from) = super::schema();
            let mut name = "hostile".to_owned();
            let mut windowing = Windowing::Tumbling(TumblingWindows { size_ms: 1_000 });
            match super::describe_act().as_str() {
                "huge" => name = "h".repeat(16 << 20),
                "absurd" => windowing = Windowing::Hopping(HoppingWindows { size_ms: 1 << 53, advance_ms: 1 }),
                "many" => migrates_from = (0..200_000).collect(),
                other => {
                    super::misbehave(other, Vec::new);
                }
            }
            PluginInfo { name, version: "0.1.0".into(), windowing, state_schema, migrates_from }
        }

        fn process(batch: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::process(&batch).map_err(ProcessorError::BadFrame)
        }

        fn finish(slots: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::finish(&slots).map_err(ProcessorError::BadFrame)
        }

        fn migrate(_from: u32, slots: Vec<u8>) -> Result<Vec<u8>, ProcessorError> {
            super::migrate(&slots).map_err(ProcessorError::BadFrame)
        }
    }

    export!(Hostile);
}
