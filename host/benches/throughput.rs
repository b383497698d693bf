//! Throughput on the real broker (a benchmark, not a test): `scripts/bench`.
//!
//! Generates N stock trades into a 4-partition topic, then measures, each in a
//! process of its own so peak RSS is per mode:
//! (a) pass-through — consume → produce the same records, exactly-once
//!     transactions every 100 ms, through Weir's own sink (same producer settings),
//!     no plugin: the physical limit of this broker and machine;
//! (b) weir stock-stats, exactly_once;
//! (c) weir stock-stats, at_least_once;
//! (d) as (b) with a hot swap every 250 ms between two builds of stock-stats,
//!     reporting the pause each swap causes on the pipeline thread (p50/p99);
//! (e) stock-stats written in the topology DSL (`stock-stats-dsl`), exactly_once,
//!     also as a ratio to (b), the `Aggregator` shorthand (target: within 5%) —
//!     the median of that ratio over the table's pair and three more pairs run
//!     back to back, (b) then (e), since the machine's speed drifts over a run;
//! (f) top10, two sub-topologies through a repartition topic, exactly_once;
//! (g) click-enrich, a stream–table join: N clicks enriched from a table of
//!     N/100 users that N/20 change-data-capture records keep current,
//!     exactly_once (records/s counts the records of both topics);
//! (h) search-clicks, a windowed stream–stream left join (5 s): N/2 searches,
//!     N/2 clicks, exactly_once;
//! (i) table restore: a table of N/2 users built from N change records, then a
//!     host on an empty state directory restoring it from its source topic
//!     (through the plugin's decoder, as Kafka Streams' source-topic
//!     optimisation does) — records/s, from the first record restored to the last.
//! Rates are records/s from the first record consumed to the commit that covers
//! the last one; ratios are against (a) measured in the same run.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use weir::config::{Guarantee, RunConfig};
use weir::generator::GenConfig;
use weir::kafka::admin::{TopicSpec, ensure_topics};
use weir::kafka::base_config;
use weir::kafka::sink::{OutRecord, Sink};
use weir::metrics::Metrics;
use weir::pipeline::Pipeline;
use weir::runtime::Runtime;

const PARTITIONS: i32 = 4;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    let bootstrap = env_or("WEIR_BENCH_BOOTSTRAP", "127.0.0.1:9092");
    let records: u64 = env_or("WEIR_BENCH_RECORDS", "1000000").parse()?;
    let plugin = std::env::var("WEIR_BENCH_PLUGIN").context("WEIR_BENCH_PLUGIN must name the stock-stats component")?;
    let id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let input = format!("bench-{id}-trades");

    eprintln!("generating {records} trades into {input} ({PARTITIONS} partitions, 50 tickers)…");
    let trades = GenConfig::bench(&bootstrap, &input, PARTITIONS, records);
    weir::generator::run(&trades, base_config(&bootstrap, &Default::default()), &AtomicBool::new(false))?;
    eprintln!("generating the join inputs…");
    joins::generate(&bootstrap, &input, records)?;

    let modes = [
        ("(a) pass-through, exactly_once, no plugin", "passthrough"),
        ("(b) weir stock-stats, exactly_once", "exactly_once"),
        ("(c) weir stock-stats, at_least_once", "at_least_once"),
        ("(d) as (b), hot swap every 250 ms", "swapping"),
        ("(e) weir stock-stats in the DSL, exactly_once", "dsl"),
        ("(f) weir top10 (two sub-topologies, one repartition), exactly_once", "top10"),
        ("(g) weir click-enrich (stream–table join), exactly_once", "enrich"),
        ("(h) weir search-clicks (windowed stream–stream join), exactly_once", "windowed"),
        ("(i) table restore from its source topic (records/s)", "restore"),
    ];
    let mut rows = Vec::new();
    let mut swaps = None;
    // `run_id` names the run's application (and so its group, which must be new).
    let run = |label: &str, mode: &str, run_id: &str| -> Result<Outcome> {
        eprintln!("running {label}…");
        let out = Command::new(std::env::current_exe()?)
            .args(["--child", mode, &bootstrap, &input, &records.to_string(), &plugin, run_id])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("{label} failed: {}", out.status);
        }
        let line = out.stdout.lines().map_while(Result::ok).last().context("no result line")?;
        let m: Outcome = serde_json::from_str(&line).with_context(|| format!("result line {line:?}"))?;
        Ok(m)
    };
    for (label, mode) in modes {
        let m = run(label, mode, &id.to_string())?;
        swaps = swaps.or(m.swaps);
        rows.push((label, m.records.unwrap_or(records) as f64 / m.secs, m.secs, m.rss));
    }
    // (e)/(b) in pairs run back to back: the table's, and three more.
    let mut pairs = vec![rows[4].1 / rows[1].1];
    for round in 1..=3 {
        let run_id = format!("{id}-pair{round}");
        let shorthand = run(&format!("pair {round}: (b)"), "exactly_once", &run_id)?.secs;
        let dsl = run(&format!("pair {round}: (e)"), "dsl", &run_id)?.secs;
        pairs.push(shorthand / dsl);
    }
    let base = rows[0].1;
    let rates: Vec<f64> = rows.iter().map(|r| r.1).collect();
    println!("\n{records} trades, {PARTITIONS} partitions, commit interval 100 ms, broker {bootstrap}\n");
    println!("| mode | records/s | vs (a) | seconds | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|");
    for (label, rate, secs, rss) in rows {
        println!("| {label} | {rate:.0} | {:.2} | {secs:.2} | {rss:.0} |", rate / base);
    }
    if let Some((n, p50, p99)) = swaps {
        println!("\nswap pause during (d): {n:.0} swaps, p50 {p50:.0} µs, p99 {p99:.0} µs");
    }
    let shown: Vec<String> = pairs.iter().map(|r| format!("{r:.2}")).collect();
    pairs.sort_by(f64::total_cmp);
    let median = (pairs[pairs.len() / 2 - 1] + pairs[pairs.len() / 2]) / 2.0;
    println!("\n(e) the DSL vs (b) the Aggregator shorthand: median {median:.2} of pairs {}", shown.join(", "));
    println!("(f) top10 vs (b) single-stage stock-stats: {:.2}", rows_rate(&rates, 5) / rows_rate(&rates, 1));
    Ok(())
}

