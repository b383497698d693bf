//! Shared test plumbing: the broker, topics, the `weir` binary, reading topics back,
//! and an independent recomputation of stock-stats.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

pub fn bootstrap() -> String {
    std::env::var("WEIR_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name unique to this test run.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn client() -> ClientConfig {
    client_on(&bootstrap())
}

fn client_on(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

pub fn create_topic(name: &str, partitions: i32) -> Result<()> {
    create_topic_on(&bootstrap(), name, partitions)
}

pub fn create_topic_on(bootstrap: &str, name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_on(bootstrap).create()?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = futures_block_on(admin.create_topics([&topic], &AdminOptions::new()))?;
    for r in results {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    Ok(())
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    // The admin client drives its futures from its own thread; a trivial executor
    // is enough.
    use std::sync::Arc;
    use std::task::{Context as TaskContext, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park_timeout(Duration::from_millis(10)),
        }
    }
}

/// A record to produce: key, value, timestamp.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Produces raw records in order, idempotently.
pub fn produce(topic: &str, records: &[RawRecord]) -> Result<()> {
    produce_on(&bootstrap(), topic, records)
}

/// [`produce`] to the broker at `bootstrap`.
pub fn produce_on(bootstrap: &str, topic: &str, records: &[RawRecord]) -> Result<()> {
    produce_records(bootstrap, topic, None, records)
}

/// Produces raw records in order, idempotently, all to `partition` of `topic`
/// (whatever their keys), for tests that craft each partition's sequence.
pub fn produce_to(topic: &str, partition: i32, records: &[RawRecord]) -> Result<()> {
    produce_records(&bootstrap(), topic, Some(partition), records)
}

fn produce_records(bootstrap: &str, topic: &str, partition: Option<i32>, records: &[RawRecord]) -> Result<()> {
    let producer: BaseProducer =
        client_on(bootstrap).set("enable.idempotence", "true").set("linger.ms", "5").create()?;
    for (key, value, ts) in records {
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).timestamp(*ts);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(k) = key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = value {
            rec = rec.payload(v.as_slice());
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: i64,
    pub headers: HashMap<String, String>,
}

/// Every committed record of `topic`, per partition in offset order.
pub fn read_all(topic: &str) -> Result<Vec<Record>> {
    read_all_on(&bootstrap(), topic)
}

/// [`read_all`] from the broker at `bootstrap`.
pub fn read_all_on(bootstrap: &str, topic: &str) -> Result<Vec<Record>> {
    let consumer: BaseConsumer = client_on(bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("fetch.queue.backoff.ms", "0")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut open = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            open += 1;
        }
    }
    let mut out = Vec::new();
    if open == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while open > 0 {
        if Instant::now() > deadline {
            bail!("reading {topic} did not reach the end in 120 s");
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_owned(),
                            String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    timestamp: m.timestamp().to_millis().unwrap_or(-1),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    Ok(out)
}

/// End offsets of `topic`.
pub fn end_offsets(topic: &str) -> Result<BTreeMap<i32, i64>> {
    end_offsets_on(&bootstrap(), topic)
}

/// [`end_offsets`] on the broker at `bootstrap`.
pub fn end_offsets_on(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    Ok(watermarks_on(bootstrap, topic)?.into_iter().map(|(p, (_, high))| (p, high)).collect())
}

/// Whether the broker has a topic named `name` (asking for every topic's
/// metadata, which creates none).
pub fn topic_exists(name: &str) -> Result<bool> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = client_on(&bootstrap()).create()?;
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
    Ok(metadata.topics().iter().any(|t| t.name() == name))
}

/// First offsets of `topic` (above 0 once records were deleted).
pub fn low_offsets(topic: &str) -> Result<BTreeMap<i32, i64>> {
    Ok(watermarks_on(&bootstrap(), topic)?.into_iter().map(|(p, (low, _))| (p, low)).collect())
}

fn watermarks_on(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = client_on(bootstrap).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        out.insert(p, consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?);
    }
    Ok(out)
}

/// The group's committed offsets on `topic`.
pub fn committed(group: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
    committed_on(&bootstrap(), group, topic, partitions)
}

/// [`committed`] on the broker at `bootstrap`. Stable offsets only: the answer
/// waits while a transaction holds offsets of the group pending.
pub fn committed_on(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer =
        client_on(bootstrap).set("group.id", group).set("isolation.level", "read_committed").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = weir::kafka::committed_offsets(&consumer, &tpl, Duration::from_secs(30))?;
    Ok(got.elements().iter().map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1))).collect())
}

