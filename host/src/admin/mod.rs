//! The admin HTTP API: upload, list and check plugin versions; activate or roll
//! back a version in a running pipeline; status, metrics and the OpenAPI document.
//!
//! Bound to 127.0.0.1 by default. Every call that changes something needs
//! `Authorization: Bearer <token>` when a token is configured, and the host refuses
//! to serve the API on a non-loopback address without one. Every answer that is
//! not a success is a JSON `{"error": "..."}` saying why — unknown routes, wrong
//! methods and unreadable bodies included — and echoes at most a bounded part of
//! what it was sent.

pub mod client;
mod openapi;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::RunConfig;
use crate::kafka::health::{Health, KafkaStatus};
use crate::metrics::{HostMetrics, Metrics};
use crate::pipeline::{Control, SwapError};
use crate::registry::{Registry, RegistryError};
use crate::runtime::{Plugin, Sandbox, WORLD_VERSION, clip};

/// Longest part of a name from a request that an error message repeats.
const ECHO: usize = 80;

/// Why the API could not start.
#[derive(Debug, Error)]
pub enum AdminError {
    /// Non-loopback address without a token.
    #[error("refusing to serve the admin API on {0} without a token (set WEIR_ADMIN_TOKEN or admin.token)")]
    NoToken(SocketAddr),
    /// Could not bind or start.
    #[error("admin API on {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A pipeline the API can act on.
#[derive(Clone)]
pub struct PipelineEntry {
    /// Its swap control.
    pub control: Control,
    /// Its counters.
    pub metrics: Metrics,
    /// Whether it reaches Kafka.
    pub health: Health,
    /// What its plugin versions are granted, and the limits they run under.
    pub sandbox: Sandbox,
    /// Set when the pipeline stopped with an error (and stays stopped).
    pub failure: Arc<Mutex<Option<String>>>,
    /// The last failure the host started the pipeline again after.
    pub last_failure: Arc<Mutex<Option<String>>>,
    /// The application's group and this host's tasks.
    pub group: crate::group::Board,
}

/// Why a pipeline could not be created or stopped.
#[derive(Debug, Error)]
pub enum ManageError {
    /// This host runs a fixed pipeline.
    #[error("this host runs one pipeline (`weir run`); use `weir serve` to create and stop pipelines through the API")]
    Fixed,
    /// A running pipeline has that name.
    #[error("a pipeline named {:?} is already running", clip(.0, ECHO))]
    Exists(String),
    /// No pipeline has that name.
    #[error("no pipeline {:?}", clip(.0, ECHO))]
    Unknown(String),
    /// The definition is unusable, or the pipeline could not start.
    #[error("{0}")]
    Invalid(String),
    /// The host could not record the change.
    #[error("saving the pipeline list: {0}")]
    Persist(String),
}

/// A request to create a pipeline: a stored plugin version and the same settings
/// as a `[[pipeline]]` table of the host config (without `plugin`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    /// Plugin version id (or a prefix of at least 8 characters).
    pub version: String,
    /// The pipeline's settings.
    pub pipeline: serde_json::Value,
}

/// What stopping a pipeline found.
#[derive(Debug, Clone, Default)]
pub struct Stopped {
    /// The error it had stopped with before, if any.
    pub failed: Option<String>,
    /// It is defined in the host's config file, so it starts again with the host.
    pub in_config: bool,
}

/// The pipelines of a host, as the API sees them.
pub trait Pipelines: Send + Sync {
    /// Names of the pipelines, sorted.
    fn names(&self) -> Vec<String>;
    /// One pipeline.
    fn get(&self, name: &str) -> Option<PipelineEntry>;
    /// Reads a pipeline's settings as given to the API, completed with the
    /// host's defaults.
    fn config(&self, pipeline: &serde_json::Value) -> Result<RunConfig, ManageError> {
        serde_json::from_value(pipeline.clone()).map_err(|e| ManageError::Invalid(format!("pipeline: {e}")))
    }
    /// Creates and starts a pipeline from `cfg` (parsed from `request`, with
    /// `plugin` set to the stored component) running `plugin`.
    fn create(&self, request: CreatePipeline, cfg: RunConfig, plugin: Plugin) -> Result<String, ManageError>;
    /// Stops a pipeline (committing what it processed) and forgets it.
    fn stop(&self, name: &str) -> Result<Stopped, ManageError>;
}

