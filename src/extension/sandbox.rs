//! The wasmtime sandbox: one engine for all extensions, one store per extension instance.
//!
//! Limits: linear memory per instance ([`Limits::memory_bytes`]), and a deadline per call by
//! epoch interruption — a ticker thread advances the engine's epoch every [`EPOCH_TICK`], and a
//! call that runs past its deadline traps. WASI is linked because every language's standard
//! library imports some of it, but with nothing granted: no preopened folders, no sockets, only
//! the environment variables the operator grants, stdin closed; stdout and stderr go to the
//! broker's log. Network access is the host's `http` and `dns` interfaces, checked against the
//! extension's grants ([`super::grants`]).
//!
//! Compiled code is cached on disk (wasmtime's cache, keyed by the component's hash, the engine's
//! version and settings), so a restart does not recompile; a corrupt entry is recompiled.
//!
//! Calls here are synchronous and may take up to the deadline: run them off the async runtime
//! (see `discovery`), never on a task that serves clients.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::grants::Grants;
use super::net;
use super::output::{Budget, LogOutput, Stream};
use super::properties::{self, Properties};

mod bindings {
    wasmtime::component::bindgen!({
        world: "discovery",
        path: "wit",
    });
}

pub use bindings::apiary::extension::http::{Request as HttpRequest, Response as HttpResponse};
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
    /// The compiled-code cache, to count hits.
    cache: Option<wasmtime::Cache>,
}

impl Sandbox {
    /// Creates the engine and starts its epoch ticker (which ends with the last clone).
    /// Compiled code is cached in `cache_dir`, when given.
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<Sandbox> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let cache = if let Some(dir) = cache_dir {
            // wasmtime takes absolute cache paths only; `--data-dir data` is relative.
            let dir = &std::path::absolute(dir).with_context(|| format!("cache folder {}", dir.display()))?;
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            let cache = wasmtime::Cache::new(cache)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("compiled-code cache in {}", dir.display()))?;
            config.cache(Some(cache.clone()));
            Some(cache)
        } else {
            None
        };
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
            cache,
        })
    }

    /// Compiles a component and checks that it is a discovery extension this broker can run
    /// (its imports are all provided, its exports match). Slow: seconds for large components.
    pub fn load(&self, id: &str, wasm: &[u8]) -> anyhow::Result<Plugin> {
        let (started, hits) = (Instant::now(), self.cache_hits());
        let component = with_context(Component::new(&self.engine, wasm), "not a valid WebAssembly component")?;
        let how = if self.cache_hits() > hits {
            "loaded from the compiled-code cache"
        } else {
            "compiled"
        };
        tracing::info!(
            extension = id,
            "{} KiB component {how} in {} ms",
            wasm.len() / 1024,
            started.elapsed().as_millis()
        );
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

impl Sandbox {
    /// How many components came from the compiled-code cache so far.
    pub fn cache_hits(&self) -> usize {
        self.cache.as_ref().map_or(0, wasmtime::Cache::cache_hits)
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
    /// A fresh instance in its own store, with the operator's `grants`.
    pub fn instantiate(&self, limits: Limits, config: Properties, grants: Grants) -> Result<Instance, CallError> {
        let budget = Arc::new(Budget::default());
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(LogOutput::new(self.id.clone(), Stream::Stdout, budget.clone()))
            .stderr(LogOutput::new(self.id.clone(), Stream::Stderr, budget.clone()));
        for name in &grants.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        let state = State {
            id: self.id.clone(),
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .instances(16)
                .tables(16)
                .memories(4)
                .build(),
            config,
            grants,
            call_deadline: Instant::now() + limits.call_timeout,
            budget,
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
    /// Replaces the configuration the extension reads, and the grants it has, from now on.
    pub fn set_config(&mut self, config: Properties, grants: Grants) {
        let state = self.store.data_mut();
        state.config = config;
        state.grants = grants;
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
        state.call_deadline = Instant::now() + self.timeout;
        state.budget.reset(LOG_LINES_PER_CALL);
    }

    fn after_call(&mut self) {
        let state = self.store.data();
        let dropped = state.budget.dropped();
        if dropped > 0 {
            tracing::warn!(extension = %state.id, "{dropped} more log lines of this call were dropped");
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
    grants: Grants,
    /// When the current call's time is up: host network calls end by then.
    call_deadline: Instant,
    /// Log lines left in this call, for `log` and stdout/stderr alike.
    budget: Arc<Budget>,
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
        if !self.budget.take() {
            return;
        }
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

impl State {
    /// What is left of the current call's time, if anything.
    fn time_left(&self) -> Option<Duration> {
        Some(self.call_deadline.checked_duration_since(Instant::now())?).filter(|d| !d.is_zero())
    }
}

impl bindings::apiary::extension::http::Host for State {
    fn send(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        let request = net::Request {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        let outcome = match self.time_left() {
            Some(left) => net::http_send(&self.grants, request, left),
            None => Err("the call's deadline has passed".into()),
        };
        if let Err(e) = &outcome {
            tracing::debug!(extension = %self.id, "http: {e}");
        }
        outcome.map(|r| HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

impl bindings::apiary::extension::dns::Host for State {
    fn resolve(&mut self, name: String) -> Result<Vec<String>, String> {
        let outcome = match self.time_left() {
            Some(left) => net::dns_resolve(&self.grants, &name, left),
            None => Err("the call's deadline has passed".into()),
        };
        if let Err(e) = &outcome {
            tracing::debug!(extension = %self.id, "dns: {e}");
        }
        outcome
    }
}
