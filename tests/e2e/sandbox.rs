//! A hostile plugin is contained: a trap, an infinite loop, a memory bomb and an
//! oversized accumulator each cost one record (dead-lettered with the failure);
//! file, environment and clock access are denied; a failure that only happens
//! once a window holds 20 records is still pinned to the record that triggers it;
//! everything else stays exact and the host keeps running.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde::Deserialize;

use crate::support::*;

#[derive(Deserialize)]
struct CountOut {
    key: String,
    window_start: i64,
    count: u64,
}

#[test]
fn hostile_records_are_contained_and_the_rest_stays_exact() -> Result<()> {
    let app = unique("hostile");
    let (input, output, dead) = (format!("{app}-in"), format!("{app}-out"), format!("{app}-dead"));
    create_topic(&input, 2)?;
    let base = 1_700_000_000_000i64;
    let acts = ["trap", "loop", "oom", "huge", "fs", "env", "clock"];
    let mut records: Vec<RawRecord> = Vec::new();
    for i in 0..3_000i64 {
        let key = format!("k{}", i % 13);
        records.push((Some(key.into_bytes()), Some(br#"{"act":"count"}"#.to_vec()), base + i * 5));
        if i % 400 == 200 {
            let act = acts[(i / 400) as usize % acts.len()];
            let value = format!(r#"{{"act":"{act}"}}"#).into_bytes();
            records.push((Some(format!("k{}", i % 13).into_bytes()), Some(value), base + i * 5));
        }
    }
    // A window that fills up within one batch: the 25th record fails only because
    // of the 24 before it, so it fails alone only if replayed after them.
    for i in 0..30i64 {
        let value = if i == 24 { br#"{"act":"late-trap"}"#.to_vec() } else { br#"{"act":"count"}"#.to_vec() };
        records.push((Some(b"late".to_vec()), Some(value), base + 60_000 + i));
    }
    produce(&input, &records)?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        "[limits]\ncall_budget_ms = 300\nmemory_mb = 32\nmax_value_kb = 1024\nretries = 1\non_failure = \"dead_letter\"\n",
    )?;
    let mut args = pipeline_args("hostile", &app, &input, &output, &dir.path().join("state"))?;
    args.extend([
        "--config".to_string(),
        config.display().to_string(),
        "--dead-letter-topic".to_string(),
        dead.clone(),
    ]);
    let mut weir = spawn_weir(&args, &dir.path().join("weir.log"))?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;

    let letters = read_all(&dead)?;
    let inputs = read_all(&input)?;
    let mut reason_of: BTreeMap<String, String> = BTreeMap::new();
    for letter in &letters {
        let value: serde_json::Value = serde_json::from_slice(letter.value.as_deref().unwrap_or_default())?;
        reason_of.insert(value["act"].as_str().unwrap_or("?").to_owned(), letter.headers["weir.error"].clone());
    }
    assert_eq!(reason_of.len(), letters.len(), "one dead letter per hostile record: {reason_of:#?}");
    let expect = [
        ("trap", "plugin trapped"),
        ("loop", "interrupt"),
        ("oom", "plugin trapped"),
        ("huge", "the limit is 1048576 bytes"),
        ("fs", "file access denied"),
        ("env", "environment is empty"),
        ("clock", "clock is frozen at 0 s"),
        ("late-trap", "panicked"),
    ];
    for (act, needle) in expect {
        let reason = reason_of.get(act).unwrap_or_else(|| panic!("no dead letter for {act}: {reason_of:#?}"));
        assert!(reason.contains(needle), "{act}: expected {needle:?} in {reason:?}");
        assert!(!reason.contains("BREACH"), "{act}: {reason}");
    }
    assert_eq!(letters.len(), expect.len(), "only the hostile records are dead-lettered: {reason_of:#?}");

    // Independent recomputation: healthy records per key per 1-second window.
    let mut want: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in &inputs {
        if r.value.as_deref() == Some(br#"{"act":"count"}"#.as_slice()) {
            let key = String::from_utf8(r.key.clone().unwrap_or_default())?;
            *want.entry((key, r.timestamp - r.timestamp.rem_euclid(1000))).or_default() += 1;
        }
    }
    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in read_all(&output)? {
        let out: CountOut = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        got.insert((out.key, out.window_start), out.count);
    }
    assert_eq!(got, want);
    Ok(())
}
