//! WASM extensions: the sample discovery extension and hostile ones, built from `extensions/`
//! for wasm32-wasip2 by the test itself (cargo caches the build in target/wasm-guests), then
//! loaded through the host: alone (`Extensions`, `sandbox`) and inside a running node.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use apiary::config::Config;
use apiary::extension::Extensions;
use apiary::extension::discovery::{Input, Policy};
use apiary::extension::sandbox::{Call, CallError, DiscoveryInput, Limits, NodeAddress, Sandbox};
use apiary::mqtt::{Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions};
use apiary::server::{self, Options};
use bytes::Bytes;
use common::*;

// ----- building the guests ------------------------------------------------------------------

struct Guests {
    sample: PathBuf,
    hostile: PathBuf,
}

/// Builds the sample and the hostile extension once per test run.
fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target").join("wasm-guests");
        let build = |name: &str| {
            let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "--target", "wasm32-wasip2", "--manifest-path"])
                .arg(root.join("extensions").join(name).join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .expect("run cargo");
            assert!(
                status.success(),
                "building extensions/{name} failed (rustup target add wasm32-wasip2?)"
            );
            target
                .join("wasm32-wasip2/debug")
                .join(format!("{}.wasm", name.replace('-', "_")))
        };
        Guests {
            sample: build("static-discovery"),
            hostile: build("hostile"),
        }
    })
}

/// Puts an extension folder `<dir>/<id>/` together: descriptor, component, configuration.
fn install(dir: &Path, id: &str, wasm: &Path, config: &str, start_priority: i32) -> PathBuf {
    let folder = dir.join(id);
    std::fs::create_dir_all(folder.join("conf")).unwrap();
    std::fs::write(
        folder.join("hivemq-extension.xml"),
        format!(
            "<hivemq-extension><id>{id}</id><name>{id} name</name><version>1.2.3</version>\
             <start-priority>{start_priority}</start-priority></hivemq-extension>"
        ),
    )
    .unwrap();
    std::fs::copy(wasm, folder.join(format!("{id}.wasm"))).unwrap();
    std::fs::write(folder.join("conf/config.properties"), config).unwrap();
    folder
}

// ----- log capture --------------------------------------------------------------------------

fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    let buffer = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        struct W;
        impl std::io::Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(b);
                std::io::stderr().write_all(b)?;
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(|| W)
            .init();
    });
    buffer
}

fn logged(text: &str) -> bool {
    String::from_utf8_lossy(&logs().lock().unwrap()).contains(text)
}

// ----- helpers ------------------------------------------------------------------------------

fn input(reload_secs: u64) -> Input {
    Input {
        own_cluster_id: "node-a".into(),
        own_host: "127.0.0.1".into(),
        own_port: 7800,
        reload_interval: Duration::from_secs(reload_secs),
    }
}

fn wit_input() -> DiscoveryInput {
    DiscoveryInput {
        own_cluster_id: "node-a".into(),
        own_address: NodeAddress {
            host: "127.0.0.1".into(),
            port: 7800,
        },
        reload_interval_secs: 60,
    }
}

fn policy(call_timeout: Duration, max_failures: u32) -> Policy {
    Policy {
        limits: Limits {
            memory_bytes: 32 << 20,
            call_timeout,
        },
        max_failures,
        backoff: Duration::from_millis(50),
    }
}

/// What a sink received last.
type Seen = Arc<Mutex<Option<Vec<String>>>>;

fn sink() -> (Seen, apiary::extension::discovery::Sink) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    (seen, Arc::new(move |nodes| *s.lock().unwrap() = Some(nodes)))
}

fn hostile_instance(mode: &str, limits: Limits) -> apiary::extension::sandbox::Instance {
    let sandbox = Sandbox::new().unwrap();
    let plugin = sandbox
        .load("hostile", &std::fs::read(&guests().hostile).unwrap())
        .unwrap();
    let config = vec![("mode".to_owned(), mode.to_owned())];
    plugin.instantiate(limits, config).unwrap()
}

// ----- the sample ---------------------------------------------------------------------------

