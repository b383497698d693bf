//! `weir serve`: several pipelines (each its own plugin, topics and application id)
//! in one process, sharing one wasm runtime, one plugin registry and one admin API.
//! Pipelines come from the host config and from the API, which can create and stop
//! them while the host runs. A pipeline that fails stops alone, with its error in
//! its status; the host and the other pipelines keep running until the host is
//! told to stop. A pipeline that fails for a reason on the host's side (Kafka, a
//! store) is started again with backoff, the reason in its status; one whose
//! plugin, state or configuration is at fault stays stopped. Every log line of a
//! pipeline's thread carries its name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::admin::{AdminConfigError, CreatePipeline, ManageError, PipelineEntry, Pipelines, Stopped};
use crate::config::{AdminConfig, ConfigError, LimitsConfig, RunConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, preflight, sleep_unless};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{LoadError, Plugin, Runtime};

/// Why the host could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pipeline could not start.
    #[error("pipeline {name}: {source}")]
    Pipeline {
        /// Its application id.
        name: String,
        /// Why.
        source: Box<PipelineError>,
    },
    /// The runtime could not start.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The registry could not open.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The admin API could not start.
    #[error(transparent)]
    Admin(#[from] AdminConfigError),
    /// The pipelines created through the API could not be read.
    #[error("pipelines created through the API: {0}")]
    Saved(String),
}

/// A host: shared settings and its pipelines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Where the registry (and, by default, pipelines' state) lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Default sandbox limits of the host's pipelines; a pipeline's own `limits`
    /// table overrides them key by key.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The admin API.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The pipelines.
    #[serde(rename = "pipeline", default)]
    pub pipelines: Vec<RunConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".weir-state")
}

impl HostConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let parse_error =
            |source: toml::de::Error| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) };
        // Typed first, for errors that point at the line; then each pipeline
        // again from its own table, to fill in the host's limits it leaves out.
        let mut cfg: Self = toml::from_str(&text).map_err(parse_error)?;
        let raw: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let tables = raw.get("pipeline").and_then(toml::Value::as_array).cloned().unwrap_or_default();
        cfg.pipelines = tables
            .into_iter()
            .map(|table| {
                let json = serde_json::to_value(table).map_err(|e| ConfigError::Invalid(e.to_string()))?;
                with_host_limits(json, &cfg.limits).map_err(ConfigError::Invalid)
            })
            .collect::<Result<_, _>>()?;
        let mut ids: Vec<&str> = cfg.pipelines.iter().map(|p| p.application_id.as_str()).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Invalid(format!("two pipelines share the application_id {:?}", w[0])));
        }
        for p in &cfg.pipelines {
            p.validate()?;
        }
        Ok(cfg)
    }
}

/// A pipeline the host runs, with its own stop flag and thread.
struct Running {
    entry: PipelineEntry,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The pipelines of `weir serve`: from the config at start, and created or stopped
/// through the API at any time. Pipelines created through the API are recorded in
/// `<state_dir>/pipelines.json` and start again with the host.
pub struct Host {
    runtime: Runtime,
    limits: LimitsConfig,
    bootstrap_override: Option<String>,
    /// This host's admin API, told to the other hosts of each application.
    admin: Option<String>,
    saved: PathBuf,
    running: Mutex<BTreeMap<String, Running>>,
    /// Held through a whole create or stop, so two calls for one name cannot
    /// interleave (the `running` lock is not held while a pipeline starts).
    managing: Mutex<()>,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        // A panic elsewhere cannot leave the map half-updated: keep serving.
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies the `--bootstrap-servers` override to a pipeline's configuration.
    fn host_settings(&self, mut cfg: RunConfig) -> RunConfig {
        if let Some(servers) = &self.bootstrap_override {
            cfg.bootstrap_servers = servers.clone();
        }
        cfg
    }

