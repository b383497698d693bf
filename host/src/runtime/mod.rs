//! Runs plugins: the wasmtime engine, compiled plugins and their instances.
//!
//! A [`Runtime`] holds one engine (component model, epoch interruption, no async
//! bookkeeping) and a linker with WASI preview 2, shared by every plugin of a
//! host. Each plugin brings its own [`Sandbox`]: it is granted nothing it is not
//! given there (no files, no network, no stdio, an empty environment and a clock
//! frozen at the epoch) and runs under that sandbox's [`Limits`]. A [`Plugin`] is
//! a compiled, type-checked component with its `InstancePre`; an [`Instance`] is
//! one store with a linear-memory cap, run under a per-call CPU budget. A failed
//! instance is poisoned; a [`Worker`] replaces it with a fresh one before the
//! next call. What a plugin declares is bounded when it is loaded (windows per
//! record, name and version lengths, migration sources), and failures are told in
//! the plugin's terms (CPU budget, stack overflow, panic) rather than as traps.

mod bindings;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::topology::{Shape, shape};
use crate::window::WindowError;
use bindings::{Processor, ProcessorPre, types};
use weir_abi::topology::{Topology, TopologyError, WindowSpec};

/// Limits applied to each instance of a plugin, and to what it may declare.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// CPU time one call may take before it is interrupted.
    pub call_budget: Duration,
    /// Largest accumulator or output value a plugin may return.
    pub max_value_bytes: usize,
    /// Most windows one record may fall into (window size / advance).
    pub max_windows_per_record: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_budget: Duration::from_secs(5),
            max_value_bytes: 1 << 20,
            max_windows_per_record: 10_000,
        }
    }
}

impl Limits {
    /// Largest frame the host builds for one call: a quarter of the plugin's
    /// memory, which must also hold the decoded batch and the answer.
    pub fn max_frame_bytes(&self) -> usize {
        (self.memory_bytes / 4).max(64 << 10)
    }
}

/// Longest plugin name or version string accepted from `describe`.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest reason or error text taken from a plugin (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes (at a character boundary), saying how long
/// it was: for echoing what a plugin or a request sent without echoing all of it.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// What one plugin's instances may use: capabilities granted beyond computing,
/// and resource limits.
#[derive(Debug, Clone, Default)]
pub struct Sandbox {
    /// A real wall and monotonic clock; without it both read zero.
    pub clock: bool,
    /// Environment variables the plugin sees.
    pub env: Vec<(String, String)>,
    /// Memory, CPU and value-size limits.
    pub limits: Limits,
}

/// A clock stopped at zero: the default for plugins without the clock grant.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// The version of the `weir:processor` world this host implements.
pub const WORLD_VERSION: &str = "0.3.0";

/// How often the epoch advances; the granularity of [`Limits::call_budget`].
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A plugin could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The engine could not be configured.
    #[error("wasm engine: {0}")]
    Engine(String),
    /// The bytes are not a valid component, or do not compile.
    #[error("not a loadable WebAssembly component: {0}")]
    Compile(String),
    /// The component does not implement the host's `weir:processor` world.
    #[error("component does not implement weir:processor/processor@{WORLD_VERSION}: {0}")]
    World(String),
    /// The component lacks some of the world's exports.
    #[error(
        "component does not implement weir:processor/processor@{WORLD_VERSION}: it does not export {} \
         (it exports {}); a Weir processor exports describe, run, aggregate and migrate",
        quoted(missing), if found.is_empty() { "nothing".to_owned() } else { quoted(found) }
    )]
    MissingExport {
        /// The world's exports it lacks.
        missing: Vec<String>,
        /// What it exports instead.
        found: Vec<String>,
    },
    /// The component was built against another version of the world.
    #[error("component was built for weir:processor@{found}; this host implements weir:processor@{WORLD_VERSION}")]
    WorldVersion {
        /// The version it was built for.
        found: String,
    },
    /// A precompiled artifact could not be loaded.
    #[error("precompiled artifact: {0}")]
    Artifact(String),
    /// `describe` failed or declared something unusable.
    #[error("plugin describe: {0}")]
    Describe(String),
    /// The declared windows are not usable.
    #[error("plugin declares unusable windows: {0}")]
    Windows(#[from] WindowError),
    /// The topology breaks a rule, or this host cannot run it.
    #[error("plugin topology: {0}")]
    Topology(#[from] TopologyError),
    /// The declared windows put each record into more windows than allowed.
    #[error(
        "plugin declares windows of {size} ms advancing {advance} ms (node `{node}`), which put every record into \
         {per_record} windows; the limit is {limit} windows per record ([limits] max_windows_per_record)"
    )]
    TooManyWindows {
        /// The aggregation node.
        node: String,
        /// Window size in ms.
        size: u64,
        /// Advance in ms.
        advance: u64,
        /// Windows per record.
        per_record: u64,
        /// The limit.
        limit: u64,
    },
}

