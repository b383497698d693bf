//! The embedded demo and `describe`: stock-stats end to end in one process on
//! librdkafka's in-process mock cluster, with a live table of the latest window per
//! ticker. The mock cluster writes no transaction markers and keeps no
//! transactional offsets, so it shows the pipeline working, not exactly-once; the
//! tests use a real broker for that.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use thiserror::Error;

use crate::cli::DemoArgs;
use crate::config::{RunConfig, StateBackend};
use crate::generator::GenConfig;
use crate::kafka::{KafkaIoError, base_config};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, Topics};
use crate::runtime::{LoadError, PluginInfo, Runtime};

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// The mock cluster failed.
    #[error("mock cluster: {0}")]
    Cluster(#[from] rdkafka::error::KafkaError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The generator failed.
    #[error("generator: {0}")]
    Gen(#[from] KafkaIoError),
    /// The runtime failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A demo thread panicked.
    #[error("a demo thread panicked")]
    Panicked,
    /// The plugin file is missing.
    #[error("plugin {0} not found; build it with: cargo build --release --target wasm32-wasip2 -p stock-stats")]
    NoPlugin(String),
}

/// The topology a config and plugin make, as text: the plugin's graph, the real
/// topics its logical ones map to, and how the pipeline commits.
pub fn describe(cfg: &RunConfig, info: &PluginInfo) -> String {
    let mut out =
        match crate::topology::describe::text(&info.name, &info.version, &info.topology, Some(&cfg.application_id)) {
            Ok(text) => text,
            Err(e) => format!("{} {}: {e}\n", info.name, info.version),
        };
    let topics = Topics::of(cfg, &info.shape);
    let backend = match cfg.state.backend {
        StateBackend::Rocksdb => "RocksDB",
        StateBackend::Memory => "in-memory",
    };
    let _ = writeln!(out, "\ntopics");
    for (source, real) in info.shape.sources.iter().zip(&topics.sources) {
        let _ = writeln!(out, "  source      {} → {real}", source.topic);
    }
    for (sink, real) in info.shape.sinks.iter().zip(&topics.sinks) {
        let _ = writeln!(out, "  sink        {} → {real}", sink.topic);
    }
    for real in &topics.repartitions {
        let _ = writeln!(out, "  repartition {real} (purged once read and committed)");
    }
    for (global, real) in info.shape.globals.iter().zip(&topics.globals) {
        let _ = writeln!(
            out,
            "  global      {} → {real} (read whole on every host; store {})",
            global.topic, global.store.name
        );
    }
    for (sub, changelogs) in info.shape.subs.iter().zip(&topics.changelogs) {
        for (i, (store, changelog)) in sub.stores().into_iter().zip(changelogs).enumerate() {
            let how = if sub.source_table(i).is_some() { "its source topic, no changelog" } else { "compacted" };
            let _ = writeln!(out, "  store       {} ({backend}) → {changelog} ({how})", store.name);
        }
        if let Some(a) = sub.aggregation()
            && let Some(w) = a.window()
        {
            let grace = cfg.grace_ms.unwrap_or(a.grace_ms);
            let emit = cfg.emit.map_or_else(|| format!("{:?}", a.emit).to_lowercase(), |e| value_name(&e));
            let _ = writeln!(out, "  windows     {w}; in effect: grace {grace} ms, emit {emit}");
        }
    }
    let _ = writeln!(out, "  dead-letter {}", topics.dead_letter);
    let _ = writeln!(
        out,
        "guarantee     {}, commit every {} ms",
        value_name(&cfg.processing_guarantee),
        cfg.commit_interval_ms
    );
    out
}

/// How a setting's value is spelled in the config file and on the command line.
fn value_name<T: clap::ValueEnum>(value: &T) -> String {
    value.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
}

#[derive(Deserialize)]
struct Row {
    ticker: String,
    window_start: i64,
    window_end: i64,
    min_price: f64,
    count_trades: u64,
    volume: u64,
    avg_price: f64,
}

/// Runs the demo until `stop` is set (or `args.seconds` pass).
pub fn run(args: &DemoArgs, stop: &Arc<AtomicBool>) -> Result<(), DemoError> {
    if !args.plugin.exists() {
        return Err(DemoError::NoPlugin(args.plugin.display().to_string()));
    }
    let cluster = MockCluster::new(1)?;
    let partitions = 4;
    let cfg = RunConfig {
        application_id: "weir-demo".into(),
        plugin: args.plugin.clone(),
        bootstrap_servers: cluster.bootstrap_servers(),
        input_topic: Some("trades".into()),
        output_topic: Some("stockstats-output".into()),
        grace_ms: Some(1_000),
        instance_id: Some("demo".into()),
        // The mock cluster holds every fetch for fetch.wait.max.ms (500 ms by
        // default) even when data is waiting; a real broker answers at once.
        kafka: [("fetch.wait.max.ms".to_owned(), "20".to_owned())].into(),
        ..RunConfig::default()
    };
    let state_dir = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
    let cfg = RunConfig { state: crate::config::StateConfig { dir: state_dir.clone(), ..cfg.state.clone() }, ..cfg };
    let runtime = Runtime::new()?;
    let metrics = Metrics::default();
    let plugin = Pipeline::load_plugin(&cfg, &runtime)?;
    let topics = Topics::of(&cfg, &plugin.info().shape);
    // The mock cluster cannot create topics through the admin API.
    for topic in topics
        .sources
        .iter()
        .chain(&topics.sinks)
        .chain(&topics.repartitions)
        .chain(topics.changelogs.iter().flatten().filter(|c| !topics.sources.contains(c)))
        .chain([&topics.dead_letter])
    {
        cluster.create_topic(topic, partitions, 1)?;
    }
    let output = topics.sinks.first().cloned().unwrap_or_default();
    let mut pipeline = Pipeline::with_plugin(cfg.clone(), plugin, metrics.clone())?;
    let trades = GenConfig {
        bootstrap_servers: cfg.bootstrap_servers.clone(),
        topic: topics.input().to_owned(),
        partitions,
        count: 0,
        rate: args.rate,
        event_rate: args.rate.max(1),
        start_ms: None,
        tickers: args.tickers,
        disorder_ms: 300,
        bid_ratio: 0.2,
        seed: 7,
        compression: crate::config::Compression::None,
    };
    let began = Instant::now();
    let result = std::thread::scope(|s| {
        let pipeline = s.spawn(move || pipeline.run(stop));
        let generator = s.spawn(|| {
            crate::generator::run(&trades, base_config(&trades.bootstrap_servers, &Default::default()), stop)
        });
        let shown = show(&cfg, &output, &metrics, stop, args, began);
        stop.store(true, Ordering::Relaxed);
        let p = pipeline.join().map_err(|_| DemoError::Panicked)?;
        let g = generator.join().map_err(|_| DemoError::Panicked)?;
        p?;
        g?;
        shown
    });
    let _ = std::fs::remove_dir_all(&state_dir);
    result
}

fn show(
    cfg: &RunConfig,
    output: &str,
    metrics: &Metrics,
    stop: &AtomicBool,
    args: &DemoArgs,
    began: Instant,
) -> Result<(), DemoError> {
    let mut consumer_cfg = base_config(&cfg.bootstrap_servers, &Default::default());
    consumer_cfg.set("group.id", "weir-demo-viewer").set("enable.auto.commit", "false").set("fetch.wait.max.ms", "20");
    let consumer: BaseConsumer = consumer_cfg.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(output, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // Per ticker, the most recent windows by start.
    let mut latest: BTreeMap<String, BTreeMap<i64, Row>> = BTreeMap::new();
    let mut last_draw = Instant::now();
    let tty = std::io::stdout().is_terminal();
    while !stop.load(Ordering::Relaxed) {
        if args.seconds > 0 && began.elapsed() >= Duration::from_secs(args.seconds) {
            break;
        }
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50))
            && let Some(row) = msg.payload().and_then(|p| serde_json::from_slice::<Row>(p).ok())
        {
            let windows = latest.entry(row.ticker.clone()).or_default();
            windows.insert(row.window_start, row);
            while windows.len() > 16 {
                windows.pop_first();
            }
        }
        if last_draw.elapsed() >= Duration::from_secs(1) {
            last_draw = Instant::now();
            draw(&latest, metrics, tty, began);
        }
    }
    Ok(())
}

