//! Hot swap during a live stock-stats stream: six swaps between two real builds,
//! then one to a build that traps on its first record. The output still equals the
//! independent recomputation, the broken build is rolled back and the reason is
//! reported. Runs the pipeline in-process to drive its swap control directly; the
//! builds are compiled before the stream starts, so each swap happens while
//! records are still arriving. A version that fails only after it has committed
//! is rolled back too while on probation, and contained like any failure after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::config::{RunConfig, StateConfig};
use weir::metrics::Metrics;
use weir::pipeline::{Control, Pipeline};
use weir::runtime::{Plugin, Runtime, Sandbox};

use crate::support::*;

pub(crate) fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn load(runtime: &Runtime, name: &str, sandbox: Sandbox) -> Result<Plugin> {
    Ok(runtime.load(&std::fs::read(plugin(name)?)?, sandbox)?)
}

fn swap(control: &Control, label: &str, build: &Plugin, swaps_before: usize) -> Result<()> {
    control.activate(label, build.clone(), false)?;
    wait_for(&format!("swap to {label}"), Duration::from_secs(30), || Ok(control.status().history.len() > swaps_before))
}

#[test]
fn hot_swaps_keep_output_exact_and_a_broken_version_rolls_back() -> Result<()> {
    let app = unique("swap");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, 4)?;
    let runtime = Runtime::new()?;
    let (v1, v2, broken) = (
        load(&runtime, "stock-stats", Sandbox::default())?,
        load(&runtime, "stock-stats-next", Sandbox::default())?,
        load(&runtime, "stock-stats-trap", Sandbox::default())?,
    );
    const TRADES: u64 = 150_000;
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || gen_trades(&input, TRADES, 50, 4, 1_500, 20_000))
    };
    let state = tempfile::tempdir()?;
    let metrics = Metrics::default();
    let pipeline = Pipeline::new(stats_config(&app, &input, state.path())?, &runtime, metrics.clone())?;
    let control = pipeline.control();
    while_running(pipeline, || {
        let mut progress = 0;
        let mut step = |label: &str, build: &Plugin, swaps: usize| -> Result<()> {
            // Let the current version process a share of the stream first.
            progress += 12_000;
            let target = progress;
            wait_for("progress", Duration::from_secs(120), || Ok(metrics.records_in.get() >= target))?;
            swap(&control, label, build, swaps)
        };
        for i in 0..6 {
            let (label, build) = if i % 2 == 0 { ("v2", &v2) } else { ("v1", &v1) };
            step(label, build, i)?;
        }
        step("broken", &broken, 6)?;
        producer.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
        // The pipeline may have read the whole stream by now: give the broken
        // build records of its own, after the stream's event times.
        gen_trades_at(&input, 2_000, 50, 4, 0, 0, GEN_START_MS + (TRADES as i64 * 1000) / GEN_EVENTS_PER_SEC)?;
        wait_for("the rollback", Duration::from_secs(60), || Ok(control.status().last_error.is_some()))?;
        await_committed_all(&app, &input, 4)
    })?;

    let status = control.status();
    let pauses: Vec<u128> =
        status.history.iter().filter(|e| e.rolled_back.is_none()).map(|e| e.pause.as_micros()).collect();
    eprintln!("swap pauses (µs): {pauses:?}");
    assert_eq!(status.history.len(), 8, "six swaps, the broken one, and its rollback: {:#?}", status.history);
    let rollback = status.history.last().context("no history")?;
    let reason = rollback.rolled_back.as_deref().context("the last event must be the rollback")?;
    assert!(reason.contains("version broken failed") && reason.contains("panicked"), "{reason}");
    assert_eq!(status.active, "v1", "rolled back to the version before the broken one");

    let want = recompute(&read_all(&input)?, 2_000);
    let got = last_results(&read_all(&output)?)?;
    assert_same(&got, &want);
    Ok(())
}