/// A call into the plugin failed.
#[derive(Debug, Error)]
pub enum GuestError {
    /// The instance trapped, ran out of memory or out of time. It is poisoned.
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin reported an error for the whole batch.
    #[error("plugin error: {0}")]
    Plugin(String),
    /// The plugin answered with a frame the host cannot read.
    #[error("plugin returned an unreadable frame: {0}")]
    BadFrame(String),
    /// The plugin returned a value (or a key) larger than [`Limits::max_value_bytes`].
    #[error("plugin returned a {size}-byte value; the limit is {limit} bytes (for keys and values)")]
    Oversized {
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// What a plugin declares about itself.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its topology, as declared.
    pub topology: Topology,
    /// What the host runs of it.
    pub shape: Shape,
    /// Its first store's encoding version (0 without a store); each store
    /// declares its own (see [`PluginInfo::reads_state`]).
    pub state_schema: u32,
    /// Older state schemas its first store's `migrate` converts from.
    pub migrates_from: Vec<u32>,
}

impl PluginInfo {
    /// Filled in by `describe` right after.
    fn placeholder() -> Self {
        let shape = Shape {
            sources: Vec::new(),
            sinks: Vec::new(),
            repartitions: Vec::new(),
            exits: Default::default(),
            subs: Vec::new(),
            globals: Vec::new(),
        };
        Self {
            name: String::new(),
            version: String::new(),
            topology: Topology::default(),
            shape,
            state_schema: 0,
            migrates_from: Vec::new(),
        }
    }

    /// What a plugin named `name` at `version` with `topology` declares, if the
    /// host can run the topology.
    pub fn of(name: String, version: String, topology: Topology) -> Result<Self, TopologyError> {
        let shape = shape(&topology)?;
        let (state_schema, migrates_from) = shape
            .aggregations()
            .next()
            .map_or((0, Vec::new()), |(_, a)| (a.store.schema, a.store.migrates_from.clone()));
        Ok(Self { name, version, topology, shape, state_schema, migrates_from })
    }

