//! Cluster discovery through extensions (`<cluster><discovery><extension>`): every enabled
//! discovery extension gets `init`, then `reload` every reload interval; the union of their
//! node lists is handed to the cluster, which dials every address.
//!
//! Each extension is driven by its own task, and each call runs on its own thread with a
//! deadline (see [`off_runtime`]), so a slow or hostile extension delays nothing but itself.
//! A trap or timeout keeps the previous node list, drops the instance and starts a fresh one
//! after a backoff; after [`Policy::max_failures`] in a row (without a successful `reload` in
//! between) the extension is disabled. An error
//! the extension returns itself (its registry is unreachable, say) keeps the list and the
//! instance: it is the extension's to retry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::grants::Grants;
use super::properties;
use super::sandbox::{Call, CallError, DiscoveryInput, DiscoveryOutput, Instance, Limits, NodeAddress, Plugin};

/// Longer intervals (asked for by an extension) are cut to this.
const MAX_RELOAD_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// More addresses in one list are ignored.
const MAX_NODES: usize = 1024;
/// How long past its deadline a call may take before its thread is given up on (a call blocked
/// inside a host function does not see the epoch deadline).
const GRACE: Duration = Duration::from_secs(1);
/// How long stopping waits for a call in flight to finish, so that `destroy` can still run.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// This node, as discovery extensions see it.
#[derive(Debug, Clone)]
pub struct Input {
    pub own_cluster_id: String,
    /// The advertised cluster address (external address and port when configured).
    pub own_host: String,
    pub own_port: u16,
    /// `<discovery><extension><reload-interval>`.
    pub reload_interval: Duration,
}