/// Topologies swap by their stateful shape: the `Aggregator` shorthand and the
/// same job written in the DSL (other logical topic names, other stateless
/// steps, the same store `windows`) take over from each other mid-stream, and the
/// output stays exact; a build with another store, or writing elsewhere, is
/// refused before it is staged, naming what differs.
#[test]
fn the_shorthand_and_the_dsl_swap_both_ways_and_other_shapes_are_refused() -> Result<()> {
    let app = unique("shape-swap");
    let input = format!("{app}-trades");
    create_topic(&input, 4)?;
    let runtime = Runtime::new()?;
    let (shorthand, dsl, daily, split) = (
        load(&runtime, "stock-stats", Sandbox::default())?,
        load(&runtime, "stock-stats-dsl", Sandbox::default())?,
        load(&runtime, "daily-stats", Sandbox::default())?,
        load(&runtime, "trade-filter", Sandbox::default())?,
    );
    const TRADES: u64 = 60_000;
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || gen_trades(&input, TRADES, 50, 4, 1_500, 20_000))
    };
    let state = tempfile::tempdir()?;
    let metrics = Metrics::default();
    let pipeline = Pipeline::new(stats_config(&app, &input, state.path())?, &runtime, metrics.clone())?;
    let control = pipeline.control();
    let refusal = |build: &Plugin| match control.activate("other", build.clone(), false) {
        Err(e) => Ok(e.to_string()),
        Ok(()) => bail!("an incompatible build was accepted"),
    };
    let other_store = refusal(&daily)?;
    assert!(other_store.contains("named `daily` where the running one is `windows`"), "{other_store}");
    let other_sinks = refusal(&split)?;
    assert!(other_sinks.contains("it writes"), "{other_sinks}");
    while_running(pipeline, || {
        for (i, (label, build)) in
            [("dsl", &dsl), ("shorthand", &shorthand), ("dsl-again", &dsl)].into_iter().enumerate()
        {
            let target = (i as u64 + 1) * 12_000;
            wait_for("progress", Duration::from_secs(120), || Ok(metrics.records_in.get() >= target))?;
            swap(&control, label, build, i)?;
        }
        producer.join().map_err(|_| anyhow::anyhow!("generator panicked"))??;
        await_committed_all(&app, &input, 4)
    })?;
    let status = control.status();
    assert_eq!(status.history.len(), 3, "{:#?}", status.history);
    assert!(status.history.iter().all(|e| e.rolled_back.is_none()), "{:#?}", status.history);
    assert_eq!(status.active, "dsl-again");
    let want = recompute(&read_all(&input)?, 2_000);
    let got = last_results(&read_all(&format!("{app}-out"))?)?;
    assert_same(&got, &want);
    Ok(())
}

/// Stock-stats from `input` to `<app>-out`, grace 2 s, state under `state`.
fn stats_config(app: &str, input: &str, state: &std::path::Path) -> Result<RunConfig> {
    Ok(RunConfig {
        application_id: app.to_owned(),
        plugin: plugin("stock-stats")?,
        bootstrap_servers: bootstrap(),
        input_topic: Some(input.to_owned()),
        output_topic: Some(format!("{app}-out")),
        grace_ms: Some(2_000),
        instance_id: Some(format!("{app}-host")),
        state: StateConfig { dir: state.to_path_buf(), ..StateConfig::default() },
        ..RunConfig::default()
    })
}

/// Runs `pipeline` on its own thread while `drive` runs, then stops it.
pub(crate) fn while_running(mut pipeline: Pipeline, drive: impl FnOnce() -> Result<()>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let running = s.spawn(|| pipeline.run(&stop));
        let result = drive();
        stop.store(true, Ordering::Relaxed);
        running.join().map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
        result
    })
}

/// Waits until the group has committed every record of `input`.
pub(crate) fn await_committed_all(app: &str, input: &str, partitions: i32) -> Result<()> {
    let ends = end_offsets(input)?;
    wait_for("catching up", Duration::from_secs(300), || {
        let done = committed(app, input, partitions)?;
        Ok(ends.iter().all(|(p, end)| done.get(p).copied().unwrap_or(-1) >= *end))
    })
}

