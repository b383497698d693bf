//! Plugins written as topologies with the SDK's DSL, on the real broker. Each is
//! checked against an independent recomputation of what its module doc says it
//! computes:
//! - stock-stats in the DSL gives exactly the shorthand's output, also across a
//!   SIGKILL and a restart from the changelog;
//! - a map/filter topology splits trades into two sinks, exactly once across a
//!   crash between flush and commit and a SIGKILL, and dead-letters what does not
//!   decode, naming its operator;
//! - daily stats per ticker and UTC day over three days, with records late within
//!   and beyond the grace period;
//! - late events within grace are counted (and their window's count re-emitted),
//!   those beyond are dropped and counted in the metrics;
//! - `weir describe` shows a topology, and names the node of one it cannot run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use weir::admin::client::Client;

use crate::support::*;

pub(crate) fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `weir run` flags for a topology plugin under exactly-once, its logical topics
/// mapped with `--topic logical=real`.
pub(crate) fn topology_args(
    plugin_name: &str,
    app: &str,
    topics: &[(&str, &str)],
    state: &Path,
) -> Result<Vec<String>> {
    let mut args = strings(&[
        "--plugin",
        &plugin(plugin_name)?.display().to_string(),
        "--application-id",
        app,
        "--state-dir",
        &state.display().to_string(),
        "--processing-guarantee",
        "exactly_once",
        "--instance-id",
        "test-instance",
    ]);
    for (logical, real) in topics {
        args.extend(["--topic".to_string(), format!("{logical}={real}")]);
    }
    Ok(args)
}

/// Offsets `group` has committed on `topic`, summed.
fn committed_sum(group: &str, topic: &str, partitions: i32) -> Result<i64> {
    Ok(committed(group, topic, partitions)?.values().filter(|o| **o > 0).sum())
}

/// The pipeline's metrics, from the admin API of a running `weir run`.
pub(crate) fn metrics_text(weir: &mut Weir) -> Result<String> {
    let url = weir.admin_url()?;
    Client::new(&url, None).get("/v1/metrics").map_err(|e| anyhow::anyhow!("GET /v1/metrics: {e}"))
}

/// A counter of `pipeline` that must be present.
pub(crate) fn counter(text: &str, name: &str, pipeline: &str) -> Result<f64> {
    metric(text, name, pipeline).with_context(|| format!("no weir_{name} for pipeline {pipeline} in:\n{text}"))
}

