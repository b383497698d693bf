//! Stock-stats on the real broker: exact against an independent recomputation,
//! also when the host is killed with SIGKILL mid-stream and restarted.

use std::time::Duration;

use anyhow::Result;

use std::collections::BTreeMap;

use crate::support::*;

type WindowMap = BTreeMap<(String, i64), WindowStats>;

const PARTITIONS: i32 = 4;
const TICKERS: usize = 50;
const GRACE_MS: i64 = 2_000;
const DISORDER_MS: u64 = 1_500;

struct Run {
    app: String,
    input: String,
    output: String,
    dir: tempfile::TempDir,
}

impl Run {
    fn new(name: &str) -> Result<Self> {
        let app = unique(name);
        let run = Self { input: format!("{app}-trades"), output: format!("{app}-out"), app, dir: tempfile::tempdir()? };
        create_topic(&run.input, PARTITIONS)?;
        Ok(run)
    }

    fn args(&self, guarantee: &str, state: &str) -> Vec<String> {
        [
            "--plugin",
            plugin("stock-stats").map(|p| p.display().to_string()).unwrap_or_default().as_str(),
            "--application-id",
            &self.app,
            "--input-topic",
            &self.input,
            "--output-topic",
            &self.output,
            "--processing-guarantee",
            guarantee,
            "--grace-ms",
            &GRACE_MS.to_string(),
            "--state-dir",
            &self.dir.path().join(state).display().to_string(),
            "--instance-id",
            "test-instance",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("weir.log")
    }

    fn check(&self) -> Result<()> {
        let trades = read_all(&self.input)?;
        let want = recompute(&trades, GRACE_MS);
        assert!(want.len() > 1000, "the recomputation should cover many windows, got {}", want.len());
        let got = last_results(&read_all(&self.output)?)?;
        assert_same(&got, &want);
        Ok(())
    }
}

#[test]
fn exactly_once_output_equals_independent_recomputation() -> Result<()> {
    let run = Run::new("eos")?;
    gen_trades(&run.input, 100_000, TICKERS, PARTITIONS, DISORDER_MS, 0)?;
    let mut weir = spawn_weir(&run.args("exactly_once", "state"), &run.log())?;
    await_caught_up(&run.app, &run.input, &mut weir, Duration::from_secs(300))?;
    terminate(&mut weir)?;
    run.check()
}

#[test]
fn at_least_once_without_failures_is_also_exact() -> Result<()> {
    let run = Run::new("alo")?;
    gen_trades(&run.input, 100_000, TICKERS, PARTITIONS, DISORDER_MS, 0)?;
    let mut weir = spawn_weir(&run.args("at_least_once", "state"), &run.log())?;
    await_caught_up(&run.app, &run.input, &mut weir, Duration::from_secs(300))?;
    terminate(&mut weir)?;
    run.check()
}

/// Kills the host three times while trades are still arriving. The second restart
/// starts from an empty state directory, so its state can only come from the
/// changelog. Any lost or repeated update would show in the comparison.
#[test]
fn sigkill_three_times_mid_stream_stays_exact() -> Result<()> {
    let run = Run::new("kill")?;
    let total: u64 = 120_000;
    let producer = {
        let input = run.input.clone();
        std::thread::spawn(move || gen_trades(&input, total, TICKERS, PARTITIONS, DISORDER_MS, 15_000))
    };
    let states = ["state-a", "state-a", "state-b", "state-b"];
    let thresholds = [total as i64 / 5, total as i64 * 2 / 5, total as i64 * 3 / 5];
    let mut weir = spawn_weir(&run.args("exactly_once", states[0]), &run.log())?;
    for (i, threshold) in thresholds.iter().enumerate() {
        await_committed_at_least(&run.app, &run.input, PARTITIONS, *threshold, &mut weir)?;
        weir.kill()?; // SIGKILL
        weir = spawn_weir(&run.args("exactly_once", states[i + 1]), &run.log())?;
    }
    producer.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    await_caught_up(&run.app, &run.input, &mut weir, Duration::from_secs(300))?;
    terminate(&mut weir)?;
    let log = std::fs::read_to_string(run.log())?;
    let restored = restored_records(&log);
    assert!(restored > 0, "a restart on an empty state directory must restore from the changelog:\n{log}");
    run.check()
}

/// Runs a stream, crashes the host after it flushed a commit's output and changelog
/// but before it committed, restarts it, and returns the output and the
/// recomputation.
fn crash_between_flush_and_commit(guarantee: &str) -> Result<(WindowMap, WindowMap)> {
    let run = Run::new(&format!("crash-{guarantee}"))?;
    gen_trades(&run.input, 60_000, TICKERS, PARTITIONS, DISORDER_MS, 0)?;
    // Crash at the first commit covering half the input: that commit's output and
    // changelog are flushed, its offsets are not committed.
    let hook = [("WEIR_TEST_CRASH_AFTER_FLUSH", "30000")];
    let mut weir = spawn_weir_with_env(&run.args(guarantee, "state"), &run.log(), &hook)?;
    let status = wait_exit(&mut weir, Duration::from_secs(120))?;
    assert!(!status.success(), "the crash hook must have fired, but weir exited with {status}");
    let mut weir = spawn_weir(&run.args(guarantee, "state"), &run.log())?;
    await_caught_up(&run.app, &run.input, &mut weir, Duration::from_secs(300))?;
    terminate(&mut weir)?;
    let want = recompute(&read_all(&run.input)?, GRACE_MS);
    let got = last_results(&read_all(&run.output)?)?;
    Ok((got, want))
}

/// Exactly-once: the flushed records belonged to a transaction that never
/// committed, so the restarted host redoes that work once.
#[test]
fn exactly_once_survives_a_crash_between_flush_and_commit() -> Result<()> {
    let (got, want) = crash_between_flush_and_commit("exactly_once")?;
    assert_same(&got, &want);
    Ok(())
}

/// The control experiment: at-least-once restores the flushed changelog and then
/// reprocesses the same records, counting them twice. If this ever matched the
/// recomputation, the crash test above would prove nothing.
#[test]
fn at_least_once_double_counts_after_the_same_crash() -> Result<()> {
    let (got, want) = crash_between_flush_and_commit("at_least_once")?;
    let overcounted = want.iter().filter(|(k, w)| got.get(*k).is_some_and(|g| g.count_trades > w.count_trades)).count();
    assert!(
        overcounted > 0,
        "at-least-once was expected to double count after the crash, but matched on all {} windows",
        want.len()
    );
    Ok(())
}

/// `emit = final`: each window is written once, when stream time passes its end
/// plus grace, with its complete result; windows still open are not written.
#[test]
fn emit_final_writes_each_closed_window_exactly_once() -> Result<()> {
    let run = Run::new("final")?;
    gen_trades(&run.input, 40_000, TICKERS, PARTITIONS, DISORDER_MS, 0)?;
    let mut args = run.args("exactly_once", "state");
    args.extend(["--emit".to_string(), "final".to_string()]);
    let mut weir = spawn_weir(&args, &run.log())?;
    await_caught_up(&run.app, &run.input, &mut weir, Duration::from_secs(300))?;
    terminate(&mut weir)?;

    let trades = read_all(&run.input)?;
    // Stream time per partition at the end, and the partition of each ticker.
    let mut stream_time: BTreeMap<i32, i64> = BTreeMap::new();
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for t in &trades {
        let st = stream_time.entry(t.partition).or_insert(i64::MIN);
        *st = (*st).max(t.timestamp);
        partition_of.insert(String::from_utf8_lossy(t.key.as_deref().unwrap_or_default()).into_owned(), t.partition);
    }
    let want: WindowMap = recompute(&trades, GRACE_MS)
        .into_iter()
        .filter(|((ticker, _), w)| w.window_end <= stream_time[&partition_of[ticker]] - GRACE_MS)
        .collect();
    let output = read_all(&run.output)?;
    let mut writes: BTreeMap<(String, i64), usize> = BTreeMap::new();
    for record in &output {
        let w: WindowStats = serde_json::from_slice(record.value.as_deref().unwrap_or_default())?;
        *writes.entry((w.ticker, w.window_start)).or_default() += 1;
    }
    let repeated: Vec<_> = writes.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "final mode wrote some windows more than once: {repeated:?}");
    assert_same(&last_results(&output)?, &want);
    Ok(())
}