    /// Whether this plugin's store `store` can take over state stored under
    /// `schema`.
    pub fn reads_state(&self, store: &str, schema: u32) -> bool {
        self.shape.store(store).is_some_and(|s| schema == s.schema || s.migrates_from.contains(&schema))
    }
}

/// A backtrace this deep, or a function calling itself this many times in a
/// row, reads as the plugin's stack running out: a Rust guest's stack lives at
/// the bottom of its linear memory, so overflowing it touches memory out of
/// bounds rather than trapping as a stack overflow.
const DEEP_STACK: usize = 256;
const RECURSION: usize = 32;

/// The function a backtrace shows calling itself most in a row, if it recursed.
fn recursion(backtrace: &wasmtime::WasmBacktrace) -> Option<(String, usize)> {
    let frames = backtrace.frames();
    let mut best: Option<(usize, usize)> = None; // (index of a frame, run length)
    let mut run = 0;
    for (i, frame) in frames.iter().enumerate() {
        let same = i > 0 && frames[i - 1].func_index() == frame.func_index();
        run = if same { run + 1 } else { 1 };
        if best.is_none_or(|(_, longest)| run > longest) {
            best = Some((i, run));
        }
    }
    let (at, run) = best?;
    let deep = frames.len() >= DEEP_STACK;
    (run >= RECURSION || deep).then(|| {
        let name = frames[at].func_name().map_or_else(
            || format!("function {}", frames[at].func_index()),
            |name| format!("`{:#}`", rustc_demangle::demangle(name)),
        );
        (name, if deep { frames.len() } else { run })
    })
}

/// A one-line reason for a trap, saying what happened in the plugin's terms (the
/// full wasm backtrace goes to the debug log).
fn describe_trap(error: &wasmtime::Error, limits: &Limits) -> String {
    let cause = error.root_cause().to_string();
    let recursed = error.downcast_ref::<wasmtime::WasmBacktrace>().and_then(recursion);
    match (error.downcast_ref::<wasmtime::Trap>(), recursed) {
        (Some(wasmtime::Trap::Interrupt), _) => {
            format!("exceeded its CPU budget of {} ms (wasm trap: interrupt)", limits.call_budget.as_millis())
        }
        (Some(wasmtime::Trap::UnreachableCodeReached), _) => format!("panicked or aborted ({cause})"),
        (Some(wasmtime::Trap::StackOverflow), _) => format!("overflowed its stack: recursion too deep ({cause})"),
        (Some(wasmtime::Trap::MemoryOutOfBounds), Some((function, depth))) => format!(
            "overflowed its stack: {function} recursed {depth} calls deep and ran out of the plugin's stack, which \
             touched memory out of bounds ({cause})"
        ),
        (Some(wasmtime::Trap::MemoryOutOfBounds), None) => {
            format!("accessed memory out of bounds ({cause}): a memory bug in the plugin, or its stack overflowed")
        }
        _ if cause.contains("growing memory") => {
            let wanted = cause.split_whitespace().find_map(|w| w.parse::<u64>().ok());
            let wanted = wanted.map_or_else(String::new, |b| format!(" to {} MiB", b.div_ceil(1 << 20)));
            format!(
                "ran out of memory: it tried to grow its memory{wanted}, over its limit of {} MiB ([limits] memory_mb)",
                limits.memory_bytes >> 20
            )
        }
        _ => cause,
    }
}

/// Per-instance host state.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Stops the epoch ticker thread when the runtime is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The wasm engine and linker shared by all plugins of a host.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    _ticker: Arc<Ticker>,
}

impl Runtime {
    /// Creates the engine, the WASI linker and the epoch ticker.
    pub fn new() -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.concurrency_support(false);
        // Deep enough to tell a stack overflow from a memory bug (traps only).
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(DEEP_STACK * 2));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| LoadError::Engine(e.to_string()))?
        };
        Ok(Self { engine, linker: Arc::new(linker), _ticker: Arc::new(Ticker { stop, thread: Some(thread) }) })
    }

    /// Compiles and type-checks a component, then asks it to describe itself.
    pub fn load(&self, wasm: &[u8], sandbox: Sandbox) -> Result<Plugin, LoadError> {
        let component = Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        self.plugin(component, sandbox, sha256_hex(wasm))
    }

    /// Compiles a component to this engine's native artifact (`.cwasm`).
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>, LoadError> {
        self.engine.precompile_component(wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    /// Loads a precompiled artifact made by [`Runtime::precompile`] with an engine
    /// of the same configuration, then type-checks it like [`Runtime::load`].
    ///
    /// The caller must pass bytes this host produced and has not let anyone else
    /// change (the registry checks their hash before calling this); `id` is the
    /// SHA-256 of the component they were compiled from.
    pub fn load_precompiled(&self, cwasm: &[u8], sandbox: Sandbox, id: &str) -> Result<Plugin, LoadError> {
        // SAFETY: `Component::deserialize` trusts its input to be a wasmtime
        // artifact; a corrupt or foreign one could run arbitrary native code. The
        // only caller is the registry, which loads artifacts it wrote itself into
        // its own directory and verifies against the SHA-256 recorded when it
        // compiled them. Wasmtime also rejects artifacts from another engine
        // configuration or version.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, cwasm) }
            .map_err(|e| LoadError::Artifact(format!("{e:#}")))?;
        self.plugin(component, sandbox, id.to_owned())
    }

    fn plugin(&self, component: Component, sandbox: Sandbox, id: String) -> Result<Plugin, LoadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.engine) {
            if let Some(rest) = name.strip_prefix("weir:processor/")
                && let Some((_, version)) = rest.split_once('@')
                && version != WORLD_VERSION
            {
                return Err(LoadError::WorldVersion { found: version.to_owned() });
            }
        }
        let found: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
        let missing: Vec<String> = ["describe", "run", "aggregate", "migrate"]
            .into_iter()
            .filter(|needed| !found.iter().any(|e| e == needed))
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::MissingExport { missing, found });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let pre = ProcessorPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let mut plugin = Plugin { pre, sandbox, runtime: self.clone(), id, info: Arc::new(PluginInfo::placeholder()) };
        let mut instance = plugin.instantiate().map_err(|e| LoadError::Describe(e.to_string()))?;
        plugin.info = Arc::new(instance.describe(&plugin.sandbox.limits)?);
        Ok(plugin)
    }
}

