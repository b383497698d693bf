//! Sliding and session windows on the real broker: `trade-sliding` and
//! `trade-sessions` against brute-force recomputations of Kafka Streams'
//! definitions, with records out of order (within grace), sessions that merge,
//! and a SIGKILL followed by a restart on an empty state directory (so every
//! window's metadata comes back from the changelog).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::support::*;

const PARTITIONS: i32 = 3;
const TICKERS: usize = 12;
const START: i64 = 1_700_000_000_000;

/// A small deterministic generator (xorshift), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Trades of every ticker in bursts: gaps mostly short (the same session),
/// sometimes exactly 3 s (still the same), sometimes long (a new one). They are
/// produced in timestamp order with a jitter of up to 800 ms, so records arrive
/// out of order — and a late one may bridge two sessions — but never beyond grace.
fn trades(seed: u64, per_ticker: usize) -> Vec<RawRecord> {
    let mut rng = Rng(seed);
    let mut all: Vec<(i64, i64, RawRecord)> = Vec::new();
    for t in 0..TICKERS {
        let ticker = format!("T{t:02}");
        let mut ts = START + rng.below(2_000) as i64;
        for _ in 0..per_ticker {
            ts += match rng.below(10) {
                0 => 3_000,
                1 | 2 => 3_001 + rng.below(4_000) as i64,
                _ => 50 + rng.below(1_200) as i64,
            };
            let side = if rng.below(4) == 0 { "BID" } else { "ASK" };
            let value = format!(
                r#"{{"type":"{side}","ticker":"{ticker}","price":{}.5,"size":{}}}"#,
                10 + rng.below(90),
                1 + rng.below(500)
            );
            let arrival = ts + rng.below(800) as i64;
            all.push((arrival, ts, (Some(ticker.clone().into_bytes()), Some(value.into_bytes()), ts)));
        }
    }
    all.sort_by_key(|(arrival, ts, _)| (*arrival, *ts));
    all.into_iter().map(|(_, _, r)| r).collect()
}

#[derive(Deserialize)]
struct Trade {
    #[serde(rename = "type")]
    side: String,
    size: u64,
}

/// (ticker, start, end) → (count, volume).
type Rows = BTreeMap<(String, i64, i64), (u64, u64)>;

/// Per ticker, (timestamp, size) of the trades that count.
fn by_ticker(input: &[Record], asks_only: bool) -> Result<BTreeMap<String, Vec<(i64, u64)>>> {
    let mut out: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    for r in input {
        let ticker = String::from_utf8(r.key.clone().context("a trade without a key")?)?;
        let trade: Trade = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        if !asks_only || trade.side == "ASK" {
            out.entry(ticker).or_default().push((r.timestamp, trade.size));
        }
    }
    Ok(out)
}

/// Sessions: a ticker's trades sorted by time, split where two consecutive ones
/// are more than 3000 ms apart; `[first, last + 1)`.
fn sessions(input: &[Record]) -> Result<Rows> {
    let mut rows = Rows::new();
    for (ticker, mut trades) in by_ticker(input, false)? {
        trades.sort_unstable();
        let mut session: Vec<(i64, u64)> = Vec::new();
        for (t, size) in trades {
            if session.last().is_some_and(|&(last, _)| t - last > 3_000) {
                let (first, last) = (session[0].0, session[session.len() - 1].0);
                rows.insert(
                    (ticker.clone(), first, last + 1),
                    (session.len() as u64, session.iter().map(|s| s.1).sum()),
                );
                session.clear();
            }
            session.push((t, size));
        }
        let (first, last) = (session[0].0, session[session.len() - 1].0);
        rows.insert((ticker, first, last + 1), (session.len() as u64, session.iter().map(|s| s.1).sum()));
    }
    Ok(rows)
}