    /// Builds `cfg`'s pipeline (running `plugin`, or the configured file) and
    /// starts it on a thread of its own.
    fn start(&self, cfg: RunConfig, plugin: Option<Plugin>) -> Result<(), PipelineError> {
        let cfg = self.host_settings(cfg);
        cfg.validate()?;
        // Before anything is made (or written to the state directory).
        let plugin = match plugin {
            Some(plugin) => plugin,
            None => Pipeline::load_plugin(&cfg, &self.runtime)?,
        };
        preflight(&cfg, &plugin)?;
        let name = cfg.application_id.clone();
        let sandbox = cfg.sandbox();
        let mut pipeline = Pipeline::with_plugin(cfg, plugin, Metrics::default())?;
        pipeline.set_admin_address(self.admin.clone());
        let failure = Arc::new(Mutex::new(None));
        let last_failure = Arc::new(Mutex::new(None));
        let entry = PipelineEntry {
            control: pipeline.control(),
            metrics: pipeline.metrics().clone(),
            health: pipeline.health().clone(),
            sandbox,
            failure: failure.clone(),
            last_failure: last_failure.clone(),
            group: pipeline.board(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, name) = (stop.clone(), name.clone());
            std::thread::Builder::new()
                .name(format!("pipeline-{name}"))
                .spawn(move || supervise(&mut pipeline, &name, &stop, &failure, &last_failure))
                .map_err(|e| PipelineError::Kafka(crate::kafka::KafkaIoError::Setup(format!("thread: {e}"))))?
        };
        tracing::info!(pipeline = %name, "pipeline started");
        self.lock().insert(name, Running { entry, stop, thread: Some(thread) });
        Ok(())
    }

    fn saved_requests(&self) -> Result<Vec<CreatePipeline>, ManageError> {
        match std::fs::read(&self.saved) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ManageError::Persist(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ManageError::Persist(format!("{}: {e}", self.saved.display()))),
        }
    }

    /// Rewrites the saved list with `change` applied, atomically.
    fn save(&self, change: impl FnOnce(&mut Vec<CreatePipeline>)) -> Result<(), ManageError> {
        let mut requests = self.saved_requests()?;
        change(&mut requests);
        let json = serde_json::to_vec_pretty(&requests).map_err(|e| ManageError::Persist(e.to_string()))?;
        let tmp = self.saved.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.saved))
            .map_err(|e| ManageError::Persist(format!("{}: {e}", self.saved.display())))
    }

    /// Stops every pipeline, waits for them, and returns those that had failed.
    fn stop_all(&self) -> Vec<String> {
        let mut running = std::mem::take(&mut *self.lock());
        for r in running.values() {
            r.stop.store(true, Ordering::Relaxed);
        }
        let mut failed = Vec::new();
        for (name, r) in &mut running {
            if let Some(thread) = r.thread.take() {
                let _ = thread.join();
            }
            if r.entry.failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                failed.push(name.clone());
            }
        }
        failed
    }
}

/// Longest wait between restarts of a failing pipeline.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// Runs `pipeline` until it is stopped, starting it again with backoff when it
/// fails for a reason on the host's side; other failures stop it, with the reason
/// in `failure`.
fn supervise(
    pipeline: &mut Pipeline,
    name: &str,
    stop: &Arc<AtomicBool>,
    failure: &Mutex<Option<String>>,
    last_failure: &Mutex<Option<String>>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        match pipeline.run(stop) {
            Ok(()) => return,
            Err(e) if e.is_restartable() && !stop.load(Ordering::Relaxed) => {
                if started.elapsed() > MAX_RESTART_BACKOFF * 2 {
                    backoff = Duration::from_secs(1);
                }
                tracing::error!(pipeline = %name, error = %e, retry_in_ms = backoff.as_millis() as u64, "pipeline failed; starting it again");
                if let Ok(mut f) = last_failure.lock() {
                    *f = Some(e.to_string());
                }
                pipeline.metrics().restarts.inc();
                sleep_unless(stop, backoff);
                backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
            }
            Err(e) => {
                tracing::error!(pipeline = %name, error = %e, "pipeline stopped; the host keeps running");
                if let Ok(mut f) = failure.lock() {
                    *f = Some(e.to_string());
                }
                return;
            }
        }
    }
}