/// The sample's node list reaches the sink; editing its config.properties changes the list at
/// the next reload (the file is re-read before every call, and the sample sets a 1 s interval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_provides_the_node_list_from_its_config() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let folder = install(
        dir.path(),
        "static-discovery",
        &guests().sample,
        "nodes=10.0.0.1:7800, [::1]:7801,node-3.example:7802\nreload-interval=1\n",
        1000,
    );
    let ext = Extensions::start(dir.path(), Policy::default()).await.unwrap();
    assert_eq!(ext.started().len(), 1);
    assert!(logged(
        "Extension \"static-discovery name\" version 1.2.3 started successfully."
    ));
    let (seen, sink) = sink();
    ext.start_discovery(input(60), sink);
    let expected = ["10.0.0.1:7800", "[::1]:7801", "node-3.example:7802"];
    wait_until("the sample's node list", || {
        seen.lock().unwrap().as_deref() == Some(&expected.map(String::from)[..])
    })
    .await;
    assert_eq!(ext.discovered(), expected);

    std::fs::write(
        folder.join("conf/config.properties"),
        "nodes=10.0.0.9:7800\nreload-interval=1\n",
    )
    .unwrap();
    wait_until("the edited node list", || ext.discovered() == ["10.0.0.9:7800"]).await;

    // A typo keeps the previous list (the sample returns an error, the host logs it).
    std::fs::write(
        folder.join("conf/config.properties"),
        "nodes=10.0.0.7\nreload-interval=1\n",
    )
    .unwrap();
    wait_until("the error log", || {
        logged("reload returned an error, the previous node list is kept")
    })
    .await;
    assert_eq!(ext.discovered(), ["10.0.0.9:7800"]);

    ext.stop().await;
    assert!(logged(
        "Extension \"static-discovery name\" version 1.2.3 stopped successfully."
    ));
}

/// HiveMQ's folder rules: a DISABLED file keeps an extension from loading; start order is by
/// start-priority, higher first.
#[tokio::test]
async fn disabled_extensions_are_not_loaded_and_start_order_is_by_start_priority() {
    let dir = tempfile::tempdir().unwrap();
    let g = guests();
    install(dir.path(), "low", &g.sample, "nodes=10.0.0.1:1", 10);
    install(dir.path(), "high", &g.sample, "nodes=10.0.0.1:1", 5000);
    let off = install(dir.path(), "off", &g.sample, "nodes=10.0.0.1:1", 9999);
    std::fs::write(off.join("DISABLED"), "").unwrap();
    let ext = Extensions::start(dir.path(), Policy::default()).await.unwrap();
    let ids: Vec<String> = ext.started().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["high", "low"]);
    ext.stop().await;
}

/// While the node runs: creating `DISABLED` stops an extension (its node list goes), deleting
/// it starts the extension again, and a folder dropped in is started (even when the watcher
/// sees it half-copied first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_file_at_runtime_stops_and_starts_extensions() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let hot = install(dir.path(), "hot", &guests().sample, "nodes=10.3.3.3:7800", 1000);
    let ext = Extensions::start(dir.path(), Policy::default()).await.unwrap();
    let (_, sink) = sink();
    ext.start_discovery(input(60), sink);
    wait_until("the first list", || ext.discovered() == ["10.3.3.3:7800"]).await;

    std::fs::write(hot.join("DISABLED"), "").unwrap();
    wait_until("the stop", || {
        logged("Extension \"hot name\" version 1.2.3 stopped successfully.")
    })
    .await;
    assert!(ext.started().is_empty());
    assert!(ext.discovered().is_empty());

    std::fs::remove_file(hot.join("DISABLED")).unwrap();
    wait_until("the restart", || ext.discovered() == ["10.3.3.3:7800"]).await;

    install(dir.path(), "late", &guests().sample, "nodes=10.4.4.4:7800", 1000);
    wait_until("the new folder", || {
        ext.discovered() == ["10.3.3.3:7800", "10.4.4.4:7800"]
    })
    .await;
    let ids: Vec<String> = ext.started().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["hot", "late"]);
    ext.stop().await;
}

/// A file that is not a component of our world is refused with a log line; the others start.
#[tokio::test]
async fn a_broken_component_is_refused_and_the_rest_start() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    let broken = install(dir.path(), "broken-wasm", &guests().sample, "", 1000);
    std::fs::write(broken.join("broken-wasm.wasm"), b"\0asm garbage").unwrap();
    install(dir.path(), "fine", &guests().sample, "nodes=10.0.0.1:1", 1000);
    let ext = Extensions::start(dir.path(), Policy::default()).await.unwrap();
    assert_eq!(ext.started().len(), 1);
    assert!(logged("Extension with id \"broken-wasm\" cannot be started"));
    ext.stop().await;
}

