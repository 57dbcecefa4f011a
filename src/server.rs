//! Wiring: config → store → broker → listeners, and an orderly stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{Broker, Settings};
use crate::cluster::{self, Cluster};
use crate::config::{Config, Discovery, PersistenceMode};
use crate::extension::Extensions;
use crate::extension::discovery::{self, Policy};
use crate::listener;
use crate::store::{self, Loaded, Store};

/// What a node is started with.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: Config,
    pub data_dir: PathBuf,
    pub extensions_dir: PathBuf,
    /// Where extensions' compiled code is cached; `None`: `extension-cache/` in the data folder.
    pub extension_cache_dir: Option<PathBuf>,
    /// Limits and failure policy of the extensions.
    pub extension_policy: Policy,
    /// Start a clustered node on the data in its folder as it is (`apiary run --recovery`), for
    /// the first node of a cluster restarted after a shutdown, instead of setting it aside.
    pub recovery: bool,
}

/// A started node.
pub struct Running {
    broker: Arc<Broker>,
    extensions: Extensions,
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Starts a node: opens the data folder, restores state, binds every listener. Either all of it
/// works or nothing is left running.
pub async fn start(options: Options) -> anyhow::Result<Running> {
    let started = Instant::now();
    let config = &options.config;
    // A clustered node takes its data from the cluster (see `store::set_aside`), unless it is
    // the first one of a restarted cluster.
    let fresh_member = config.cluster.enabled && !options.recovery;
    let (store, mut loaded) = match config.persistence {
        PersistenceMode::File => {
            tracing::info!("Starting with file persistence mode.");
            if options.recovery {
                tracing::info!("Recovery mode: starting on the persistent data in the data folder as it is.");
            } else if fresh_member && let Some(backup) = store::set_aside(&options.data_dir, &[cluster::node_id::FILE])?
            {
                tracing::info!(
                    "Moved the persistent data of the previous run to {}: this node joins as a new member and takes its data from the cluster (apiary run --recovery starts on it instead).",
                    backup.display()
                );
            }
            let (store, loaded) = Store::open(&options.data_dir)?;
            tracing::info!("data folder {}", options.data_dir.display());
            (Some(store), loaded)
        }
        PersistenceMode::InMemory => {
            tracing::info!("Starting with in-memory persistence mode.");
            (None, Loaded::default())
        }
    };
    // Checked before anything starts, so a cluster setting we cannot honour stops start-up.
    let cluster_settings = match config.cluster.enabled {
        true => Some(cluster::Settings::from_config(&config.cluster).context("in <cluster>")?),
        false => None,
    };
    let settings = Settings {
        mqtt: config.mqtt.clone(),
        restrictions: config.restrictions.clone(),
        security: config.security.clone(),
        clustered: config.cluster.enabled,
    };
    let bound = listener::bind_all(&config.listeners)
        .await
        .context("starting the listeners")?;
    let replicas = std::mem::take(&mut loaded.replicas);
    let broker = Broker::new(settings, store, loaded);
    if options.recovery && config.cluster.enabled {
        recover_replicas(&broker, replicas).await?;
    }
    let cache_dir = (options.extension_cache_dir.clone()).unwrap_or_else(|| options.data_dir.join("extension-cache"));
    let extensions = Extensions::start(&options.extensions_dir, options.extension_policy, Some(cache_dir)).await?;
    if let Some(settings) = cluster_settings {
        let me = match fresh_member {
            true => cluster::node_id::create(&options.data_dir)?,
            false => cluster::node_id::load_or_create(&options.data_dir)?,
        };
        let cluster = Cluster::start(settings, me, broker.clone()).await?;
        if let Discovery::Extension { reload_interval_secs } = config.cluster.discovery {
            let (own_host, own_port) = split_address(&cluster.settings.advertised)?;
            let input = discovery::Input {
                own_cluster_id: cluster.id().to_string(),
                own_host,
                own_port,
                reload_interval: std::time::Duration::from_secs(u64::from(reload_interval_secs.max(1))),
            };
            if extensions.started().is_empty() {
                tracing::warn!("<discovery><extension> is configured, but no extension is started");
            }
            extensions.start_discovery(input, Arc::new(move |nodes| cluster.discovered(nodes)));
        }
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut addrs = Vec::new();
    for b in bound {
        addrs.push(b.local_addr()?);
        tasks.spawn(listener::serve(b, broker.clone(), shutdown_rx.clone()));
    }
    tracing::info!("Started Apiary in {}ms", started.elapsed().as_millis());
    Ok(Running {
        broker,
        extensions,
        addrs,
        shutdown,
        tasks,
    })
}

impl Running {
    /// The address of every listener, in configuration order (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Stops accepting, closes every connection, and waits for it all to finish.
    pub async fn stop(mut self) {
        tracing::info!("Shutting down Apiary");
        // First, so that discovery extensions can unregister this node while it is still up.
        self.extensions.stop().await;
        // The clients go first, so that no publish arrives while the sessions' last changes
        // are replicated; then the node hands over and leaves.
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        if let Some(cluster) = self.broker.cluster() {
            cluster.leave().await;
        }
        self.broker.stop();
        // Everything submitted so far reaches the disk before the store is dropped.
        if let Some(store) = self.broker.store() {
            let last = store.submit(Vec::new());
            let _ = store.wait(last).await;
            store.close();
        }
        tracing::info!("Shutdown complete");
    }

    /// Runs until SIGINT or SIGTERM, then stops.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        self.stop().await;
        Ok(())
    }
}

/// In recovery mode the copies this node kept of other nodes' sessions become sessions here
/// (unless the client has one here already): their home nodes will start as new members
/// without their data. The copies are then forgotten.
async fn recover_replicas(
    broker: &Arc<Broker>,
    replicas: Vec<(Arc<str>, cluster::replication::Replica)>,
) -> anyhow::Result<()> {
    if replicas.is_empty() {
        return Ok(());
    }
    let copies = replicas.len();
    // Each copy is deleted in the same write that stores the session it becomes.
    let (adopted, _, ticket) = broker.adopt_replicas(replicas, |_| Vec::new(), |_| None);
    broker.wait(ticket).await.context("recovering the session copies")?;
    tracing::info!(
        "Recovery mode: {} of {} copies of other nodes' sessions became sessions of this node.",
        adopted.len(),
        copies
    );
    Ok(())
}

/// "host:port" (or "[v6]:port") → host and port.
fn split_address(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("cluster address {address:?} has no port"))?;
    let port = port
        .parse()
        .map_err(|_| anyhow::anyhow!("cluster address {address:?}: bad port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}
