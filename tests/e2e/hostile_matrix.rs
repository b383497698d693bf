//! The hostile-plugin matrix: for each phase a plugin runs in — `describe`,
//! `aggregate` (process), `run` (finish), `migrate` — and each way it can misbehave — a trap, a
//! stack overflow, an endless loop, memory growth, an oversized or malformed
//! answer, absurd numbers — one host stays up with bounded memory, says what
//! happened in the plugin's terms, and the healthy pipeline beside the hostile
//! ones stays exact. The `hostile` fixture does every act on request (its record
//! values, or a marker in its built file for `describe`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::admin::client::{Client, ClientError};

use crate::support::*;

const ACTS: [&str; 7] = ["trap", "stack", "loop", "oom", "huge", "garbage", "absurd"];

/// What the host must say for an act, by phase.
fn needle(phase: &str, act: &str) -> &'static str {
    match (phase, act) {
        (_, "trap") => "panicked",
        (_, "stack") => "overflowed its stack",
        (_, "loop") => "exceeded its CPU budget of 1000 ms",
        (_, "oom") => "ran out of memory",
        ("describe", "huge") => "not a short printable string",
        (_, "huge") => "the limit is 1048576 bytes",
        (_, "garbage") => "unreadable frame",
        ("process", "absurd") => "updated twice",
        ("finish", "absurd") => "200000 records rendered from",
        ("migrate", "absurd") => "migrate returned 200000 accumulators",
        ("describe", "absurd") => "max_windows_per_record",
        ("describe", "many") => "the limit is 64",
        (_, "fs") => "file access denied",
        (_, "env") => "environment is empty",
        (_, "clock") => "clock is frozen at 0 s",
        _ => "?",
    }
}

/// The hostile build with `marker` (a prefix of a marker in its data) replaced.
fn patched(marker: &[u8], replacement: &[u8]) -> Result<Vec<u8>> {
    let mut bytes = std::fs::read(plugin("hostile")?)?;
    let at = bytes.windows(marker.len()).position(|w| w == marker).context("marker not in the build")?;
    assert!(bytes[at + 1..].windows(marker.len()).all(|w| w != marker), "the marker must be unique");
    bytes[at..at + replacement.len()].copy_from_slice(replacement);
    Ok(bytes)
}

fn describe_build(act: &str) -> Result<Vec<u8>> {
    let mut replacement = b"WEIR-HOSTILE-DESCRIBE:".to_vec();
    replacement.extend(format!("{act:<10}").bytes());
    patched(b"WEIR-HOSTILE-DESCRIBE:none      ", &replacement)
}

fn act(act: &str) -> Option<Vec<u8>> {
    Some(format!(r#"{{"act":"{act}"}}"#).into_bytes())
}

/// Counts per (key, 1-second window) of the healthy `count` records, written
/// in the test from the input.
fn counts(records: &[Record], counted: impl Fn(&Record) -> bool) -> Result<BTreeMap<(String, i64), u64>> {
    let mut want = BTreeMap::new();
    for r in records.iter().filter(|r| counted(r)) {
        let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
        *want.entry((key, r.timestamp - r.timestamp.rem_euclid(1000))).or_default() += 1;
    }
    Ok(want)
}

fn outputs(topic: &str) -> Result<BTreeMap<(String, i64), u64>> {
    let mut got = BTreeMap::new();
    for r in read_all(topic)? {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        let key = v["key"].as_str().unwrap_or_default().to_owned();
        got.insert((key, v["window_start"].as_i64().unwrap_or(-1)), v["count"].as_u64().unwrap_or(0));
    }
    Ok(got)
}

fn status(admin: &Client, pipeline: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&admin.get(&format!("/v1/pipelines/{pipeline}"))?)?)
}

fn peak_rss_mib(weir: &Weir) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", weir.child.id()))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmHWM")?;
    Ok(kb / 1024)
}