/// The pipelines of `weir run`: fixed at start.
pub struct FixedPipelines(pub BTreeMap<String, PipelineEntry>);

impl Pipelines for FixedPipelines {
    fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    fn get(&self, name: &str) -> Option<PipelineEntry> {
        self.0.get(name).cloned()
    }

    fn create(&self, _: CreatePipeline, _: RunConfig, _: Plugin) -> Result<String, ManageError> {
        Err(ManageError::Fixed)
    }

    fn stop(&self, _: &str) -> Result<Stopped, ManageError> {
        Err(ManageError::Fixed)
    }
}

struct AdminState {
    token: Option<String>,
    registry: Mutex<Registry>,
    pipelines: Arc<dyn Pipelines>,
    host_metrics: HostMetrics,
    max_upload_bytes: usize,
}

/// A running admin API.
pub struct AdminServer {
    addr: SocketAddr,
    _thread: JoinHandle<()>,
}

impl AdminServer {
    /// The address it listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// An admin address that cannot be used.
#[derive(Debug, Error)]
pub enum AdminConfigError {
    /// Not an address.
    #[error("admin address {0:?} is not host:port")]
    Address(String),
    /// Refused or failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Parses the configured address and refuses exposure without a token; `None`
/// when the API is disabled.
pub fn parse_and_check(addr: &str, enabled: bool, token: Option<&str>) -> Result<Option<SocketAddr>, AdminConfigError> {
    if !enabled {
        return Ok(None);
    }
    let parsed: SocketAddr = addr.parse().map_err(|_| AdminConfigError::Address(addr.to_owned()))?;
    check_exposure(parsed, token)?;
    Ok(Some(parsed))
}

/// Refuses a non-loopback address without a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&str>) -> Result<(), AdminError> {
    if token.is_none_or(str::is_empty) && !addr.ip().is_loopback() {
        return Err(AdminError::NoToken(addr));
    }
    Ok(())
}

/// Starts the API on its own thread.
pub fn serve(
    addr: SocketAddr,
    token: Option<String>,
    registry: Registry,
    pipelines: Arc<dyn Pipelines>,
    max_upload_bytes: usize,
) -> Result<AdminServer, AdminError> {
    serve_near(addr, false, token, registry, pipelines, max_upload_bytes)
}

/// Starts the API on its own thread at `addr`, or — if `next_free` and that
/// port is taken — at the first free port of the next 31.
pub fn serve_near(
    addr: SocketAddr,
    next_free: bool,
    token: Option<String>,
    registry: Registry,
    pipelines: Arc<dyn Pipelines>,
    max_upload_bytes: usize,
) -> Result<AdminServer, AdminError> {
    let token = token.filter(|t| !t.is_empty());
    check_exposure(addr, token.as_deref())?;
    let tries: u16 = if next_free { 32 } else { 1 };
    let (mut at, mut attempt) = (addr, 1);
    let listener = loop {
        match std::net::TcpListener::bind(at) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < tries && at.port() < u16::MAX => {
                attempt += 1;
                at.set_port(at.port() + 1);
            }
            Err(source) => return Err(AdminError::Io { addr: at, source }),
        }
    };
    if at != addr {
        tracing::warn!(configured = %addr, taken = %at, "the admin API's port is taken (another host on this machine?); serving on the next free one");
    }
    let addr = at;
    listener.set_nonblocking(true).map_err(|source| AdminError::Io { addr, source })?;
    let bound = listener.local_addr().map_err(|source| AdminError::Io { addr, source })?;
    let state = Arc::new(AdminState {
        token,
        registry: Mutex::new(registry),
        pipelines,
        host_metrics: HostMetrics::default(),
        max_upload_bytes,
    });
    let app = Router::new()
        .route("/v1/openapi.json", get(openapi::document))
        .route("/v1/host", get(host))
        .route("/v1/metrics", get(metrics))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/plugins/{name}", post(upload))
        .route("/v1/pipelines", get(list_pipelines).post(create_pipeline))
        .route("/v1/pipelines/{name}", get(pipeline_status).delete(stop_pipeline))
        .route("/v1/pipelines/{name}/topology", get(pipeline_topology))
        .route("/v1/pipelines/{name}/activate", post(activate))
        .route("/v1/pipelines/{name}/rollback", post(rollback))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Larger bodies are cut off here; the registry names the limit for
        // anything in between.
        .layer(DefaultBodyLimit::max(max_upload_bytes.saturating_add(1 << 20)))
        .with_state(state);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| AdminError::Io { addr, source })?;
    let thread = std::thread::Builder::new()
        .name("weir-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::error!(error = %e, "admin API stopped");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "admin API could not start"),
                }
            });
        })
        .map_err(|source| AdminError::Io { addr, source })?;
    tracing::info!(addr = %bound, "admin API listening");
    Ok(AdminServer { addr: bound, _thread: thread })
}

