//! `weir serve`: several pipelines (each its own plugin, topics and application id)
//! in one process, sharing one wasm runtime, one plugin registry and one admin API.
//! A pipeline that fails stops alone, with its error in its status; the host and
//! the other pipelines keep running until the host is told to stop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use thiserror::Error;

use crate::admin::{AdminConfigError, PipelineEntry};
use crate::config::{AdminConfig, ConfigError, LimitsConfig, RunConfig};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{LoadError, Runtime};

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
}

/// A host: shared settings and its pipelines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Where the registry (and, by default, pipelines' state) lives.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Sandbox limits shared by every plugin of the host.
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
        let cfg: Self = toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) })?;
        if cfg.pipelines.is_empty() {
            return Err(ConfigError::Invalid("no [[pipeline]] configured".into()));
        }
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

/// Runs every pipeline until `stop` is set; returns the pipelines that failed.
pub fn serve(cfg: HostConfig, admin_token: Option<String>, stop: &AtomicBool) -> Result<Vec<String>, ServeError> {
    let addr = crate::admin::parse_and_check(&cfg.admin.addr, cfg.admin.enabled, admin_token.as_deref())?;
    let limits = RunConfig { limits: cfg.limits.clone(), ..RunConfig::default() }.limits();
    let runtime = Runtime::new(limits)?;
    let mut pipelines = Vec::new();
    let mut entries = BTreeMap::new();
    for mut pc in cfg.pipelines {
        pc.limits = LimitsConfig { retries: pc.limits.retries, on_failure: pc.limits.on_failure, ..cfg.limits.clone() };
        let name = pc.application_id.clone();
        let failure = Arc::new(Mutex::new(None));
        let pipeline = Pipeline::new(pc.clone(), &runtime, Metrics::default())
            .map_err(|e| ServeError::Pipeline { name: name.clone(), source: Box::new(e) })?;
        entries.insert(
            name.clone(),
            PipelineEntry {
                control: pipeline.control(),
                metrics: pipeline.metrics().clone(),
                grants: pc.grants(),
                failure: failure.clone(),
            },
        );
        pipelines.push((name, pipeline, failure));
    }
    let _admin = match addr {
        Some(addr) => {
            let max = cfg.admin.max_upload_mb << 20;
            let registry = Registry::open(&cfg.state_dir.join("registry"), runtime.clone(), max)?;
            Some(crate::admin::serve(addr, admin_token, registry, entries, max).map_err(AdminConfigError::from)?)
        }
        None => None,
    };
    let failed = std::thread::scope(|s| {
        let handles: Vec<_> = pipelines
            .into_iter()
            .map(|(name, pipeline, failure)| {
                s.spawn(move || {
                    let result = pipeline.run(stop);
                    if let Err(e) = &result {
                        tracing::error!(pipeline = %name, error = %e, "pipeline stopped; the host keeps running");
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(e.to_string());
                        }
                    }
                    (name, result.is_err())
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).filter(|(_, failed)| *failed).map(|(name, _)| name).collect()
    });
    Ok(failed)
}