#[test]
fn hostile_plugins_in_every_phase_are_contained_next_to_a_healthy_pipeline() -> Result<()> {
    let app = unique("matrix");
    let (stats_in, process_in, finish_in, migrate_in) =
        (format!("{app}-trades"), format!("{app}-p"), format!("{app}-f"), format!("{app}-m"));
    for topic in [&process_in, &finish_in, &migrate_in] {
        create_topic(topic, 1)?;
    }
    create_topic(&stats_in, 2)?;
    let base = 1_700_000_000_000i64;

    // process: healthy records, and one of each act.
    let process_acts: Vec<&str> = ACTS.iter().copied().chain(["fs", "env", "clock"]).collect();
    let mut records: Vec<RawRecord> = Vec::new();
    for i in 0..2_000i64 {
        records.push((Some(format!("k{}", i % 7).into_bytes()), act("count"), base + i * 5));
        if i % 150 == 75
            && let Some(a) = process_acts.get((i / 150) as usize)
        {
            records.push((Some(format!("k{}", i % 7).into_bytes()), act(a), base + i * 5));
        }
    }
    produce(&process_in, &records)?;
    // finish: a window of its own for each act, among healthy windows.
    let mut records: Vec<RawRecord> = Vec::new();
    for i in 0..2_000i64 {
        records.push((Some(format!("k{}", i % 7).into_bytes()), act("count"), base + i * 5));
        if i % 200 == 100
            && let Some(a) = ACTS.get((i / 200) as usize)
        {
            records.push((Some(format!("f-{a}").into_bytes()), act(&format!("finish:{a}")), base + i * 5));
        }
    }
    produce(&finish_in, &records)?;
    gen_trades(&stats_in, 30_000, 30, 2, 1_000, 0)?;

    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let hostile = plugin("hostile")?.display().to_string();
    let stats = plugin("stock-stats")?.display().to_string();
    let config = dir.path().join("host.toml");
    let pipeline = |name: &str, plugin: &str, input: &str| {
        format!(
            "[[pipeline]]\napplication_id = \"{app}-{name}\"\nplugin = \"{plugin}\"\ninput_topic = \"{input}\"\n\
             output_topic = \"{input}-out\"\ninstance_id = \"matrix\"\nstate = {{ dir = \"{d}/state\" }}\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{d}/host\"\n[limits]\ncall_budget_ms = 1000\nmemory_mb = 32\nretries = 1\n\n{}grace_ms = 2000\n\n{}\n{}\n{}",
            pipeline("stats", &stats, &stats_in),
            pipeline("process", &hostile, &process_in),
            pipeline("finish", &hostile, &finish_in),
            pipeline("migrate", &hostile, &migrate_in),
        ),
    )?;
    let mut weir = spawn_weir_serve(&config, &dir.path().join("weir.log"))?;
    let admin = Client::new(&weir.admin_url()?, None);

    // describe: each act is refused at upload, with the reason, in the plugin's terms.
    for act in ACTS.iter().copied().filter(|a| *a != "garbage").chain(["many"]) {
        match admin.post("/v1/plugins/bad", "application/wasm", &describe_build(act)?) {
            Err(ClientError::Refused { status: 422, message }) => {
                assert!(message.contains(needle("describe", act)), "describe {act}: {message}");
                assert!(message.len() < 2_000, "describe {act}: the refusal must be short: {message}");
            }
            other => bail!("describe {act}: expected a 422 refusal, got {other:?}"),
        }
    }
    let plugins: serde_json::Value = serde_json::from_str(&admin.get("/v1/plugins")?)?;
    assert_eq!(plugins.as_array().map(Vec::len), Some(0), "nothing refused is stored: {plugins}");

    // process: each hostile record is dead-lettered with its reason; the rest exact.
    await_caught_up(&format!("{app}-process"), &process_in, &mut weir, Duration::from_secs(240))?;
    let letters = read_all(&format!("{app}-process-dlq"))?;
    let mut reason_of: BTreeMap<String, String> = BTreeMap::new();
    for letter in &letters {
        let value: serde_json::Value = serde_json::from_slice(letter.value.as_deref().unwrap_or_default())?;
        reason_of.insert(value["act"].as_str().unwrap_or("?").to_owned(), letter.headers["weir.error"].clone());
    }
    assert_eq!(letters.len(), process_acts.len(), "one dead letter per hostile record: {reason_of:#?}");
    for a in &process_acts {
        let reason = reason_of.get(*a).map(String::as_str).unwrap_or_default();
        assert!(reason.contains(needle("process", a)), "process {a}: {reason:?}");
        assert!(!reason.contains("BREACH"), "process {a}: {reason}");
    }
    let inputs = read_all(&process_in)?;
    let healthy = |r: &Record| r.value.as_deref() == act("count").as_deref();
    assert_eq!(outputs(&format!("{process_in}-out"))?, counts(&inputs, healthy)?);

    // finish: each hostile window's result is dead-lettered, with the window.
    await_caught_up(&format!("{app}-finish"), &finish_in, &mut weir, Duration::from_secs(240))?;
    let mut failed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for letter in read_all(&format!("{app}-finish-dlq"))? {
        let key = String::from_utf8(letter.key.clone().unwrap_or_default())?;
        assert!(letter.headers.contains_key("weir.window.start"), "{:?}", letter.headers);
        failed.entry(key).or_default().insert(letter.headers["weir.error"].clone());
    }
    for a in ACTS {
        let reasons = failed.remove(&format!("f-{a}")).unwrap_or_default();
        assert!(
            !reasons.is_empty() && reasons.iter().all(|r| r.contains(needle("finish", a))),
            "finish {a}: {reasons:?}"
        );
    }
    assert!(failed.is_empty(), "only the hostile windows fail: {failed:?}");
    let inputs = read_all(&finish_in)?;
    let healthy_window = |r: &Record| !r.key.as_deref().unwrap_or_default().starts_with(b"f-");
    assert_eq!(outputs(&format!("{finish_in}-out"))?, counts(&inputs, healthy_window)?);

    // migrate: a new state schema migrates the stored windows; each act fails
    // the migration, which rolls the swap back with the reason.
    let v2: serde_json::Value = serde_json::from_str(&admin.post(
        "/v1/plugins/hostile-v2",
        "application/wasm",
        &patched(b"WEIR-SCHEMA:1", b"WEIR-SCHEMA:2")?,
    )?)?;
    let v2 = v2["id"].as_str().context("no id")?.to_owned();
    let migrate = format!("{app}-migrate");
    let activate = serde_json::json!({ "version": v2 }).to_string();
    for (i, a) in ACTS.iter().enumerate() {
        let at = base + i as i64 * 1_000;
        produce(&migrate_in, &[(Some(b"m".to_vec()), act(&format!("migrate:{a}")), at)])?;
        await_caught_up(&migrate, &migrate_in, &mut weir, Duration::from_secs(60))?;
        let swaps = status(&admin, &migrate)?["swaps"].as_u64().unwrap_or(0);
        admin.post(&format!("/v1/pipelines/{migrate}/activate"), "application/json", activate.as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let s = loop {
            let s = status(&admin, &migrate)?;
            if s["swaps"].as_u64().unwrap_or(0) >= swaps + 2 {
                break s;
            }
            if Instant::now() > deadline {
                bail!("migrate {a}: the swap was not rolled back: {s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let error = s["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("rolled back") && error.contains(needle("migrate", a)), "migrate {a}: {error}");
        assert!(s["active"].as_str().is_some_and(|v| v.starts_with("hostile@")), "{s}");
        produce(&migrate_in, &[(Some(b"m".to_vec()), act("migrate:clear"), at)])?;
        await_caught_up(&migrate, &migrate_in, &mut weir, Duration::from_secs(60))?;
    }
    // With nothing hostile stored, the same version migrates.
    let swaps = status(&admin, &migrate)?["swaps"].as_u64().unwrap_or(0);
    admin.post(&format!("/v1/pipelines/{migrate}/activate"), "application/json", activate.as_bytes())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&admin, &migrate)?;
        if s["swaps"].as_u64().unwrap_or(0) > swaps {
            let last = &s["history"][s["history"].as_array().map_or(0, Vec::len).saturating_sub(1)];
            assert!(
                last["rolled_back"].is_null() && last["state"].as_str().is_some_and(|t| t.contains("migrated")),
                "{s}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("the clean migration did not happen: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // The healthy pipeline beside them all is exact, and the host is well.
    await_caught_up(&format!("{app}-stats"), &stats_in, &mut weir, Duration::from_secs(240))?;
    assert_same(&last_results(&read_all(&format!("{stats_in}-out"))?)?, &recompute(&read_all(&stats_in)?, 2_000));
    let names: Vec<String> = serde_json::from_str(&admin.get("/v1/pipelines")?)?;
    for name in &names {
        let s = status(&admin, name)?;
        assert!(s["failed"].is_null(), "{name} must still run: {s}");
    }
    let peak = peak_rss_mib(&weir)?;
    eprintln!("hostile matrix: peak RSS of the host {peak} MiB");
    assert!(peak < 1024, "the host's own memory must stay bounded, peaked at {peak} MiB");
    terminate(&mut weir)?;
    Ok(())
}