fn utf8(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

// ---------------------------------------------------------------------------------
// 1. stock-stats in the DSL

const STATS_PARTITIONS: i32 = 4;
const STATS_GRACE_MS: i64 = 2_000;

/// The last value per (ticker, window start) of a stock-stats output, as bytes.
fn last_bytes(output: &[Record]) -> Result<BTreeMap<(String, i64), Vec<u8>>> {
    #[derive(Deserialize)]
    struct Head {
        ticker: String,
        window_start: i64,
    }
    let mut out = BTreeMap::new();
    for record in output {
        let value = record.value.clone().context("output record without a value")?;
        let head: Head = serde_json::from_slice(&value)?;
        out.insert((head.ticker, head.window_start), value);
    }
    Ok(out)
}

/// Runs stock-stats-dsl on generated, disordered trades over several partitions,
/// kills it with SIGKILL while trades still arrive, restarts it on an empty state
/// directory (so its windows come back from the changelog), and compares the last
/// result of every window with the recomputation; then runs the shorthand
/// (`plugins/stock-stats`) on the same input and compares the bytes.
#[test]
fn stock_stats_in_the_dsl_gives_the_shorthands_exact_output() -> Result<()> {
    let app = unique("dsl-stats");
    let input = format!("{app}-trades");
    let output = format!("{app}-out");
    create_topic(&input, STATS_PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let args = |state: &str| -> Result<Vec<String>> {
        let topics = [("trades", input.as_str()), ("stockstats-output", output.as_str())];
        let mut args = topology_args("stock-stats-dsl", &app, &topics, &dir.path().join(state))?;
        args.extend(strings(&["--grace-ms", &STATS_GRACE_MS.to_string()]));
        Ok(args)
    };

    let total: u64 = 24_000;
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || gen_trades(&input, total, 30, STATS_PARTITIONS, 1_500, 4_000))
    };
    let mut weir = spawn_weir(&args("state-a")?, &log)?;
    await_committed_at_least(&app, &input, STATS_PARTITIONS, total as i64 / 3, &mut weir)?;
    weir.kill()?; // SIGKILL
    let at_kill = committed_sum(&app, &input, STATS_PARTITIONS)?;
    assert!(at_kill < total as i64, "the kill came after the whole input was committed ({at_kill} of {total})");
    let mut weir = spawn_weir(&args("state-b")?, &log)?;
    producer.join().map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    terminate(&mut weir)?;
    let text = std::fs::read_to_string(&log)?;
    let restarted = text.get(weir.from..).unwrap_or_default();
    assert!(restored_records(restarted) > 0, "the restart on an empty state directory restored nothing:\n{restarted}");

    let trades = read_all(&input)?;
    let want = recompute(&trades, STATS_GRACE_MS);
    assert!(want.len() > 500, "the recomputation should cover many windows, got {}", want.len());
    let dsl = read_all(&output)?;
    assert_same(&last_results(&dsl)?, &want);

    // The shorthand on the same input, without failures: the same bytes.
    let short_app = format!("{app}-shorthand");
    let short_output = format!("{app}-shorthand-out");
    let mut short_args = pipeline_args("stock-stats", &short_app, &input, &short_output, &dir.path().join("short"))?;
    short_args.extend(strings(&["--grace-ms", &STATS_GRACE_MS.to_string()]));
    let mut short = spawn_weir(&short_args, &dir.path().join("shorthand.log"))?;
    await_caught_up(&short_app, &input, &mut short, Duration::from_secs(120))?;
    terminate(&mut short)?;
    let (dsl, shorthand) = (last_bytes(&dsl)?, last_bytes(&read_all(&short_output)?)?);
    let differ: Vec<_> = shorthand
        .iter()
        .filter(|(k, v)| dsl.get(*k) != Some(*v))
        .map(|(k, v)| (k, utf8(Some(v)), dsl.get(k).map(|d| utf8(Some(d)))))
        .take(3)
        .collect();
    assert!(
        differ.is_empty() && dsl.len() == shorthand.len(),
        "the DSL's last values differ from the shorthand's ({} vs {} windows); (window, shorthand, dsl): {differ:#?}",
        dsl.len(),
        shorthand.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// 2. trade-filter: map and filter into two sinks

const FILTER_PARTITIONS: i32 = 3;

/// Trade-filter's input: asks and bids in the contract's shape (prices written with
/// two decimals, `10.50`), bids with fields reordered, an unknown field and an
/// integer price, trades of other types, and values that are no trade.
fn filter_inputs(count: usize) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(11);
    let tickers = ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "ORCL"];
    let start = 1_700_000_000_000i64;
    (0..count)
        .map(|i| {
            let ticker = tickers[rng.random_range(0..tickers.len())];
            let cents: u64 = rng.random_range(100..100_000);
            let price = format!("{}.{:02}", cents / 100, cents % 100);
            // Sizes around the threshold of 100, and exactly at it.
            let size: u64 = match i % 40 {
                0 => 99,
                1 => 100,
                _ => rng.random_range(1..=250),
            };
            let value = match rng.random_range(0..100) {
                0..=54 => format!(r#"{{"type":"ASK","ticker":"{ticker}","price":{price},"size":{size}}}"#),
                55..=81 => format!(r#"{{"type":"BID","ticker":"{ticker}","price":{price},"size":{size}}}"#),
                82..=86 => format!(
                    r#"{{"size":{size},"venue":"XNAS","price":{},"ticker":"{ticker}","type":"BID"}}"#,
                    cents / 100
                ),
                87..=89 => format!(r#"{{"type":"HOLD","ticker":"{ticker}","price":{price},"size":{size}}}"#),
                90..=91 => format!(r#"{{"type":"ask","ticker":"{ticker}","price":{price},"size":{size}}}"#),
                92..=93 => "{not json".to_string(),
                94..=95 => format!(r#"{{"type":"ASK","ticker":"{ticker}","size":{size}}}"#),
                96..=97 => format!(r#"{{"type":"BID","ticker":"{ticker}","price":"{price}","size":{size}}}"#),
                98 => format!(r#"{{"type":"ASK","ticker":"{ticker}","price":{price},"size":-{size}}}"#),
                _ => format!(r#"{{"type":"ASK","ticker":"{ticker}","price":{price},"size":{size}.5}}"#),
            };
            (Some(ticker.as_bytes().to_vec()), Some(value.into_bytes()), start + i as i64 * 7)
        })
        .collect()
}

/// What trade-filter writes to `large-asks`, fields in the documented order.
#[derive(Serialize)]
struct LargeAskOut<'a> {
    ticker: &'a str,
    price: f64,
    size: u64,
    notional: f64,
}

/// A trade as JSON, fields in the contract's order: what the tests produce, and
/// what trade-filter writes to `bids`.
#[derive(Serialize)]
struct TradeOut<'a> {
    #[serde(rename = "type")]
    side: &'a str,
    ticker: &'a str,
    price: f64,
    size: u64,
}

/// An output record as compared: key, value, timestamp.
type Out = (Vec<u8>, Vec<u8>, i64);

/// How many times each record occurs.
fn multiset(records: impl IntoIterator<Item = Out>) -> BTreeMap<Out, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r).or_default() += 1;
    }
    out
}

/// Asserts that `topic` holds exactly the records of `want`, each once.
fn assert_exactly(topic: &str, got: &[Record], want: &BTreeMap<Out, usize>) -> Result<()> {
    let got = multiset(
        got.iter().map(|r| (r.key.clone().unwrap_or_default(), r.value.clone().unwrap_or_default(), r.timestamp)),
    );
    let show = |(k, v, ts): &Out| format!("{} {} @{ts}", utf8(Some(k)), utf8(Some(v)));
    let missing: Vec<String> =
        want.iter().filter(|(r, n)| got.get(*r).copied().unwrap_or(0) < **n).map(|(r, _)| show(r)).take(3).collect();
    let extra: Vec<String> =
        got.iter().filter(|(r, n)| want.get(*r).copied().unwrap_or(0) < **n).map(|(r, _)| show(r)).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{topic}: {} records expected, {} distinct read\nmissing: {missing:#?}\nextra or repeated: {extra:#?}",
        want.values().sum::<usize>(),
        got.len()
    );
    Ok(())
}

/// Pattern (a): trade-filter reads paced input while it crashes between flushing a
/// commit's output and committing it, and is later killed with SIGKILL; it is
/// restarted each time. `large-asks` and `bids` must hold exactly the records the
/// module doc describes, recomputed here from the input, each once; values that
/// are no trade are dead-lettered once each, naming `sides`.
#[test]
fn a_map_filter_topology_splits_into_two_sinks() -> Result<()> {
    let app = unique("filter");
    let input = format!("{app}-trades");
    let (large, bids, dead) = (format!("{app}-large-asks"), format!("{app}-bids"), format!("{app}-dead"));
    create_topic(&input, FILTER_PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let topics = [("trades", input.as_str()), ("large-asks", large.as_str()), ("bids", bids.as_str())];
    let mut args = topology_args("trade-filter", &app, &topics, &dir.path().join("state"))?;
    args.extend(["--dead-letter-topic".to_string(), dead.clone()]);

    let records = filter_inputs(12_000);
    let total = records.len() as i64;
    let producer = {
        let input = input.clone();
        std::thread::spawn(move || -> Result<()> {
            // Paced, so that the kill below falls in the middle of the stream.
            for chunk in records.chunks(400) {
                produce(&input, chunk)?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
    };
    // First a crash with a commit's output flushed but not committed (what
    // at-least-once would repeat), then a SIGKILL at whatever point it falls.
    let crash = [("WEIR_TEST_CRASH_AFTER_FLUSH", "3000")];
    let mut weir = spawn_weir_with_env(&args, &log, &crash)?;
    let status = wait_exit(&mut weir, Duration::from_secs(60))?;
    assert!(!status.success(), "the crash hook must have fired, but weir exited with {status}");
    let mut weir = spawn_weir(&args, &log)?;
    await_committed_at_least(&app, &input, FILTER_PARTITIONS, total / 2, &mut weir)?;
    weir.kill()?; // SIGKILL
    let at_kill = committed_sum(&app, &input, FILTER_PARTITIONS)?;
    assert!(at_kill < total, "the kill came after the whole input was committed ({at_kill} of {total})");
    let mut weir = spawn_weir(&args, &log)?;
    producer.join().map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    terminate(&mut weir)?;

    // The recomputation, from the input as read back.
    let inputs = read_all(&input)?;
    assert_eq!(inputs.len() as i64, total, "the input topic holds what was produced");
    let (mut want_large, mut want_bids) = (Vec::new(), Vec::new());
    let mut want_dead: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for r in &inputs {
        let (key, value) = (r.key.clone().unwrap_or_default(), r.value.clone().unwrap_or_default());
        let trade = match serde_json::from_slice::<TradeIn>(&value) {
            Ok(trade) => trade,
            Err(e) => {
                want_dead.insert((r.partition, r.offset), format!("invalid value: {e}"));
                continue;
            }
        };
        match trade.side.as_str() {
            "ASK" if trade.size >= 100 => {
                let out = LargeAskOut {
                    ticker: &trade.ticker,
                    price: trade.price,
                    size: trade.size,
                    notional: trade.price * trade.size as f64,
                };
                want_large.push((key, serde_json::to_vec(&out)?, r.timestamp));
            }
            "BID" => {
                let out = TradeOut { side: "BID", ticker: &trade.ticker, price: trade.price, size: trade.size };
                want_bids.push((key, serde_json::to_vec(&out)?, r.timestamp));
            }
            _ => {}
        }
    }
    // The input covers every case.
    let values: std::collections::HashSet<&[u8]> = inputs.iter().filter_map(|r| r.value.as_deref()).collect();
    let reencoded = want_bids.iter().filter(|(_, v, _)| !values.contains(v.as_slice())).count();
    assert!(want_large.len() > 1000 && want_bids.len() > 1000 && want_dead.len() > 100 && reencoded > 100);

    assert_exactly("large-asks", &read_all(&large)?, &multiset(want_large))?;
    assert_exactly("bids", &read_all(&bids)?, &multiset(want_bids))?;

    let letters = read_all(&dead)?;
    let mut got_dead: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for letter in &letters {
        let at: (i32, i64) =
            (letter.headers["weir.source.partition"].parse()?, letter.headers["weir.source.offset"].parse()?);
        *got_dead.entry(at).or_default() += 1;
        let Some(reason) = want_dead.get(&at) else { bail!("a valid trade was dead-lettered: {letter:?}") };
        assert_eq!(&letter.headers["weir.error"], reason, "the reason of the dead letter at {at:?}");
        assert_eq!(letter.headers.get("weir.node").map(String::as_str), Some("sides"), "{letter:?}");
        assert_eq!(letter.headers["weir.source.topic"], input);
        let source = inputs.iter().find(|r| (r.partition, r.offset) == at).context("the source record exists")?;
        assert_eq!(letter.value, source.value, "the dead letter carries the original value");
    }
    let repeated: Vec<_> = got_dead.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let missing: Vec<_> = want_dead.keys().filter(|k| !got_dead.contains_key(*k)).take(5).collect();
    assert!(repeated.is_empty() && missing.is_empty(), "dead letters repeated: {repeated:?}; missing: {missing:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// 3. daily-stats: a tumbling day with grace 1 h

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;
/// 2023-11-14T00:00:00Z, the first day.
const D0: i64 = 1_699_920_000_000;
const DAILY_PARTITIONS: i32 = 3;

fn trade_json(side: &str, ticker: &str, price: f64, size: u64) -> Vec<u8> {
    let trade = TradeOut { side, ticker, price, size };
    serde_json::to_vec(&trade).expect("a trade encodes")
}

/// Each partition's trades over three UTC days: three tickers of its own, event
/// time advancing 1–4 minutes a trade, a third of the trades up to 30 minutes late
/// (always within grace); and asks placed on purpose just before midnight while the
/// partition is already 10 or 50 minutes into the next day (within grace), or
/// 3 hours into it (beyond grace).
fn daily_inputs(partition: i32) -> Vec<RawRecord> {
    let mut rng = StdRng::seed_from_u64(100 + partition as u64);
    let tickers: Vec<String> = (0..3).map(|i| format!("T{}{i}", partition)).collect();
    let mut cents: Vec<i64> = tickers.iter().map(|_| rng.random_range(1_000..50_000)).collect();
    let mut out: Vec<RawRecord> = Vec::new();
    let mut push = |out: &mut Vec<RawRecord>, rng: &mut StdRng, side: &str, ts: i64| {
        let t = rng.random_range(0..tickers.len());
        cents[t] = (cents[t] + rng.random_range(-40..=40)).max(100);
        let value = trade_json(side, &tickers[t], cents[t] as f64 / 100.0, rng.random_range(1..=500));
        out.push((Some(tickers[t].clone().into_bytes()), Some(value), ts));
    };
    // (offset into a day after which to place it, how long before that midnight).
    let placed = [(10 * MINUTE, 1), (50 * MINUTE, 5 * MINUTE), (3 * HOUR, 1), (3 * HOUR, 20 * MINUTE)];
    let mut done = [[false; 4]; 3];
    let mut t = D0 + rng.random_range(0..HOUR);
    while t < D0 + 3 * DAY - HOUR {
        let late = if rng.random_bool(1.0 / 3.0) { rng.random_range(0..=30 * MINUTE) } else { 0 };
        let side = if rng.random_bool(0.25) { "BID" } else { "ASK" };
        push(&mut out, &mut rng, side, (t - late).max(D0));
        let day = (t - D0) / DAY;
        for (i, (after, before)) in placed.iter().enumerate() {
            if day >= 1 && !done[day as usize][i] && t >= D0 + day * DAY + after {
                done[day as usize][i] = true;
                push(&mut out, &mut rng, "ASK", D0 + day * DAY - before);
            }
        }
        t += rng.random_range(MINUTE..=4 * MINUTE);
    }
    out
}

/// What daily-stats writes to `daily-stats`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct DailyOut {
    ticker: String,
    day_start: i64,
    min_price: f64,
    max_price: f64,
    count: u64,
    avg_price: f64,
}

/// Daily stats by (ticker, day start).
type Daily = BTreeMap<(String, i64), DailyOut>;

/// What the recomputation found besides the results.
#[derive(Debug, Default)]
struct Lateness {
    /// Asks dropped as late beyond grace.
    dropped: u64,
    /// Asks counted in a day before the one stream time was in.
    within_grace: u64,
}

/// Daily stats recomputed from the input: per partition in offset order, stream
/// time the largest timestamp so far (this record's included); an ask whose day
/// ended at or before stream time − 1 h is dropped.
fn recompute_daily(trades: &[Record]) -> Result<(Daily, Lateness)> {
    let mut sums: BTreeMap<(String, i64), (DailyOut, f64)> = BTreeMap::new();
    let mut stream_time: HashMap<i32, i64> = HashMap::new();
    let mut lateness = Lateness::default();
    for r in trades {
        let trade: TradeIn = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        let ticker = utf8(r.key.as_deref());
        let st = stream_time.entry(r.partition).or_insert(i64::MIN);
        *st = (*st).max(r.timestamp);
        if trade.side != "ASK" {
            continue;
        }
        let day_start = r.timestamp.div_euclid(DAY) * DAY;
        if day_start + DAY + HOUR <= *st {
            lateness.dropped += 1;
            continue;
        }
        if day_start < st.div_euclid(DAY) * DAY {
            lateness.within_grace += 1;
        }
        let (out, sum) = sums.entry((ticker.clone(), day_start)).or_insert_with(|| {
            let out = DailyOut {
                ticker,
                day_start,
                min_price: trade.price,
                max_price: trade.price,
                count: 0,
                avg_price: 0.0,
            };
            (out, 0.0)
        });
        out.min_price = out.min_price.min(trade.price);
        out.max_price = out.max_price.max(trade.price);
        out.count += 1;
        *sum += trade.price;
        out.avg_price = *sum / out.count as f64;
    }
    Ok((sums.into_iter().map(|(k, (out, _))| (k, out)).collect(), lateness))
}

/// Pattern (b): daily-stats over three UTC days compared, per (ticker, day), with
/// the recomputation; the asks beyond grace are dropped and counted as late. The
/// host is SIGKILLed mid-stream and its successor starts on an empty state
/// directory.
#[test]
fn daily_stats_per_stock_match_a_recomputation() -> Result<()> {
    let app = unique("daily");
    let input = format!("{app}-trades");
    let output = format!("{app}-out");
    create_topic(&input, DAILY_PARTITIONS)?;
    let inputs: Vec<Vec<RawRecord>> = (0..DAILY_PARTITIONS).map(daily_inputs).collect();
    let half = |p: usize| inputs[p].len() / 2;
    for (p, records) in inputs.iter().enumerate() {
        produce_to(&input, p as i32, &records[..half(p)])?;
    }
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let topics = [("trades", input.as_str()), ("daily-stats", output.as_str())];
    let args = |state: &str| topology_args("daily-stats", &app, &topics, &dir.path().join(state));
    let mut weir = spawn_weir(&args("a")?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let first_metrics = metrics_text(&mut weir)?;
    // The second halves arrive; the host is SIGKILLed once it committed some.
    let (topic, rest): (String, Vec<Vec<RawRecord>>) =
        (input.clone(), inputs.iter().enumerate().map(|(p, r)| r[half(p)..].to_vec()).collect());
    let producer = std::thread::spawn(move || -> Result<()> {
        for (p, records) in rest.iter().enumerate() {
            produce_to(&topic, p as i32, records)?;
        }
        Ok(())
    });
    let first_total: usize = (0..inputs.len()).map(half).sum();
    await_committed_at_least(&app, &input, DAILY_PARTITIONS, first_total as i64 + 1, &mut weir)?;
    weir.kill()?;
    producer.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    let mut weir = spawn_weir(&args("b")?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let metrics = metrics_text(&mut weir)?;
    terminate(&mut weir)?;
    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restart must restore the days from the changelog:\n{text}");

    let trades = read_all(&input)?;
    let first: Vec<Record> =
        trades.iter().filter(|r| (r.offset as usize) < half(r.partition as usize)).cloned().collect();
    let (_, first_lateness) = recompute_daily(&first)?;
    let (want, lateness) = recompute_daily(&trades)?;
    // The input is what it is meant to be: 3 tickers × 3 days per partition; the
    // four asks per partition placed beyond grace dropped, many within it counted.
    assert_eq!(want.len(), 27, "{:?}", want.keys().collect::<Vec<_>>());
    assert_eq!(lateness.dropped, 4 * DAILY_PARTITIONS as u64, "{lateness:?}");
    assert!(lateness.within_grace >= 4 * DAILY_PARTITIONS as u64, "{lateness:?}");

    let mut got = Daily::new();
    for r in read_all(&output)? {
        let out: DailyOut = serde_json::from_slice(r.value.as_deref().unwrap_or_default())
            .with_context(|| format!("not daily-stats JSON: {}", utf8(r.value.as_deref())))?;
        assert_eq!(utf8(r.key.as_deref()), out.ticker, "the output key is the ticker");
        got.insert((out.ticker.clone(), out.day_start), out);
    }
    let differ: Vec<_> = want.iter().filter(|(k, w)| got.get(*k) != Some(*w)).map(|(k, w)| (w, got.get(k))).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(differ.is_empty() && extra.is_empty(), "(want, got): {differ:#?}\nextra: {extra:?}");

    // The first host's count covers the first halves exactly; the second host
    // counts what came after the first host's last commit, no more.
    let first_late = counter(&first_metrics, "late_records_total", &app)?;
    assert_eq!(first_late, first_lateness.dropped as f64, "late records of the first halves");
    let second_late = counter(&metrics, "late_records_total", &app)?;
    assert!(second_late <= (lateness.dropped - first_lateness.dropped) as f64, "late records: {second_late}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// 4. late-counts: tumbling 10 s, grace 5 s

/// 10-second aligned event time all of late-counts' records are relative to.
const T0: i64 = 1_700_000_000_000;
const WINDOW: i64 = 10_000;
const GRACE: i64 = 5_000;

/// What the test expects of a crafted record.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Counted,
    /// Its window's end + grace is at or before stream time.
    Dropped,
    /// Not a trade: dead-lettered.
    Rejected,
}
use Fate::*;

/// A crafted record: partition, ticker, event time relative to [`T0`], fate.
type Crafted = (i32, &'static str, i64, Fate);

/// Phase 1. Partition 1 goes far ahead (60 s); a stream time shared by partitions
/// would close every window of partition 0 before its phase 2.
const PHASE_1: &[Crafted] = &[
    (0, "AAPL", 1_000, Counted),
    (0, "AAPL", 3_000, Counted),
    (0, "MSFT", 4_000, Counted),
    (0, "AAPL", 12_000, Counted),
    (1, "GOOG", 50_000, Counted),
    (1, "GOOG", 41_000, Counted), // [40 s, 50 s) closes at 55 s
    (1, "GOOG", 60_000, Counted),
    (1, "GOOG", 44_000, Dropped), // 55 s <= 60 s
    (1, "GOOG", 39_999, Dropped),
    (1, "GOOG", 54_999, Counted),
];

/// Phase 2, after phase 1 was committed: AAPL's [0, 10 s) gets two more records
/// within grace, so its count is emitted again.
const PHASE_2: &[Crafted] = &[
    (0, "AAPL", 8_000, Counted), // stream time 12 s
    (0, "MSFT", 14_999, Counted),
    (0, "AAPL", 9_999, Counted), // 15 s > 14.999 s: just within grace
    (0, "AAPL", 15_000, Counted),
    (0, "AAPL", 5_000, Dropped), // 15 s <= 15 s: just beyond
    (0, "MSFT", 9_000, Dropped),
    (0, "AAPL", 14_000, Rejected), // not a trade; no later than stream time
    (0, "AAPL", 25_000, Counted),
    (0, "AAPL", 19_999, Dropped),
    (0, "AAPL", 20_000, Counted),
    (0, "AAPL", 10_000, Dropped),
];

fn produce_crafted(topic: &str, records: &[Crafted]) -> Result<()> {
    for partition in 0..2 {
        let raw: Vec<RawRecord> = records
            .iter()
            .filter(|r| r.0 == partition)
            .map(|&(_, ticker, at, fate)| {
                let value = if fate == Rejected {
                    br#"{"type":"ASK","ticker":"oops"#.to_vec()
                } else {
                    trade_json(if at % 2 == 0 { "ASK" } else { "BID" }, ticker, 10.5, 7)
                };
                (Some(ticker.as_bytes().to_vec()), Some(value), T0 + at)
            })
            .collect();
        produce_to(topic, partition, &raw)?;
    }
    Ok(())
}

type Counts = BTreeMap<(String, i64), u64>;

/// Counts per (ticker, window start) recomputed from the input: per partition in
/// offset order, stream time the largest timestamp so far (this record's
/// included); a record whose window has end + grace <= stream time is dropped.
/// Also returns each record's fate by (partition, offset). (The record that is no
/// trade is no later than stream time, so whether it moves stream time does not
/// matter.)
fn recompute_counts(trades: &[Record]) -> (Counts, BTreeMap<(i32, i64), Fate>) {
    let mut counts = Counts::new();
    let mut fates = BTreeMap::new();
    let mut stream_time: HashMap<i32, i64> = HashMap::new();
    for r in trades {
        let st = stream_time.entry(r.partition).or_insert(i64::MIN);
        *st = (*st).max(r.timestamp);
        if serde_json::from_slice::<TradeIn>(r.value.as_deref().unwrap_or_default()).is_err() {
            fates.insert((r.partition, r.offset), Rejected);
            continue;
        }
        let start = r.timestamp.div_euclid(WINDOW) * WINDOW;
        let fate = if start + WINDOW + GRACE <= *st { Dropped } else { Counted };
        if fate == Counted {
            *counts.entry((utf8(r.key.as_deref()), start)).or_default() += 1;
        }
        fates.insert((r.partition, r.offset), fate);
    }
    (counts, fates)
}

/// What late-counts writes.
#[derive(Debug, Deserialize)]
struct WindowCount {
    ticker: String,
    window_start: i64,
    window_end: i64,
    count: u64,
}

/// The last count per (ticker, window start) in late-counts' output.
fn last_counts(output: &[Record]) -> Result<Counts> {
    let mut out = Counts::new();
    for r in output {
        let w: WindowCount = serde_json::from_slice(r.value.as_deref().unwrap_or_default())
            .with_context(|| format!("not late-counts JSON: {}", utf8(r.value.as_deref())))?;
        assert_eq!(utf8(r.key.as_deref()), w.ticker, "the output key is the ticker");
        assert_eq!(w.window_end - w.window_start, WINDOW, "{w:?}");
        out.insert((w.ticker, w.window_start), w.count);
    }
    Ok(out)
}

/// Checks the recomputation against the fates written beside the crafted records
/// (so neither can be wrong alone), then the output against both.
fn check_counts(input: &[Record], output: &[Record], crafted: &[Crafted]) -> Result<()> {
    let (want, fates) = recompute_counts(input);
    let mut written = Vec::new();
    for p in 0..2 {
        written.extend(crafted.iter().filter(|c| c.0 == p).map(|c| c.3));
    }
    let recomputed: Vec<Fate> = fates.values().copied().collect();
    assert_eq!(recomputed, written, "the recomputation disagrees with the crafted fates");
    let got = last_counts(output)?;
    assert_eq!(got, want, "last counts per (ticker, window start)");
    Ok(())
}

/// Pattern (g): hand-crafted out-of-order sequences on two partitions, in two
/// phases, the host SIGKILLed between them and restarted on an empty state
/// directory (so the stream time at the grace boundaries and the windows come
/// back from the commit metadata and the changelog). Records within grace are
/// counted and their window's count emitted again; records beyond grace are
/// not, and the metrics count them.
#[test]
fn late_events_within_grace_count_and_beyond_are_dropped_and_counted() -> Result<()> {
    let app = unique("late");
    let input = format!("{app}-trades");
    let output = format!("{app}-out");
    let dead = format!("{app}-dead");
    create_topic(&input, 2)?;
    let dir = tempfile::tempdir()?;
    let topics = [("trades", input.as_str()), ("late-counts", output.as_str())];
    let args = |state: &str| -> Result<Vec<String>> {
        let mut args = topology_args("late-counts", &app, &topics, &dir.path().join(state))?;
        args.extend(["--dead-letter-topic".to_string(), dead.clone()]);
        Ok(args)
    };
    let log = dir.path().join("weir.log");
    let mut weir = spawn_weir(&args("a")?, &log)?;

    produce_crafted(&input, PHASE_1)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    check_counts(&read_all(&input)?, &read_all(&output)?, PHASE_1)?;
    let before = last_counts(&read_all(&output)?)?;
    assert_eq!(before.get(&("AAPL".to_string(), T0)), Some(&2), "{before:?}");
    weir.kill()?;
    let mut weir = spawn_weir(&args("b")?, &log)?;

    produce_crafted(&input, PHASE_2)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    let metrics = metrics_text(&mut weir)?;
    terminate(&mut weir)?;
    let all: Vec<Crafted> = PHASE_1.iter().chain(PHASE_2).copied().collect();
    let output_records = read_all(&output)?;
    check_counts(&read_all(&input)?, &output_records, &all)?;
    let after = last_counts(&output_records)?;
    assert_eq!(after.get(&("AAPL".to_string(), T0)), Some(&4), "{after:?}");

    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restart must restore the windows from the changelog:\n{text}");
    // The second host's metrics: phase 2 only (phase 1 was committed before the kill).
    let [dropped, rejected] = [Dropped, Rejected].map(|fate| PHASE_2.iter().filter(|c| c.3 == fate).count() as f64);
    assert_eq!(counter(&metrics, "late_records_total", &app)?, dropped, "late records in the metrics");
    assert_eq!(counter(&metrics, "late_window_updates_total", &app)?, dropped, "late window updates in the metrics");
    assert_eq!(counter(&metrics, "dead_letters_total", &app)?, rejected, "dead letters in the metrics");
    let letters = read_all(&dead)?;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0].headers.get("weir.node").map(String::as_str), Some("counts"), "{:?}", letters[0]);
    assert!(letters[0].headers["weir.error"].starts_with("invalid value: "), "{:?}", letters[0]);
    Ok(())
}

// ---------------------------------------------------------------------------------
// 5. weir describe

fn describe(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(weir_bin()?).arg("describe").args(args).env("RUST_LOG", "warn").output()?)
}

/// stock-stats-dsl's nodes, as its module doc draws them.
const DSL_NODES: [&str; 7] =
    ["trades", "validate", "is_ask", "windows", "to_stream-1", "render", "to-stockstats-output"];

/// `weir describe` of stock-stats-dsl, as JSON (with the application id of a
/// config file, and the default one) and as text; and of top10, whose two
/// sub-topologies meet at a repartition topic.
#[test]
fn describe_shows_the_topology() -> Result<()> {
    let wasm = plugin("stock-stats-dsl")?.display().to_string();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "application_id = \"quotes\"\n")?;
    for (app, extra) in [("quotes", vec!["--config", config.to_str().context("path")?]), ("weir", vec![])] {
        let out = describe(&[&["--plugin", wasm.as_str(), "--json"], extra.as_slice()].concat())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "describe failed: {}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))?;
        let subs = json["subtopologies"].as_array().context("subtopologies")?;
        assert_eq!(subs.len(), 1, "one sub-topology: {json:#}");
        let names: Vec<&str> =
            subs[0]["nodes"].as_array().context("nodes")?.iter().filter_map(|n| n["name"].as_str()).collect();
        assert_eq!(names, DSL_NODES, "the nodes of the sub-topology");
        assert_eq!(subs[0]["reads"], serde_json::json!(["trades"]));
        let stores = json["stores"].as_array().context("stores")?;
        assert_eq!(stores.len(), 1, "{json:#}");
        assert_eq!(stores[0]["name"], "windows");
        assert_eq!(stores[0]["node"], "windows");
        assert_eq!(stores[0]["changelog"], format!("{app}-windows-changelog"));
        // The wasm segments: the operators before the aggregation run in one call
        // into it; the one after it in another, into the sink.
        let segments: Vec<(Vec<&str>, Vec<&str>)> = json["segments"]
            .as_array()
            .context("segments")?
            .iter()
            .map(|s| {
                let names = |f: &str| s[f].as_array().into_iter().flatten().filter_map(|n| n.as_str()).collect();
                (names("nodes"), names("exits"))
            })
            .collect();
        let want_segments =
            vec![(vec!["validate", "is_ask"], vec!["windows"]), (vec!["render"], vec!["to-stockstats-output"])];
        assert_eq!(segments, want_segments, "segments: {:#}", json["segments"]);
        let runs_in: Vec<(&str, &str)> = subs[0]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n["name"].as_str()?, n["runs_in"].as_str()?)))
            .filter(|(_, side)| *side == "wasm")
            .collect();
        assert_eq!(runs_in, [("validate", "wasm"), ("is_ask", "wasm"), ("render", "wasm")], "what runs in wasm");
    }

    let out = describe(&["--plugin", &wasm])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "describe failed: {}", String::from_utf8_lossy(&out.stderr));
    for node in DSL_NODES {
        assert!(text.contains(node), "the text does not mention node {node}:\n{text}");
    }
    assert!(text.contains("weir-windows-changelog"), "the text does not name the changelog:\n{text}");

    // top10: two sub-topologies, the second reading the repartition topic.
    let out = describe(&["--plugin", &plugin("top10")?.display().to_string(), "--json"])?;
    assert!(out.status.success(), "describe of top10 failed: {}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let reads: Vec<&serde_json::Value> =
        json["subtopologies"].as_array().context("subtopologies")?.iter().map(|s| &s["reads"]).collect();
    assert_eq!(reads, [&serde_json::json!(["trades"]), &serde_json::json!(["weir-top10-repartition"])], "{json:#}");
    let internal: Vec<&str> = json["internal_topics"]
        .as_array()
        .context("internal_topics")?
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(internal, ["weir-open-last-changelog", "weir-top10-changelog", "weir-top10-repartition"]);
    Ok(())
}