/// Runs stock-stats, swaps to a build that fails only on ticker ZZZZ, lets it
/// commit normal trades, then sends it a ZZZZ trade. Returns the pipeline's swap
/// status and the dead letters, after checking the output against the
/// recomputation.
fn fail_after_commits(probation_ms: u64) -> Result<(weir::pipeline::SwapStatus, Vec<Record>)> {
    const PARTITIONS: i32 = 2;
    let app = unique("late-fail");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTITIONS)?;
    let runtime = Runtime::new()?;
    let late_env = vec![("TRAP_TICKER".to_owned(), "ZZZZ".to_owned())];
    let late = load(&runtime, "stock-stats-trap", Sandbox { env: late_env, ..Sandbox::default() })?;
    let state = tempfile::tempdir()?;
    let cfg = RunConfig { swap_probation_ms: probation_ms, ..stats_config(&app, &input, state.path())? };
    let metrics = Metrics::default();
    let pipeline = Pipeline::new(cfg, &runtime, metrics.clone())?;
    let control = pipeline.control();
    const PHASE: u64 = 6_000;
    gen_trades_at(&input, PHASE, 20, PARTITIONS, 500, 0, GEN_START_MS)?;
    while_running(pipeline, || {
        await_committed_all(&app, &input, PARTITIONS)?;
        swap(&control, "late", &late, 0)?;
        // The new version processes and commits normal trades...
        let commits_at_swap = metrics.commits.get();
        let phase2 = GEN_START_MS + (PHASE as i64 * 1000) / GEN_EVENTS_PER_SEC;
        gen_trades_at(&input, PHASE, 20, PARTITIONS, 500, 0, phase2)?;
        await_committed_all(&app, &input, PARTITIONS)?;
        assert!(metrics.commits.get() > commits_at_swap, "the new version must have committed");
        assert_eq!(control.status().active, "late");
        // ...then meets the trade it fails on.
        let at = phase2 + (PHASE as i64 * 1000) / GEN_EVENTS_PER_SEC;
        let trade = br#"{"type":"ASK","ticker":"ZZZZ","price":12.5,"size":40}"#;
        produce(&input, &[(Some(b"ZZZZ".to_vec()), Some(trade.to_vec()), at)])?;
        await_committed_all(&app, &input, PARTITIONS)
    })?;
    let mut want = recompute(&read_all(&input)?, 2_000);
    let dead = read_all(&format!("{app}-dlq"))?;
    if !dead.is_empty() {
        // What was dead-lettered is missing from the output, by design.
        want.retain(|(ticker, _), _| ticker != "ZZZZ");
    }
    assert!(want.keys().any(|(t, _)| t != "ZZZZ"), "the recomputation must not be empty");
    assert_same(&last_results(&read_all(&output)?)?, &want);
    Ok((control.status(), dead))
}

#[test]
fn a_version_failing_after_it_committed_rolls_back_on_probation_and_is_contained_after() -> Result<()> {
    // On probation (the default is 30 s; here long enough for the whole run):
    // rolled back, and the previous version counts the trade.
    let (status, dead) = fail_after_commits(600_000)?;
    let last = status.history.last().context("no history")?;
    let reason = last.rolled_back.as_deref().context("the last event must be the rollback")?;
    assert!(reason.contains("version late failed") && reason.contains("panicked"), "{reason}");
    assert!(status.active.starts_with("stock-stats@0.1.0#"), "{}", status.active);
    assert!(dead.is_empty(), "nothing is dead-lettered when the previous version takes over");

    // Probation over at its first commit: the failure is contained as usual.
    let (status, dead) = fail_after_commits(0)?;
    assert_eq!(status.active, "late", "{:#?}", status.history);
    assert!(status.history.iter().all(|e| e.rolled_back.is_none()), "{:#?}", status.history);
    assert_eq!(dead.len(), 1, "the trade the version fails on is dead-lettered");
    assert!(dead[0].headers["weir.error"].contains("panicked"), "{:?}", dead[0].headers);
    Ok(())
}