fn draw(latest: &BTreeMap<String, BTreeMap<i64, Row>>, metrics: &Metrics, tty: bool, began: Instant) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let mut out = String::new();
    if tty {
        out.push_str("\x1b[2J\x1b[H");
    }
    let _ = writeln!(
        out,
        "Weir demo — stock-stats on the embedded mock cluster ({} s)   Ctrl-C to stop",
        began.elapsed().as_secs()
    );
    let _ = writeln!(out, "last completed 5 s window per ticker (windows advance every 1 s)\n");
    let _ = writeln!(
        out,
        "{:<6} {:>15} {:>10} {:>7} {:>9} {:>10}",
        "ticker", "window (UTC)", "min ask", "trades", "volume", "avg ask"
    );
    // The newest window that has ended; the newer ones are still filling.
    for row in latest.values().filter_map(|w| w.values().rev().find(|r| r.window_end <= now)) {
        let secs = |ms: i64| {
            let s = ms.div_euclid(1000).rem_euclid(86_400);
            format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
        };
        let window = format!("{}-{}", secs(row.window_start), &secs(row.window_end)[6..]);
        let _ = writeln!(
            out,
            "{:<6} {:>15} {:>10.2} {:>7} {:>9} {:>10.3}",
            row.ticker, window, row.min_price, row.count_trades, row.volume, row.avg_price
        );
    }
    let _ = writeln!(out, "\n{}", metrics.summary());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
