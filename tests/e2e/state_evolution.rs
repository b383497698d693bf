//! State evolution through the admin API of a running host: a version with a new
//! state schema migrates the stored windows (committed with the new schema, so a
//! restart with a plugin that cannot read them is refused), the stream stays exact
//! across the migration, and an explicit reset drops the stored windows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::admin::client::{Client, ClientError};

use crate::support::*;

const GRACE_MS: i64 = 2_000;
const PARTITIONS: i32 = 2;
const PHASE: u64 = 20_000;

fn status(client: &Client, app: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&client.get(&format!("/v1/pipelines/{app}"))?)?)
}

/// Waits until every partition's committed metadata records state schema `schema`.
fn await_schema_committed(app: &str, input: &str, schema: u32, weir: &mut Weir) -> Result<()> {
    let want = format!(";schema={schema}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let meta = committed_metadata(app, input, PARTITIONS)?;
        if meta.len() == PARTITIONS as usize && meta.values().all(|m| m.ends_with(&want)) {
            return Ok(());
        }
        if let Some(status) = weir.child.try_wait()? {
            bail!("weir exited with {status} before committing schema {schema}");
        }
        if Instant::now() > deadline {
            bail!("schema {schema} was not committed within 60 s: {meta:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn activate(admin: &Client, app: &str, body: serde_json::Value) -> Result<String, ClientError> {
    admin.post(&format!("/v1/pipelines/{app}/activate"), "application/json", body.to_string().as_bytes())
}

fn await_active(admin: &Client, app: &str, needle: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(admin, app)?;
        if s["active"].as_str().is_some_and(|a| a.contains(needle)) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("{needle} never became active: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn upload(admin: &Client, name: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(&admin.post(
        &format!("/v1/plugins/{name}"),
        "application/wasm",
        &std::fs::read(plugin(name)?)?,
    )?)?;
    Ok(v["id"].as_str().context("version id")?.to_owned())
}

/// Records of `all` at or after `from` (per-partition offsets) and before `to`.
fn between(all: &[Record], from: &BTreeMap<i32, i64>, to: &BTreeMap<i32, i64>) -> Vec<Record> {
    all.iter()
        .filter(|r| {
            from.get(&r.partition).is_none_or(|f| r.offset >= *f) && to.get(&r.partition).is_some_and(|t| r.offset < *t)
        })
        .cloned()
        .collect()
}

#[test]
fn a_new_state_schema_migrates_survives_restarts_and_can_be_reset() -> Result<()> {
    let app = unique("evolve");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let log = dir.path().join("weir.log");
    let token = [("WEIR_ADMIN_TOKEN", "evolve-token")];
    let args = |plugin_name: &str| -> Result<Vec<String>> {
        let mut args = pipeline_args(plugin_name, &app, &input, &output, &state)?;
        args.extend(["--grace-ms".into(), GRACE_MS.to_string()]);
        Ok(args)
    };

    // Phase 1 under stock-stats 0.1.0 (state schema 1).
    gen_trades_at(&input, PHASE, 20, PARTITIONS, 500, 0, GEN_START_MS)?;
    let mut weir = spawn_weir_with_env(&args("stock-stats")?, &log, &token)?;
    let admin = Client::new(&weir.admin_url()?, Some("evolve-token".into()));
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let phase1_end = end_offsets(&input)?;
    assert_eq!(status(&admin, &app)?["state_schema"], 1);

    // stock-stats-wide 0.3.0 has state schema 2 and migrates from 1.
    let wide = upload(&admin, "stock-stats-wide")?;
    activate(&admin, &app, serde_json::json!({ "version": wide }))?;
    let s = await_active(&admin, &app, "stock-stats-wide@0.3.0")?;
    assert_eq!(s["state_schema"], 2, "{s}");
    let change = s["history"][0]["state"].as_str().unwrap_or_default().to_owned();
    assert!(change.starts_with("migrated ") && change.contains("to 2"), "{s}");
    let migrated: u64 = change.split_whitespace().nth(1).and_then(|n| n.parse().ok()).context("window count")?;
    assert!(migrated > 0, "open windows must have been migrated: {change}");
    await_schema_committed(&app, &input, 2, &mut weir)?;

    // Going back to 0.1.0 would hand it state it cannot read.
    let refusal = admin.post(&format!("/v1/pipelines/{app}/rollback"), "application/json", b"{}");
    match refusal {
        Err(ClientError::Refused { status: 409, message }) => {
            assert!(message.contains("state is in schema 2") && message.contains("reset_state"), "{message}")
        }
        other => bail!("rollback over a schema change must be refused, got {other:?}"),
    }

    // The schema is durable: after a crash, a host configured with 0.1.0 refuses
    // the stored state instead of misreading it ...
    weir.kill()?;
    let old_log = dir.path().join("weir-old.log");
    let mut old = spawn_weir_with_env(&args("stock-stats")?, &old_log, &token)?;
    let exit = wait_exit(&mut old, Duration::from_secs(120))?;
    assert!(!exit.success(), "a plugin that cannot read the state must not run");
    let text = std::fs::read_to_string(&old_log)?;
    assert!(text.contains("the pipeline's state is in schema 2"), "{text}");

    // ... and 0.3.0 resumes it. Phase 2 continues the same windows.
    let mut weir = spawn_weir_with_env(&args("stock-stats-wide")?, &dir.path().join("weir-resumed.log"), &token)?;
    let admin = Client::new(&weir.admin_url()?, Some("evolve-token".into()));
    let phase2_start = GEN_START_MS + (PHASE as i64 * 1000) / GEN_EVENTS_PER_SEC;
    gen_trades_at(&input, PHASE, 20, PARTITIONS, 500, 0, phase2_start)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let phase2_end = end_offsets(&input)?;

    // Exact across the migration; and the maximum, which schema 1 did not keep,
    // is reported only for windows that schema 2 saw from their first trade.
    let trades = read_all(&input)?;
    let mut max: BTreeMap<(String, i64), f64> = BTreeMap::new();
    let mut seen_by_schema_1: BTreeSet<(String, i64)> = BTreeSet::new();
    let want = recompute_with(&trades, GRACE_MS, |window, record, trade| {
        let m = max.entry(window.clone()).or_insert(f64::MIN);
        *m = m.max(trade.price);
        if phase1_end.get(&record.partition).is_some_and(|end| record.offset < *end) {
            seen_by_schema_1.insert(window.clone());
        }
    });
    let outputs = read_all(&output)?;
    assert_same(&last_results(&outputs)?, &want);
    let mut last_max: BTreeMap<(String, i64), Option<f64>> = BTreeMap::new();
    for record in &outputs {
        let v: serde_json::Value = serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        let window = (v["ticker"].as_str().unwrap_or_default().to_owned(), v["window_start"].as_i64().unwrap_or(-1));
        last_max.insert(window, v["max_price"].as_f64());
    }
    let (mut known, mut unknown) = (0, 0);
    for (window, reported) in &last_max {
        match reported {
            Some(m) => {
                known += 1;
                assert!(!seen_by_schema_1.contains(window), "{window:?} claims a maximum across the migration");
                assert_eq!(Some(*m), max.get(window).copied(), "maximum of {window:?}");
            }
            None => {
                unknown += 1;
            }
        }
    }
    assert!(known > 0 && unknown > 0, "expected windows on both sides: {known} known, {unknown} unknown");

    // An explicit reset: back to 0.1.0, dropping the stored windows.
    let (code, message) = match activate(&admin, &app, serde_json::json!({ "version": upload(&admin, "stock-stats")? }))
    {
        Err(ClientError::Refused { status, message }) => (status, message),
        other => bail!("activation over a schema change without reset must be refused, got {other:?}"),
    };
    assert_eq!(code, 409, "{message}");
    let v1 = upload(&admin, "stock-stats")?;
    activate(&admin, &app, serde_json::json!({ "version": v1, "reset_state": true }))?;
    let s = await_active(&admin, &app, "stock-stats@0.1.0")?;
    let change = s["history"][0]["state"].as_str().unwrap_or_default().to_owned();
    assert!(change.starts_with("reset: "), "{s}");
    await_schema_committed(&app, &input, 1, &mut weir)?;

    // Phase 3 lands in windows that were open at the reset: their results now
    // count phase-3 trades only.
    let phase3_start = GEN_START_MS + (2 * PHASE as i64 * 1000) / GEN_EVENTS_PER_SEC - 1_000;
    gen_trades_at(&input, 4_000, 20, PARTITIONS, 0, 0, phase3_start)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let phase3 = between(&read_all(&input)?, &phase2_end, &end_offsets(&input)?);
    let want3 = recompute(&phase3, GRACE_MS);
    let outputs = read_all(&output)?;
    let got = last_results(&outputs)?;
    let got3: BTreeMap<_, _> = got.into_iter().filter(|(k, _)| want3.contains_key(k)).collect();
    assert_same(&got3, &want3);
    let straddling = want3.keys().filter(|k| want.contains_key(*k)).count();
    assert!(straddling > 0, "phase 3 must reach windows that held state before the reset");
    terminate(&mut weir)?;
    Ok(())
}