/// The metadata the group committed with its offsets on `topic`.
pub fn committed_metadata(group: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, String>> {
    let consumer: BaseConsumer = client().set("group.id", group).set("isolation.level", "read_committed").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = weir::kafka::committed_offsets(&consumer, &tpl, Duration::from_secs(30))?;
    Ok(got.elements().iter().map(|e| (e.partition(), e.metadata().to_owned())).collect())
}

/// A running `weir` process and its log file.
pub struct Weir {
    pub child: Child,
    pub log: PathBuf,
    /// Where this process's lines start in the log (a restart appends to it).
    pub from: usize,
}

/// A test that fails (or returns early) does not leave its host running.
impl Drop for Weir {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

impl Weir {
    /// Fails with the last lines of the log.
    pub fn fail<T>(&self, what: String) -> Result<T> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{what}\n--- last lines of {} ---\n{}", self.log.display(), tail.join("\n"))
    }

    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The admin API's base URL, from the log line it writes when it listens.
    pub fn admin_url(&mut self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = std::fs::read(&self.log).unwrap_or_default();
            let mine = String::from_utf8_lossy(log.get(self.from..).unwrap_or_default()).into_owned();
            if let Some(addr) = mine.lines().rev().find_map(|l| l.split("admin API listening addr=").nth(1)) {
                return Ok(format!("http://{}", addr.trim()));
            }
            if let Some(status) = self.exited()? {
                return self.fail(format!("weir exited with {status} before its admin API listened"));
            }
            if Instant::now() > deadline {
                return self.fail("the admin API did not start within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// Waits until `group` has committed up to the end of every partition of `topic`.
/// The end offsets are taken first, after every input record was produced.
pub fn await_caught_up(group: &str, topic: &str, weir: &mut Weir, timeout: Duration) -> Result<()> {
    await_caught_up_on(&bootstrap(), group, topic, weir, timeout)
}

/// [`await_caught_up`] on the broker at `bootstrap`.
pub fn await_caught_up_on(bootstrap: &str, group: &str, topic: &str, weir: &mut Weir, timeout: Duration) -> Result<()> {
    let ends = end_offsets_on(bootstrap, topic)?;
    let deadline = Instant::now() + timeout;
    loop {
        let done = committed_on(bootstrap, group, topic, ends.len() as i32)?;
        if ends.iter().all(|(p, end)| done.get(p).copied().unwrap_or(-1) >= *end) {
            return Ok(());
        }
        if let Some(status) = weir.exited()? {
            return weir.fail(format!("weir exited early with {status}"));
        }
        if Instant::now() > deadline {
            return weir
                .fail(format!("group {group} did not catch up in {timeout:?}: committed {done:?}, ends {ends:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `group` has committed at least `total` records' worth of offsets.
pub fn await_committed_at_least(group: &str, topic: &str, partitions: i32, total: i64, weir: &mut Weir) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let sum: i64 = committed(group, topic, partitions)?.values().filter(|o| **o > 0).sum();
        if sum >= total {
            return Ok(());
        }
        if let Some(status) = weir.exited()? {
            return weir.fail(format!("weir exited early with {status}"));
        }
        if Instant::now() > deadline {
            return weir.fail(format!("group {group} committed only {sum} of {total} in time"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn weir_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WEIR_BIN") {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/deps/e2e-… → target/<profile>/weir
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("no target dir")?;
    let bin = dir.join("weir");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build -p weir)", bin.display());
    }
    Ok(bin)
}

pub fn plugin(name: &str) -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no workspace root")?;
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root.join("target"));
    let path = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
    if !path.exists() {
        bail!(
            "{} not found: build the plugins first (cargo build --release --target wasm32-wasip2 -p {name})",
            path.display()
        );
    }
    Ok(path)
}

/// The usual `weir run` flags: plugin, application id, topics, state directory.
pub fn pipeline_args(plugin_name: &str, app: &str, input: &str, output: &str, state: &Path) -> Result<Vec<String>> {
    Ok(vec![
        "--plugin".into(),
        plugin(plugin_name)?.display().to_string(),
        "--application-id".into(),
        app.into(),
        "--input-topic".into(),
        input.into(),
        "--output-topic".into(),
        output.into(),
        "--state-dir".into(),
        state.display().to_string(),
    ])
}

/// Starts `weir run` with these arguments (plus the broker) and its log in `log`.
pub fn spawn_weir(args: &[String], log: &Path) -> Result<Weir> {
    spawn_weir_with_env(args, log, &[])
}

/// Starts `weir serve --config <config>` with a free admin port.
pub fn spawn_weir_serve(config: &Path, log: &Path) -> Result<Weir> {
    let from = log_len(log);
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(weir_bin()?)
        .args(["serve", "--admin-addr", "127.0.0.1:0", "--bootstrap-servers", &bootstrap(), "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()?;
    Ok(Weir { child, log: log.to_path_buf(), from })
}

/// [`spawn_weir`] with extra environment variables.
pub fn spawn_weir_with_env(args: &[String], log: &Path, env: &[(&str, &str)]) -> Result<Weir> {
    spawn_weir_on(&bootstrap(), args, log, env)
}

/// [`spawn_weir_with_env`] against the broker at `bootstrap`.
pub fn spawn_weir_on(bootstrap: &str, args: &[String], log: &Path, env: &[(&str, &str)]) -> Result<Weir> {
    let from = log_len(log);
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    // Tests run side by side: each admin API on a free port.
    let admin: &[&str] = if args.iter().any(|a| a == "--admin-addr") { &[] } else { &["--admin-addr", "127.0.0.1:0"] };
    let child = Command::new(weir_bin()?)
        .envs(env.iter().copied())
        .arg("run")
        .arg("--bootstrap-servers")
        .arg(bootstrap)
        .args(admin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()?;
    Ok(Weir { child, log: log.to_path_buf(), from })
}

/// Changelog records restored, summed over the `task assigned` lines of a log.
pub fn restored_records(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("task assigned"))
        .filter_map(|l| l.split("restored=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum()
}

/// Waits for `weir` to exit by itself.
pub fn wait_exit(weir: &mut Weir, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = weir.exited()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            weir.kill()?;
            return weir.fail(format!("weir did not exit by itself within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops `weir` with SIGTERM and waits for a clean exit.
pub fn terminate(weir: &mut Weir) -> Result<()> {
    let pid = weir.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = weir.exited()? {
            if !status.success() {
                return weir.fail(format!("weir exited with {status} after SIGTERM"));
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            weir.kill()?;
            return weir.fail("weir did not exit within 60 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The input trade, parsed independently of the plugin.
#[derive(Debug, Deserialize)]
pub struct TradeIn {
    #[serde(rename = "type")]
    pub side: String,
    #[allow(dead_code)]
    pub ticker: String,
    pub price: f64,
    pub size: u64,
}

/// One (ticker, window) result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WindowStats {
    pub ticker: String,
    pub window_start: i64,
    pub window_end: i64,
    pub min_price: f64,
    pub count_trades: u64,
    pub volume: u64,
    pub sum_price: f64,
    pub avg_price: f64,
}

/// Recomputes stock-stats from the input topic: 5 s windows every 1 s, aligned to
/// the epoch; per partition in offset order, as Kafka delivers them; a record is
/// late for a window when the window ended at or before (partition's max timestamp
/// so far − grace). Records that are not valid trades are skipped.
pub fn recompute(trades: &[Record], grace_ms: i64) -> BTreeMap<(String, i64), WindowStats> {
    recompute_with(trades, grace_ms, |_, _, _| {})
}

/// [`recompute`], also calling `each` with every (ticker, window start), record and
/// trade it counts.
pub fn recompute_with(
    trades: &[Record],
    grace_ms: i64,
    mut each: impl FnMut(&(String, i64), &Record, &TradeIn),
) -> BTreeMap<(String, i64), WindowStats> {
    let mut out: BTreeMap<(String, i64), WindowStats> = BTreeMap::new();
    let mut stream_time: HashMap<i32, i64> = HashMap::new();
    for record in trades {
        let (Some(key), Some(value)) = (&record.key, &record.value) else { continue };
        let Ok(trade) = serde_json::from_slice::<TradeIn>(value) else { continue };
        let Ok(ticker) = String::from_utf8(key.clone()) else { continue };
        let st = stream_time.entry(record.partition).or_insert(i64::MIN);
        *st = (*st).max(record.timestamp);
        if trade.side != "ASK" {
            continue;
        }
        let ts = record.timestamp;
        // Every start s = k * 1000 with s <= ts < s + 5000, s >= 0.
        let mut start = (ts / 1000) * 1000;
        while start >= 0 && start + 5000 > ts {
            let end = start + 5000;
            if end > *st - grace_ms {
                let e = out.entry((ticker.clone(), start)).or_insert_with(|| WindowStats {
                    ticker: ticker.clone(),
                    window_start: start,
                    window_end: end,
                    min_price: f64::INFINITY,
                    count_trades: 0,
                    volume: 0,
                    sum_price: 0.0,
                    avg_price: 0.0,
                });
                e.min_price = e.min_price.min(trade.price);
                e.count_trades += 1;
                e.volume += trade.size;
                e.sum_price += trade.price;
                e.avg_price = e.sum_price / e.count_trades as f64;
                each(&(ticker.clone(), start), record, &trade);
            }
            start -= 1000;
        }
    }
    out
}

/// The last value per (ticker, window_start) in the output topic.
pub fn last_results(output: &[Record]) -> Result<BTreeMap<(String, i64), WindowStats>> {
    let mut out = BTreeMap::new();
    for record in output {
        let value = record.value.as_ref().context("output record without a value")?;
        let stats: WindowStats = serde_json::from_slice(value)
            .with_context(|| format!("output is not stock-stats JSON: {}", String::from_utf8_lossy(value)))?;
        let key = std::str::from_utf8(record.key.as_deref().unwrap_or_default())?;
        if key != stats.ticker {
            bail!("output key {key} differs from its ticker {}", stats.ticker);
        }
        out.insert((stats.ticker.clone(), stats.window_start), stats);
    }
    Ok(out)
}

/// Asserts exact equality and reports the first differences readably.
pub fn assert_same(got: &BTreeMap<(String, i64), WindowStats>, want: &BTreeMap<(String, i64), WindowStats>) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).take(5).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).take(5).collect();
    let differ: Vec<_> =
        want.iter().filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (g, w))).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "output differs from the recomputation ({} windows expected, {} got)\nmissing: {missing:?}\nextra: {extra:?}\ndiffer (got, want): {differ:#?}",
        want.len(),
        got.len()
    );
}

/// Event time of the first trade [`gen_trades`] writes.
pub const GEN_START_MS: i64 = 1_700_000_000_000;

/// Event time [`gen_trades`] advances per trade: 2000 trades per second.
pub const GEN_EVENTS_PER_SEC: i64 = 2_000;

/// Runs `weir gen trades` into `topic`.
pub fn gen_trades(topic: &str, count: u64, tickers: usize, partitions: i32, disorder_ms: u64, rate: u64) -> Result<()> {
    gen_trades_at(topic, count, tickers, partitions, disorder_ms, rate, GEN_START_MS)
}

/// [`gen_trades`] with event time starting at `start_ms`.
pub fn gen_trades_at(
    topic: &str,
    count: u64,
    tickers: usize,
    partitions: i32,
    disorder_ms: u64,
    rate: u64,
    start_ms: i64,
) -> Result<()> {
    let status = gen_trades_command(&bootstrap(), topic, count, tickers, partitions, disorder_ms, rate, start_ms)?
        .env("RUST_LOG", "warn")
        .status()?;
    if !status.success() {
        bail!("weir gen trades failed: {status}");
    }
    Ok(())
}

/// The `weir gen trades` command of [`gen_trades_at`], against the broker at
/// `bootstrap`, to add flags to or run in the background.
#[allow(clippy::too_many_arguments)]
pub fn gen_trades_command(
    bootstrap: &str,
    topic: &str,
    count: u64,
    tickers: usize,
    partitions: i32,
    disorder_ms: u64,
    rate: u64,
    start_ms: i64,
) -> Result<Command> {
    let mut command = Command::new(weir_bin()?);
    command
        .args(["gen", "trades", "--bootstrap-servers", bootstrap, "--topic", topic])
        .args([
            "--count",
            &count.to_string(),
            "--tickers",
            &tickers.to_string(),
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--disorder-ms", &disorder_ms.to_string(), "--event-rate", &GEN_EVENTS_PER_SEC.to_string()])
        .args(["--rate", &rate.to_string(), "--start-ms", &start_ms.to_string(), "--bid-ratio", "0.25"]);
    Ok(command)
}

/// A broker of a test's own, on a free port, for tests that stop and start it
/// (the shared broker serves every other test). Started by the project's own
/// `scripts/kafka` with a directory of its own; stopped when dropped.
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
}

fn free_port_pair() -> Result<u16> {
    // The broker listens on the port and its controller on the next one.
    for _ in 0..100 {
        let port = rand::random_range(20_000u16..40_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return Ok(port);
        }
    }
    bail!("no two free consecutive ports")
}

impl Broker {
    fn script(&self, action: &str) -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("no workspace root")?;
        let status = Command::new(root.join("scripts/kafka"))
            .arg(action)
            .env("WEIR_KAFKA_DIR", self.dir.path())
            .env("WEIR_KAFKA_PORT", self.port.to_string())
            .status()?;
        if !status.success() {
            bail!("scripts/kafka {action} failed ({status}) for the broker on port {}", self.port);
        }
        Ok(())
    }

    /// Starts a new single-node broker.
    pub fn start() -> Result<Self> {
        let broker = Self { dir: tempfile::tempdir()?, port: free_port_pair()? };
        broker.script("start")?;
        Ok(broker)
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops it (its data stays).
    pub fn stop(&self) -> Result<()> {
        self.script("stop")
    }

    /// Starts it again after [`Broker::stop`].
    pub fn restart(&self) -> Result<()> {
        self.script("start")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// Sends `signal` (e.g. `-STOP`) to a process.
pub fn signal(weir: &Weir, signal: &str) -> Result<()> {
    let status = Command::new("kill").args([signal, &weir.child.id().to_string()]).status()?;
    if !status.success() {
        bail!("kill {signal} failed");
    }
    Ok(())
}

/// The value of `weir_<metric>{pipeline="<pipeline>"}` in an OpenMetrics text.
pub fn metric(text: &str, metric: &str, pipeline: &str) -> Option<f64> {
    let prefix = format!("weir_{metric}{{pipeline=\"{pipeline}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}