// ----- hostile extensions, directly through the sandbox --------------------------------------
// Plain threads, as in the broker: sandbox calls never run on an async runtime's thread.

/// An endless loop is stopped by the epoch deadline: the call returns a timeout error in time.
#[test]
fn an_endless_loop_times_out_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let limits = Limits {
        memory_bytes: 32 << 20,
        call_timeout: deadline,
    };
    let mut instance = hostile_instance("loop", limits);
    let started = Instant::now();
    let result = instance.discover(Call::Init, &wit_input());
    let took = started.elapsed();
    assert!(matches!(result, Err(CallError::Timeout(_))), "{result:?}");
    assert!(
        // Generous: the machine may be busy; without the deadline it would never return.
        took >= deadline && took < deadline + Duration::from_secs(2),
        "took {took:?}"
    );
}

/// Allocating without end stops at the memory limit (a trap), well before the deadline.
#[test]
fn allocation_stops_at_the_memory_limit() {
    let limits = Limits {
        memory_bytes: 16 << 20,
        call_timeout: Duration::from_secs(20),
    };
    let mut instance = hostile_instance("alloc", limits);
    let started = Instant::now();
    let result = instance.discover(Call::Init, &wit_input());
    assert!(matches!(result, Err(CallError::Trap(_))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A panic is a trap; the instance is not usable afterwards, a fresh one is.
#[test]
fn a_panic_is_a_trap() {
    let mut instance = hostile_instance("panic", Limits::default());
    let result = instance.discover(Call::Init, &wit_input());
    assert!(matches!(result, Err(CallError::Trap(_))), "{result:?}");
    let mut ok = hostile_instance("behave", Limits::default());
    assert!(matches!(ok.discover(Call::Init, &wit_input()), Ok(Ok(_))));
}

// ----- hostile extensions, driven -------------------------------------------------------------

/// Garbage addresses are dropped, the valid ones kept.
#[tokio::test]
async fn garbage_addresses_are_ignored() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "hostile-garbage",
        &guests().hostile,
        "mode=garbage\nnodes=10.1.1.1:7800,10.1.1.2:7800",
        1000,
    );
    let ext = Extensions::start(dir.path(), policy(Duration::from_secs(5), 3))
        .await
        .unwrap();
    let (seen, sink) = sink();
    ext.start_discovery(input(60), sink);
    wait_until("the valid addresses", || seen.lock().unwrap().is_some()).await;
    assert_eq!(ext.discovered(), ["10.1.1.1:7800", "10.1.1.2:7800"]);
    assert!(logged("5006 of 5008 node addresses were ignored"));
    ext.stop().await;
}

/// A reload that keeps trapping: the list from `init` stays, fresh instances are tried with
/// backoff, and after `max_failures` in a row the extension is disabled with a clear line.
#[tokio::test]
async fn a_repeatedly_failing_extension_is_disabled() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "hostile-panic",
        &guests().hostile,
        "mode=panic\nwhen=reload\nnodes=10.2.2.2:7800",
        1000,
    );
    let ext = Extensions::start(dir.path(), policy(Duration::from_secs(5), 3))
        .await
        .unwrap();
    let (_, sink) = sink();
    // A 1 s reload interval: init, then reload traps, a fresh instance's init works, ...
    ext.start_discovery(input(1), sink);
    wait_until("the init list", || ext.discovered() == ["10.2.2.2:7800"]).await;
    let disabled = "Extension with id \"hostile-panic\" failed 3 times in a row and is disabled";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logged(disabled) {
        assert!(Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged(
        "reload failed: wasm trap: wasm `unreachable` instruction executed"
    ));
    assert_eq!(ext.discovered(), ["10.2.2.2:7800"], "the last good list is kept");
    ext.stop().await;
    assert!(!logged(
        "Extension \"hostile-panic name\" version 1.2.3 stopped successfully."
    ));
}

