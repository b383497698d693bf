//! Two merged topics on the real broker: `trade-merge` reads the trade feeds of
//! two exchanges as one stream (one sub-topology, a task per partition reading
//! that partition of both). Checked against a recomputation from both inputs,
//! across two hosts sharing the tasks, a SIGKILL mid-stream and a restart on an
//! empty state directory: every large trade of either feed written exactly once,
//! every minute's totals exact, every bad record dead-lettered exactly once
//! naming the topic it came from. Topics that cannot be merged are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::support::*;
use crate::topologies::{counter, metrics_text, strings, topology_args};

const PARTITIONS: i32 = 3;
const TICKERS: usize = 10;
const START: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;
/// What trade-merge calls large.
const LARGE: u64 = 100;

#[derive(Debug, Clone, Deserialize)]
struct Trade {
    #[serde(rename = "type")]
    side: String,
    ticker: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct MinuteVolume {
    ticker: String,
    window_start: i64,
    window_end: i64,
    trades: u64,
    shares: u64,
}

/// One feed's records: trades over ten minutes in a shuffled order (grace is an
/// hour, so none is late however the two feeds interleave), some of an unknown
/// side (filtered out), and every 97th value not a trade at all.
fn feed(seed: u64, count: usize) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let ticker = format!("T{:02}", rng.random_range(0..TICKERS));
            let ts = START + rng.random_range(0..10 * MINUTE);
            let value = if i % 97 == 13 {
                format!(r#"{{"type":"ASK","ticker":"{ticker}""#)
            } else {
                let side = ["ASK", "BID", "ASK", "BID", "SWAP"][rng.random_range(0..5)];
                let size =
                    if rng.random_bool(0.3) { rng.random_range(LARGE..1_000) } else { rng.random_range(1..LARGE) };
                format!(
                    r#"{{"type":"{side}","ticker":"{ticker}","price":{}.25,"size":{size}}}"#,
                    rng.random_range(1..500)
                )
            };
            (Some(ticker.into_bytes()), Some(value.into_bytes()), ts)
        })
        .collect()
}

/// (trades, shares) per (ticker, minute start).
type Totals = BTreeMap<(String, i64), (u64, u64)>;
/// How often each large trade (ticker, timestamp, side, size) occurs.
type Large = BTreeMap<(String, i64, String, u64), usize>;
/// (topic, partition, offset) of records that are no trade.
type Bad = Vec<(String, i32, i64)>;

/// What both feeds say: the large known trades as (ticker, timestamp, side,
/// size) with how often each occurs, the totals per (ticker, minute), and the
/// (topic, partition, offset) of every record that is no trade.
fn recompute(feeds: &[(&str, &[Record])]) -> (Large, Totals, Bad) {
    let (mut large, mut totals, mut bad) = (BTreeMap::new(), Totals::new(), Vec::new());
    for (topic, records) in feeds {
        for r in records.iter() {
            let Ok(t) = serde_json::from_slice::<Trade>(r.value.as_deref().unwrap_or_default()) else {
                bad.push((topic.to_string(), r.partition, r.offset));
                continue;
            };
            if t.side != "ASK" && t.side != "BID" {
                continue;
            }
            if t.size >= LARGE {
                *large.entry((t.ticker.clone(), r.timestamp, t.side.clone(), t.size)).or_default() += 1;
            }
            let minute = r.timestamp.div_euclid(MINUTE) * MINUTE;
            let e = totals.entry((t.ticker, minute)).or_default();
            e.0 += 1;
            e.1 += t.size;
        }
    }
    bad.sort();
    (large, totals, bad)
}

/// `args` with the instance id `id` (hosts of one application need their own).
fn as_instance(mut args: Vec<String>, id: &str) -> Vec<String> {
    if let Some(at) = args.iter().position(|a| a == "--instance-id") {
        args[at + 1] = id.to_owned();
    }
    args
}