/// Reads a pipeline's settings with the host's limits filled in for the keys its
/// own `limits` table leaves out.
fn with_host_limits(mut pipeline: serde_json::Value, host: &LimitsConfig) -> Result<RunConfig, String> {
    if let serde_json::Value::Object(fields) = &mut pipeline {
        let serde_json::Value::Object(mut limits) = serde_json::to_value(host).map_err(|e| e.to_string())? else {
            return Err("host limits are not a table".into());
        };
        if let Some(serde_json::Value::Object(own)) = fields.get("limits") {
            limits.extend(own.clone());
        }
        fields.insert("limits".into(), serde_json::Value::Object(limits));
    }
    let name = pipeline.get("application_id").and_then(|v| v.as_str()).unwrap_or("?").to_owned();
    serde_json::from_value(pipeline).map_err(|e| format!("pipeline {name:?}: {e}"))
}

fn request_name(request: &CreatePipeline) -> Option<&str> {
    request.pipeline.get("application_id").and_then(|v| v.as_str())
}

impl Pipelines for Host {
    fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Option<PipelineEntry> {
        self.lock().get(name).map(|r| r.entry.clone())
    }

    fn config(&self, pipeline: &serde_json::Value) -> Result<RunConfig, ManageError> {
        with_host_limits(pipeline.clone(), &self.limits).map_err(ManageError::Invalid)
    }

    fn create(&self, request: CreatePipeline, cfg: RunConfig, plugin: Plugin) -> Result<String, ManageError> {
        let _managing = self.managing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = cfg.application_id.clone();
        if self.lock().get(&name).is_some_and(|r| r.thread.as_ref().is_some_and(|t| !t.is_finished())) {
            return Err(ManageError::Exists(name));
        }
        // A stopped (failed) pipeline of that name is replaced.
        if let Some(mut old) = self.lock().remove(&name)
            && let Some(thread) = old.thread.take()
        {
            let _ = thread.join();
        }
        self.start(cfg, Some(plugin)).map_err(|e| ManageError::Invalid(e.to_string()))?;
        self.save(|saved| {
            saved.retain(|r| request_name(r) != Some(name.as_str()));
            saved.push(request);
        })?;
        Ok(name)
    }

    fn stop(&self, name: &str) -> Result<Stopped, ManageError> {
        let _managing = self.managing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let was_saved = self.saved_requests()?.iter().any(|r| request_name(r) == Some(name));
        let running = self.lock().remove(name);
        if running.is_none() && !was_saved {
            return Err(ManageError::Unknown(name.to_owned()));
        }
        if was_saved {
            self.save(|saved| saved.retain(|r| request_name(r) != Some(name)))?;
        }
        let Some(mut running) = running else { return Ok(Stopped::default()) };
        running.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = running.thread.take() {
            let _ = thread.join();
        }
        let in_config = !was_saved;
        if in_config {
            tracing::warn!(pipeline = %name, "pipeline of the config file stopped through the API; it starts again with the host unless removed from the file");
        } else {
            tracing::info!(pipeline = %name, "pipeline stopped through the API");
        }
        Ok(Stopped { failed: running.entry.failure.lock().ok().and_then(|f| f.clone()), in_config })
    }
}

