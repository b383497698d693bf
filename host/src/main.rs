//! The `weir` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Parser;
use weir::admin::client::Client;
use weir::cli::{Cli, Command, GenCommand, PipelineCommand, PluginCommand};
use weir::metrics::Metrics;
use weir::pipeline::Pipeline;
use weir::runtime::Runtime;

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handler")?;
    }
    Ok(stop)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, each once (most of Weir's errors
            // already quote their source), and no backtrace whatever
            // RUST_BACKTRACE says: these are answers for the user, not crashes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1).map(ToString::to_string) {
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Prints an admin API answer: indented for a person at a terminal, as sent
/// (one line of JSON) for a pipe or a script.
fn answer(body: String) {
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(json) if std::io::stdout().is_terminal() => {
            println!("{}", serde_json::to_string_pretty(&json).unwrap_or(body))
        }
        _ => println!("{body}"),
    }
}

/// `weir status`: asks one host for the group, then every host for its tasks.
fn status(args: &weir::cli::StatusArgs) -> Result<()> {
    let path = format!("/v1/pipelines/{}", args.pipeline);
    let first: serde_json::Value =
        serde_json::from_str(&Client::new(&args.target.admin, args.target.token.clone()).get(&path)?)?;
    let group = &first["group"]["group"];
    let mut answers = Vec::new();
    for host in group["hosts"].as_array().into_iter().flatten() {
        let name = host["host"].as_str().unwrap_or("?").to_owned();
        let answer = match host["admin"].as_str() {
            Some(addr) => Client::new(&format!("http://{addr}"), args.target.token.clone())
                .get(&path)
                .map_err(anyhow::Error::from)
                .and_then(|body| Ok(serde_json::from_str::<serde_json::Value>(&body)?))
                .unwrap_or_else(|e| serde_json::json!({ "unreachable": e.to_string() })),
            None => serde_json::json!({ "unreachable": "serves no admin API" }),
        };
        answers.push((name, host.clone(), answer));
    }
    if args.json {
        let hosts: Vec<serde_json::Value> = answers
            .iter()
            .map(|(name, placed, answer)| serde_json::json!({ "host": name, "placed": placed, "status": answer }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "group": group, "hosts": hosts }))?);
        return Ok(());
    }
    println!(
        "application {}  generation {}  coordinator {}  ({} hosts)",
        args.pipeline,
        group["generation"],
        group["coordinator"].as_str().unwrap_or("?"),
        answers.len()
    );
    println!("{:<28} {:<7} {:<10} {:>10} {:>10}", "host", "task", "role", "lag", "restored");
    for (name, _, answer) in &answers {
        if let Some(why) = answer["unreachable"].as_str() {
            println!("{name:<28} unreachable: {why}");
            continue;
        }
        let generation = &answer["group"]["group"]["generation"];
        for task in answer["group"]["tasks"].as_array().into_iter().flatten() {
            let lag = task["lag"].as_i64().map_or_else(|| "?".to_owned(), |l| l.to_string());
            println!(
                "{name:<28} {:<7} {:<10} {lag:>10} {:>10}",
                task["task"].as_str().unwrap_or("?"),
                task["role"].as_str().unwrap_or("?"),
                task["restored"].as_u64().unwrap_or(0)
            );
        }
        if answer["group"]["tasks"].as_array().is_none_or(Vec::is_empty) {
            println!("{name:<28} (no tasks; at generation {generation})");
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let cfg = args.resolve()?;
            let stop = stop_flag()?;
            let admin_token = cfg.admin.token.clone().or_else(|| std::env::var("WEIR_ADMIN_TOKEN").ok());
            let admin_addr = weir::admin::parse_and_check(&cfg.admin.addr, cfg.admin.enabled, admin_token.as_deref())?;
            let runtime = Runtime::new()?;
            let mut pipeline = Pipeline::new(cfg.clone(), &runtime, Metrics::default())?;
            let _admin = if let Some(admin_addr) = admin_addr {
                let registry_dir = pipeline.state_dir().join("registry");
                let max = cfg.admin.max_upload_mb << 20;
                let registry = weir::registry::Registry::open(&registry_dir, runtime.clone(), max)?
                    .with_limits(cfg.sandbox().limits);
                let entry = weir::admin::PipelineEntry {
                    control: pipeline.control(),
                    metrics: pipeline.metrics().clone(),
                    health: pipeline.health().clone(),
                    sandbox: cfg.sandbox(),
                    failure: Default::default(),
                    last_failure: Default::default(),
                    group: pipeline.board(),
                };
                let pipelines =
                    weir::admin::FixedPipelines([(cfg.application_id.clone(), entry)].into_iter().collect());
                // The default port taken (another host on this machine): the next free one.
                let default = cfg.admin.addr == weir::config::AdminConfig::default().addr;
                let server = weir::admin::serve_near(
                    admin_addr,
                    default,
                    admin_token,
                    registry,
                    std::sync::Arc::new(pipelines),
                    max,
                )?;
                pipeline.set_admin_address(Some(server.addr().to_string()));
                Some(server)
            } else {
                None
            };
            pipeline.run(&stop)?;
        }
        Command::Serve(args) => {
            let mut cfg = weir::server::HostConfig::from_file(&args.config)?;
            if let Some(addr) = args.admin_addr {
                cfg.admin.addr = addr;
            }
            let token = cfg.admin.token.clone().or_else(|| std::env::var("WEIR_ADMIN_TOKEN").ok());
            let stop = stop_flag()?;
            let failed = weir::server::serve(cfg, token, args.bootstrap_servers, &stop)?;
            if !failed.is_empty() {
                anyhow::bail!("pipelines that stopped with an error: {}", failed.join(", "));
            }
        }
        Command::Status(args) => status(&args)?,
        Command::Pipeline(PipelineCommand::List { target }) => {
            answer(Client::new(&target.admin, target.token).get("/v1/pipelines")?);
        }
        Command::Pipeline(PipelineCommand::Create { version, file, target }) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            let body = serde_json::json!({ "version": version, "pipeline": table }).to_string();
            let client = Client::new(&target.admin, target.token);
            answer(client.post("/v1/pipelines", "application/json", body.as_bytes())?);
        }
        Command::Pipeline(PipelineCommand::Stop { name, target }) => {
            answer(Client::new(&target.admin, target.token).delete(&format!("/v1/pipelines/{name}"))?);
        }
        Command::Gen(GenCommand::Trades(cfg)) => {
            let stop = stop_flag()?;
            let client = weir::kafka::base_config(&cfg.bootstrap_servers, &Default::default());
            let written = weir::generator::run(&cfg, client, &stop)?;
            eprintln!("wrote {written} trades to {}", cfg.topic);
        }
        Command::Describe(args) => {
            let cfg = match &args.config {
                Some(path) => weir::config::RunConfig::from_file(path)?,
                None => weir::config::RunConfig::default(),
            };
            let runtime = Runtime::new()?;
            let wasm = std::fs::read(&args.plugin).with_context(|| format!("reading {}", args.plugin.display()))?;
            let plugin = runtime.load(&wasm, cfg.sandbox())?;
            let info = plugin.info();
            if args.json {
                let app = Some(cfg.application_id.as_str());
                let json = weir::topology::describe::json(&info.name, &info.version, &info.topology, app)?;
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print!("{}", weir::demo::describe(&cfg, info));
            }
        }
        Command::Plugin(PluginCommand::Upload { name, file, target }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let client = Client::new(&target.admin, target.token);
            answer(client.upload(&name, &bytes)?);
        }
        Command::Plugin(PluginCommand::List { target }) => {
            answer(Client::new(&target.admin, target.token).get("/v1/plugins")?);
        }
        Command::Plugin(PluginCommand::Activate { pipeline, version, reset_state, target }) => {
            let body = serde_json::json!({ "version": version, "reset_state": reset_state }).to_string();
            let client = Client::new(&target.admin, target.token);
            answer(client.post(&format!("/v1/pipelines/{pipeline}/activate"), "application/json", body.as_bytes())?);
        }
        Command::Plugin(PluginCommand::Rollback { pipeline, reset_state, target }) => {
            let body = serde_json::json!({ "reset_state": reset_state }).to_string();
            let client = Client::new(&target.admin, target.token);
            answer(client.post(&format!("/v1/pipelines/{pipeline}/rollback"), "application/json", body.as_bytes())?);
        }
        Command::Plugin(PluginCommand::Status { pipeline, target }) => {
            answer(Client::new(&target.admin, target.token).get(&format!("/v1/pipelines/{pipeline}"))?);
        }
        Command::Plugin(PluginCommand::Check { file, max_mb }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let dir = tempfile::tempdir()?;
            let runtime = Runtime::new()?;
            let mut registry = weir::registry::Registry::open(dir.path(), runtime, max_mb << 20)?;
            match registry.upload("check", &bytes) {
                Ok(v) => println!(
                    "ok: {} {} (id {}, {} bytes, {}, state schema {})",
                    v.plugin_name,
                    v.plugin_version,
                    v.id,
                    v.size,
                    v.windowing.map_or("no windows".to_owned(), |(s, a)| format!("windows {s}/{a} ms")),
                    v.state_schema
                ),
                Err(e) => anyhow::bail!("refused: {e}"),
            }
        }
        Command::Demo(args) => {
            let stop = stop_flag()?;
            weir::demo::run(&args, &stop)?;
        }
    }
    Ok(())
}
