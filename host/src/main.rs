//! The `weir` binary: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use clap::Parser;
use weir::cli::{Cli, Command, GenCommand, PluginCommand};
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

fn main() -> Result<()> {
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
            let runtime = Runtime::new(cfg.limits())?;
            let pipeline = Pipeline::new(cfg, &runtime, Metrics::default())?;
            pipeline.run(&stop)?;
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
            let runtime = Runtime::new(cfg.limits())?;
            let wasm = std::fs::read(&args.plugin).with_context(|| format!("reading {}", args.plugin.display()))?;
            let plugin = runtime.load(&wasm, cfg.grants())?;
            print!("{}", weir::demo::describe(&cfg, plugin.info()));
        }
        Command::Plugin(PluginCommand::Check { file, max_mb }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let dir = tempfile::tempdir()?;
            let runtime = Runtime::new(Default::default())?;
            let mut registry = weir::registry::Registry::open(dir.path(), runtime, max_mb << 20)?;
            match registry.upload("check", &bytes) {
                Ok(v) => println!(
                    "ok: {} {} (id {}, {} bytes, windows {}/{} ms, state schema {})",
                    v.plugin_name, v.plugin_version, v.id, v.size, v.windowing.0, v.windowing.1, v.state_schema
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
