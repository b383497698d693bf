//! Several hosts on one application, through what a production cluster does to
//! them: three hosts over eight partitions with trades streaming in; SIGKILLs of
//! random hosts (one restarted under the same identity, one on an empty state
//! directory under a new one, one under the same identity on an empty state
//! directory while a stray producer holds a transaction open on every changelog
//! partition); the broker stopped for more than 20 s and started again (a host
//! stopped and started meanwhile); a host SIGSTOPped past its session timeout and
//! resumed; scale 1 → 3 → 1. After every
//! event commits resume on every partition and every host is alive; at the end
//! every window equals the independent recomputation.
//!
//! The test runs its own broker (it stops it), so it can run beside the others.
//! `WEIR_CHAOS_ROUNDS` repeats the events (the soak in `scripts/soak`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, TopicPartitionList};
use weir::admin::client::Client;

use crate::support::*;

const PARTITIONS: i32 = 8;
const GRACE_MS: i64 = 2_000;
const HOSTS: usize = 3;
/// How long a host may take to get commits going again after an event.
const RECOVERY: Duration = Duration::from_secs(180);

struct Host {
    weir: Weir,
    admin: Client,
}

struct Chaos {
    broker: Broker,
    app: String,
    input: String,
    output: String,
    dir: tempfile::TempDir,
    hosts: Vec<Option<Host>>,
    /// Instance id and state directory of each host slot.
    identity: Vec<(String, PathBuf)>,
    generator: Option<Child>,
    /// Set at the end of a passing run; otherwise the logs are kept and shown.
    passed: bool,
}

impl Chaos {
    fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    fn log(&self, slot: usize) -> PathBuf {
        self.dir.path().join(format!("host-{slot}.log"))
    }

    fn start_host(&mut self, slot: usize) -> Result<()> {
        let (instance, state) = self.identity[slot].clone();
        let mut args = pipeline_args("stock-stats", &self.app, &self.input, &self.output, &state)?;
        args.extend(["--grace-ms".into(), GRACE_MS.to_string(), "--instance-id".into(), instance]);
        let mut weir = spawn_weir_on(&self.bootstrap(), &args, &self.log(slot), &[])?;
        let admin = Client::new(&weir.admin_url()?, None);
        self.hosts[slot] = Some(Host { weir, admin });
        Ok(())
    }

    fn host(&mut self, slot: usize) -> Result<&mut Host> {
        self.hosts[slot].as_mut().with_context(|| format!("host {slot} is not running"))
    }

    fn kill(&mut self, slot: usize) -> Result<()> {
        let mut host = self.hosts[slot].take().with_context(|| format!("host {slot} is not running"))?;
        host.weir.kill()
    }

    /// A new identity (instance id and empty state directory) for a slot.
    fn new_identity(&mut self, slot: usize, tag: &str) {
        let state = self.dir.path().join(format!("state-{slot}-{tag}"));
        self.identity[slot] = (format!("{}-h{slot}-{tag}", self.app), state);
    }

