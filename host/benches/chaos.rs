//! Several hosts of one application on the real broker, measured (a benchmark,
//! not a test): `scripts/chaos`.
//!
//! Trades stream in at a steady rate (`WEIR_CHAOS_RATE`, default 10,000/s over
//! 8 partitions, `WEIR_CHAOS_TICKERS` 1,000 tickers) into stock-stats run by `weir run` hosts
//! (release build, commit every 100 ms, session timeout `WEIR_CHAOS_SESSION_MS`,
//! default 1,000 ms). A watcher reads the group's committed offsets every 20 ms;
//! a moved task's **pause** is the longest time between two commits of its
//! partition around the event (the host that had it commits last, the one that
//! takes it commits first). Measured:
//! - SIGKILL of a host with 3 hosts running, without and with a standby per
//!   task (three kills each, a different host each time);
//! - a clean stop (SIGTERM) of a host, and a host started again (scale 2 → 3);
//! - the rate a host on an empty state directory restores every task from the
//!   changelogs (records/s over the slowest task's restore);
//! - throughput of 1 against 3 hosts on N pre-produced trades
//!   (`WEIR_CHAOS_RECORDS`, default 400,000), from the first commit to the one
//!   covering the last trade.
//!
//! To study failover alone: `WEIR_CHAOS_ONLY=kill` runs only the SIGKILL rows,
//! `WEIR_CHAOS_KILLS` rounds of a kill per host (default 1),
//! `WEIR_CHAOS_STANDBYS` the standby counts to try (default `0,1`). Each kill
//! prints its time; the hosts' logs (kept) say where the time went: `joined
//! the group … took_ms`, `fenced a host …`, `task assigned … asked_ms`,
//! `changelog read to its end … first_record_ms`, `first commit of tasks
//! taken over … since_assigned_ms`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::consumer::BaseConsumer;
use rdkafka::{ClientConfig, TopicPartitionList};
use weir::admin::client::Client;
use weir::generator::GenConfig;
use weir::kafka::admin::{TopicSpec, ensure_topics};
use weir::kafka::base_config;

const PARTITIONS: i32 = 8;
const HOSTS: usize = 3;
/// A standby this many changelog records behind counts as warm.
const WARM_LAG: i64 = 5_000;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// Commits seen per partition: when each advance was seen, and to where.
type Commits = Arc<Mutex<BTreeMap<i32, Vec<(Instant, i64)>>>>;

