//! The join modes of the throughput benchmark: their inputs, and runs of
//! `click-enrich` (stream–table), `search-clicks` (windowed stream–stream) and
//! a table's restore from its source topic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use weir::config::RunConfig;
use weir::kafka::admin::{TopicSpec, ensure_topics};
use weir::kafka::base_config;
use weir::metrics::Metrics;
use weir::pipeline::Pipeline;
use weir::runtime::Runtime;

use super::{PARTITIONS, await_through};

const START: i64 = 1_700_000_000_000;

/// The topics of the join modes, named after the trades topic `input`.
struct Topics {
    profiles: String,
    clicks: String,
    searches: String,
    search_clicks: String,
    big_profiles: String,
    no_clicks: String,
}

fn topics(input: &str) -> Topics {
    let t = |name: &str| format!("{input}-{name}");
    Topics {
        profiles: t("profiles"),
        clicks: t("clicks"),
        searches: t("searches"),
        search_clicks: t("search-clicks"),
        big_profiles: t("big-profiles"),
        no_clicks: t("no-clicks"),
    }
}

/// Sizes for `records` (the trade count): clicks, profile changes and users
/// of (g); searches and clicks of (h); changes and users of (i).
fn sizes(records: u64) -> [u64; 7] {
    [records, records / 20, (records / 100).max(1), records / 2, records / 2, records, (records / 2).max(1)]
}