#[test]
fn two_merged_feeds_are_exact_across_two_hosts_a_sigkill_and_an_empty_state_dir() -> Result<()> {
    let app = unique("merge");
    let (east, west) = (format!("{app}-east"), format!("{app}-west"));
    let (large, volume, dead) = (format!("{app}-large"), format!("{app}-volume"), format!("{app}-dead"));
    create_topic(&east, PARTITIONS)?;
    create_topic(&west, PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let topics = [
        ("trades-east", east.as_str()),
        ("trades-west", west.as_str()),
        ("large-trades", large.as_str()),
        ("merged-volume", volume.as_str()),
    ];
    let args = |state: &str, instance: &str| -> Result<Vec<String>> {
        let mut args = topology_args("trade-merge", &app, &topics, &dir.path().join(state))?;
        args.extend(strings(&["--dead-letter-topic", &dead]));
        Ok(as_instance(args, instance))
    };
    // The west feed is smaller: the two inputs of a task are not in step.
    let (east_records, west_records) = (feed(0xea57, 6_000), feed(0x3e57, 3_500));
    let thirds = |n: usize| (n / 3, 2 * n / 3, n);
    let ((e1, e2, e3), (w1, w2, w3)) = (thirds(east_records.len()), thirds(west_records.len()));

    produce(&east, &east_records[..e1])?;
    produce(&west, &west_records[..w1])?;
    let mut first = spawn_weir(&args("a", "merge-a")?, &log)?;
    await_caught_up(&app, &east, &mut first, Duration::from_secs(120))?;
    await_caught_up(&app, &west, &mut first, Duration::from_secs(120))?;
    // A second host joins (the tasks are shared: each moves with its partition
    // of both feeds), both feeds go on, and the first host is SIGKILLed once
    // some of the new records are committed.
    let mut second = spawn_weir(&args("b", "merge-b")?, &log)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter(&metrics_text(&mut second)?, "tasks", &app).unwrap_or(0.0) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the second host got no task");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (east_middle, west_middle) = (east_records[e1..e2].to_vec(), west_records[w1..w2].to_vec());
    let (east_topic, west_topic) = (east.clone(), west.clone());
    let producer = std::thread::spawn(move || -> Result<()> {
        produce(&east_topic, &east_middle)?;
        produce(&west_topic, &west_middle)
    });
    await_committed_at_least(&app, &east, PARTITIONS, e1 as i64 + 1, &mut first)?;
    first.kill()?;
    producer.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    // It comes back under its identity on an empty state directory: its tasks'
    // minutes come back from the changelog, the offsets of both feeds from the
    // group.
    let mut first = spawn_weir(&args("c", "merge-a")?, &log)?;
    produce(&west, &west_records[w2..w3])?;
    produce(&east, &east_records[e2..e3])?;
    await_caught_up(&app, &east, &mut first, Duration::from_secs(180))?;
    await_caught_up(&app, &west, &mut first, Duration::from_secs(180))?;
    assert!(second.exited()?.is_none(), "the second host must still run");
    terminate(&mut first)?;
    terminate(&mut second)?;
    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restart must restore the minutes from the changelog:\n{text}");

    let (east_in, west_in) = (read_all(&east)?, read_all(&west)?);
    assert_eq!((east_in.len(), west_in.len()), (east_records.len(), west_records.len()));
    let (want_large, want_totals, want_bad) = recompute(&[(east.as_str(), &east_in), (west.as_str(), &west_in)]);
    assert!(want_large.len() > 1_000 && want_totals.len() > TICKERS * 9, "the feeds must make work");

    let mut got_large = Large::new();
    for r in read_all(&large)? {
        let t: Trade = serde_json::from_slice(r.value.as_deref().unwrap_or_default()).context("large-trades value")?;
        assert_eq!(r.key.as_deref(), Some(t.ticker.as_bytes()), "the key is the ticker");
        *got_large.entry((t.ticker, r.timestamp, t.side, t.size)).or_default() += 1;
    }
    assert_eq!(got_large, want_large, "each large trade of either feed exactly once");

    let mut got_totals = Totals::new();
    for r in read_all(&volume)? {
        let v: MinuteVolume =
            serde_json::from_slice(r.value.as_deref().unwrap_or_default()).context("merged-volume value")?;
        assert_eq!(v.window_end - v.window_start, MINUTE, "{v:?}");
        got_totals.insert((v.ticker, v.window_start), (v.trades, v.shares));
    }
    assert_eq!(got_totals, want_totals, "the last totals per (ticker, minute)");

    let mut got_bad = Bad::new();
    for letter in read_all(&dead)? {
        let header = |name: &str| letter.headers.get(name).cloned().unwrap_or_default();
        assert_eq!(header("weir.node"), "trades", "{letter:?}");
        got_bad.push((
            header("weir.source.topic"),
            header("weir.source.partition").parse()?,
            header("weir.source.offset").parse()?,
        ));
    }
    got_bad.sort();
    assert_eq!(got_bad, want_bad, "each bad record dead-lettered once, naming its topic, partition and offset");
    Ok(())
}

/// Merged topics that are not co-partitioned, or one topic for both feeds: the
/// pipeline is refused at start, saying why.
#[test]
fn topics_that_cannot_be_merged_are_refused_at_start() -> Result<()> {
    let app = unique("merge-refused");
    let (east, west) = (format!("{app}-east"), format!("{app}-west"));
    create_topic(&east, 3)?;
    create_topic(&west, 2)?;
    let dir = tempfile::tempdir()?;
    for (name, west_topic, says) in [
        ("counts", west.as_str(), format!("read with {east} (3 partitions)")),
        ("twice", east.as_str(), "two sources would read it".to_owned()),
    ] {
        let log = dir.path().join(format!("{name}.log"));
        let topics = [("trades-east", east.as_str()), ("trades-west", west_topic)];
        let args = topology_args("trade-merge", &format!("{app}-{name}"), &topics, &dir.path().join(name))?;
        let mut weir = spawn_weir(&args, &log)?;
        let status = wait_exit(&mut weir, Duration::from_secs(60))?;
        let text = std::fs::read_to_string(&log)?;
        assert!(!status.success() && text.contains(&says), "{name}: {status}\n{text}");
    }
    Ok(())
}