/// Reads the group's committed offsets every 20 ms until stopped.
fn watch(
    bootstrap: &str,
    app: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> Result<(Commits, std::thread::JoinHandle<()>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", app)
        .set("isolation.level", "read_uncommitted")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let commits: Commits = Arc::default();
    let seen = commits.clone();
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(got) = weir::kafka::committed_offsets(&consumer, &tpl, Duration::from_secs(2)) {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for e in got.elements() {
                    let Some(offset) = e.offset().to_raw().filter(|o| *o >= 0) else { continue };
                    let history = seen.entry(e.partition()).or_default();
                    if history.last().is_none_or(|(_, last)| *last != offset) {
                        history.push((now, offset));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    Ok((commits, thread))
}

/// The longest time between two commits of `partition` from `from` on
/// (counting from the last commit before `from`), until `until`.
fn pause(commits: &Commits, partition: i32, from: Instant, until: Instant) -> Option<Duration> {
    let seen = commits.lock().ok()?;
    let history = seen.get(&partition)?;
    let start = history.iter().rposition(|(at, _)| *at <= from).unwrap_or(0);
    let window: Vec<Instant> = history[start..].iter().map(|(at, _)| *at).filter(|at| *at <= until).collect();
    window.windows(2).map(|w| w[1] - w[0]).max()
}

/// Whether every partition committed within the last `within`.
fn all_committing(commits: &Commits, within: Duration) -> bool {
    let Ok(seen) = commits.lock() else { return false };
    (0..PARTITIONS).all(|p| seen.get(&p).and_then(|h| h.last()).is_some_and(|(at, _)| at.elapsed() < within))
}

/// The hosts of one application.
struct App {
    bin: PathBuf,
    plugin: String,
    bootstrap: String,
    name: String,
    input: String,
    dir: PathBuf,
    standbys: usize,
    session_ms: u64,
    hosts: Vec<Option<(Child, Client)>>,
}

impl App {
    fn log(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("{}-host-{slot}.log", self.name))
    }

    fn start(&mut self, slot: usize) -> Result<()> {
        let log_path = self.log(slot);
        let from = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let state = self.dir.join(format!("{}-state-{slot}", self.name));
        let child = Command::new(&self.bin)
            .args(["run", "--bootstrap-servers", &self.bootstrap, "--plugin", &self.plugin])
            .args(["--application-id", &self.name, "--input-topic", &self.input])
            .args(["--output-topic", &format!("{}-out", self.name), "--state-dir"])
            .arg(&state)
            .args(["--instance-id", &format!("{}-{slot}", self.name), "--admin-addr", "127.0.0.1:0"])
            .args(["--num-standby-replicas", &self.standbys.to_string()])
            .args(["--session-timeout-ms", &self.session_ms.to_string(), "--grace-ms", "2000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            let text = std::fs::read(&log_path).unwrap_or_default();
            let mine = String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned();
            if let Some(addr) = mine.lines().find_map(|l| l.split("admin API listening addr=").nth(1)) {
                break Client::new(&format!("http://{}", addr.trim()), None);
            }
            if Instant::now() > deadline {
                bail!("host {slot} did not serve its admin API; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.hosts[slot] = Some((child, admin));
        Ok(())
    }

    /// The tasks host `slot` runs, as partitions.
    fn active(&self, slot: usize) -> Result<Vec<i32>> {
        let (_, admin) = self.hosts[slot].as_ref().context("host not running")?;
        let status: serde_json::Value = serde_json::from_str(&admin.get(&format!("/v1/pipelines/{}", self.name))?)?;
        Ok(status["group"]["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["role"] == "active")
            .filter_map(|t| t["task"].as_str()?.split('_').nth(1)?.parse().ok())
            .collect())
    }

    /// Whether every standby of every host is within a commit or so of its
    /// changelog's end (the stream goes on, so a standby is always a little behind).
    fn standbys_warm(&self) -> bool {
        self.hosts.iter().flatten().all(|(_, admin)| {
            let Ok(body) = admin.get(&format!("/v1/pipelines/{}", self.name)) else { return false };
            let Ok(status) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
            status["group"]["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["role"] == "standby")
                .all(|t| t["lag"].as_i64().is_some_and(|l| l <= WARM_LAG))
        })
    }

    fn signal(&mut self, slot: usize, signal: &str) -> Result<()> {
        let Some((mut child, _)) = self.hosts[slot].take() else { bail!("host {slot} is not running") };
        if signal == "KILL" {
            child.kill()?;
        } else {
            Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status()?;
        }
        child.wait()?;
        Ok(())
    }

    fn stop_all(&mut self) -> Result<()> {
        for slot in 0..self.hosts.len() {
            if self.hosts[slot].is_some() {
                self.signal(slot, "TERM")?;
            }
        }
        Ok(())
    }

    /// Waits until every partition commits and every host runs tasks (and,
    /// with standbys, every standby is warm), then a little longer.
    fn settle(&self, commits: &Commits) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let running: Vec<usize> = (0..self.hosts.len()).filter(|&s| self.hosts[s].is_some()).collect();
            let spread = running.iter().all(|&s| self.active(s).is_ok_and(|a| !a.is_empty()));
            if spread
                && all_committing(commits, Duration::from_millis(500))
                && (self.standbys == 0 || self.standbys_warm())
            {
                std::thread::sleep(Duration::from_secs(2));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not settle; logs in {}", self.name, self.dir.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for (child, _) in self.hosts.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Median and largest of `pauses`, in seconds.
fn summary(pauses: &[Duration]) -> (f64, f64) {
    let mut s: Vec<f64> = pauses.iter().map(Duration::as_secs_f64).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    (s[s.len() / 2], s[s.len() - 1])
}

/// The pauses of `partitions` around an event at `at`, once they all
/// committed again (and a second more).
fn pauses_after(commits: &Commits, partitions: &[i32], at: Instant) -> Result<Vec<Duration>> {
    let deadline = at + Duration::from_secs(120);
    loop {
        let done = partitions.iter().all(|p| {
            commits
                .lock()
                .ok()
                .and_then(|s| s.get(p).and_then(|h| h.last().map(|(t, _)| *t)))
                .is_some_and(|t| t > at + Duration::from_millis(200))
        });
        if done {
            std::thread::sleep(Duration::from_secs(1));
            let until = Instant::now();
            return Ok(partitions.iter().filter_map(|&p| pause(commits, p, at, until)).collect());
        }
        if Instant::now() > deadline {
            bail!("partitions {partitions:?} did not commit again within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn main() -> Result<()> {
    let bootstrap = env_or("WEIR_BENCH_BOOTSTRAP", "127.0.0.1:9092");
    let plugin = std::env::var("WEIR_BENCH_PLUGIN").context("WEIR_BENCH_PLUGIN must name the stock-stats component")?;
    let rate: u64 = env_or("WEIR_CHAOS_RATE", "10000").parse()?;
    let tickers: usize = env_or("WEIR_CHAOS_TICKERS", "1000").parse()?;
    let session_ms: u64 = env_or("WEIR_CHAOS_SESSION_MS", "1000").parse()?;
    let records: u64 = env_or("WEIR_CHAOS_RECORDS", "400000").parse()?;
    // `WEIR_CHAOS_ONLY=kill`: the SIGKILL rows alone (`WEIR_CHAOS_KILLS` rounds
    // of a kill per host, default 1), to study failover.
    let only_kills = env_or("WEIR_CHAOS_ONLY", "") == "kill";
    let rounds: usize = env_or("WEIR_CHAOS_KILLS", "1").parse()?;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_weir"));
    let id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let dir = tempfile::Builder::new().prefix("weir-chaos-").tempdir()?;
    let keep = dir.path().to_path_buf();
    let base = base_config(&bootstrap, &Default::default());
    let topic = |name: &str| TopicSpec {
        name: name.to_owned(),
        partitions: PARTITIONS,
        replication: -1,
        configs: vec![],
        exact_partitions: true,
    };

    let mut rows: Vec<(String, usize, usize, (f64, f64))> = Vec::new();
    let mut restore_line = String::new();
    let standby_counts: Vec<usize> =
        env_or("WEIR_CHAOS_STANDBYS", "0,1").split(',').map(str::parse).collect::<Result<_, _>>()?;
    for standbys in standby_counts {
        let name = format!("chaos-{id}-s{standbys}");
        // A steady stream of its own (no backlog to catch up on).
        let stream = format!("{name}-stream");
        ensure_topics(&base, &[topic(&stream)], Duration::from_secs(30))?;
        let stop_gen = Arc::new(AtomicBool::new(false));
        let generator = {
            let cfg = GenConfig {
                bootstrap_servers: bootstrap.clone(),
                topic: stream.clone(),
                partitions: PARTITIONS,
                count: u64::MAX,
                rate,
                event_rate: 1_000,
                start_ms: Some(1_700_000_000_000),
                tickers,
                disorder_ms: 500,
                bid_ratio: 0.2,
                seed: 7,
                compression: weir::config::Compression::None,
            };
            let (stop, base) = (stop_gen.clone(), base.clone());
            std::thread::spawn(move || weir::generator::run(&cfg, base, &stop))
        };
        let stop_watch = Arc::new(AtomicBool::new(false));
        let (commits, watcher) = watch(&bootstrap, &name, &stream, stop_watch.clone())?;
        let mut app = App {
            bin: bin.clone(),
            plugin: plugin.clone(),
            bootstrap: bootstrap.clone(),
            name: name.clone(),
            input: stream.clone(),
            dir: keep.clone(),
            standbys,
            session_ms,
            hosts: (0..HOSTS).map(|_| None).collect(),
        };
        for slot in 0..HOSTS {
            app.start(slot)?;
        }
        eprintln!("{name}: 3 hosts, {standbys} standby per task; settling…");
        app.settle(&commits)?;
        // Three kills, a different host each time, each started again after.
        let mut pauses = Vec::new();
        let mut moved = 0;
        for victim in (0..rounds).flat_map(|_| 0..HOSTS) {
            let partitions = app.active(victim)?;
            let at = Instant::now();
            let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            app.signal(victim, "KILL")?;
            let moved_pauses = pauses_after(&commits, &partitions, at)?;
            moved += partitions.len();
            eprintln!(
                "{name}: SIGKILL host {victim} at {}.{:03} (Unix time): tasks {partitions:?} moved, pauses {:?}",
                wall.as_secs(),
                wall.subsec_millis(),
                moved_pauses.iter().map(|p| p.as_millis()).collect::<Vec<_>>()
            );
            pauses.extend(moved_pauses);
            app.start(victim)?;
            app.settle(&commits)?;
        }
        rows.push((format!("SIGKILL a host (session {session_ms} ms)"), standbys, moved, summary(&pauses)));
        if standbys == 1 && !only_kills {
            // A clean stop, then the host back (scale 3 → 2 → 3).
            let partitions = app.active(0)?;
            let at = Instant::now();
            app.signal(0, "TERM")?;
            let down = pauses_after(&commits, &partitions, at)?;
            rows.push(("SIGTERM a host (clean stop, 3 → 2)".into(), standbys, partitions.len(), summary(&down)));
            app.settle(&commits)?;
            let at = Instant::now();
            app.start(0)?;
            app.settle(&commits)?;
            let partitions = app.active(0)?;
            let up = pauses_after(&commits, &partitions, at)?;
            rows.push(("start a host (scale 2 → 3)".into(), standbys, partitions.len(), summary(&up)));
            // Restore: every host stops; one starts on an empty state directory.
            app.stop_all()?;
            stop_gen.store(true, Ordering::Relaxed);
            let slot = HOSTS;
            app.hosts.push(None);
            let from = std::fs::metadata(app.log(slot)).map_or(0, |m| m.len() as usize);
            app.standbys = 0;
            app.start(slot)?;
            let deadline = Instant::now() + Duration::from_secs(600);
            let log = loop {
                let log = std::fs::read_to_string(app.log(slot))?;
                if log[from.min(log.len())..].matches("task assigned").count() >= PARTITIONS as usize {
                    break log;
                }
                if Instant::now() > deadline {
                    bail!("the host on an empty state directory did not restore every task");
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let (mut records, mut slowest) = (0u64, 0u64);
            for line in log[from.min(log.len())..].lines().filter(|l| l.contains("task assigned")) {
                let field = |name: &str| -> u64 {
                    line.split(&format!("{name}="))
                        .nth(1)
                        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                        .unwrap_or(0)
                };
                records += field("restored");
                slowest = slowest.max(field("took_ms"));
            }
            let per_sec = records as f64 / (slowest.max(1) as f64 / 1000.0);
            restore_line = format!(
                "restore on an empty state directory: {records} changelog records for {PARTITIONS} tasks in {:.2} s = {per_sec:.0} records/s",
                slowest as f64 / 1000.0
            );
        }
        app.stop_all()?;
        stop_watch.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        stop_gen.store(true, Ordering::Relaxed);
        let _ = generator.join();
    }

    let mut throughput = Vec::new();
    if !only_kills {
        // Throughput of 1 against 3 hosts on the same pre-produced trades.
        let batch = format!("chaos-{id}-batch");
        ensure_topics(&base, &[topic(&batch)], Duration::from_secs(30))?;
        let cfg = GenConfig::bench(&bootstrap, &batch, PARTITIONS, records);
        weir::generator::run(&cfg, base.clone(), &AtomicBool::new(false))?;
        let ends = end_offsets(&bootstrap, &batch)?;
        for hosts in [1usize, HOSTS] {
            let name = format!("chaos-{id}-t{hosts}");
            let stop_watch = Arc::new(AtomicBool::new(false));
            let (commits, watcher) = watch(&bootstrap, &name, &batch, stop_watch.clone())?;
            let mut app = App {
                bin: bin.clone(),
                plugin: plugin.clone(),
                bootstrap: bootstrap.clone(),
                name,
                input: batch.clone(),
                dir: keep.clone(),
                standbys: 0,
                session_ms,
                hosts: (0..hosts).map(|_| None).collect(),
            };
            for slot in 0..hosts {
                app.start(slot)?;
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            let secs = loop {
                let seen = commits.lock().map(|s| s.clone()).unwrap_or_default();
                let done =
                    ends.iter().all(|(p, end)| seen.get(p).and_then(|h| h.last()).is_some_and(|(_, o)| o >= end));
                if done {
                    let first = seen.values().filter_map(|h| h.first().map(|(t, _)| *t)).min();
                    let last = seen.values().filter_map(|h| h.last().map(|(t, _)| *t)).max();
                    break match (first, last) {
                        (Some(f), Some(l)) => (l - f).as_secs_f64(),
                        _ => f64::NAN,
                    };
                }
                if Instant::now() > deadline {
                    bail!("{hosts} hosts did not finish the batch");
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            app.stop_all()?;
            stop_watch.store(true, Ordering::Relaxed);
            let _ = watcher.join();
            throughput.push((hosts, records as f64 / secs));
        }
    }

    println!();
    println!("| event | standbys | moved tasks | pause per moved task, median | largest |");
    println!("|---|---|---|---|---|");
    for (event, standbys, moved, (median, max)) in &rows {
        println!("| {event} | {standbys} | {moved} | {median:.2} s | {max:.2} s |");
    }
    println!();
    println!("{restore_line}");
    let one = throughput.first().map_or(f64::NAN, |t| t.1);
    for (hosts, per_sec) in &throughput {
        println!("throughput with {hosts} host(s): {per_sec:.0} trades/s ({:.2}× one host)", per_sec / one);
    }
    eprintln!("logs: {}", keep.display());
    std::mem::forget(dir);
    Ok(())
}

fn end_offsets(bootstrap: &str, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut ends = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (_, high) = rdkafka::consumer::Consumer::fetch_watermarks(&consumer, topic, p, Duration::from_secs(10))?;
        ends.insert(p, high);
    }
    Ok(ends)
}