/// One mode's run, as its child prints it (one JSON line): seconds, peak RSS in
/// MiB, the records the rate counts if not the trades, and for (d) the swaps
/// (count, p50 and p99 pause in µs).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Outcome {
    secs: f64,
    rss: f64,
    records: Option<u64>,
    swaps: Option<(f64, f64, f64)>,
}

fn rows_rate(rates: &[f64], i: usize) -> f64 {
    rates.get(i).copied().unwrap_or(f64::NAN)
}

/// Runs one mode and prints its [`Outcome`].
fn child(args: &[String]) -> Result<()> {
    let [mode, bootstrap, input, records, plugin, id] = args else { bail!("bad child arguments") };
    let records: u64 = records.parse()?;
    let other = |name: &str| plugin.replace("stock_stats.wasm", name);
    let ((secs, pauses), counted) = match mode.as_str() {
        "passthrough" => ((passthrough(bootstrap, input, records, id)?, None), None),
        "exactly_once" => (weir_run(bootstrap, input, records, plugin, id, Guarantee::ExactlyOnce, false)?, None),
        "at_least_once" => (weir_run(bootstrap, input, records, plugin, id, Guarantee::AtLeastOnce, false)?, None),
        "swapping" => (weir_run(bootstrap, input, records, plugin, id, Guarantee::ExactlyOnce, true)?, None),
        "dsl" => (
            weir_run(bootstrap, input, records, &other("stock_stats_dsl.wasm"), id, Guarantee::ExactlyOnce, false)?,
            None,
        ),
        "top10" => {
            (weir_run(bootstrap, input, records, &other("top10.wasm"), id, Guarantee::ExactlyOnce, false)?, None)
        }
        "enrich" => {
            let (secs, n) = joins::enrich(bootstrap, input, records, &other("click_enrich.wasm"), id)?;
            ((secs, None), Some(n))
        }
        "windowed" => {
            let (secs, n) = joins::windowed(bootstrap, input, records, &other("search_clicks.wasm"), id)?;
            ((secs, None), Some(n))
        }
        "restore" => {
            let (secs, n) = joins::restore(bootstrap, input, records, &other("click_enrich.wasm"), id)?;
            ((secs, None), Some(n))
        }
        other => bail!("unknown mode {other}"),
    };
    let swaps = pauses.filter(|p| !p.is_empty()).map(|mut p| {
        p.sort_unstable();
        let at = |q: f64| p[((p.len() - 1) as f64 * q).round() as usize] as f64;
        (p.len() as f64, at(0.5), at(0.99))
    });
    println!("{}", serde_json::to_string(&Outcome { secs, rss: peak_rss_mib(), records: counted, swaps })?);
    Ok(())
}

