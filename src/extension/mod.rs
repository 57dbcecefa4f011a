//! Extensions: WebAssembly components loaded from the extensions folder, run sandboxed.
//!
//! - [`folder`]: which `<id>/` folders hold a loadable extension (HiveMQ's rules, `DISABLED`).
//! - [`descriptor`]: the descriptor, `hivemq-extension.xml`.
//! - [`properties`]: the extension's own `conf/config.properties`.
//! - [`sandbox`]: wasmtime: compiling, limits (memory, deadline per call), the host functions.
//! - [`discovery`]: driving discovery extensions and merging their node lists.
//!
//! The interface is the WIT package in `wit/` (`apiary:extension@1.0.0`). Extensions start in
//! start-priority order (higher first) when the node starts and stop when it stops; a broken
//! extension is logged and skipped, it never stops the broker.

pub mod descriptor;
pub mod discovery;
pub mod folder;
pub mod properties;
pub mod sandbox;

use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use descriptor::Descriptor;
use discovery::{Ended, Input, Nodes, Policy, Sink};
use folder::Found;
use sandbox::{Instance, Plugin, Sandbox};

/// The started extensions of a node.
pub struct Extensions {
    policy: Policy,
    started: Vec<Started>,
    nodes: Option<Arc<Nodes>>,
    /// Stops every discovery driver.
    stop: watch::Sender<bool>,
}

struct Started {
    found: Found,
    plugin: Plugin,
    /// The instance made at start, until a discovery driver takes it.
    instance: Mutex<Option<Instance>>,
    driver: Mutex<Option<JoinHandle<Ended>>>,
}

impl Extensions {
    /// Loads and starts every extension in `dir`. Only a sandbox that cannot be set up at all
    /// is an error; a broken extension is logged and left out.
    pub async fn start(dir: &Path, policy: Policy) -> anyhow::Result<Extensions> {
        let found = folder::scan(dir);
        let mut started = Vec::new();
        if !found.is_empty() {
            tracing::info!("Starting HiveMQ extension system.");
            let sandbox = Sandbox::new()?;
            for f in found {
                if let Some(s) = start_one(&sandbox, f, policy).await {
                    started.push(s);
                }
            }
        }
        Ok(Extensions {
            policy,
            started,
            nodes: None,
            stop: watch::channel(false).0,
        })
    }

    /// The descriptors of the started extensions, in start order.
    pub fn started(&self) -> Vec<&Descriptor> {
        self.started.iter().map(|s| &s.found.descriptor).collect()
    }

    /// Makes the started extensions the node's discovery: `init`, then `reload` every interval;
    /// `sink` gets the union of their node lists on every change.
    pub fn start_discovery(&mut self, input: Input, sink: Sink) {
        let nodes = Arc::new(Nodes::new(sink));
        self.nodes = Some(nodes.clone());
        for s in &self.started {
            let first = s.instance.lock().unwrap_or_else(|e| e.into_inner()).take();
            let job = discovery::Job {
                id: s.found.descriptor.id.clone(),
                folder: s.found.folder.clone(),
                plugin: s.plugin.clone(),
                input: input.clone(),
                policy: self.policy,
                nodes: nodes.clone(),
            };
            let handle = tokio::spawn(discovery::drive(job, first, self.stop.subscribe()));
            *s.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        }
    }

    /// The union of the discovery extensions' current node lists.
    pub fn discovered(&self) -> Vec<String> {
        self.nodes.as_ref().map(|n| n.union()).unwrap_or_default()
    }

    /// Stops every extension (`destroy` for discovery extensions that had `init`), in start
    /// order, as HiveMQ does.
    pub async fn stop(&self) {
        if self.started.is_empty() {
            return;
        }
        tracing::info!("Shutting down extension system");
        let _ = self.stop.send(true);
        for s in &self.started {
            let driver = s.driver.lock().unwrap_or_else(|e| e.into_inner()).take();
            let ended = match driver {
                Some(handle) => handle.await.unwrap_or(Ended::Stopped),
                None => Ended::Stopped,
            };
            s.instance.lock().unwrap_or_else(|e| e.into_inner()).take();
            if ended == Ended::Stopped {
                let d = &s.found.descriptor;
                tracing::info!("Extension \"{}\" version {} stopped successfully.", d.name, d.version);
            }
        }
    }
}

/// Compiles, checks and instantiates one extension; `None` (logged) if any of it fails.
async fn start_one(sandbox: &Sandbox, found: Found, policy: Policy) -> Option<Started> {
    let d = &found.descriptor;
    let refused = |why: String| {
        tracing::error!(
            "Extension with id \"{}\" cannot be started: {why}. Extension will be disabled.",
            d.id
        );
    };
    let wasm = match std::fs::read(&found.component) {
        Ok(w) => w,
        Err(e) => {
            refused(format!("cannot read {}: {e}", found.component.display()));
            return None;
        }
    };
    let (sb, id) = (sandbox.clone(), d.id.clone());
    let plugin = match tokio::task::spawn_blocking(move || sb.load(&id, &wasm)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            refused(format!("{e:#}"));
            return None;
        }
        Err(e) => {
            refused(e.to_string());
            return None;
        }
    };
    let config = properties::read(&found.folder).unwrap_or_else(|e| {
        tracing::warn!(extension = %d.id, "cannot read {}: {e}", properties::RELATIVE_PATH);
        Vec::new()
    });
    let p = plugin.clone();
    let instance =
        match discovery::off_runtime(policy.limits.call_timeout, move || p.instantiate(policy.limits, config)).await {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                refused(e.to_string());
                return None;
            }
            None => {
                refused(sandbox::CallError::Timeout(policy.limits.call_timeout).to_string());
                return None;
            }
        };
    tracing::info!("Extension \"{}\" version {} started successfully.", d.name, d.version);
    Some(Started {
        found,
        plugin,
        instance: Mutex::new(Some(instance)),
        driver: Mutex::new(None),
    })
}
