//! A failure in any phase of a commit leaves every task at its last commit:
//! nothing is lost, nothing doubled. For each phase — rendering, sending the
//! changelog, flushing, adding the offsets, committing, losing the commit's answer
//! (it went through), writing the store after the commit — a failure is injected
//! (`WEIR_TEST_FAIL`); the host recovers by itself, is stopped, more trades arrive,
//! and a healthy restart brings the output to the independent recomputation.
//! A rendering failure under `on_failure = pause` stops the pipeline instead, with
//! nothing of the failed commit committed, and a restart finishes the job.

use std::time::Duration;

use anyhow::Result;

use crate::support::*;

const PARTITIONS: i32 = 2;
const GRACE_MS: i64 = 2_000;
const TRADES: u64 = 12_000;

fn args(app: &str, input: &str, dir: &std::path::Path) -> Result<Vec<String>> {
    let mut args = pipeline_args("stock-stats", app, input, &format!("{app}-out"), &dir.join("state"))?;
    args.extend(["--grace-ms".into(), GRACE_MS.to_string(), "--instance-id".into(), format!("{app}-h")]);
    Ok(args)
}

/// Runs one phase's scenario and returns what its log said.
fn phase(name: &str, failures: &str) -> Result<String> {
    let app = unique(&format!("fail-{name}"));
    let input = format!("{app}-trades");
    create_topic(&input, PARTITIONS)?;
    gen_trades(&input, TRADES, 20, PARTITIONS, 1_000, 0)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let hook = format!("{name}:{failures}");
    let mut weir = spawn_weir_with_env(&args(&app, &input, dir.path())?, &log, &[("WEIR_TEST_FAIL", &hook)])?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;
    // More trades, and a restart without injected failures.
    gen_trades_at(&input, TRADES, 20, PARTITIONS, 1_000, 0, GEN_START_MS + 10_000)?;
    let mut weir = spawn_weir(&args(&app, &input, dir.path())?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;
    let want = recompute(&read_all(&input)?, GRACE_MS);
    assert!(want.len() > 200, "{name}: the recomputation should cover many windows, got {}", want.len());
    assert_same(&last_results(&read_all(&format!("{app}-out"))?)?, &want);
    assert!(read_all(&format!("{app}-dlq"))?.is_empty(), "{name}: nothing is dead-lettered");
    Ok(std::fs::read_to_string(&log)?)
}

#[test]
fn a_failure_in_any_commit_phase_loses_and_doubles_nothing() -> Result<()> {
    let phases = [
        ("render", "2", "rendering failed"),
        ("changelog", "3", "injected failure (changelog)"),
        ("flush", "3", "injected failure (flush)"),
        ("offsets", "3", "injected failure (offsets)"),
        ("commit", "3", "injected failure (commit)"),
        ("commit-ack", "2", "outcome is unknown"),
        ("store", "2", "store write after a commit failed"),
    ];
    let logs: Vec<Result<String>> = std::thread::scope(|s| {
        let runs: Vec<_> = phases.iter().map(|(name, count, _)| s.spawn(move || phase(name, count))).collect();
        runs.into_iter().map(|r| r.join().unwrap_or_else(|_| Err(anyhow::anyhow!("phase panicked")))).collect()
    });
    for ((name, _, needle), log) in phases.iter().zip(logs) {
        let log = log?;
        assert!(log.contains("injecting a failure"), "{name}: the failure must have been injected:\n{log}");
        assert!(log.contains(needle), "{name}: expected {needle:?} in the log:\n{log}");
    }
    Ok(())
}

/// Under `on_failure = pause`, a window that keeps failing to render stops the
/// pipeline: it exits non-zero with the reason, commits nothing of that commit
/// (or after it), and a restart with a healthy plugin finishes exactly.
#[test]
fn a_pipeline_stopped_by_a_commit_failure_commits_nothing_more() -> Result<()> {
    let app = unique("fail-stop");
    let input = format!("{app}-trades");
    create_topic(&input, PARTITIONS)?;
    gen_trades(&input, TRADES, 20, PARTITIONS, 1_000, 0)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[limits]\non_failure = \"pause\"\nretries = 1\n")?;
    let mut stopping = args(&app, &input, dir.path())?;
    stopping.extend(["--config".into(), config.display().to_string()]);
    // Every render fails from the start: no commit can ever complete.
    let mut weir = spawn_weir_with_env(&stopping, &log, &[("WEIR_TEST_FAIL", "render")])?;
    let status = wait_exit(&mut weir, Duration::from_secs(120))?;
    assert!(!status.success(), "a pipeline stopped by a failure exits non-zero");
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("on_failure = pause") && text.contains("injected failure (render)"), "{text}");
    let committed = committed(&app, &input, PARTITIONS)?;
    assert!(committed.values().all(|o| *o <= 0), "nothing may be committed: {committed:?}");
    assert!(read_all(&format!("{app}-out"))?.is_empty(), "no result of the failed commits may be visible");
    // Healthy again: everything is processed once.
    let mut weir = spawn_weir(&args(&app, &input, dir.path())?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(180))?;
    terminate(&mut weir)?;
    assert_same(&last_results(&read_all(&format!("{app}-out"))?)?, &recompute(&read_all(&input)?, GRACE_MS));
    Ok(())
}
