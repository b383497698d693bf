//! The soak of several hosts (run by `scripts/chaos`, ignored by the test
//! command for its length): a stream of a million trades into stock-stats on
//! three hosts with a standby per task, one host SIGKILLed every one to three
//! seconds — fifty times — and started again at once (every third time on an
//! emptied state directory). At the end every window equals the independent
//! recomputation. `WEIR_SOAK_TRADES` and `WEIR_SOAK_KILLS` change the sizes;
//! `WEIR_SOAK_SEED` replays a run's choices.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

const PARTITIONS: i32 = 8;
const HOSTS: usize = 3;
const GRACE_MS: i64 = 2_000;

#[test]
#[ignore = "long: run by scripts/chaos"]
fn fifty_sigkills_over_a_million_trades_on_three_hosts_stay_exact() -> Result<()> {
    let trades: u64 = std::env::var("WEIR_SOAK_TRADES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let kills: usize = std::env::var("WEIR_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let seed: u64 = std::env::var("WEIR_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("soak: {trades} trades, {kills} SIGKILLs, WEIR_SOAK_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let app = unique("soak");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let state = |slot: usize| dir.path().join(format!("state-{slot}"));
    let args = |slot: usize| -> Result<Vec<String>> {
        let mut args = pipeline_args("stock-stats", &app, &input, &output, &state(slot))?;
        args.extend(
            ["--grace-ms", &GRACE_MS.to_string(), "--instance-id", &format!("{app}-{slot}")]
                .into_iter()
                .chain(["--num-standby-replicas", "1", "--session-timeout-ms", "1000"])
                .map(String::from),
        );
        Ok(args)
    };
    let log = |slot: usize| dir.path().join(format!("host-{slot}.log"));
    let mut hosts: Vec<Weir> = (0..HOSTS).map(|s| spawn_weir(&args(s)?, &log(s))).collect::<Result<_>>()?;
    // The stream: the million trades over about as long as the kills take.
    let rate = (trades / (kills as u64 * 2).max(1)).max(1_000);
    let mut generator = gen_trades_command(&bootstrap(), &input, trades, 500, PARTITIONS, 1_000, rate, GEN_START_MS)?
        .env("RUST_LOG", "warn")
        .spawn()?;
    let started = Instant::now();
    for kill in 1..=kills {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_000..3_000)));
        let slot = rng.random_range(0..HOSTS);
        for (s, host) in hosts.iter_mut().enumerate() {
            if let Some(status) = host.exited()? {
                return host.fail(format!("host {s} exited by itself with {status} (kill {kill}, seed {seed})"));
            }
        }
        hosts[slot].kill()?;
        if kill % 3 == 0 {
            std::fs::remove_dir_all(state(slot))?;
        }
        hosts[slot] = spawn_weir(&args(slot)?, &log(slot))?;
        eprintln!("soak: kill {kill}/{kills}: host {slot} at {:.0} s", started.elapsed().as_secs_f64());
    }
    let status = generator.wait()?;
    anyhow::ensure!(status.success(), "the generator failed: {status}");
    await_caught_up(&app, &input, &mut hosts[0], Duration::from_secs(600))?;
    for host in &mut hosts {
        terminate(host)?;
    }
    let input_records = read_all(&input)?;
    anyhow::ensure!(input_records.len() as u64 == trades, "{} trades in the topic", input_records.len());
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&input_records, GRACE_MS));
    eprintln!("soak: exact after {kills} SIGKILLs over {trades} trades in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