/// SHA-256 of `bytes`, in hex: a plugin version's identity.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// A compiled plugin, ready to instantiate. Cloning is cheap: clones share the
/// compiled code.
#[derive(Clone)]
pub struct Plugin {
    pre: ProcessorPre<HostState>,
    sandbox: Sandbox,
    runtime: Runtime,
    id: String,
    info: Arc<PluginInfo>,
}

impl Plugin {
    /// What the plugin declared.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// What the plugin declared, shared.
    pub fn shared_info(&self) -> Arc<PluginInfo> {
        self.info.clone()
    }

    /// SHA-256 of the component, hex: the version's identity.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `name@version#<first 12 characters of the id>`: how logs, swaps and the
    /// status name this version.
    pub fn label(&self) -> String {
        format!("{}@{}#{}", self.info.name, self.info.version, &self.id[..self.id.len().min(12)])
    }

    /// The limits its instances run under.
    pub fn limits(&self) -> &Limits {
        &self.sandbox.limits
    }

    /// A fresh instance with its own store and limits.
    pub fn instantiate(&self) -> Result<Instance, GuestError> {
        let limits =
            StoreLimitsBuilder::new().memory_size(self.sandbox.limits.memory_bytes).trap_on_grow_failure(true).build();
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false).envs(&self.sandbox.env);
        if !self.sandbox.clock {
            wasi.wall_clock(FrozenClock).monotonic_clock(FrozenClock);
        }
        let state = HostState { wasi: wasi.build(), table: ResourceTable::new(), limits };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.budget_ticks());
        let bindings = self.pre.instantiate(&mut store).map_err(|e| GuestError::Trap(format!("{e:#}")))?;
        Ok(Instance {
            store,
            bindings,
            budget_ticks: self.budget_ticks(),
            limits: self.sandbox.limits,
            poisoned: false,
        })
    }

    fn budget_ticks(&self) -> u64 {
        (self.sandbox.limits.call_budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// One instance of a plugin.
pub struct Instance {
    store: Store<HostState>,
    bindings: Processor,
    budget_ticks: u64,
    limits: Limits,
    poisoned: bool,
}

impl Instance {
    /// Whether a failure left this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    fn describe(&mut self, limits: &Limits) -> Result<PluginInfo, LoadError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let info = self.bindings.call_describe(&mut self.store).map_err(|trap| {
            tracing::debug!(trap = format!("{trap:?}"), "plugin trap in describe");
            LoadError::Describe(format!("describe failed: the plugin {}", describe_trap(&trap, &self.limits)))
        })?;
        let info = info.map_err(|e| LoadError::Describe(clip(&e, MAX_REASON_BYTES)))?;
        if info.name.is_empty() {
            return Err(LoadError::Describe("plugin name is empty".into()));
        }
        for (what, text) in [("name", &info.name), ("version", &info.version)] {
            if text.len() > MAX_NAME_BYTES || text.chars().any(char::is_control) {
                return Err(LoadError::Describe(format!(
                    "plugin {what} {:?} is not a short printable string (at most {MAX_NAME_BYTES} bytes)",
                    clip(text, 64)
                )));
            }
        }
        let topology = Topology::decode(&info.topology)?;
        let info = PluginInfo::of(info.name, info.version, topology)?;
        for n in &info.topology.nodes {
            if let weir_abi::topology::Op::Aggregate {
                window: Some(WindowSpec::Hopping { size_ms, advance_ms, .. }),
                ..
            } = n.op
            {
                let per_record = size_ms.div_ceil(advance_ms.max(1));
                if per_record > limits.max_windows_per_record {
                    return Err(LoadError::TooManyWindows {
                        node: n.name.clone(),
                        size: size_ms,
                        advance: advance_ms,
                        per_record,
                        limit: limits.max_windows_per_record,
                    });
                }
            }
        }
        Ok(info)
    }

    fn finish_call(
        &mut self,
        result: wasmtime::Result<Result<Vec<u8>, types::ProcessorError>>,
    ) -> Result<Vec<u8>, GuestError> {
        match result {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(types::ProcessorError::BadFrame(m))) => {
                self.poisoned = true;
                Err(GuestError::BadFrame(clip(&m, MAX_REASON_BYTES)))
            }
            Ok(Err(types::ProcessorError::Fatal(m))) => {
                self.poisoned = true;
                Err(GuestError::Plugin(clip(&m, MAX_REASON_BYTES)))
            }
            Err(trap) => {
                self.poisoned = true;
                tracing::debug!(trap = format!("{trap:?}"), "plugin trap");
                Err(GuestError::Trap(describe_trap(&trap, &self.limits)))
            }
        }
    }

    /// Runs a `run` frame.
    pub fn run(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_run(&mut self.store, frame);
        self.finish_call(result)
    }

    /// Runs an `aggregate` frame.
    pub fn aggregate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_aggregate(&mut self.store, frame);
        self.finish_call(result)
    }

    /// Runs a `migrate` frame.
    pub fn migrate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_migrate(&mut self.store, frame);
        self.finish_call(result)
    }
}

