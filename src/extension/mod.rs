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
//! extension is logged and skipped, it never stops the broker. While the node runs, the folder
//! is looked at every [`WATCH_INTERVAL`]: creating a `DISABLED` file stops an extension,
//! deleting it (or dropping a new folder in) starts one.

pub mod descriptor;
pub mod discovery;
pub mod folder;
pub mod grants;
pub mod net;
pub mod output;
pub mod properties;
pub mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use descriptor::Descriptor;
use discovery::{Ended, Input, Nodes, Policy, Sink};
use folder::Found;
use sandbox::{Instance, Plugin, Sandbox};

/// How often the extensions folder is looked at for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The started extensions of a node.
pub struct Extensions {
    inner: Arc<Inner>,
    watcher: JoinHandle<()>,
}

struct Inner {
    dir: PathBuf,
    policy: Policy,
    /// Where compiled code is cached (none: compile on every start).
    cache_dir: Option<PathBuf>,
    /// Created with the first extension.
    sandbox: Mutex<Option<Sandbox>>,
    /// In start order.
    started: Mutex<Vec<Started>>,
    /// Set once discovery runs through extensions.
    discovery: Mutex<Option<(Input, Arc<Nodes>)>>,
    /// Folders that could not be started, with what they looked like then: tried again only
    /// once they change (so a broken folder is logged once, not every second).
    refused: Mutex<HashMap<PathBuf, Looks>>,
}

struct Started {
    found: Found,
    plugin: Plugin,
    /// The instance made at start, until a discovery driver takes it.
    instance: Option<Instance>,
    driver: Option<(watch::Sender<bool>, JoinHandle<Ended>)>,
}

impl Extensions {
    /// Loads and starts every extension in `dir`, then watches it. Only a sandbox that cannot
    /// be set up at all is an error; a broken extension is logged and left out.
    /// Compiled code is cached in `cache_dir`.
    pub async fn start(dir: &Path, policy: Policy, cache_dir: Option<PathBuf>) -> anyhow::Result<Extensions> {
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            policy,
            cache_dir,
            sandbox: Mutex::new(None),
            started: Mutex::new(Vec::new()),
            discovery: Mutex::new(None),
            refused: Mutex::new(HashMap::new()),
        });
        if !folder::folders(dir).is_empty() {
            tracing::info!("Starting HiveMQ extension system.");
            *lock(&inner.sandbox) = Some(Sandbox::new(inner.cache_dir.as_deref())?);
        }
        inner.rescan().await;
        let watched = inner.clone();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                watched.rescan().await;
            }
        });
        Ok(Extensions { inner, watcher })
    }

    /// The descriptors of the started extensions, in start order.
    pub fn started(&self) -> Vec<Descriptor> {
        lock(&self.inner.started)
            .iter()
            .map(|s| s.found.descriptor.clone())
            .collect()
    }

    /// Makes the started extensions (and those started later) the node's discovery: `init`,
    /// then `reload` every interval; `sink` gets the union of their node lists on every change.
    pub fn start_discovery(&self, input: Input, sink: Sink) {
        let nodes = Arc::new(Nodes::new(sink));
        *lock(&self.inner.discovery) = Some((input, nodes));
        for s in lock(&self.inner.started).iter_mut() {
            self.inner.drive(s);
        }
    }

    /// The union of the discovery extensions' current node lists.
    pub fn discovered(&self) -> Vec<String> {
        lock(&self.inner.discovery)
            .as_ref()
            .map(|(_, n)| n.union())
            .unwrap_or_default()
    }

    /// Stops every extension (`destroy` for discovery extensions that had `init`), in start
    /// order, as HiveMQ does.
    pub async fn stop(&self) {
        self.watcher.abort();
        let all = std::mem::take(&mut *lock(&self.inner.started));
        if all.is_empty() {
            return;
        }
        tracing::info!("Shutting down extension system");
        for s in all {
            self.inner.stop_one(s).await;
        }
    }
}