/// A call blocked in a host function (WASI sleep) cannot be interrupted by the epoch: the
/// driver gives up on it after the deadline plus a grace period, and carries on.
#[tokio::test]
async fn a_call_blocked_in_the_host_is_given_up_on() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "hostile-sleep",
        &guests().hostile,
        "mode=sleep\nwhen=reload",
        1000,
    );
    let ext = Extensions::start(dir.path(), policy(Duration::from_millis(200), 2))
        .await
        .unwrap();
    let (_, sink) = sink();
    ext.start_discovery(input(1), sink);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !logged("Extension with id \"hostile-sleep\" failed 2 times in a row and is disabled") {
        assert!(Instant::now() < deadline, "never disabled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged("reload failed: did not return within 200ms (timeout)"));
    ext.stop().await;
}

// ----- inside a running node --------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn extension_discovery_config(cluster_port: u16) -> Config {
    let xml = format!(
        "<hivemq>
           <listeners><tcp-listener><port>0</port><bind-address>127.0.0.1</bind-address></tcp-listener></listeners>
           <cluster>
             <enabled>true</enabled>
             <transport><tcp><bind-address>127.0.0.1</bind-address><bind-port>{cluster_port}</bind-port></tcp></transport>
             <discovery><extension><reload-interval>1</reload-interval></extension></discovery>
             <failure-detection><heartbeat><interval>200</interval><timeout>1000</timeout></heartbeat></failure-detection>
           </cluster>
         </hivemq>"
    );
    Config::parse(&xml, "test.xml", &|_| None).expect("valid test config")
}

async fn start_node(dir: &Path, config: Config, policy: Policy) -> server::Running {
    server::start(Options {
        config,
        data_dir: dir.join("data"),
        extensions_dir: dir.join("extensions"),
        extension_policy: policy,
    })
    .await
    .expect("node starts")
}

/// Two nodes whose only discovery is the sample extension (`<discovery><extension>`) find each
/// other and form one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_form_a_cluster_through_the_sample_extension() {
    let ports = [free_port(), free_port()];
    let nodes_line = format!("nodes=127.0.0.1:{},127.0.0.1:{}\n", ports[0], ports[1]);
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for port in ports {
        let dir = tempfile::tempdir().unwrap();
        install(
            &dir.path().join("extensions"),
            "static-discovery",
            &guests().sample,
            &nodes_line,
            1000,
        );
        nodes.push(start_node(dir.path(), extension_discovery_config(port), Policy::default()).await);
        dirs.push(dir);
    }
    for node in &nodes {
        wait_until("the cluster formed", || {
            node.broker().cluster().is_some_and(|c| c.size() == 2)
        })
        .await;
    }
    for node in nodes {
        node.stop().await;
    }
}

/// While an extension spins in an endless loop (and is restarted, and spins again), the
/// node's MQTT traffic flows as usual — on a single-threaded runtime, so a blocked runtime
/// thread would show at once.
#[tokio::test(flavor = "current_thread")]
async fn mqtt_traffic_flows_while_an_extension_loops() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    install(
        &dir.path().join("extensions"),
        "hostile-loop",
        &guests().hostile,
        "mode=loop",
        1000,
    );
    let node = start_node(
        dir.path(),
        extension_discovery_config(free_port()),
        policy(Duration::from_secs(2), 100),
    )
    .await;
    let addr = node.local_addrs()[0];
    let (mut sub, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V5, "sub", true)).await;
    sub.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("t/#".into(), SubscriptionOptions::default())],
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    let (mut publ, _) = RawClient::connect(addr, connect_packet(ProtocolVersion::V5, "pub", true)).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut round_trips = 0;
    // ~5 s: the loop is interrupted twice meanwhile (2 s deadline) and restarted.
    while started.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        publ.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t/x".into(),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from_static(b"ping"),
        }))
        .await;
        match sub.recv().await {
            Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"ping"),
            other => panic!("expected the publish, got {other:?}"),
        }
        slowest = slowest.max(t.elapsed());
        round_trips += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(logged("extension=hostile-loop") && logged("init failed: did not return within 2s (timeout)"));
    // A runtime blocked by the extension would stall for its 2 s deadline; allow for a busy
    // machine below that.
    assert!(slowest < Duration::from_secs(1), "slowest round trip {slowest:?}");
    assert!(round_trips > 20, "{round_trips} round trips");
    eprintln!("{round_trips} round trips while the extension looped, slowest {slowest:?}");
    node.stop().await;
}
