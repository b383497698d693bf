//! Standby replicas on the real broker: a host keeps warm copies of another
//! host's stores by tailing their changelogs, and when that host is killed its
//! tasks go to the warm copy, which restores only what it had not read yet
//! (after fencing the killed host's producer).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use weir::admin::client::Client;

use crate::support::*;

const PARTITIONS: i32 = 4;
const GRACE_MS: i64 = 2_000;

/// The changelog topics of application `app`, and their records in all.
fn changelog_records(app: &str) -> Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    let mut total = 0;
    for topic in metadata.topics() {
        let name = topic.name();
        if name.starts_with(&format!("{app}-")) && name.ends_with("-changelog") {
            total += end_offsets(name)?.values().map(|&o| o as u64).sum::<u64>();
        }
    }
    Ok(total)
}

/// This host's tasks from its admin API: (task, role, lag).
fn tasks(admin: &Client, app: &str) -> Result<Vec<(String, String, Option<i64>)>> {
    let status: serde_json::Value = serde_json::from_str(&admin.get(&format!("/v1/pipelines/{app}"))?)?;
    let tasks = status["group"]["tasks"].as_array().context("no group tasks in the status")?;
    Ok(tasks
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap_or("").to_owned(),
                t["role"].as_str().unwrap_or("").to_owned(),
                t["lag"].as_i64(),
            )
        })
        .collect())
}

#[test]
fn a_killed_hosts_tasks_go_to_their_warm_standby_which_restores_only_what_it_had_not_read() -> Result<()> {
    let app = unique("standby");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTITIONS)?;
    // Many tickers: every commit writes many changelog records.
    gen_trades(&input, 40_000, 2_000, PARTITIONS, 1_000, 0)?;
    let dir = tempfile::tempdir()?;
    let args = |slot: &str| -> Result<Vec<String>> {
        let mut args = pipeline_args("stock-stats", &app, &input, &output, &dir.path().join(slot))?;
        args.extend(
            [
                "--grace-ms",
                &GRACE_MS.to_string(),
                "--instance-id",
                &format!("{app}-{slot}"),
                "--num-standby-replicas",
                "1",
                "--session-timeout-ms",
                "1000",
            ]
            .map(String::from),
        );
        Ok(args)
    };
    let mut a = spawn_weir(&args("a")?, &dir.path().join("a.log"))?;
    let mut b = spawn_weir(&args("b")?, &dir.path().join("b.log"))?;
    let (admin_a, admin_b) = (Client::new(&a.admin_url()?, None), Client::new(&b.admin_url()?, None));
    await_caught_up(&app, &input, &mut a, Duration::from_secs(180))?;
    // Both hosts run tasks, and each keeps the other's warm.
    let deadline = Instant::now() + Duration::from_secs(120);
    let moved: Vec<String> = loop {
        let (on_a, on_b) = (tasks(&admin_a, &app)?, tasks(&admin_b, &app)?);
        let active_a: Vec<String> = on_a.iter().filter(|t| t.1 == "active").map(|t| t.0.clone()).collect();
        // A standby is warm once it has read up to the changelog's end (the
        // last offset is a transaction's commit marker).
        let warm_on_b =
            |task: &String| on_b.iter().any(|t| &t.0 == task && t.1 == "standby" && t.2.is_some_and(|l| l <= 1));
        let all_active = on_a.iter().chain(&on_b).filter(|t| t.1 == "active").count();
        if all_active == PARTITIONS as usize && !active_a.is_empty() && active_a.iter().all(warm_on_b) {
            break active_a;
        }
        if Instant::now() > deadline {
            bail!("the standbys never caught up: a {on_a:?} b {on_b:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let changelog = changelog_records(&app)?;
    assert!(changelog > 10_000, "the test needs a large changelog, has {changelog}");
    let b_log_from = std::fs::metadata(&b.log)?.len() as usize;
    a.kill()?;
    // The killed host's tasks run on the other, restored from its warm copies.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let on_b = tasks(&admin_b, &app)?;
        if moved.iter().all(|m| on_b.iter().any(|t| &t.0 == m && t.1 == "active")) {
            break;
        }
        if Instant::now() > deadline {
            return b.fail(format!("the killed host's tasks {moved:?} did not move: {on_b:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&b.log)?;
    let restored = restored_records(&log[b_log_from..]);
    // The host taking the tasks fenced the killed one's producer (a transaction
    // it left open would otherwise hold the restore until it timed out).
    let fenced = format!("fenced a host that left the group pipeline={app} transactional_id={app}-{app}-a");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&b.log)?.contains(&fenced) {
        if Instant::now() > deadline {
            return b.fail(format!("no {fenced:?} in the log"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        restored * 100 < changelog,
        "the warm standby restored {restored} of {changelog} changelog records: not only the tail"
    );
    // Exactly once through it all.
    gen_trades_at(&input, 5_000, 2_000, PARTITIONS, 1_000, 0, GEN_START_MS + 3_600_000)?;
    await_caught_up(&app, &input, &mut b, Duration::from_secs(180))?;
    terminate(&mut b)?;
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&read_all(&input)?, GRACE_MS));
    Ok(())
}
