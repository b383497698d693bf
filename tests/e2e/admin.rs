//! The admin API of a running host: bad uploads and bad tokens are refused with a
//! precise error and change nothing; a good upload is stored, activated in the
//! running pipeline, refused when incompatible, and rolled back.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::admin::client::{Client, ClientError};

use crate::support::*;

fn refused(result: Result<String, ClientError>) -> Result<(u16, String)> {
    match result {
        Err(ClientError::Refused { status, message }) => Ok((status, message)),
        Err(e) => bail!("expected a refusal, got {e}"),
        Ok(body) => bail!("expected a refusal, got success: {body}"),
    }
}

fn status(client: &Client, pipeline: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&client.get(&format!("/v1/pipelines/{pipeline}"))?)?)
}

fn await_active(client: &Client, pipeline: &str, needle: &str) -> Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(client, pipeline)?;
        if s["active"].as_str().is_some_and(|a| a.contains(needle)) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("{needle} never became active: {s}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn uploads_are_validated_authenticated_and_activated() -> Result<()> {
    let app = unique("admin");
    let input = format!("{app}-trades");
    create_topic(&input, 2)?;
    gen_trades(&input, 10_000, 20, 2, 500, 0)?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, "[admin]\nmax_upload_mb = 1\n")?;
    let mut args = pipeline_args("stock-stats", &app, &input, &format!("{app}-out"), &dir.path().join("state"))?;
    args.extend(["--config".to_string(), config.display().to_string()]);
    let mut weir = spawn_weir_with_env(&args, &dir.path().join("weir.log"), &[("WEIR_ADMIN_TOKEN", "s3cret")])?;
    let url = weir.admin_url()?;
    let admin = Client::new(&url, Some("s3cret".into()));
    let anonymous = Client::new(&url, None);
    let wrong = Client::new(&url, Some("guess".into()));
    let next = std::fs::read(plugin("stock-stats-next")?)?;

    // Bad uploads and bad tokens: refused, and nothing stored.
    let cases: Vec<(&str, Result<String, ClientError>, u16, &str)> = vec![
        ("random bytes", admin.post("/v1/plugins/x", "application/wasm", &[0x5a; 4096]), 422, "not WebAssembly"),
        (
            "a core module",
            admin.post("/v1/plugins/x", "application/wasm", b"\0asm\x01\0\0\0"),
            422,
            "core WebAssembly module",
        ),
        (
            "an empty component",
            admin.post("/v1/plugins/x", "application/wasm", b"\0asm\x0d\0\x01\0"),
            422,
            "does not export `describe`, `run`, `aggregate`, `migrate` (it exports nothing)",
        ),
        (
            "a component of another world",
            admin.post("/v1/plugins/x", "application/wasm", &std::fs::read(plugin("foreign-world")?)?),
            422,
            "does not implement weir:processor/processor@0.3.0: it does not export `describe`, `run`, `aggregate`, `migrate` (it exports `greet`)",
        ),
        (
            "a component of an older world version",
            admin.post("/v1/plugins/x", "application/wasm", &std::fs::read(plugin("old-world")?)?),
            422,
            "built for weir:processor@0.1.0; this host implements weir:processor@0.3.0",
        ),
        (
            "an oversized file",
            admin.post("/v1/plugins/x", "application/wasm", &vec![0u8; 1_500_000]),
            413,
            "the limit is 1048576 bytes",
        ),
        ("no token", anonymous.post("/v1/plugins/x", "application/wasm", &next), 401, "missing bearer token"),
        ("a wrong token", wrong.post("/v1/plugins/x", "application/wasm", &next), 403, "wrong bearer token"),
    ];
    let refusals = cases.len();
    for (what, result, want_status, needle) in cases {
        let (status, message) = refused(result)?;
        assert_eq!(status, want_status, "{what}: {message}");
        assert!(message.contains(needle), "{what}: expected {needle:?} in {message:?}");
        assert_eq!(admin.get("/v1/plugins")?, "[]", "{what} must change nothing");
    }
    let metrics = anonymous.get("/v1/metrics")?;
    assert!(metrics.contains(&format!("weir_uploads_rejected_total {refusals}\n")), "{metrics}");

    // Every refusal is JSON that says why — unknown routes, wrong methods and
    // unreadable bodies too — and repeats only a bounded part of what it was sent.
    let long_name = "n".repeat(10_000);
    let cases: Vec<(&str, Result<String, ClientError>, u16, &str)> = vec![
        (
            "a name with a slash",
            admin.post("/v1/plugins/a/b", "application/wasm", &next),
            404,
            "no such route: POST /v1/plugins/a/b",
        ),
        ("an unknown route", anonymous.get("/v1/nothing"), 404, "no such route: GET /v1/nothing"),
        ("a wrong method", admin.delete("/v1/plugins"), 405, "DELETE is not allowed on /v1/plugins"),
        (
            "an unreadable body",
            admin.post(&format!("/v1/pipelines/{app}/activate"), "application/json", b"{not json"),
            400,
            "request body",
        ),
        (
            "a huge name",
            admin.post(&format!("/v1/plugins/{long_name}"), "application/wasm", &next),
            422,
            "(10000 bytes)",
        ),
    ];
    for (what, result, want_status, needle) in cases {
        let (status, message) = refused(result)?;
        assert_eq!(status, want_status, "{what}: {message}");
        assert!(message.contains(needle), "{what}: expected {needle:?} in {message:?}");
        assert!(message.len() < 400, "{what}: the refusal must be short, got {} bytes", message.len());
    }
    // The CLI refuses a file over the host's limit with the host's reason, not
    // with a broken connection.
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 3_000_000])?;
    let out = std::process::Command::new(weir_bin()?)
        .args(["plugin", "upload", "--name", "big", "--admin", &url, "--token", "s3cret"])
        .arg(&big)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("413") && stderr.contains("the limit is 1048576 bytes"),
        "{stderr}"
    );

    // A good upload, activated in the running pipeline.
    let version: serde_json::Value =
        serde_json::from_str(&admin.post("/v1/plugins/stock-stats", "application/wasm", &next)?)?;
    let id = version["id"].as_str().context("version id")?.to_owned();
    assert_eq!(version["plugin_version"], "0.2.0");
    let body = serde_json::json!({ "version": id }).to_string();
    let (status_code, _) =
        refused(anonymous.post(&format!("/v1/pipelines/{app}/activate"), "application/json", body.as_bytes()))?;
    assert_eq!(status_code, 401, "activation needs the token");
    admin.post(&format!("/v1/pipelines/{app}/activate"), "application/json", body.as_bytes())?;
    let s = await_active(&admin, &app, "stock-stats-next@0.2.0")?;
    assert_eq!(s["swaps"], 1);

    // A version with other windows cannot take over the stores.
    let hostile: serde_json::Value = serde_json::from_str(&admin.post(
        "/v1/plugins/hostile",
        "application/wasm",
        &std::fs::read(plugin("hostile")?)?,
    )?)?;
    let body = serde_json::json!({ "version": hostile["id"] }).to_string();
    let (code, message) =
        refused(admin.post(&format!("/v1/pipelines/{app}/activate"), "application/json", body.as_bytes()))?;
    assert_eq!(code, 409, "{message}");
    assert!(message.contains("incompatible") && message.contains("windows"), "{message}");

    // Roll back to the version the pipeline started with.
    admin.post(&format!("/v1/pipelines/{app}/rollback"), "application/json", b"{}")?;
    let s = await_active(&admin, &app, "stock-stats@0.1.0#")?;
    assert_eq!(s["swaps"], 2);

    let openapi: serde_json::Value = serde_json::from_str(&anonymous.get("/v1/openapi.json")?)?;
    assert!(openapi["paths"]["/v1/plugins/{name}"]["post"].is_object());
    let metrics = anonymous.get("/v1/metrics")?;
    for series in [format!("weir_swaps_total{{pipeline=\"{app}\"}} 2\n"), "weir_uploads_accepted_total 2\n".into()] {
        assert!(metrics.contains(&series), "{series:?} in {metrics}");
    }
    assert!(metrics.contains(&format!("weir_records_in_total{{pipeline=\"{app}\"}}")), "{metrics}");
    await_caught_up(&app, &input, &mut weir, Duration::from_secs(120))?;
    terminate(&mut weir)?;
    Ok(())
}

/// The host will not serve the API on a non-loopback address without a token.
#[test]
fn the_api_is_not_exposed_without_a_token() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let args: Vec<String> = [
        "--plugin",
        &plugin("stock-stats")?.display().to_string(),
        "--application-id",
        &unique("exposed"),
        "--input-topic",
        "none",
        "--admin-addr",
        "0.0.0.0:0",
        "--state-dir",
        &dir.path().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut weir = spawn_weir(&args, &dir.path().join("weir.log"))?;
    let status = wait_exit(&mut weir, Duration::from_secs(60))?;
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("weir.log"))?;
    assert!(log.contains("refusing to serve the admin API on 0.0.0.0:0 without a token"), "{log}");
    Ok(())
}