/// Writes every join mode's input (deterministic: a simple LCG).
pub fn generate(bootstrap: &str, input: &str, records: u64) -> Result<()> {
    let base = base_config(bootstrap, &Default::default());
    let t = topics(input);
    let specs: Vec<TopicSpec> = [&t.profiles, &t.clicks, &t.searches, &t.search_clicks, &t.big_profiles, &t.no_clicks]
        .into_iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: PARTITIONS,
            replication: -1,
            configs: vec![],
            exact_partitions: true,
        })
        .collect();
    ensure_topics(&base, &specs, Duration::from_secs(30))?;
    let mut config = base;
    config.set("linger.ms", "20").set("batch.num.messages", "10000").set("queue.buffering.max.messages", "1000000");
    let producer: BaseProducer = config.create()?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n.max(1)
    };
    let send = |topic: &str, key: &str, value: &str, ts: i64| -> Result<()> {
        let mut record = BaseRecord::to(topic).key(key).payload(value).timestamp(ts);
        loop {
            match producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    };
    let [clicks, changes, users, searches, search_clicks, big_changes, big_users] = sizes(records);
    let envelope = |rand: &mut dyn FnMut(u64) -> u64| {
        let region = ["eu", "us", "apac"][rand(3) as usize];
        format!(
            r#"{{"op":"u","before":null,"after":{{"name":"user{}","region":"{region}","tier":"pro"}}}}"#,
            rand(1000)
        )
    };
    // (g): profile changes spread over the clicks' event time.
    for i in 0..changes {
        let ts = START + (i * clicks / changes.max(1)) as i64;
        send(&t.profiles, &format!("u{}", rand(users)), &envelope(&mut rand), ts)?;
    }
    for i in 0..clicks {
        let page = format!(r#"{{"page":"/p{}","ms":{}}}"#, rand(50), rand(5_000));
        send(&t.clicks, &format!("u{}", rand(users)), &page, START + i as i64)?;
    }
    // (h): a search every 2 ms, in sessions of about five searches; each click
    // (one every 2 ms too) by the session of a search of the last 7 s, so most
    // meet one search within the 5 s window and some none.
    let sessions = (searches / 5).max(1);
    let of_search: Vec<u64> = (0..searches).map(|_| rand(sessions)).collect();
    for (i, session) in of_search.iter().enumerate() {
        let query = format!(r#"{{"query":"q{}","results":{}}}"#, rand(10_000), rand(20));
        send(&t.searches, &format!("s{session}"), &query, START + 2 * i as i64)?;
    }
    for i in 0..search_clicks {
        let click = format!(r#"{{"url":"u{}","position":{}}}"#, rand(10_000), rand(10));
        let search = (i as usize).saturating_sub(rand(3_500) as usize).min(of_search.len().saturating_sub(1));
        let session = of_search.get(search).copied().unwrap_or(0);
        send(&t.search_clicks, &format!("s{session}"), &click, START + 2 * i as i64 + 1)?;
    }
    // (i): a big table.
    for i in 0..big_changes {
        send(&t.big_profiles, &format!("u{}", rand(big_users)), &envelope(&mut rand), START + i as i64)?;
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(())
}

fn config(bootstrap: &str, app: &str, plugin: &str, state: &std::path::Path, topics: &[(&str, &str)]) -> RunConfig {
    RunConfig {
        application_id: app.to_owned(),
        plugin: plugin.into(),
        bootstrap_servers: bootstrap.to_owned(),
        topics: topics.iter().map(|(l, r)| ((*l).to_owned(), (*r).to_owned())).collect(),
        instance_id: Some("bench".into()),
        state: weir::config::StateConfig { dir: state.to_path_buf(), ..Default::default() },
        ..RunConfig::default()
    }
}

/// Runs `cfg` until `records` were read and committed; returns the seconds
/// from the first record.
fn run(cfg: RunConfig, records: u64) -> Result<f64> {
    let runtime = Runtime::new()?;
    let metrics = Metrics::default();
    let mut pipeline = Pipeline::new(cfg, &runtime, metrics.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let handle = s.spawn(|| pipeline.run(&stop));
        let started = await_through(&metrics, records, || handle.is_finished());
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        handle.join().map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
        Ok(secs)
    })
}

/// (g): seconds, and the records of both topics.
pub fn enrich(bootstrap: &str, input: &str, records: u64, plugin: &str, id: &str) -> Result<(f64, u64)> {
    let t = topics(input);
    let [clicks, changes, ..] = sizes(records);
    let app = format!("bench-{id}-enrich");
    let state = tempfile::tempdir()?;
    let out = format!("{app}-out");
    let topics =
        [("profiles-cdc", t.profiles.as_str()), ("clicks", t.clicks.as_str()), ("enriched-clicks", out.as_str())];
    let secs = run(config(bootstrap, &app, plugin, state.path(), &topics), clicks + changes)?;
    Ok((secs, clicks + changes))
}

/// (h): seconds, and the records of both topics.
pub fn windowed(bootstrap: &str, input: &str, records: u64, plugin: &str, id: &str) -> Result<(f64, u64)> {
    let t = topics(input);
    let [_, _, _, searches, clicks, ..] = sizes(records);
    let app = format!("bench-{id}-windowed");
    let state = tempfile::tempdir()?;
    let out = format!("{app}-out");
    let topics =
        [("searches", t.searches.as_str()), ("clicks", t.search_clicks.as_str()), ("search-results", out.as_str())];
    let secs = run(config(bootstrap, &app, plugin, state.path(), &topics), searches + clicks)?;
    Ok((secs, searches + clicks))
}

/// (i): builds the big table, then restores it on an empty state directory:
/// seconds from the first record of its topic restored to the last, and how many.
pub fn restore(bootstrap: &str, input: &str, records: u64, plugin: &str, id: &str) -> Result<(f64, u64)> {
    let t = topics(input);
    let [.., changes, _] = sizes(records);
    let app = format!("bench-{id}-restore");
    let out = format!("{app}-out");
    let topics = [
        ("profiles-cdc", t.big_profiles.as_str()),
        ("clicks", t.no_clicks.as_str()),
        ("enriched-clicks", out.as_str()),
    ];
    let built = tempfile::tempdir()?;
    run(config(bootstrap, &app, plugin, built.path(), &topics), changes)?;
    let empty = tempfile::tempdir()?;
    let runtime = Runtime::new()?;
    let metrics = Metrics::default();
    let mut pipeline =
        Pipeline::new(config(bootstrap, &app, plugin, empty.path(), &topics), &runtime, metrics.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let handle = s.spawn(|| pipeline.run(&stop));
        while metrics.restored_records.get() == 0 && !handle.is_finished() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let started = Instant::now();
        let mut last = (Instant::now(), metrics.restored_records.get());
        while metrics.tasks.get() < i64::from(PARTITIONS) && !handle.is_finished() {
            let restored = metrics.restored_records.get();
            if restored != last.1 {
                last = (Instant::now(), restored);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let restored = metrics.restored_records.get();
        if restored != last.1 {
            last = (Instant::now(), restored);
        }
        stop.store(true, Ordering::Relaxed);
        handle.join().map_err(|_| anyhow::anyhow!("pipeline panicked"))??;
        Ok((last.0.duration_since(started).as_secs_f64().max(1e-6), restored))
    })
}