impl Input {
    fn wit(&self, interval: Duration) -> DiscoveryInput {
        DiscoveryInput {
            own_cluster_id: self.own_cluster_id.clone(),
            own_address: NodeAddress {
                host: self.own_host.clone(),
                port: self.own_port,
            },
            reload_interval_secs: u32::try_from(interval.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

/// What happens when an extension fails.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub limits: Limits,
    /// Consecutive traps or timeouts after which the extension is disabled.
    pub max_failures: u32,
    /// The first wait before a fresh instance; doubled on every further failure.
    pub backoff: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            limits: Limits::default(),
            max_failures: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// Receives the union of all discovery extensions' node lists ("host:port"), on every change.
pub type Sink = Arc<dyn Fn(Vec<String>) + Send + Sync>;

/// The node list of every extension, and their union.
pub struct Nodes {
    by_extension: Mutex<BTreeMap<String, Vec<String>>>,
    sink: Sink,
}

impl Nodes {
    pub fn new(sink: Sink) -> Nodes {
        Nodes {
            by_extension: Mutex::new(BTreeMap::new()),
            sink,
        }
    }

    /// The union of the current lists, sorted.
    pub fn union(&self) -> Vec<String> {
        let lists = self.by_extension.lock().unwrap_or_else(|e| e.into_inner());
        let all: BTreeSet<&String> = lists.values().flatten().collect();
        all.into_iter().cloned().collect()
    }

    /// Forgets an extension's list (it stopped).
    pub fn remove(&self, extension: &str) {
        let removed = self
            .by_extension
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(extension)
            .is_some();
        if removed {
            (self.sink)(self.union());
        }
    }

    fn set(&self, extension: &str, nodes: Vec<String>) {
        let changed = {
            let mut lists = self.by_extension.lock().unwrap_or_else(|e| e.into_inner());
            lists.insert(extension.to_owned(), nodes.clone()) != Some(nodes)
        };
        if changed {
            (self.sink)(self.union());
        }
    }
}

/// How a driver ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Stopped,
    Disabled,
}

/// One discovery extension, as its driver needs it.
pub(super) struct Job {
    pub id: String,
    pub folder: PathBuf,
    pub plugin: Plugin,
    pub input: Input,
    pub policy: Policy,
    pub nodes: Arc<Nodes>,
}

/// One discovery extension's loop, until `stop` turns true (then `destroy` is called if `init`
/// was) or the extension is disabled. `first` is the instance made when the extension started.
pub(super) async fn drive(job: Job, first: Option<Instance>, mut stop: watch::Receiver<bool>) -> Ended {
    let Job {
        id,
        folder,
        plugin,
        input,
        policy,
        nodes,
    } = job;
    let timeout = policy.limits.call_timeout;
    let mut instance = first;
    let mut interval = input.reload_interval;
    let mut next = Call::Init;
    let mut failures = 0u32;
    loop {
        let mut current = match instance.take() {
            Some(i) => i,
            None => {
                let wait = backoff(policy.backoff, failures);
                if stopped_within(&mut stop, wait).await {
                    return Ended::Stopped;
                }
                let (plugin, config, grants) = (plugin.clone(), read_config(&id, &folder), read_grants(&id, &folder));
                let starting = off_runtime(timeout, move || plugin.instantiate(policy.limits, config, grants));
                let Some(started) = unless_stopped(&mut stop, starting).await else {
                    return Ended::Stopped;
                };
                match started.unwrap_or(Err(CallError::Timeout(timeout))) {
                    Ok(i) => {
                        next = Call::Init;
                        i
                    }
                    Err(e) => {
                        if failed(&id, &mut failures, policy, "starting a fresh instance", &e) {
                            return Ended::Disabled;
                        }
                        continue;
                    }
                }
            }
        };
        current.set_config(read_config(&id, &folder), read_grants(&id, &folder));
        let call = next;
        let wit_input = input.wit(interval);
        let calling = off_runtime(timeout, move || {
            let r = current.discover(call, &wit_input);
            (current, r)
        });
        let mut calling = std::pin::pin!(calling);
        let finished = tokio::select! {
            outcome = &mut calling => Some(outcome),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(outcome) = finished else {
            // Stopping mid-call: the call may finish soon (a reload doing a request), and then
            // `destroy` can still unregister this node; one that does not is given up.
            if let Ok(Some((i, Ok(_)))) = tokio::time::timeout(STOP_GRACE, calling).await {
                destroy(&id, i, input.wit(interval), timeout).await;
            }
            return Ended::Stopped;
        };
        let what = match call {
            Call::Init => "init",
            Call::Reload => "reload",
        };
        match outcome {
            Some((i, Ok(Ok(output)))) => {
                instance = Some(i);
                // Recovered only once a fresh instance also got through a reload: one whose
                // `init` works but whose `reload` traps is still disabled in the end.
                if call == Call::Reload {
                    failures = 0;
                }
                next = Call::Reload;
                apply(&id, output, &nodes, &mut interval);
            }
            Some((i, Ok(Err(message)))) => {
                instance = Some(i);
                next = Call::Reload;
                tracing::warn!(extension = %id, "{what} returned an error, the previous node list is kept: {message}");
            }
            Some((_, Err(e))) => {
                if failed(&id, &mut failures, policy, what, &e) {
                    return Ended::Disabled;
                }
                continue;
            }
            None => {
                if failed(&id, &mut failures, policy, what, &CallError::Timeout(timeout)) {
                    return Ended::Disabled;
                }
                continue;
            }
        }
        if stopped_within(&mut stop, interval).await {
            break;
        }
    }
    // Stopping: `destroy` on the instance that had `init`.
    if let Some(current) = instance.filter(|_| next == Call::Reload) {
        destroy(&id, current, input.wit(interval), timeout).await;
    }
    Ended::Stopped
}

/// Calls `destroy`; a failure is logged, nothing more can be done about it.
async fn destroy(id: &str, mut instance: Instance, input: DiscoveryInput, timeout: Duration) {
    match off_runtime(timeout, move || instance.destroy(&input)).await {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::warn!(extension = %id, "destroy failed: {e}"),
        None => tracing::warn!(extension = %id, "destroy failed: {}", CallError::Timeout(timeout)),
    }
}

/// Counts a failure and logs it; true if the extension is now disabled.
fn failed(id: &str, failures: &mut u32, policy: Policy, what: &str, e: &CallError) -> bool {
    *failures += 1;
    if *failures >= policy.max_failures {
        tracing::error!(
            extension = %id,
            "{what} failed: {e}. Extension with id \"{id}\" failed {failures} times in a row and is disabled; \
             its last node list is kept. Restart the broker to try it again."
        );
        return true;
    }
    tracing::error!(
        extension = %id,
        "{what} failed: {e}; the previous node list is kept, a fresh instance starts in {:?}",
        backoff(policy.backoff, *failures)
    );
    false
}

fn backoff(base: Duration, failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => base.saturating_mul(1 << (n - 1).min(6)),
    }
}

fn read_config(id: &str, folder: &std::path::Path) -> properties::Properties {
    properties::read(folder).unwrap_or_else(|e| {
        tracing::warn!(extension = %id, "cannot read {}: {e}", properties::RELATIVE_PATH);
        Vec::new()
    })
}

/// The grants as the file says now; a file that does not parse grants nothing (logged), so a
/// broken edit never widens what the extension may reach.
fn read_grants(id: &str, folder: &std::path::Path) -> Grants {
    Grants::read(folder).unwrap_or_else(|e| {
        tracing::warn!(extension = %id, "{e:#}; the extension gets no network access until it is mended");
        Grants::default()
    })
}

/// Takes a successful answer: the node list (valid addresses only) and the reload interval.
fn apply(id: &str, output: DiscoveryOutput, nodes: &Nodes, interval: &mut Duration) {
    if let Some(secs) = output.reload_interval_secs {
        *interval = Duration::from_secs(u64::from(secs.max(1))).min(MAX_RELOAD_INTERVAL);
    }
    let Some(list) = output.nodes else { return };
    let total = list.len();
    let mut valid: Vec<String> = list.iter().take(MAX_NODES).filter_map(address).collect();
    let dropped = total - valid.len();
    valid.sort();
    valid.dedup();
    if dropped > 0 {
        tracing::warn!(extension = %id, "{dropped} of {total} node addresses were ignored (not valid, or beyond the first {MAX_NODES})");
    }
    tracing::debug!(extension = %id, "node list: {valid:?}");
    nodes.set(id, valid);
}

/// A node address as the cluster dials it, if the host is an IP literal or a host name and
/// the port is not 0.
pub fn address(node: &NodeAddress) -> Option<String> {
    if node.port == 0 {
        return None;
    }
    if let Ok(ip) = node.host.parse::<IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, node.port).to_string());
    }
    let host = node.host.strip_suffix('.').unwrap_or(&node.host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (host.len() <= 253 && host.split('.').all(label_ok)).then(|| format!("{host}:{}", node.port))
}

/// Runs `f` on a thread of its own and waits at most `timeout` plus a grace period. `None` if
/// it did not finish in time (the thread is left to finish by itself; what it holds is dropped
/// then) or panicked.
pub(super) async fn off_runtime<R: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("wasm-call".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    tokio::time::timeout(timeout + GRACE, rx).await.ok()?.ok()
}

/// Awaits `f` unless `stop` turns true first (then `None`).
async fn unless_stopped<T>(stop: &mut watch::Receiver<bool>, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = f => Some(r),
        _ = stop.wait_for(|s| *s) => None,
    }
}