fn passthrough(bootstrap: &str, input: &str, records: u64, id: &str) -> Result<f64> {
    let base = base_config(bootstrap, &Default::default());
    let output = format!("bench-{id}-passthrough-out");
    ensure_topics(
        &base,
        &[TopicSpec {
            name: output.clone(),
            partitions: PARTITIONS,
            replication: -1,
            configs: vec![],
            exact_partitions: false,
        }],
        Duration::from_secs(30),
    )?;
    let health = weir::kafka::health::Health::new("bench", Default::default());
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut sink = Sink::new(base.clone(), &[], Some(&format!("bench-{id}-passthrough")), health, stop);
    sink.ready(Duration::from_secs(30))?;
    let mut config = base;
    config
        .set("group.id", format!("bench-{id}-passthrough"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("fetch.queue.backoff.ms", weir::kafka::source::FETCH_QUEUE_BACKOFF_MS);
    let consumer: BaseConsumer = config.create()?;
    // Assigned, not subscribed: the group only keeps the offsets.
    let mut all = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        all.add_partition_offset(input, p, Offset::Beginning)?;
    }
    consumer.assign(&all)?;
    let identity = weir::group::Identity {
        group: format!("bench-{id}-passthrough"),
        generation: -1,
        member_id: String::new(),
        instance: String::new(),
    };
    let mut next = [None::<i64>; PARTITIONS as usize];
    let (mut seen, mut started, mut last_commit) = (0u64, None::<Instant>, Instant::now());
    loop {
        if let Some(msg) = consumer.poll(Duration::from_millis(10)) {
            let msg = msg?;
            started.get_or_insert_with(Instant::now);
            sink.send(OutRecord {
                topic: &output,
                partition: None,
                key: msg.key(),
                value: msg.payload(),
                timestamp: msg.timestamp().to_millis(),
                headers: None,
            })?;
            next[msg.partition() as usize] = Some(msg.offset() + 1);
            seen += 1;
        }
        let done = seen >= records;
        if done || last_commit.elapsed() >= Duration::from_millis(100) {
            let mut offsets = TopicPartitionList::new();
            for (p, o) in next.iter().enumerate() {
                if let Some(o) = o {
                    offsets.add_partition_offset(input, p as i32, Offset::Offset(*o))?;
                }
            }
            if offsets.count() > 0 {
                sink.commit(&offsets, Some(identity.clone()))?;
            }
            last_commit = Instant::now();
        }
        if done {
            return Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()));
        }
    }
}

/// Runs weir on the input; returns seconds and, when `swapping`, the pause of
/// every swap in µs.
fn weir_run(
    bootstrap: &str,
    input: &str,
    records: u64,
    plugin: &str,
    id: &str,
    guarantee: Guarantee,
    swapping: bool,
) -> Result<(f64, Option<Vec<u128>>)> {
    let state = tempfile::tempdir()?;
    let flavour = if swapping {
        "-swap"
    } else if plugin.ends_with("stock_stats_dsl.wasm") {
        "-dsl"
    } else if plugin.ends_with("top10.wasm") {
        "-top10"
    } else {
        ""
    };
    let app = format!("bench-{id}-{guarantee:?}{flavour}").to_lowercase();
    let cfg = RunConfig {
        application_id: app.clone(),
        plugin: plugin.into(),
        bootstrap_servers: bootstrap.to_owned(),
        input_topic: Some(input.to_owned()),
        output_topic: Some(format!("{app}-out")),
        processing_guarantee: guarantee,
        grace_ms: Some(2_000),
        instance_id: Some("bench".into()),
        state: weir::config::StateConfig { dir: state.path().to_path_buf(), ..Default::default() },
        ..RunConfig::default()
    };
    let runtime = Runtime::new()?;
    let metrics = Metrics::default();
    let mut pipeline = Pipeline::new(cfg, &runtime, metrics.clone())?;
    let control = pipeline.control();
    // Precompiled once, as the registry does on upload; activation loads them.
    let next = plugin.replace("stock_stats.wasm", "stock_stats_next.wasm");
    let artifacts = if swapping {
        vec![runtime.precompile(&std::fs::read(&next)?)?, runtime.precompile(&std::fs::read(plugin)?)?]
    } else {
        Vec::new()
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let finished = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handle = s.spawn(|| pipeline.run(&stop));
        if swapping {
            s.spawn(|| -> Result<()> {
                let mut i = 0;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    let id = format!("build-{}", i % 2);
                    let plugin = runtime.load_precompiled(&artifacts[i % 2], Default::default(), &id)?;
                    control.activate(&format!("build-{}", i % 2), plugin, false)?;
                    i += 1;
                }
                Ok(())
            });
        }
        let started = await_through(&metrics, records, || handle.is_finished());
        let secs = started.elapsed().as_secs_f64();
        finished.store(true, Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        handle.join().map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
        let pauses = swapping.then(|| control.status().history.iter().map(|e| e.pause.as_micros()).collect());
        Ok((secs, pauses))
    })
}

/// Waits for the first record, then until `records` were read and the commit
/// covering them (and, with repartition topics, what they led to) is done, or
/// `stopped`. Returns when the first record came.
fn await_through(metrics: &Metrics, records: u64, stopped: impl Fn() -> bool) -> Instant {
    while metrics.records_in.get() == 0 && !stopped() {
        std::thread::sleep(Duration::from_micros(200));
    }
    // The first batch of records is in; the clock starts with it.
    let started = Instant::now();
    while metrics.records_in.get() < records && !stopped() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let next_commit = || {
        let commits = metrics.commits.get();
        while metrics.commits.get() == commits && !stopped() {
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    next_commit();
    // With a repartition topic, the second sub-topology is done once it has
    // read (and committed) everything the first wrote; after the commit above
    // the first writes nothing more.
    if metrics.repartition_out.get() > 0 {
        while metrics.repartition_in.get() < metrics.repartition_out.get() && !stopped() {
            std::thread::sleep(Duration::from_micros(200));
        }
        next_commit();
    }
    started
}

#[path = "throughput/joins.rs"]
mod joins;