/// An API error: a status and a message saying why.
#[derive(Debug, Serialize)]
struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self)).into_response()
    }
}

fn api_error(status: StatusCode, error: impl ToString) -> ApiError {
    ApiError { status, error: error.to_string() }
}

/// Unknown routes (and wrong methods) still read the request's body, within the
/// body limit, before they answer: a client still sending an upload then gets
/// the answer instead of a broken connection.
async fn no_route(method: Method, uri: Uri, _body: axum::body::Bytes) -> ApiError {
    let path = clip(uri.path(), ECHO);
    api_error(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {path} (see /v1/openapi.json; a name in a path cannot contain '/')"),
    )
}

async fn wrong_method(method: Method, uri: Uri, _body: axum::body::Bytes) -> ApiError {
    let path = clip(uri.path(), ECHO);
    api_error(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {path} (see /v1/openapi.json)"))
}

/// A JSON body that did not parse, as an API error.
fn bad_body(rejection: JsonRejection) -> ApiError {
    api_error(rejection.status(), format!("request body: {}", clip(&rejection.body_text(), 512)))
}

/// What the host is: the limits a client should know before it sends.
async fn host(State(state): Shared) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "weir_version": env!("CARGO_PKG_VERSION"),
        "world": format!("weir:processor@{WORLD_VERSION}"),
        "max_upload_bytes": state.max_upload_bytes,
    }))
}

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else { return Ok(()) };
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        None => Err(api_error(StatusCode::UNAUTHORIZED, "missing bearer token (Authorization: Bearer <token>)")),
        Some(value) if value.strip_prefix("Bearer ") == Some(token.as_str()) => Ok(()),
        Some(_) => Err(api_error(StatusCode::FORBIDDEN, "wrong bearer token")),
    }
}

