//! Several pipelines in one host: stock-stats stays exact while, in the same
//! process, a hostile plugin's trap, infinite loop, memory bomb, huge output and
//! file, environment and clock access are contained,
//! and a pipeline configured to pause on plugin failure stops alone, with its
//! reason in the admin API, while the host keeps running. Each pipeline runs under
//! the host's `[limits]` with its own `limits` keys on top.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weir::admin::client::{Client, ClientError};

use crate::support::*;

#[test]
fn one_host_runs_pipelines_that_fail_independently() -> Result<()> {
    let app = unique("host");
    let (stats_in, hostile_in, paused_in) = (format!("{app}-trades"), format!("{app}-acts"), format!("{app}-acts2"));
    create_topic(&stats_in, 2)?;
    create_topic(&hostile_in, 1)?;
    create_topic(&paused_in, 1)?;
    gen_trades(&stats_in, 40_000, 30, 2, 1_000, 0)?;
    let base = 1_700_000_000_000i64;
    let mut acts: Vec<RawRecord> =
        (0..600i64).map(|i| (Some(b"k".to_vec()), Some(br#"{"act":"count"}"#.to_vec()), base + i)).collect();
    let hostile_acts = [
        (100usize, "trap", "plugin trapped"),
        (150, "huge", "the limit is 2097152 bytes"),
        (200, "fs", "file access denied"),
        (250, "env", "environment is empty"),
        (300, "loop", "interrupt"),
        (400, "clock", "clock is frozen at 0 s"),
        (500, "oom", "plugin trapped"),
    ];
    for (at, act, _) in hostile_acts {
        acts.insert(at, (Some(b"k".to_vec()), Some(format!(r#"{{"act":"{act}"}}"#).into_bytes()), base + at as i64));
    }
    produce(&hostile_in, &acts)?;
    produce(&paused_in, &acts)?;

    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let stats = plugin("stock-stats")?.display().to_string();
    let hostile = plugin("hostile")?.display().to_string();
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{d}/host"
[limits]
# The budget runs on the wall clock (epoch ticks): generous enough that a healthy
# call slowed down by the other hosts a test run starts beside it is not cut off.
call_budget_ms = 1000
memory_mb = 32
retries = 1

[[pipeline]]
application_id = "{app}-stats"
plugin = "{stats}"
input_topic = "{stats_in}"
output_topic = "{stats_in}-out"
grace_ms = 2000
instance_id = "host-test"
state = {{ dir = "{d}/state" }}

[[pipeline]]
application_id = "{app}-hostile"
plugin = "{hostile}"
input_topic = "{hostile_in}"
output_topic = "{hostile_in}-out"
dead_letter_topic = "{hostile_in}-dead"
instance_id = "host-test"
state = {{ dir = "{d}/state" }}
limits = {{ max_value_kb = 2048 }}

[[pipeline]]
application_id = "{app}-paused"
plugin = "{hostile}"
input_topic = "{paused_in}"
output_topic = "{paused_in}-out"
instance_id = "host-test"
state = {{ dir = "{d}/state" }}
limits = {{ on_failure = "pause" }}
"#
        ),
    )?;
    let mut weir = spawn_weir_serve(&config, &dir.path().join("weir.log"))?;
    let admin = Client::new(&weir.admin_url()?, None);

    // The pausing pipeline stops, and says why.
    let deadline = Instant::now() + Duration::from_secs(120);
    let paused = loop {
        let s: serde_json::Value = serde_json::from_str(&admin.get(&format!("/v1/pipelines/{app}-paused"))?)?;
        if let Some(reason) = s["failed"].as_str() {
            break reason.to_owned();
        }
        if Instant::now() > deadline {
            bail!("the pausing pipeline never stopped: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(paused.contains("on_failure = pause") && paused.contains("panicked"), "{paused}");

    // Every version label carries its id, the first one too.
    let s: serde_json::Value = serde_json::from_str(&admin.get(&format!("/v1/pipelines/{app}-stats"))?)?;
    assert!(s["active"].as_str().is_some_and(|a| a.starts_with("stock-stats@0.1.0#")), "{s}");
    assert_eq!(s["kafka"]["reachable"], true, "{s}");
    // The API describes each pipeline's topology with its own internal topics.
    let t: serde_json::Value = serde_json::from_str(&admin.get(&format!("/v1/pipelines/{app}-stats/topology"))?)?;
    assert_eq!(t["stores"][0]["changelog"], format!("{app}-stats-windows-changelog"), "{t}");
    assert_eq!(t["subtopologies"].as_array().map(Vec::len), Some(1), "{t}");

    // The others carry on in the same process.
    await_caught_up(&format!("{app}-hostile"), &hostile_in, &mut weir, Duration::from_secs(180))?;
    await_caught_up(&format!("{app}-stats"), &stats_in, &mut weir, Duration::from_secs(180))?;
    let names: Vec<String> = serde_json::from_str(&admin.get("/v1/pipelines")?)?;
    assert_eq!(names.len(), 3, "{names:?}");

    // Each hostile record was contained with a clear reason, next to a healthy
    // pipeline in the same process.
    let letters = read_all(&format!("{hostile_in}-dead"))?;
    let mut reason_of: std::collections::BTreeMap<String, String> = Default::default();
    for letter in &letters {
        let value: serde_json::Value = serde_json::from_slice(letter.value.as_deref().unwrap_or_default())?;
        reason_of.insert(value["act"].as_str().unwrap_or("?").to_owned(), letter.headers["weir.error"].clone());
    }
    assert_eq!(letters.len(), hostile_acts.len(), "one dead letter per hostile record: {reason_of:#?}");
    for (_, act, needle) in hostile_acts {
        let reason = reason_of.get(act).map(String::as_str).unwrap_or_default();
        assert!(reason.contains(needle), "{act}: expected {needle:?} in {reason:?}");
    }
    // The last value of each window (a window is rewritten at every commit).
    let mut last: std::collections::BTreeMap<(String, i64), u64> = Default::default();
    for r in read_all(&format!("{hostile_in}-out"))? {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap_or_default())?;
        let key = (v["key"].as_str().unwrap_or_default().to_owned(), v["window_start"].as_i64().unwrap_or_default());
        last.insert(key, v["count"].as_u64().unwrap_or_default());
    }
    assert_eq!(last.values().sum::<u64>(), 600, "every healthy record counted exactly once: {last:?}");

    let want = recompute(&read_all(&stats_in)?, 2_000);
    assert_same(&last_results(&read_all(&format!("{stats_in}-out"))?)?, &want);

    // One metrics exposition for the host, a series per pipeline.
    let metrics = admin.get("/v1/metrics")?;
    let failures = |name: &str| -> Option<u64> {
        let prefix = format!("weir_plugin_failures_total{{pipeline=\"{name}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    };
    assert_eq!(failures(&format!("{app}-stats")), Some(0), "{metrics}");
    // trap, huge, loop and oom each fail at least the call that runs them alone
    // (fs, env and clock are refused by the plugin itself, not failures).
    assert!(failures(&format!("{app}-hostile")).is_some_and(|n| n >= 4), "{metrics}");
    assert_eq!(metrics.matches("# TYPE weir_plugin_failures counter").count(), 1, "{metrics}");

    // A pipeline of the config file can be stopped too; the answer says it will
    // come back with the host.
    let stopped: serde_json::Value = serde_json::from_str(&admin.delete(&format!("/v1/pipelines/{app}-stats"))?)?;
    assert_eq!(stopped["in_config"], true, "{stopped}");
    assert!(stopped["note"].as_str().is_some_and(|n| n.contains("config file")), "{stopped}");
    let names: Vec<String> = serde_json::from_str(&admin.get("/v1/pipelines")?)?;
    assert!(!names.contains(&format!("{app}-stats")) && names.len() == 2, "{names:?}");

    // The host reports the failed pipeline when it stops.
    std::process::Command::new("kill").args(["-TERM", &weir.child.id().to_string()]).status()?;
    let status = wait_exit(&mut weir, Duration::from_secs(60))?;
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("weir.log"))?;
    assert!(log.contains(&format!("pipelines that stopped with an error: {app}-paused")), "{log}");
    // With several pipelines in one process, every line of a pipeline names it.
    let lines: Vec<&str> =
        log.lines().filter(|l| l.contains("dead-letter topic") || l.contains("task assigned")).collect();
    assert!(!lines.is_empty(), "{log}");
    for line in lines {
        assert!(line.contains(&format!("pipeline{{name={app}-")), "a pipeline's line without its name: {line}");
    }
    Ok(())
}

/// A host with no configured pipeline: one is created through the API, runs
/// exactly, comes back after a host restart, and is stopped and forgotten.
#[test]
fn pipelines_are_created_and_stopped_through_the_api() -> Result<()> {
    let app = unique("managed");
    let (input, output) = (format!("{app}-trades"), format!("{app}-out"));
    create_topic(&input, 2)?;
    gen_trades(&input, 20_000, 20, 2, 1_000, 0)?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let config = dir.path().join("host.toml");
    std::fs::write(&config, format!("state_dir = \"{d}/host\"\n[admin]\ntoken = \"t0ken\"\n"))?;
    let mut weir = spawn_weir_serve(&config, &dir.path().join("weir-1.log"))?;
    let admin = Client::new(&weir.admin_url()?, Some("t0ken".into()));
    assert_eq!(admin.get("/v1/pipelines")?, "[]");
    let uploaded: serde_json::Value = serde_json::from_str(&admin.post(
        "/v1/plugins/stock-stats",
        "application/wasm",
        &std::fs::read(plugin("stock-stats")?)?,
    )?)?;
    let version = uploaded["id"].as_str().unwrap_or_default().to_owned();
    let pipeline = serde_json::json!({
        "application_id": app, "input_topic": input, "output_topic": output, "grace_ms": 2000,
        "instance_id": "managed-test", "state": { "dir": format!("{d}/state") },
    });
    let create = |client: &Client, body: serde_json::Value| {
        client.post("/v1/pipelines", "application/json", body.to_string().as_bytes())
    };

    // Refusals first: each says why and creates nothing.
    let refusals = [
        (
            Client::new(&weir.admin_url()?, None),
            serde_json::json!({ "version": version, "pipeline": pipeline }),
            401,
            "missing bearer token",
        ),
        (admin.clone(), serde_json::json!({ "version": "0000000000", "pipeline": pipeline }), 404, "no plugin version"),
        (
            admin.clone(),
            serde_json::json!({ "version": version, "pipeline": { "application_id": app, "input_topik": "x" } }),
            422,
            "unknown field `input_topik`",
        ),
        (
            admin.clone(),
            serde_json::json!({ "version": version, "pipeline": { "application_id": app, "plugin": "/etc/passwd" } }),
            422,
            "cannot be set through the API",
        ),
        (
            admin.clone(),
            serde_json::json!({ "version": version, "pipeline": { "application_id": app, "input_topic": format!("{app}-missing") } }),
            422,
            "does not exist",
        ),
    ];
    for (client, body, want, needle) in refusals {
        match create(&client, body) {
            Err(ClientError::Refused { status, message }) => {
                assert_eq!(status, want, "{message}");
                assert!(message.contains(needle), "expected {needle:?} in {message:?}");
            }
            other => bail!("expected a refusal containing {needle:?}, got {other:?}"),
        }
        assert_eq!(admin.get("/v1/pipelines")?, "[]");
    }

    // Created with the CLI, from a TOML file.
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        format!(
            "application_id = \"{app}\"\ninput_topic = \"{input}\"\noutput_topic = \"{output}\"\ngrace_ms = 2000\n\
             instance_id = \"managed-test\"\nstate = {{ dir = \"{d}/state\" }}\n"
        ),
    )?;
    let out = std::process::Command::new(weir_bin()?)
        .args(["pipeline", "create", "--version", &version, "--admin", &weir.admin_url()?, "--token", "t0ken"])
        .arg(&file)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\"created\":\"{app}\"")));
    match create(&admin, serde_json::json!({ "version": version, "pipeline": pipeline })) {
        Err(ClientError::Refused { status: 409, message }) => assert!(message.contains("already running"), "{message}"),
        other => bail!("a second pipeline of the same name must be refused, got {other:?}"),
    }
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&read_all(&input)?, 2_000));

    // It is part of the host now: a restart brings it back, and it goes on.
    terminate(&mut weir)?;
    let mut weir = spawn_weir_serve(&config, &dir.path().join("weir-2.log"))?;
    let admin = Client::new(&weir.admin_url()?, Some("t0ken".into()));
    let names: Vec<String> = serde_json::from_str(&admin.get("/v1/pipelines")?)?;
    assert_eq!(names, vec![app.clone()]);
    gen_trades_at(&input, 10_000, 20, 2, 1_000, 0, GEN_START_MS + 10_000)?;
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    assert_same(&last_results(&read_all(&output)?)?, &recompute(&read_all(&input)?, 2_000));

    // Stopped through the API: gone now and after the next restart.
    let stopped: serde_json::Value = serde_json::from_str(&admin.delete(&format!("/v1/pipelines/{app}"))?)?;
    assert_eq!(stopped["stopped"], app.as_str());
    assert!(stopped["failed"].is_null() && stopped["in_config"] == false, "{stopped}");
    assert_eq!(admin.get("/v1/pipelines")?, "[]");
    terminate(&mut weir)?;
    let mut weir = spawn_weir_serve(&config, &dir.path().join("weir-3.log"))?;
    let admin = Client::new(&weir.admin_url()?, Some("t0ken".into()));
    assert_eq!(admin.get("/v1/pipelines")?, "[]");
    terminate(&mut weir)?;
    Ok(())
}
