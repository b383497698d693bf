//! Runs plugins: the wasmtime engine, compiled plugins and their instances.
//!
//! A [`Runtime`] holds one engine (component model, epoch interruption, no async
//! bookkeeping) and a linker with WASI preview 2, shared by every plugin of a
//! host. Each plugin brings its own [`Sandbox`]: it is granted nothing it is not
//! given there (no files, no network, no stdio, an empty environment and a clock
//! frozen at the epoch) and runs under that sandbox's [`Limits`]. A [`Plugin`] is
//! a compiled, type-checked component with its `InstancePre`; an [`Instance`] is
//! one store with a linear-memory cap, run under a per-call CPU budget, whose
//! answers may not carry values above a size limit. A failed instance is
//! poisoned and must be replaced with a fresh one from its plugin.

mod bindings;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::window::{WindowError, Windowing};
use bindings::{Processor, ProcessorPre, types};

/// Limits applied to each instance of a plugin.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest linear memory an instance may grow to.
    pub memory_bytes: usize,
    /// CPU time one call may take before it is interrupted.
    pub call_budget: Duration,
    /// Largest accumulator or output value a plugin may return.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_bytes: 64 << 20, call_budget: Duration::from_secs(5), max_value_bytes: 1 << 20 }
    }
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
pub const WORLD_VERSION: &str = "0.2.0";

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
         (it exports {}); a Weir processor exports describe, process, finish and migrate",
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
    /// The plugin returned a value larger than [`Limits::max_value_bytes`].
    #[error("plugin returned a {size}-byte value; the limit is {limit} bytes")]
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
    /// Its windows.
    pub windowing: Windowing,
    /// Its accumulator encoding version.
    pub state_schema: u32,
    /// Older state schemas its `migrate` converts from.
    pub migrates_from: Vec<u32>,
}

impl PluginInfo {
    /// Whether this plugin can take over state stored under `schema`.
    pub fn reads_state(&self, schema: u32) -> bool {
        schema == self.state_schema || self.migrates_from.contains(&schema)
    }
}

/// A one-line reason for a trap (the full wasm backtrace goes to the debug log).
fn describe_trap(error: &wasmtime::Error) -> String {
    let cause = error.root_cause().to_string();
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!("exceeded its CPU budget ({cause})"),
        Some(wasmtime::Trap::UnreachableCodeReached) => format!("panicked or aborted ({cause})"),
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
        self.plugin(component, sandbox)
    }

    /// Compiles a component to this engine's native artifact (`.cwasm`).
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>, LoadError> {
        self.engine.precompile_component(wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    /// Loads a precompiled artifact made by [`Runtime::precompile`] with an engine
    /// of the same configuration, then type-checks it like [`Runtime::load`].
    ///
    /// The caller must pass bytes this host produced and has not let anyone else
    /// change (the registry checks their hash before calling this).
    pub fn load_precompiled(&self, cwasm: &[u8], sandbox: Sandbox) -> Result<Plugin, LoadError> {
        // SAFETY: `Component::deserialize` trusts its input to be a wasmtime
        // artifact; a corrupt or foreign one could run arbitrary native code. The
        // only caller is the registry, which loads artifacts it wrote itself into
        // its own directory and verifies against the SHA-256 recorded when it
        // compiled them. Wasmtime also rejects artifacts from another engine
        // configuration or version.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(&self.engine, cwasm) }
            .map_err(|e| LoadError::Artifact(format!("{e:#}")))?;
        self.plugin(component, sandbox)
    }

    fn plugin(&self, component: Component, sandbox: Sandbox) -> Result<Plugin, LoadError> {
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
        let missing: Vec<String> = ["describe", "process", "finish", "migrate"]
            .into_iter()
            .filter(|needed| !found.iter().any(|e| e == needed))
            .map(str::to_owned)
            .collect();
        if !missing.is_empty() {
            return Err(LoadError::MissingExport { missing, found });
        }
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let pre = ProcessorPre::new(pre).map_err(|e| LoadError::World(format!("{e:#}")))?;
        let mut plugin = Plugin {
            pre,
            sandbox,
            runtime: self.clone(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                windowing: Windowing::tumbling(1)?,
                state_schema: 0,
                migrates_from: Vec::new(),
            },
        };
        let mut instance = plugin.instantiate().map_err(|e| LoadError::Describe(e.to_string()))?;
        plugin.info = instance.describe()?;
        Ok(plugin)
    }
}

/// A compiled plugin, ready to instantiate. Cloning is cheap: clones share the
/// compiled code.
#[derive(Clone)]
pub struct Plugin {
    pre: ProcessorPre<HostState>,
    sandbox: Sandbox,
    runtime: Runtime,
    info: PluginInfo,
}

impl Plugin {
    /// What the plugin declared.
    pub fn info(&self) -> &PluginInfo {
        &self.info
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
            max_value_bytes: self.sandbox.limits.max_value_bytes,
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
    max_value_bytes: usize,
    poisoned: bool,
}

impl Instance {
    /// Whether a failure left this instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Checks a value the plugin returned against the size limit; an oversized
    /// value poisons the instance (its memory may be full of ballast).
    pub fn check_value(&mut self, value: &[u8]) -> Result<(), GuestError> {
        if value.len() > self.max_value_bytes {
            self.poisoned = true;
            return Err(GuestError::Oversized { size: value.len(), limit: self.max_value_bytes });
        }
        Ok(())
    }

    fn describe(&mut self) -> Result<PluginInfo, LoadError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let info = self.bindings.call_describe(&mut self.store).map_err(|e| LoadError::Describe(format!("{e:#}")))?;
        let windowing = match info.windowing {
            types::Windowing::Hopping(h) => Windowing::hopping(h.size_ms, h.advance_ms)?,
            types::Windowing::Tumbling(t) => Windowing::tumbling(t.size_ms)?,
        };
        if info.name.is_empty() {
            return Err(LoadError::Describe("plugin name is empty".into()));
        }
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            windowing,
            state_schema: info.state_schema,
            migrates_from: info.migrates_from,
        })
    }

    fn finish_call(
        &mut self,
        result: wasmtime::Result<Result<Vec<u8>, types::ProcessorError>>,
    ) -> Result<Vec<u8>, GuestError> {
        match result {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(types::ProcessorError::BadFrame(m))) => {
                self.poisoned = true;
                Err(GuestError::BadFrame(m))
            }
            Ok(Err(types::ProcessorError::Fatal(m))) => {
                self.poisoned = true;
                Err(GuestError::Plugin(m))
            }
            Err(trap) => {
                self.poisoned = true;
                tracing::debug!(trap = format!("{trap:?}"), "plugin trap");
                Err(GuestError::Trap(describe_trap(&trap)))
            }
        }
    }

    /// Runs a `process` frame.
    pub fn process(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_process(&mut self.store, frame);
        self.finish_call(result)
    }

    /// Runs a `finish` frame.
    pub fn finish(&mut self, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_finish(&mut self.store, frame);
        self.finish_call(result)
    }

    /// Runs a `migrate` frame converting accumulators from state schema `from`.
    pub fn migrate(&mut self, from: u32, frame: &[u8]) -> Result<Vec<u8>, GuestError> {
        self.store.set_epoch_deadline(self.budget_ticks);
        let result = self.bindings.call_migrate(&mut self.store, from, frame);
        self.finish_call(result)
    }
}
