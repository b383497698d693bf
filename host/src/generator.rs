//! The trade generator: contract-shaped trades (`{"type","ticker","price","size"}`,
//! key = ticker) written to a topic at a given rate, with event timestamps that
//! advance at a given event rate and may be out of order by up to a given amount.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;

use crate::kafka::KafkaIoError;
use crate::kafka::admin::{TopicSpec, ensure_topics};

/// Generator settings.
#[derive(Debug, Clone, clap::Args)]
pub struct GenConfig {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// Topic to write to (created with --partitions if missing).
    #[arg(long, default_value = "trades")]
    pub topic: String,
    /// Partitions of the topic if it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Number of trades; 0 runs until stopped.
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    /// Records per second of wall-clock time; 0 is as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Records per second of event time (spacing of timestamps).
    #[arg(long, default_value_t = 1000)]
    pub event_rate: u64,
    /// Event time of the first trade (ms since the epoch); default now.
    #[arg(long)]
    pub start_ms: Option<i64>,
    /// Number of distinct tickers.
    #[arg(long, default_value_t = 50)]
    pub tickers: usize,
    /// Largest amount a timestamp may lag behind the newest one, in ms.
    #[arg(long, default_value_t = 0)]
    pub disorder_ms: u64,
    /// Fraction of trades that are bids (ignored by stock-stats).
    #[arg(long, default_value_t = 0.2)]
    pub bid_ratio: f64,
    /// Seed for reproducible output.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Compression of the batches written.
    #[arg(long, value_enum, default_value_t = crate::config::Compression::None)]
    pub compression: crate::config::Compression,
}

impl GenConfig {
    /// The benchmarks' trades: `count` of them as fast as possible into
    /// `partitions` of `topic`, 50 tickers, 10,000 a second of event time from
    /// 2023-11-14, out of order by up to 1.5 s, seed 1.
    pub fn bench(bootstrap: &str, topic: &str, partitions: i32, count: u64) -> Self {
        Self {
            bootstrap_servers: bootstrap.to_owned(),
            topic: topic.to_owned(),
            partitions,
            count,
            rate: 0,
            event_rate: 10_000,
            start_ms: Some(1_700_000_000_000),
            tickers: 50,
            disorder_ms: 1_500,
            bid_ratio: 0.2,
            seed: 1,
            compression: crate::config::Compression::None,
        }
    }
}

#[derive(Serialize)]
struct Trade<'a> {
    #[serde(rename = "type")]
    side: &'static str,
    ticker: &'a str,
    price: f64,
    size: u64,
}

/// Ticker names: `T000`, `T001`, … after a few real-looking ones.
pub fn ticker_names(n: usize) -> Vec<String> {
    const REAL: [&str; 12] =
        ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "META", "TSLA", "ORCL", "INTC", "AMD", "IBM", "NFLX"];
    (0..n).map(|i| REAL.get(i).map_or_else(|| format!("T{i:03}"), |s| (*s).to_owned())).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Writes trades until `count` are written or `stop` is set; returns how many.
pub fn run(cfg: &GenConfig, client: ClientConfig, stop: &AtomicBool) -> Result<u64, KafkaIoError> {
    ensure_topics(
        &client,
        &[TopicSpec {
            name: cfg.topic.clone(),
            partitions: cfg.partitions,
            replication: -1,
            configs: vec![],
            exact_partitions: false,
        }],
        std::time::Duration::from_secs(30),
    )?;
    let mut config = client;
    config.set("compression.type", cfg.compression.as_str());
    config.set("enable.idempotence", "true");
    config.set("linger.ms", "5");
    config.set("queue.buffering.max.messages", "1000000");
    let producer: BaseProducer = config.create().map_err(|e| KafkaIoError::Setup(e.to_string()))?;
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let tickers = ticker_names(cfg.tickers.max(1));
    let mut cents: Vec<i64> = tickers.iter().map(|_| rng.random_range(1_000..50_000)).collect();
    let start = cfg.start_ms.unwrap_or_else(now_ms);
    let began = Instant::now();
    let mut written = 0u64;
    let mut value = Vec::with_capacity(96);
    while (cfg.count == 0 || written < cfg.count) && !stop.load(Ordering::Relaxed) {
        if cfg.rate > 0 {
            let due = Duration::from_secs_f64(written as f64 / cfg.rate as f64);
            let elapsed = began.elapsed();
            if due > elapsed {
                producer.poll(Duration::ZERO);
                std::thread::sleep((due - elapsed).min(Duration::from_millis(50)));
                continue;
            }
        }
        let t = rng.random_range(0..tickers.len());
        cents[t] = (cents[t] + rng.random_range(-25..=25)).max(100);
        let side = if rng.random_bool(cfg.bid_ratio.clamp(0.0, 1.0)) { "BID" } else { "ASK" };
        let trade =
            Trade { side, ticker: &tickers[t], price: cents[t] as f64 / 100.0, size: rng.random_range(1..=1000) };
        value.clear();
        serde_json::to_writer(&mut value, &trade).map_err(|e| KafkaIoError::Setup(e.to_string()))?;
        let event = start + (written as i64 * 1000) / cfg.event_rate.max(1) as i64;
        let lag = if cfg.disorder_ms > 0 { rng.random_range(0..=cfg.disorder_ms) as i64 } else { 0 };
        let mut record = BaseRecord::to(&cfg.topic)
            .key(tickers[t].as_bytes())
            .payload(value.as_slice())
            .timestamp((event - lag).max(0));
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        written += 1;
        if written.is_multiple_of(1024) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(written)
}