fn registry_status(e: &RegistryError) -> StatusCode {
    match e {
        RegistryError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        RegistryError::UnknownVersion(_) => StatusCode::NOT_FOUND,
        RegistryError::Io { .. } | RegistryError::Index(_) | RegistryError::Corrupt(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

type Shared = State<Arc<AdminState>>;

async fn metrics(State(state): Shared) -> impl IntoResponse {
    let pipelines: Vec<(String, Metrics)> = state
        .pipelines
        .names()
        .into_iter()
        .filter_map(|name| state.pipelines.get(&name).map(|p| (name, p.metrics)))
        .collect();
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], Metrics::render_all(&pipelines, &state.host_metrics))
}

async fn list_plugins(State(state): Shared) -> Result<impl IntoResponse, ApiError> {
    let registry =
        state.registry.lock().map_err(|_| api_error(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned"))?;
    Ok(axum::Json(registry.versions().to_vec()))
}

async fn upload(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let stored = store_upload(&state, name, &headers, body).await;
    match &stored {
        Ok(_) => state.host_metrics.uploads_accepted.inc(),
        Err(_) => state.host_metrics.uploads_rejected.inc(),
    };
    Ok((StatusCode::CREATED, axum::Json(stored?)))
}

async fn store_upload(
    state: &Arc<AdminState>,
    name: String,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<crate::registry::Version, ApiError> {
    authorize(state, headers)?;
    // A body far over the limit is cut off before the registry sees it.
    let body = body.map_err(|e| api_error(e.status(), format!("upload refused: {}", e.body_text())))?;
    let state = state.clone();
    // Compiling takes tens of milliseconds or more: keep it off the async thread.
    tokio::task::spawn_blocking(move || {
        let mut registry =
            state.registry.lock().map_err(|_| api_error(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned"))?;
        registry.upload(&name, &body).map_err(|e| api_error(registry_status(&e), e))
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?
}

async fn list_pipelines(State(state): Shared) -> impl IntoResponse {
    axum::Json(state.pipelines.names())
}

fn manage_status(e: &ManageError) -> StatusCode {
    match e {
        ManageError::Fixed => StatusCode::METHOD_NOT_ALLOWED,
        ManageError::Exists(_) => StatusCode::CONFLICT,
        ManageError::Unknown(_) => StatusCode::NOT_FOUND,
        ManageError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ManageError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn create_pipeline(
    State(state): Shared,
    headers: HeaderMap,
    request: Result<axum::Json<CreatePipeline>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let axum::Json(request) = request.map_err(bad_body)?;
    let state = state.clone();
    // Loading the plugin and setting up topics and clients blocks.
    tokio::task::spawn_blocking(move || {
        let mut cfg = state.pipelines.config(&request.pipeline).map_err(|e| api_error(manage_status(&e), e))?;
        if !cfg.plugin.as_os_str().is_empty() {
            let message = "pipeline.plugin cannot be set through the API: upload the plugin and give its version";
            return Err(api_error(StatusCode::UNPROCESSABLE_ENTITY, message));
        }
        let plugin = {
            let registry =
                state.registry.lock().map_err(|_| api_error(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned"))?;
            let version = registry.find(&request.version).map_err(|e| api_error(registry_status(&e), e))?;
            cfg.plugin = registry.component_path(version);
            registry.load(&request.version, cfg.sandbox()).map_err(|e| api_error(registry_status(&e), e))?
        };
        let name = state.pipelines.create(request, cfg, plugin).map_err(|e| api_error(manage_status(&e), e))?;
        Ok::<_, ApiError>((StatusCode::CREATED, axum::Json(serde_json::json!({ "created": name }))))
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?
}

async fn stop_pipeline(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let state = state.clone();
    // Stopping commits and leaves the group: wait for it off the async thread.
    tokio::task::spawn_blocking(move || {
        let stopped = state.pipelines.stop(&name).map_err(|e| api_error(manage_status(&e), e))?;
        let mut body = serde_json::json!({ "stopped": name, "failed": stopped.failed, "in_config": stopped.in_config });
        if stopped.in_config {
            body["note"] = "this pipeline is defined in the host's config file: it starts again when the host \
                            restarts unless it is removed there"
                .into();
        }
        Ok::<_, ApiError>(axum::Json(body))
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?
}

/// A pipeline's plugin status as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// Active version label.
    pub active: String,
    /// Previous version label.
    pub previous: Option<String>,
    /// Swaps done (including rollbacks).
    pub swaps: usize,
    /// Automatic rollbacks after a failing version.
    pub rollbacks: usize,
    /// Swap pauses in µs, in order.
    pub swap_pauses_us: Vec<u64>,
    /// The last failure of a new version.
    pub last_error: Option<String>,
    /// State schema of the active version (the schema the state is kept in).
    pub state_schema: Option<u32>,
    /// Every swap, in order.
    pub history: Vec<SwapRecord>,
    /// Records processed.
    pub records_in: u64,
    /// Records dead-lettered.
    pub dead_letters: u64,
    /// Plugin call failures.
    pub plugin_failures: u64,
    /// Why the pipeline stopped, if it did (it stays stopped).
    pub failed: Option<String>,
    /// The last failure the host restarted the pipeline after, if any.
    pub last_failure: Option<String>,
    /// Times the host restarted the pipeline after a failure.
    pub restarts: u64,
    /// Whether the pipeline reaches Kafka.
    pub kafka: KafkaStatus,
    /// Tasks running.
    pub tasks: i64,
    /// Tasks restoring their state before they run.
    pub tasks_restoring: i64,
    /// Standby copies of other hosts' tasks kept here.
    #[serde(default)]
    pub tasks_standby: i64,
    /// The application's group as this host sees it, and its tasks here.
    #[serde(default)]
    pub group: serde_json::Value,
}

/// One swap as JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct SwapRecord {
    /// Version swapped from.
    pub from: String,
    /// Version swapped to.
    pub to: String,
    /// Pause of the pipeline thread, µs.
    pub pause_us: u64,
    /// Why the swap was undone, if it was.
    pub rolled_back: Option<String>,
    /// What happened to the stored state (migrated or reset), if anything.
    pub state: Option<String>,
}

fn entry(state: &AdminState, name: &str) -> Result<PipelineEntry, ApiError> {
    state.pipelines.get(name).ok_or_else(|| api_error(StatusCode::NOT_FOUND, ManageError::Unknown(name.to_owned())))
}

async fn pipeline_status(State(state): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &name)?;
    let status = entry.control.status();
    Ok(axum::Json(PipelineStatus {
        active: status.active,
        previous: status.previous,
        swaps: status.history.len(),
        rollbacks: status.history.iter().filter(|e| e.rolled_back.is_some()).count(),
        swap_pauses_us: status.history.iter().map(|e| e.pause.as_micros() as u64).collect(),
        last_error: status.last_error,
        state_schema: status.active_info.as_ref().map(|i| i.state_schema),
        history: status
            .history
            .iter()
            .map(|e| SwapRecord {
                from: e.from.clone(),
                to: e.to.clone(),
                pause_us: e.pause.as_micros() as u64,
                rolled_back: e.rolled_back.clone(),
                state: e.state.clone(),
            })
            .collect(),
        records_in: entry.metrics.records_in.get(),
        dead_letters: entry.metrics.dead_letters.get(),
        plugin_failures: entry.metrics.plugin_failures.get(),
        failed: entry.failure.lock().ok().and_then(|f| f.clone()),
        last_failure: entry.last_failure.lock().ok().and_then(|f| f.clone()),
        restarts: entry.metrics.restarts.get(),
        kafka: entry.health.status(),
        tasks: entry.metrics.tasks.get(),
        tasks_restoring: entry.metrics.tasks_restoring.get(),
        tasks_standby: entry.metrics.tasks_standby.get(),
        group: serde_json::to_value(entry.group.view()).unwrap_or_default(),
    }))
}

/// The active version's topology, as `weir describe --json` prints it (internal
/// topics named for this pipeline).
async fn pipeline_topology(State(state): Shared, Path(name): Path<String>) -> Result<impl IntoResponse, ApiError> {
    let entry = entry(&state, &name)?;
    let info = entry
        .control
        .status()
        .active_info
        .ok_or_else(|| api_error(StatusCode::SERVICE_UNAVAILABLE, "the pipeline has no active version yet"))?;
    let json = crate::topology::describe::json(&info.name, &info.version, &info.topology, Some(&name))
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(axum::Json(json))
}

/// Body of an activation.
#[derive(Debug, Serialize, Deserialize)]
pub struct Activate {
    /// Version id (or a prefix of at least 8 characters).
    pub version: String,
    /// Drop the pipeline's stored windows instead of migrating them; needed when
    /// the version has another state schema and cannot migrate from the running one's.
    #[serde(default)]
    pub reset_state: bool,
}

/// Body of a rollback (optional).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Rollback {
    /// As for [`Activate::reset_state`].
    #[serde(default)]
    pub reset_state: bool,
}

async fn activate(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<Activate>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let axum::Json(body) = body.map_err(bad_body)?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let entry = entry(&state, &name)?;
        let plugin = {
            let registry =
                state.registry.lock().map_err(|_| api_error(StatusCode::INTERNAL_SERVER_ERROR, "registry poisoned"))?;
            registry.load(&body.version, entry.sandbox.clone()).map_err(|e| api_error(registry_status(&e), e))?
        };
        let label = plugin.label();
        entry.control.activate(&label, plugin, body.reset_state).map_err(|e| api_error(swap_status(&e), e))?;
        Ok::<_, ApiError>((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "staged": label }))))
    })
    .await
    .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e))?
}

fn swap_status(e: &SwapError) -> StatusCode {
    match e {
        SwapError::Incompatible { .. } | SwapError::StateSchema { .. } | SwapError::NoPrevious => StatusCode::CONFLICT,
        SwapError::Instantiate { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        SwapError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn rollback(
    State(state): Shared,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    authorize(&state, &headers)?;
    let body: Rollback = if body.iter().all(u8::is_ascii_whitespace) {
        Rollback::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| api_error(StatusCode::BAD_REQUEST, format!("rollback body: {}", clip(&e.to_string(), 512))))?
    };
    entry(&state, &name)?.control.rollback(body.reset_state).map_err(|e| api_error(swap_status(&e), e))?;
    Ok((StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "staged": "rollback" }))))
}