/// Kafka Streams' sliding windows of 5000 ms over asks: a left window ending at
/// each ask, and a right window starting just after each ask that has a later one
/// within 5001 ms; `[s, s + 5001)`, each holding every ask inside it.
fn sliding_windows(input: &[Record]) -> Result<Rows> {
    const D: i64 = 5_000;
    let mut rows = Rows::new();
    for (ticker, asks) in by_ticker(input, true)? {
        let mut starts = std::collections::BTreeSet::new();
        for &(t, _) in &asks {
            starts.insert((t - D).max(0));
            if asks.iter().any(|&(u, _)| u > t && u <= t + 1 + D) {
                starts.insert(t + 1);
            }
        }
        for s in starts {
            let inside: Vec<u64> = asks.iter().filter(|&&(t, _)| t >= s && t <= s + D).map(|a| a.1).collect();
            rows.insert((ticker.clone(), s, s + D + 1), (inside.len() as u64, inside.iter().sum()));
        }
    }
    Ok(rows)
}

/// The output's live rows: the last record per (ticker, window) — from the
/// window headers — unless it deletes the row.
fn live(output: &[Record], start_field: &str, end_field: &str) -> Result<Rows> {
    let mut last: BTreeMap<(String, i64, i64), Option<(u64, u64)>> = BTreeMap::new();
    for r in output {
        let ticker = String::from_utf8(r.key.clone().context("an output record without a key")?)?;
        let header = |name: &str| -> Result<i64> {
            Ok(r.headers.get(name).with_context(|| format!("no {name} header: {:?}", r.headers))?.parse()?)
        };
        let window = (ticker, header("weir.window.start")?, header("weir.window.end")?);
        let row = match &r.value {
            None => None,
            Some(v) => {
                let v: serde_json::Value = serde_json::from_slice(v)?;
                assert_eq!((v[start_field].as_i64(), v[end_field].as_i64()), (Some(window.1), Some(window.2)), "{v}");
                Some((v["count"].as_u64().context("count")?, v["volume"].as_u64().context("volume")?))
            }
        };
        last.insert(window, row);
    }
    Ok(last.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect())
}

/// Runs `plugin` over the trades, SIGKILLs it halfway and restarts it on an
/// empty state directory; returns the input and the output read back.
fn run(name: &str, plugin: &str, seed: u64) -> Result<(Vec<Record>, Vec<Record>)> {
    let app = unique(name);
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTITIONS)?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("weir.log");
    let records = trades(seed, 250);
    let (a, b, c) = (records.len() * 2 / 5, records.len() * 4 / 5, records.len());
    produce(&input, &records[..a])?;
    let args = |state: &str| pipeline_args(plugin, &app, &input, &output, &dir.path().join(state));
    let mut weir = spawn_weir(&args("a")?, &log)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    // More records arrive and the host is SIGKILLed mid-stream, once it has
    // committed some of them.
    let topic = input.clone();
    let middle = records[a..b].to_vec();
    let producer = std::thread::spawn(move || produce(&topic, &middle));
    await_committed_at_least(&app, &input, PARTITIONS, a as i64 + 1, &mut weir)?;
    weir.kill()?;
    producer.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    // Its successor starts on an empty state directory: every window it extends
    // or merges comes back from the changelog. The last records make sure it ran.
    let mut weir = spawn_weir(&args("b")?, &log)?;
    produce(&input, &records[b..c])?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    terminate(&mut weir)?;
    let text = std::fs::read_to_string(&log)?;
    assert!(restored_records(&text) > 0, "the restart must restore the windows from the changelog:\n{text}");
    Ok((read_all(&input)?, read_all(&output)?))
}

#[test]
fn sessions_merge_exactly_through_a_sigkill() -> Result<()> {
    let (input, output) = run("sessions", "trade-sessions", 0x5e55)?;
    let want = sessions(&input)?;
    let got = live(&output, "session_start", "session_end")?;
    assert!(want.len() > TICKERS * 5, "the trades must make many sessions: {}", want.len());
    assert_eq!(got, want);
    // Merges happened: some rows were deleted downstream.
    assert!(output.iter().any(|r| r.value.is_none()), "no session was merged away");
    Ok(())
}

#[test]
fn sliding_windows_are_exact_through_a_sigkill() -> Result<()> {
    let (input, output) = run("sliding", "trade-sliding", 0x511d)?;
    let want = sliding_windows(&input)?;
    let got = live(&output, "window_start", "window_end")?;
    assert!(want.len() > TICKERS * 100, "the asks must make many windows: {}", want.len());
    assert_eq!(got.len(), want.len(), "windows");
    assert_eq!(got, want);
    Ok(())
}
