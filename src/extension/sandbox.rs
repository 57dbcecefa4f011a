//! The wasmtime sandbox: one engine for all extensions, one store per extension instance.
//!
//! Limits: linear memory per instance ([`Limits::memory_bytes`]), and a deadline per call by
//! epoch interruption — a ticker thread advances the engine's epoch every [`EPOCH_TICK`], and a
//! call that runs past its deadline traps. WASI is linked because every language's standard
//! library imports some of it, but with nothing granted: no preopened folders, no network, no
//! environment, stdin closed, stdout/stderr discarded.
//!
//! Calls here are synchronous and may take up to the deadline: run them off the async runtime
//! (see `discovery`), never on a task that serves clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::properties::{self, Properties};

mod bindings {
    wasmtime::component::bindgen!({
        world: "discovery",
        path: "wit",
    });
}

pub use bindings::apiary::extension::log::Level;
pub use bindings::apiary::extension::types::{DiscoveryInput, DiscoveryOutput, NodeAddress};

/// How often the epoch advances: the granularity of call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// At most this many log lines per call reach the broker's log; the rest are counted.
const LOG_LINES_PER_CALL: u32 = 100;
/// Longer log messages are cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// Resource limits of one extension instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Linear memory, in bytes, over all memories of the instance.
    pub memory_bytes: usize,
    /// How long one call (instantiation included) may run.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a call into an extension failed. Any of them leaves the instance unusable.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("did not return within {0:?} (timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Trap(String),
    #[error("{0}")]
    Other(String),
}

impl CallError {
    fn from_wasmtime(e: wasmtime::Error, timeout: Duration) -> CallError {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(timeout),
            // The trap alone makes a one-line log; the wasm backtrace is for debugging.
            Some(trap) => {
                tracing::debug!("{e:?}");
                CallError::Trap(trap.to_string())
            }
            None => CallError::Other(format!("{e:#}")),
        }
    }
}

/// The engine and linker shared by every extension.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<State>>,
}

impl Sandbox {
    /// Creates the engine and starts its epoch ticker (which ends with the last clone).
    pub fn new() -> anyhow::Result<Sandbox> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        bindings::Discovery::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .context("starting the epoch ticker")?;
        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
        })
    }

    /// Compiles a component and checks that it is a discovery extension this broker can run
    /// (its imports are all provided, its exports match). Slow: seconds for large components.
    pub fn load(&self, id: &str, wasm: &[u8]) -> anyhow::Result<Plugin> {
        let component = with_context(Component::new(&self.engine, wasm), "not a valid WebAssembly component")?;
        let pre = with_context(
            self.linker.instantiate_pre(&component),
            "the component needs imports this broker does not provide",
        )?;
        let pre = with_context(
            bindings::DiscoveryPre::new(pre),
            "the component does not export apiary:extension/cluster-discovery@1",
        )?;
        Ok(Plugin {
            id: id.into(),
            engine: self.engine.clone(),
            pre,
        })
    }
}

/// A compiled, type-checked extension, ready to be instantiated (cheap) any number of times.
#[derive(Clone)]
pub struct Plugin {
    id: Arc<str>,
    engine: Engine,
    pre: bindings::DiscoveryPre<State>,
}

impl Plugin {
    /// A fresh instance in its own store.
    pub fn instantiate(&self, limits: Limits, config: Properties) -> Result<Instance, CallError> {
        let wasi = WasiCtx::builder().allow_tcp(false).allow_udp(false).build();
        let state = State {
            id: self.id.clone(),
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            config,
            log_budget: LOG_LINES_PER_CALL,
            logs_dropped: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::from_wasmtime(e, limits.call_timeout))?;
        Ok(Instance {
            store,
            bindings,
            timeout: limits.call_timeout,
        })
    }
}

/// wasmtime has its own error type; ours is anyhow's.
fn with_context<T>(result: wasmtime::Result<T>, what: &'static str) -> anyhow::Result<T> {
    result.map_err(|e| anyhow::Error::from(e).context(what))
}

fn deadline_ticks(timeout: Duration) -> u64 {
    // +1: the next tick may come at once.
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()) as u64 + 1
}

/// One running instance of an extension.
pub struct Instance {
    store: Store<State>,
    bindings: bindings::Discovery,
    timeout: Duration,
}

/// The discovery calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Init,
    Reload,
}

impl Instance {
    /// Replaces the configuration the extension reads from now on.
    pub fn set_config(&mut self, config: Properties) {
        self.store.data_mut().config = config;
    }

    /// `init` or `reload`. The inner `Err` is the extension's own error message (the instance
    /// stays usable); the outer one is a trap or timeout (it does not).
    pub fn discover(
        &mut self,
        call: Call,
        input: &DiscoveryInput,
    ) -> Result<Result<DiscoveryOutput, String>, CallError> {
        self.before_call();
        let guest = self.bindings.apiary_extension_cluster_discovery();
        let result = match call {
            Call::Init => guest.call_init(&mut self.store, input),
            Call::Reload => guest.call_reload(&mut self.store, input),
        };
        self.after_call();
        result.map_err(|e| CallError::from_wasmtime(e, self.timeout))
    }

    pub fn destroy(&mut self, input: &DiscoveryInput) -> Result<(), CallError> {
        self.before_call();
        let result = self
            .bindings
            .apiary_extension_cluster_discovery()
            .call_destroy(&mut self.store, input);
        self.after_call();
        result.map_err(|e| CallError::from_wasmtime(e, self.timeout))
    }

    fn before_call(&mut self) {
        self.store.set_epoch_deadline(deadline_ticks(self.timeout));
        let state = self.store.data_mut();
        state.log_budget = LOG_LINES_PER_CALL;
        state.logs_dropped = 0;
    }

    fn after_call(&mut self) {
        let state = self.store.data();
        if state.logs_dropped > 0 {
            tracing::warn!(extension = %state.id, "{} more log lines of this call were dropped", state.logs_dropped);
        }
    }
}

/// What a store holds for its instance.
pub struct State {
    id: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    config: Properties,
    log_budget: u32,
    logs_dropped: u32,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::apiary::extension::types::Host for State {}

impl bindings::apiary::extension::log::Host for State {
    fn log(&mut self, level: Level, mut message: String) {
        if self.log_budget == 0 {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        self.log_budget -= 1;
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let id = &*self.id;
        match level {
            Level::Trace => tracing::trace!(extension = id, "{message}"),
            Level::Debug => tracing::debug!(extension = id, "{message}"),
            Level::Info => tracing::info!(extension = id, "{message}"),
            Level::Warn => tracing::warn!(extension = id, "{message}"),
            Level::Error => tracing::error!(extension = id, "{message}"),
        }
    }
}

impl bindings::apiary::extension::config::Host for State {
    fn get(&mut self, key: String) -> Option<String> {
        properties::get(&self.config, &key).map(str::to_owned)
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.config.clone()
    }
}