/// Runs the host until `stop` is set: the configured pipelines, those created
/// through the API before, and any created while it runs; `bootstrap`, if given,
/// replaces every pipeline's bootstrap servers. Returns the pipelines that had
/// stopped with an error.
pub fn serve(
    cfg: HostConfig,
    admin_token: Option<String>,
    bootstrap: Option<String>,
    stop: &AtomicBool,
) -> Result<Vec<String>, ServeError> {
    let addr = crate::admin::parse_and_check(&cfg.admin.addr, cfg.admin.enabled, admin_token.as_deref())?;
    let runtime = Runtime::new()?;
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| ServeError::Config(ConfigError::Invalid(format!("state_dir {}: {e}", cfg.state_dir.display()))))?;
    let host = Arc::new(Host {
        runtime: runtime.clone(),
        limits: cfg.limits.clone(),
        bootstrap_override: bootstrap,
        admin: addr.map(|a| a.to_string()),
        saved: cfg.state_dir.join("pipelines.json"),
        running: Mutex::new(BTreeMap::new()),
        managing: Mutex::new(()),
    });
    let max = cfg.admin.max_upload_mb << 20;
    let host_limits = RunConfig { limits: cfg.limits.clone(), ..RunConfig::default() }.sandbox().limits;
    let registry = Registry::open(&cfg.state_dir.join("registry"), runtime, max)?.with_limits(host_limits);
    let started = (|| {
        for pc in cfg.pipelines {
            let name = pc.application_id.clone();
            host.start(pc, None).map_err(|e| ServeError::Pipeline { name, source: Box::new(e) })?;
        }
        for request in host.saved_requests().map_err(|e| ServeError::Saved(e.to_string()))? {
            let name = request_name(&request).unwrap_or("?").to_owned();
            if host.get(&name).is_some() {
                return Err(ServeError::Saved(format!(
                    "pipeline {name:?} is both in the config and created through the API; stop one"
                )));
            }
            let restored = host.config(&request.pipeline).map_err(|e| e.to_string()).and_then(|mut cfg| {
                let version = registry.find(&request.version).map_err(|e| e.to_string())?;
                cfg.plugin = registry.component_path(version);
                let plugin = registry.load(&request.version, cfg.sandbox()).map_err(|e| e.to_string())?;
                host.start(cfg, Some(plugin)).map_err(|e| e.to_string())
            });
            match restored {
                Ok(()) => tracing::info!(pipeline = %name, "pipeline created through the API restarted"),
                // One saved pipeline that cannot start must not keep the host down.
                Err(e) => {
                    tracing::error!(pipeline = %name, error = %e, "saved pipeline could not start; DELETE it or fix it")
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = started {
        host.stop_all();
        return Err(e);
    }
    let _admin = match addr {
        Some(addr) => {
            let pipelines: Arc<dyn Pipelines> = host.clone();
            Some(crate::admin::serve(addr, admin_token, registry, pipelines, max).map_err(AdminConfigError::from)?)
        }
        None => None,
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(host.stop_all())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailurePolicy;

    #[test]
    fn a_pipeline_takes_the_host_limits_it_does_not_set_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.toml");
        let pipeline = |name: &str, extra: &str| {
            format!(
                "[[pipeline]]\napplication_id = \"{name}\"\nplugin = \"p.wasm\"\ninput_topic = \"i\"\noutput_topic = \"o\"\n{extra}\n"
            )
        };
        let text = format!(
            "[limits]\nmemory_mb = 32\ncall_budget_ms = 300\n\n{}{}",
            pipeline("plain", ""),
            pipeline("own", "limits = { memory_mb = 8, on_failure = \"pause\" }"),
        );
        std::fs::write(&path, text).unwrap();
        let cfg = HostConfig::from_file(&path).unwrap();
        let [plain, own] = [&cfg.pipelines[0], &cfg.pipelines[1]];
        assert_eq!((plain.limits.memory_mb, plain.limits.call_budget_ms), (32, 300));
        assert_eq!(plain.limits.on_failure, FailurePolicy::DeadLetter);
        assert_eq!((own.limits.memory_mb, own.limits.call_budget_ms), (8, 300));
        assert_eq!(own.limits.on_failure, FailurePolicy::Pause);
        assert_eq!(own.sandbox().limits.memory_bytes, 8 << 20);

        // The same through the API, and a bad key is named.
        let api = serde_json::json!({"application_id": "api", "input_topic": "i", "output_topic": "o",
            "limits": {"call_budget_ms": 50}});
        let cfg_api = with_host_limits(api, &cfg.limits).unwrap();
        assert_eq!((cfg_api.limits.memory_mb, cfg_api.limits.call_budget_ms), (32, 50));
        let bad = serde_json::json!({"application_id": "api", "limits": {"memory": 1}});
        let err = with_host_limits(bad, &cfg.limits).unwrap_err();
        assert!(err.contains("\"api\"") && err.contains("unknown field `memory`"), "{err}");

        // A mistake in the file still points at its line.
        std::fs::write(&path, format!("{}limits = {{ memory = 1 }}\n", pipeline("x", ""))).unwrap();
        let err = HostConfig::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("memory") && err.contains("line 7"), "{err}");
    }
}