    /// The group's committed offsets, without waiting for pending transactions.
    fn committed(&self) -> Result<BTreeMap<i32, i64>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", &self.app)
            .set("isolation.level", "read_uncommitted")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&self.input, p);
        }
        let got = weir::kafka::committed_offsets(&consumer, &tpl, Duration::from_secs(20))?;
        Ok(got.elements().iter().map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1))).collect())
    }

    /// Fails with the host's log if it exited.
    fn check_alive(&mut self) -> Result<()> {
        for slot in 0..self.hosts.len() {
            if let Some(host) = self.hosts[slot].as_mut()
                && let Some(status) = host.weir.exited()?
            {
                return host.weir.fail(format!("host {slot} exited by itself with {status}"));
            }
        }
        Ok(())
    }

    /// Waits until every partition committed past where it was when called
    /// (trades keep arriving on every partition), checking that every host lives.
    fn await_progress(&mut self, after: &str) -> Result<()> {
        let from = self.committed()?;
        let deadline = Instant::now() + RECOVERY;
        loop {
            self.check_alive()?;
            let now = self.committed()?;
            let stuck: Vec<i32> = (0..PARTITIONS).filter(|p| now.get(p) <= from.get(p)).collect();
            if stuck.is_empty() {
                eprintln!("chaos: commits resumed on every partition after {after}");
                return Ok(());
            }
            if Instant::now() > deadline {
                let tails: Vec<String> = (0..self.hosts.len()).map(|s| tail(&self.log(s), 15)).collect();
                bail!("after {after}, partitions {stuck:?} made no commit in {RECOVERY:?}\n{}", tails.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn status(&mut self, slot: usize) -> Result<serde_json::Value> {
        let app = self.app.clone();
        let host = self.host(slot)?;
        Ok(serde_json::from_str(&host.admin.get(&format!("/v1/pipelines/{app}"))?)?)
    }

    fn metrics(&mut self, slot: usize) -> Result<(f64, f64)> {
        let app = self.app.clone();
        let text = self.host(slot)?.admin.get("/v1/metrics")?;
        Ok((metric(&text, "tasks", &app).unwrap_or(0.0), metric(&text, "records_in_total", &app).unwrap_or(0.0)))
    }

    /// Waits until every running host owns a task and reads records.
    fn await_all_consuming(&mut self, when: &str) -> Result<()> {
        let running: Vec<usize> = (0..self.hosts.len()).filter(|s| self.hosts[*s].is_some()).collect();
        let before: Vec<f64> = running.iter().map(|s| self.metrics(*s).map(|m| m.1)).collect::<Result<_>>()?;
        let deadline = Instant::now() + RECOVERY;
        loop {
            self.check_alive()?;
            let mut idle = Vec::new();
            for (i, slot) in running.iter().enumerate() {
                let (tasks, records) = self.metrics(*slot)?;
                if tasks < 1.0 || records <= before[i] {
                    idle.push(*slot);
                }
            }
            if idle.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{when}: hosts {idle:?} own no task or read nothing");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until every running host's status says whether Kafka is reachable.
    fn await_reachable(&mut self, reachable: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for slot in 0..self.hosts.len() {
                if self.hosts[slot].is_some() {
                    let status = self.status(slot)?;
                    all &= status["kafka"]["reachable"] == reachable;
                }
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the hosts' status never said kafka.reachable = {reachable}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = log.lines().rev().take(lines).collect::<Vec<_>>().into_iter().rev().collect();
    format!("--- {} ---\n{}", path.display(), last.join("\n"))
}

/// Opens a transaction on every changelog partition and leaves it open: what a
/// hung host or one that died and came back under another identity leaves behind.
fn stray_transaction(bootstrap: &str, changelog: &str, timeout_ms: u64) -> Result<BaseProducer> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("stray-{}", unique("txn")))
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    producer.begin_transaction()?;
    for p in 0..PARTITIONS {
        let record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(changelog).partition(p).key(&b"stray"[..]).payload(&b"never committed"[..]);
        producer.send(record).map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(producer)
}

#[test]
fn three_hosts_stay_exact_through_kills_an_outage_a_stall_and_a_stray_transaction() -> Result<()> {
    let rounds: usize = std::env::var("WEIR_CHAOS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(1);
    let seed: u64 = std::env::var("WEIR_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("chaos: seed {seed} (WEIR_CHAOS_SEED), {rounds} round(s)");
    let mut rng = StdRng::seed_from_u64(seed);
    let broker = Broker::start()?;
    let app = unique("chaos");
    let dir = tempfile::tempdir()?;
    let mut chaos = Chaos {
        input: format!("{app}-trades"),
        output: format!("{app}-out"),
        identity: vec![(String::new(), PathBuf::new()); HOSTS],
        hosts: (0..HOSTS).map(|_| None).collect(),
        generator: None,
        passed: false,
        broker,
        app,
        dir,
    };
    for slot in 0..HOSTS {
        chaos.new_identity(slot, "a");
    }
    create_topic_on(&chaos.bootstrap(), &chaos.input, PARTITIONS)?;
    let changelog = format!("{}-windows-changelog", chaos.app);
    let generator = gen_trades_command(&chaos.bootstrap(), &chaos.input, 0, 40, PARTITIONS, 1_500, 600, GEN_START_MS)?
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(chaos.dir.path().join("generator.log"))?)
        .spawn()?;
    chaos.generator = Some(generator);

    // Scale 1 → 3.
    chaos.start_host(0)?;
    chaos.await_progress("one host started")?;
    chaos.start_host(1)?;
    chaos.start_host(2)?;
    chaos.await_progress("scaling to three hosts")?;
    chaos.await_all_consuming("after scaling to three")?;

    for round in 0..rounds {
        eprintln!("chaos: round {round}");
        // SIGKILL a random host; it comes back under the same identity.
        let victim = rng.random_range(0..HOSTS);
        chaos.kill(victim)?;
        chaos.start_host(victim)?;
        chaos.await_progress(&format!("SIGKILL of host {victim} and its restart"))?;

        // SIGKILL another; it comes back on an empty state directory under a new
        // identity. Its open transaction, if any, is fenced by nobody.
        let victim = (victim + rng.random_range(1..HOSTS)) % HOSTS;
        chaos.kill(victim)?;
        chaos.new_identity(victim, &format!("r{round}"));
        chaos.start_host(victim)?;
        chaos.await_progress(&format!("SIGKILL of host {victim} and a restart on an empty state directory"))?;

        // A stray producer's transaction stays open on every changelog partition
        // while the hosts commit past it; then a host loses its state and must
        // restore through it.
        // Every restore during its life waits for it (the logs from here on say so).
        let logged_before: Vec<usize> =
            (0..HOSTS).map(|h| std::fs::metadata(chaos.log(h)).map_or(0, |m| m.len() as usize)).collect();
        let stray = stray_transaction(&chaos.bootstrap(), &changelog, 20_000)?;
        chaos.await_progress("the stray transaction opened")?;
        chaos.await_progress("more commits after the stray transaction")?;
        // A host running tasks (one back on an empty state directory may run
        // none yet: the hosts with caught-up standbys took its tasks while it
        // warms copies up).
        let first = rng.random_range(0..HOSTS);
        let mut victim = first;
        for h in (0..HOSTS).map(|i| (first + i) % HOSTS) {
            if chaos.metrics(h)?.0 >= 1.0 {
                victim = h;
                break;
            }
        }
        chaos.kill(victim)?;
        let (instance, _) = chaos.identity[victim].clone();
        chaos.identity[victim] = (instance, chaos.dir.path().join(format!("state-{victim}-empty{round}")));
        chaos.start_host(victim)?;
        chaos.await_progress(&format!("host {victim}'s tasks restored through the stray transaction"))?;
        drop(stray);
        // Whoever restored tasks while it was open — the victim itself, the
        // hosts with caught-up standbys that take its tasks, or a host still
        // warming up from the round's restart — waited for it and said so.
        let waited = (0..HOSTS).any(|h| {
            std::fs::read_to_string(chaos.log(h)).is_ok_and(|log| {
                log.get(logged_before[h]..).is_some_and(|new| new.contains("restore waits for records up to the end"))
            })
        });
        assert!(
            waited,
            "a host restoring through the stray transaction (host {victim} was killed) should have said it waits:\n{}",
            tail(&chaos.log(victim), 40)
        );

        // The broker goes away for more than 20 s. A host told to stop meanwhile
        // stops cleanly; started again while the broker is still away, it waits.
        let down = Instant::now();
        chaos.broker.stop()?;
        chaos.await_reachable(false)?;
        let victim = rng.random_range(0..HOSTS);
        let stopping = Instant::now();
        let mut host = chaos.hosts[victim].take().context("host gone")?;
        terminate(&mut host.weir)?;
        eprintln!("chaos: host {victim} stopped cleanly in {:?} with the broker away", stopping.elapsed());
        chaos.start_host(victim)?;
        chaos.await_reachable(false)?;
        while down.elapsed() < Duration::from_secs(22) {
            chaos.check_alive()?;
            std::thread::sleep(Duration::from_millis(500));
        }
        chaos.broker.restart()?;
        chaos.await_reachable(true)?;
        chaos.await_progress("the broker came back")?;

        // A host stalls past its session timeout, then resumes.
        let victim = rng.random_range(0..HOSTS);
        signal(&chaos.host(victim)?.weir, "-STOP")?;
        std::thread::sleep(Duration::from_secs(15));
        chaos.await_progress(&format!("host {victim} stalled (its partitions moved)"))?;
        signal(&chaos.host(victim)?.weir, "-CONT")?;
        chaos.await_progress(&format!("host {victim} resumed"))?;
        chaos.await_all_consuming(&format!("end of round {round}"))?;
    }

    // Scale 3 → 1: two hosts leave cleanly.
    for slot in 1..HOSTS {
        let mut host = chaos.hosts[slot].take().context("host gone")?;
        terminate(&mut host.weir)?;
    }
    chaos.await_progress("scaling down to one host")?;
    chaos.await_all_consuming("on one host")?;

    // The stream ends; the last host catches up and stops cleanly.
    let mut generator = chaos.generator.take().context("no generator")?;
    std::process::Command::new("kill").args(["-TERM", &generator.id().to_string()]).status()?;
    let status = generator.wait()?;
    assert!(status.success(), "the trade generator failed: {status}");
    let (bootstrap, app, input, output) =
        (chaos.bootstrap(), chaos.app.clone(), chaos.input.clone(), chaos.output.clone());
    let host = chaos.host(0)?;
    await_caught_up_on(&bootstrap, &app, &input, &mut host.weir, Duration::from_secs(300))?;
    terminate(&mut host.weir)?;
    chaos.hosts[0] = None;

    let trades = read_all_on(&bootstrap, &input)?;
    let want = recompute(&trades, GRACE_MS);
    assert!(want.len() > 1000, "the recomputation should cover many windows, got {}", want.len());
    let got = last_results(&read_all_on(&bootstrap, &output)?)?;
    eprintln!("chaos: {} trades, {} windows compared", trades.len(), want.len());
    assert_same(&got, &want);
    chaos.passed = true;
    Ok(())
}

impl Drop for Chaos {
    fn drop(&mut self) {
        // A failed test leaves nothing running, and its logs to read.
        for host in self.hosts.iter_mut().flatten() {
            let _ = host.weir.kill();
        }
        if let Some(generator) = self.generator.as_mut() {
            let _ = generator.kill();
            let _ = generator.wait();
        }
        if !self.passed {
            for slot in 0..self.hosts.len() {
                eprintln!("{}", tail(&self.log(slot), 30));
            }
            let kept = std::env::temp_dir().join(format!("{}-logs", self.app));
            if std::fs::create_dir_all(&kept).is_ok() {
                for slot in 0..self.hosts.len() {
                    let _ = std::fs::copy(self.log(slot), kept.join(format!("host-{slot}.log")));
                }
                eprintln!("chaos: the hosts' logs are kept in {}", kept.display());
            }
        }
    }
}

/// Two hosts started with one instance id: the one that joined first is fenced
/// by the group (FENCED_INSTANCE_ID) and stops with the cause named instead of
/// taking turns forever. Nothing is lost: a host configured correctly
/// afterwards brings the output to the recomputation.
#[test]
fn two_hosts_with_one_identity_stop_loudly_and_lose_nothing() -> Result<()> {
    const PARTS: i32 = 4;
    let app = unique("twins");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, PARTS)?;
    gen_trades(&input, 30_000, 20, PARTS, 1_000, 0)?;
    let dir = tempfile::tempdir()?;
    let args = |state: &str, instance: &str| -> Result<Vec<String>> {
        let mut args = pipeline_args("stock-stats", &app, &input, &output, &dir.path().join(state))?;
        args.extend(["--grace-ms".into(), GRACE_MS.to_string(), "--instance-id".into(), instance.into()]);
        Ok(args)
    };
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let mut a = spawn_weir(&args("a", "twin")?, &logs[0])?;
    await_committed_at_least(&app, &input, PARTS, 1_000, &mut a)?;
    let mut b = spawn_weir(&args("b", "twin")?, &logs[1])?;
    // Until one of them gives up.
    let deadline = Instant::now() + Duration::from_secs(240);
    let stopped = loop {
        if let Some(status) = a.exited()? {
            break (0, status);
        }
        if let Some(status) = b.exited()? {
            break (1, status);
        }
        if Instant::now() > deadline {
            let tails = format!("{}\n{}", tail(&logs[0], 20), tail(&logs[1], 20));
            bail!("neither host stopped although they share an instance id\n{tails}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!stopped.1.success(), "a host that gives up exits non-zero");
    let log = std::fs::read_to_string(&logs[stopped.0])?;
    assert!(log.contains("another host joined with this host's instance id"), "{log}");
    for weir in [&mut a, &mut b] {
        if weir.exited()?.is_none() {
            weir.kill()?;
        }
    }
    let mut c = spawn_weir(&args("c", "single")?, &dir.path().join("c.log"))?;
    await_caught_up(&app, &input, &mut c, Duration::from_secs(180))?;
    terminate(&mut c)?;
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&read_all(&input)?, GRACE_MS));
    Ok(())
}