/// Waits `d`; true if `stop` turned (or was) true meanwhile.
async fn stopped_within(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> NodeAddress {
        NodeAddress {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn addresses_are_validated() {
        assert_eq!(address(&node("10.0.0.1", 7800)).as_deref(), Some("10.0.0.1:7800"));
        assert_eq!(address(&node("::1", 7800)).as_deref(), Some("[::1]:7800"));
        assert_eq!(address(&node("tasks.hivemq.", 1)).as_deref(), Some("tasks.hivemq:1"));
        assert_eq!(
            address(&node("node-1.example_x.com", 8000)).as_deref(),
            Some("node-1.example_x.com:8000")
        );
        for bad in [
            "",
            "a b",
            "x:1",
            "-a",
            "a..b",
            "ü.de",
            &"a".repeat(64),
            &"a.".repeat(200),
        ] {
            assert_eq!(address(&node(bad, 1)), None, "{bad:?}");
        }
        assert_eq!(address(&node("10.0.0.1", 0)), None);
    }

    #[test]
    fn union_and_sink() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let nodes = Nodes::new(Arc::new(move |u| s.lock().unwrap().push(u)));
        nodes.set("a", vec!["h1:1".into(), "h2:1".into()]);
        nodes.set("b", vec!["h2:1".into(), "h3:1".into()]);
        nodes.set("b", vec!["h2:1".into(), "h3:1".into()]); // unchanged: no call
        assert_eq!(nodes.union(), ["h1:1", "h2:1", "h3:1"]);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 0), Duration::ZERO);
        assert_eq!(backoff(b, 1), b);
        assert_eq!(backoff(b, 3), b * 4);
        assert_eq!(backoff(b, 50), b * 64);
    }
}