/// What a task needs from a plugin: its three calls, each made on a healthy
/// instance, and the limits on what goes in and comes out. Implemented by
/// [`Worker`] for wasm plugins, and natively in tests.
pub trait Guest {
    /// Runs a `run` frame (`weir_abi::calls::RunIn` → `RunOut`).
    fn run(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError>;
    /// Runs an `aggregate` frame (`AggregateIn` → `AggregateOut`).
    fn aggregate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError>;
    /// Runs a `migrate` frame (`MigrateIn` → `MigrateOut`).
    fn migrate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError>;
    /// Drops the current instance: the next call runs on a fresh one (after a
    /// failure, or when the instance may hold ballast).
    fn renew(&mut self);
    /// Largest accumulator or output value a call may return.
    fn max_value_bytes(&self) -> usize;
    /// Largest frame the host builds for one call.
    fn max_frame_bytes(&self) -> usize;
}

/// A plugin and the instance its calls run on; a failed instance is replaced by
/// a fresh one before the next call, so nothing ever calls a dead instance.
pub struct Worker {
    plugin: Plugin,
    instance: Option<Instance>,
}

impl Worker {
    /// A worker for `plugin`; its first instance is made on first use.
    pub fn new(plugin: Plugin) -> Self {
        Self { plugin, instance: None }
    }

    /// A worker for `plugin` with `instance` already made (off the hot path).
    pub fn with_instance(plugin: Plugin, instance: Instance) -> Self {
        Self { plugin, instance: Some(instance) }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The plugin, giving up the instance.
    pub fn into_plugin(self) -> Plugin {
        self.plugin
    }

    fn instance(&mut self) -> Result<&mut Instance, GuestError> {
        if self.instance.as_ref().is_none_or(Instance::is_poisoned) {
            self.instance = None;
            self.instance = Some(self.plugin.instantiate()?);
        }
        self.instance.as_mut().ok_or_else(|| GuestError::Trap("no instance".into()))
    }
}

impl Guest for Worker {
    fn run(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.instance()?.run(frame)
    }

    fn aggregate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.instance()?.aggregate(frame)
    }

    fn migrate(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.instance()?.migrate(frame)
    }

    fn renew(&mut self) {
        self.instance = None;
    }

    fn max_value_bytes(&self) -> usize {
        self.plugin.sandbox.limits.max_value_bytes
    }

    fn max_frame_bytes(&self) -> usize {
        self.plugin.sandbox.limits.max_frame_bytes()
    }
}
