//! The seed's multi-stage pattern on the real broker: `top10` (per-ticker daily
//! change, re-grouped through a repartition topic into each day's ten biggest
//! risers) against a recomputation written here, through a SIGKILL and a restart
//! on an empty state directory — so both stores, in two sub-topologies, come
//! back from their changelogs, and the repartition topic's records are neither
//! lost nor counted twice.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::support::*;

const PARTITIONS: i32 = 3;
const TICKERS: usize = 24;
const DAY: i64 = 86_400_000;
/// Midnight UTC.
const START: i64 = 1_699_920_000_000;

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Trades of every ticker over about three days, written in the order they
/// "arrive": up to ten minutes late (well within the hour of grace), so they are
/// out of time order; some bids, some asks at price 0 and some values that are
/// not trades (dead-lettered).
fn trades(seed: u64, per_ticker: usize) -> Vec<RawRecord> {
    let mut rng = Rng(seed);
    let mut all: Vec<(i64, RawRecord)> = Vec::new();
    for t in 0..TICKERS {
        let ticker = format!("T{t:02}");
        let mut ts = START + rng.below(3_600_000) as i64;
        let mut price = 50.0 + rng.below(100) as f64;
        for _ in 0..per_ticker {
            ts += 60_000 + rng.below(6 * DAY as u64 / per_ticker as u64) as i64;
            price = (price * (0.9 + rng.below(200) as f64 / 1_000.0) * 100.0).round() / 100.0;
            let value = match rng.below(40) {
                0 => "not a trade".to_owned(),
                1 => format!(r#"{{"type":"ASK","ticker":"{ticker}","price":0,"size":1}}"#),
                2..=9 => format!(r#"{{"type":"BID","ticker":"{ticker}","price":{price},"size":5}}"#),
                _ => format!(r#"{{"type":"ASK","ticker":"{ticker}","price":{price},"size":5}}"#),
            };
            let arrival = ts + rng.below(600_000) as i64;
            all.push((arrival, (Some(ticker.clone().into_bytes()), Some(value.into_bytes()), ts)));
        }
    }
    all.sort_by_key(|(arrival, (_, _, ts))| (*arrival, *ts));
    all.into_iter().map(|(_, r)| r).collect()
}

#[derive(Deserialize)]
struct Trade {
    #[serde(rename = "type")]
    side: String,
    price: f64,
}

/// Day start → the ranking: (ticker, change in percent), at most ten.
type Rankings = BTreeMap<i64, Vec<(String, f64)>>;

/// Per (ticker, day): the first and the latest ask with a positive price, in
/// the order the ticker's records were written; per day, the ten tickers whose
/// price rose most since their first ask, ties by ticker.
fn recompute(input: &[Record]) -> Result<Rankings> {
    let mut open_last: BTreeMap<(i64, String), (f64, f64)> = BTreeMap::new();
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in input {
        by_partition.entry(r.partition).or_default().push(r);
    }
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.offset);
        for r in records.iter() {
            let Ok(trade) = serde_json::from_slice::<Trade>(r.value.as_deref().unwrap_or_default()) else { continue };
            if trade.side != "ASK" || trade.price <= 0.0 {
                continue;
            }
            let ticker = String::from_utf8(r.key.clone().context("a trade without a key")?)?;
            let day = r.timestamp - r.timestamp.rem_euclid(DAY);
            open_last
                .entry((day, ticker))
                .and_modify(|(_, last)| *last = trade.price)
                .or_insert((trade.price, trade.price));
        }
    }
    let mut days: Rankings = BTreeMap::new();
    for ((day, ticker), (open, last)) in open_last {
        days.entry(day).or_default().push((ticker, (last - open) / open * 100.0));
    }
    for ranking in days.values_mut() {
        ranking.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranking.truncate(10);
    }
    Ok(days)
}

#[derive(Deserialize)]
struct Entry {
    ticker: String,
    change_pct: f64,
}

#[derive(Deserialize)]
struct Top {
    day_start: i64,
    top: Vec<Entry>,
}

/// The latest ranking written per day.
fn latest(output: &[Record]) -> Result<Rankings> {
    let mut days = Rankings::new();
    for r in output {
        let key: i64 = String::from_utf8(r.key.clone().context("a ranking without a key")?)?.parse()?;
        let top: Top = serde_json::from_slice(r.value.as_deref().context("a ranking without a value")?)?;
        assert_eq!(top.day_start, key, "the key is the day");
        days.insert(key, top.top.into_iter().map(|e| (e.ticker, e.change_pct)).collect());
    }
    Ok(days)
}

/// Waits until the output's latest rankings are `want` (the second stage
/// commits after the first, so the input's committed offsets do not say when
/// it is done).
fn await_rankings(output: &str, want: &Rankings, weir: &mut Weir) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = latest(&read_all(output)?)?;
        if &got == want {
            return Ok(());
        }
        if let Some(status) = weir.exited()? {
            return weir.fail(format!("weir exited early with {status}"));
        }
        if Instant::now() > deadline {
            for (day, ranking) in want {
                if got.get(day) != Some(ranking) {
                    bail!("day {day}: want {ranking:?}\n got {:?}", got.get(day));
                }
            }
            bail!("unexpected days in the output: {:?}", got.keys().collect::<Vec<_>>());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top10_is_exact_through_a_sigkill_and_an_empty_state_dir() -> Result<()> {
    let app = unique("top10");
    let (input, output) = (format!("{app}-trades"), format!("{app}-top"));
    create_topic(&input, PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let records = trades(0x70b10, 120);
    let (a, b) = (records.len() / 2, records.len());
    produce(&input, &records[..a])?;
    let args = |state: &str| -> Result<Vec<String>> {
        let mut args = pipeline_args("top10", &app, &input, &output, &dir.path().join(state))?;
        args.extend(["--repartition-purge-ms".to_owned(), "500".to_owned()]);
        Ok(args)
    };
    let mut weir = spawn_weir(&args("a")?, &log)?;
    // Killed once it has committed part of what is there.
    await_committed_at_least(&app, &input, PARTITIONS, a as i64 / 3, &mut weir)?;
    weir.kill()?;
    // Its successor starts on an empty state directory: both stores come back
    // from their changelogs, and it goes on from the committed offsets of the
    // input and of the repartition topic.
    let mut weir = spawn_weir(&args("b")?, &log)?;
    produce(&input, &records[a..b])?;
    let want = recompute(&read_all(&input)?)?;
    assert!(want.len() >= 3, "the trades span several UTC days: {:?}", want.keys().collect::<Vec<_>>());
    assert!(want.values().filter(|r| r.len() == 10).count() >= 2, "days rank ten tickers: {want:?}");
    await_rankings(&output, &want, &mut weir)?;
    let repartition = format!("{app}-top10-repartition");
    // What the second stage consumed and committed is deleted (purged), and
    // nothing beyond it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while low_offsets(&repartition)?.values().sum::<i64>() == 0 {
        assert!(std::time::Instant::now() < deadline, "the repartition topic was never purged");
        std::thread::sleep(Duration::from_millis(100));
    }
    let carried = read_all(&repartition)?;
    terminate(&mut weir)?;
    let (low, done) =
        (low_offsets(&repartition)?, committed(&app, &repartition, low_offsets(&repartition)?.len() as i32)?);
    for (p, low) in &low {
        assert!(
            *low <= done.get(p).copied().unwrap_or(0).max(0),
            "partition {p} purged to {low}, past the committed {done:?}"
        );
    }
    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restart must restore the stores from their changelogs:\n{text}");
    for store in ["open-last", "top10"] {
        let changelog = read_all(&format!("{app}-{store}-changelog"))?;
        assert!(!changelog.is_empty(), "store {store} has no changelog records");
    }
    // What the repartition topic still holds (consumed records are purged):
    // re-grouped updates keyed by day.
    for r in &carried {
        let day: i64 = String::from_utf8(r.key.clone().context("no key")?)?.parse()?;
        assert!(want.contains_key(&day), "a repartition record for day {day}");
    }
    // Dead letters: the values that are not trades and the asks at price 0.
    // Dead letters: the values that are not trades and the asks at price 0,
    // each exactly once.
    let dead = read_all(&format!("{app}-dlq"))?;
    let bad = records
        .iter()
        .filter(|r| r.1.as_deref().is_some_and(|v| v == b"not a trade" || v.ends_with(br#""price":0,"size":1}"#)))
        .count();
    assert!(bad > 0, "the trades include bad records");
    assert_eq!(dead.len(), bad, "one dead letter per bad record");
    Ok(())
}