impl Drop for Extensions {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Inner {
    /// Applies what changed in the folder: `DISABLED` created (or the folder removed) → stop;
    /// a new or re-enabled folder → start. At start-up, this starts everything.
    async fn rescan(&self) {
        let running: Vec<(String, PathBuf)> = lock(&self.started)
            .iter()
            .map(|s| (s.found.descriptor.id.clone(), s.found.folder.clone()))
            .collect();
        for (id, folder) in &running {
            if folder::is_disabled(folder) || !folder.exists() {
                let taken = {
                    let mut started = lock(&self.started);
                    let at = started.iter().position(|s| &s.found.descriptor.id == id);
                    at.map(|i| started.remove(i))
                };
                if let Some(s) = taken {
                    self.stop_one(s).await;
                }
            }
        }
        let mut found = Vec::new();
        for path in folder::folders(&self.dir) {
            if running.iter().any(|(_, f)| *f == path) {
                continue;
            }
            let look = looks(&path);
            if lock(&self.refused).get(&path) == Some(&look) {
                continue;
            }
            match folder::check(&path) {
                Some(f) => found.push(f),
                None => {
                    lock(&self.refused).insert(path, look);
                }
            }
        }
        folder::sort_for_start(&mut found);
        for f in found {
            let (path, look) = (f.folder.clone(), looks(&f.folder));
            if !self.start_one(f).await {
                lock(&self.refused).insert(path, look);
            }
        }
    }

    /// Compiles, checks and instantiates one extension, and drives it if discovery runs;
    /// false (logged) if any of it fails.
    async fn start_one(&self, found: Found) -> bool {
        let d = &found.descriptor;
        let refused = |why: String| {
            tracing::error!(
                "Extension with id \"{}\" cannot be started: {why}. Extension will be disabled.",
                d.id
            );
            false
        };
        let sandbox = {
            let mut sandbox = lock(&self.sandbox);
            if sandbox.is_none() {
                match Sandbox::new(self.cache_dir.as_deref()) {
                    Ok(s) => *sandbox = Some(s),
                    Err(e) => return refused(format!("{e:#}")),
                }
            }
            sandbox.clone()
        };
        let Some(sandbox) = sandbox else { return false };
        let wasm = match std::fs::read(&found.component) {
            Ok(w) => w,
            Err(e) => return refused(format!("cannot read {}: {e}", found.component.display())),
        };
        let id = d.id.clone();
        let plugin = match tokio::task::spawn_blocking(move || sandbox.load(&id, &wasm)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return refused(format!("{e:#}")),
            Err(e) => return refused(e.to_string()),
        };
        let config = properties::read(&found.folder).unwrap_or_else(|e| {
            tracing::warn!(extension = %d.id, "cannot read {}: {e}", properties::RELATIVE_PATH);
            Vec::new()
        });
        let grants = match grants::Grants::read(&found.folder) {
            Ok(g) => g,
            Err(e) => return refused(format!("{e:#}")),
        };
        let (p, limits) = (plugin.clone(), self.policy.limits);
        let instance =
            match discovery::off_runtime(limits.call_timeout, move || p.instantiate(limits, config, grants)).await {
                Some(Ok(i)) => i,
                Some(Err(e)) => return refused(e.to_string()),
                None => return refused(sandbox::CallError::Timeout(limits.call_timeout).to_string()),
            };
        tracing::info!("Extension \"{}\" version {} started successfully.", d.name, d.version);
        let mut started = Started {
            found,
            plugin,
            instance: Some(instance),
            driver: None,
        };
        self.drive(&mut started);
        lock(&self.started).push(started);
        true
    }

    /// Starts the discovery driver of `s`, if discovery runs through extensions.
    fn drive(&self, s: &mut Started) {
        let Some((input, nodes)) = lock(&self.discovery).clone() else {
            return;
        };
        let job = discovery::Job {
            id: s.found.descriptor.id.clone(),
            folder: s.found.folder.clone(),
            plugin: s.plugin.clone(),
            input,
            policy: self.policy,
            nodes,
        };
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(discovery::drive(job, s.instance.take(), stopped));
        s.driver = Some((stop, handle));
    }

    /// Stops one extension: its driver calls `destroy`; its node list is dropped.
    async fn stop_one(&self, s: Started) {
        let ended = match s.driver {
            Some((stop, handle)) => {
                let _ = stop.send(true);
                handle.await.unwrap_or(Ended::Stopped)
            }
            None => Ended::Stopped,
        };
        if let Some((_, nodes)) = lock(&self.discovery).clone() {
            nodes.remove(&s.found.descriptor.id);
        }
        if ended == Ended::Stopped {
            let d = &s.found.descriptor;
            tracing::info!("Extension \"{}\" version {} stopped successfully.", d.name, d.version);
        }
    }
}

/// What a folder looks like: path, size and modification time of its files and of `conf/`'s.
type Looks = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// What `folder` looks like now, to notice when a refused folder changed.
fn looks(folder: &Path) -> Looks {
    let mut out = Vec::new();
    for dir in [folder.to_path_buf(), folder.join("conf")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                if let Ok(m) = e.metadata() {
                    out.push((e.path(), m.len(), m.modified().ok()));
                }
            }
        }
    }
    out.sort();
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
