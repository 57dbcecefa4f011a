//! WASM extensions: the sample discovery extension and hostile ones, built from `extensions/`
//! for wasm32-wasip2 by the test itself (cargo caches the build in target/wasm-guests), then
//! loaded through the host: alone (`Extensions`, `sandbox`) and inside a running node.

mod common;
mod guests;

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
use guests::install;

// ----- building the guests ------------------------------------------------------------------

struct Guests {
    sample: PathBuf,
    hostile: PathBuf,
}

/// Builds the sample and the hostile extension once per test run.
fn guests() -> Guests {
    Guests {
        sample: guests::build("static-discovery"),
        hostile: guests::build("hostile"),
    }
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
    let sandbox = Sandbox::new(None).unwrap();
    let plugin = sandbox
        .load("hostile", &std::fs::read(&guests().hostile).unwrap())
        .unwrap();
    let config = vec![("mode".to_owned(), mode.to_owned())];
    plugin.instantiate(limits, config, Default::default()).unwrap()
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
    let ext = Extensions::start(dir.path(), Policy::default(), None).await.unwrap();
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
    let ext = Extensions::start(dir.path(), Policy::default(), None).await.unwrap();
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
    let ext = Extensions::start(dir.path(), Policy::default(), None).await.unwrap();
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
    let ext = Extensions::start(dir.path(), Policy::default(), None).await.unwrap();
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
    let ext = Extensions::start(dir.path(), policy(Duration::from_secs(5), 3), None)
        .await
        .unwrap();
    let (seen, sink) = sink();
    ext.start_discovery(input(60), sink);
    wait_until("the valid addresses", || seen.lock().unwrap().is_some()).await;
    assert_eq!(ext.discovered(), ["10.1.1.1:7800", "10.1.1.2:7800"]);
    assert!(logged("5006 of 5008 node addresses were ignored"));
    ext.stop().await;
}

/// Stopping while a reload is in flight (a registry request, say) lets it finish and still
/// calls `destroy`, so the node unregisters itself on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_during_a_call_still_destroys() {
    logs();
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "hostile-slow",
        &guests().hostile,
        "mode=slow\nwhen=reload\nslow-ms=1500\nnodes=10.1.1.1:7800",
        1000,
    );
    let ext = Extensions::start(dir.path(), policy(Duration::from_secs(10), 3), None)
        .await
        .unwrap();
    let (seen, sink) = sink();
    ext.start_discovery(input(1), sink);
    wait_until("init's list", || seen.lock().unwrap().is_some()).await;
    wait_until("a reload under way", || logged("hostile: slow")).await;
    ext.stop().await;
    assert!(logged("hostile: destroy"), "destroy was not called");
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
    let ext = Extensions::start(dir.path(), policy(Duration::from_secs(5), 3), None)
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
    let ext = Extensions::start(dir.path(), policy(Duration::from_millis(200), 2), None)
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
        extension_cache_dir: None,
        extension_policy: policy,
        recovery: false,
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

// ----- network grants, environment, output, interface versions, compiled-code cache ---------

/// An instance of the net-probe test plugin with `config` and the grants in `sandbox`.
fn probe(config: &[(&str, &str)], sandbox: &str) -> apiary::extension::sandbox::Instance {
    let plugin = Sandbox::new(None)
        .unwrap()
        .load(
            "net-probe",
            &std::fs::read(guests::build_at("tests/plugins/net-probe")).unwrap(),
        )
        .unwrap();
    let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let grants = apiary::extension::grants::Grants::parse(sandbox).unwrap();
    plugin
        .instantiate(policy(Duration::from_secs(10), 1).limits, config, grants)
        .unwrap()
}

/// The probe's answer: its node list as `host:port`, or its error.
fn probe_answer(instance: &mut apiary::extension::sandbox::Instance) -> Result<Vec<String>, String> {
    let output = instance.discover(Call::Reload, &wit_input()).expect("no trap")?;
    Ok(output
        .nodes
        .unwrap_or_default()
        .iter()
        .map(|n| format!("{}:{}", n.host, n.port))
        .collect())
}

/// A one-request-at-a-time HTTP server on loopback that answers every request with `body`.
fn http_server(body: &'static str) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// HTTP reaches only the hosts and ports in `http.allow`; the refusal is the plugin's error,
/// with the host's reason, and no connection is made.
#[test]
fn http_reaches_only_the_hosts_the_operator_allows() {
    let server = http_server("10.9.9.1:7800\n10.9.9.2:7800\n");
    let url = format!("http://127.0.0.1:{}/nodes", server.port());
    let config = [("url", url.as_str())];

    let allowed = format!("http.allow=127.0.0.1:{}", server.port());
    assert_eq!(
        probe_answer(&mut probe(&config, &allowed)).unwrap(),
        ["10.9.9.1:7800", "10.9.9.2:7800"]
    );
    for sandbox in ["", "http.allow=127.0.0.1:1", "http.allow=*.example.org", "dns.allow=*"] {
        let e = probe_answer(&mut probe(&config, sandbox)).unwrap_err();
        assert!(
            e.contains("not allowed") && e.contains("http.allow"),
            "{sandbox:?}: {e}"
        );
    }
    let e = probe_answer(&mut probe(&[("url", "ftp://127.0.0.1/nodes")], "http.allow=*")).unwrap_err();
    assert!(e.contains("only http:// and https://"), "{e}");
}

/// DNS lookups only for the names in `dns.allow`.
#[test]
fn dns_resolves_only_the_names_the_operator_allows() {
    let config = [("name", "localhost")];
    let nodes = probe_answer(&mut probe(&config, "dns.allow=localhost")).unwrap();
    assert!(nodes.contains(&"127.0.0.1:7800".to_owned()), "{nodes:?}");
    for sandbox in ["", "dns.allow=*.example.org", "http.allow=*"] {
        let e = probe_answer(&mut probe(&config, sandbox)).unwrap_err();
        assert!(e.contains("not allowed") && e.contains("dns.allow"), "{sandbox:?}: {e}");
    }
}

/// The plugin sees the broker's environment variables that `env.allow` names, and no others.
#[test]
fn a_plugin_sees_only_the_granted_environment_variables() {
    // PATH: a variable every test process has (setting one would take `unsafe`).
    let path = std::env::var("PATH").unwrap();
    let config = [("env", "PATH")];
    assert_eq!(
        probe_answer(&mut probe(&config, "env.allow=PATH")).unwrap(),
        [format!("{path}:7800")]
    );
    let e = probe_answer(&mut probe(&config, "env.allow=OTHER")).unwrap_err();
    assert!(e.contains("not visible"), "{e}");
}

/// What a plugin prints reaches the broker's log, with its id, within the per-call budget.
#[test]
fn stdout_and_stderr_go_to_the_log() {
    logs();
    let mut instance = probe(&[("print", "3")], "");
    probe_answer(&mut instance).unwrap();
    assert!(logged("stdout: probe line 2"));
    assert!(logged("stderr: probe done"));
    let mut flood = probe(&[("print", "1000")], "");
    probe_answer(&mut flood).unwrap();
    assert!(!logged("stdout: probe line 999"), "the budget caps a call's lines");
    assert!(logged("more log lines of this call were dropped"));
}

/// A plugin built against the 1.0 interface (before `http` and `dns` were added in 1.1) loads
/// and works in this broker: wasmtime links semver-compatible names.
#[test]
fn a_plugin_built_against_interface_1_0_still_loads() {
    let wasm = std::fs::read(guests::build_at("tests/plugins/v1-0-discovery")).unwrap();
    let plugin = Sandbox::new(None).unwrap().load("v1-0", &wasm).unwrap();
    let limits = policy(Duration::from_secs(10), 1).limits;
    let mut instance = plugin.instantiate(limits, Vec::new(), Default::default()).unwrap();
    let output = instance.discover(Call::Init, &wit_input()).unwrap().unwrap();
    let nodes = output.nodes.unwrap();
    assert_eq!((nodes[0].host.as_str(), nodes[0].port), ("10.1.0.1", 7800));
}

/// The second engine (a restart) takes the compiled code from the cache; a corrupt cache entry
/// is compiled again, not an error.
#[test]
fn compiled_code_is_cached_and_a_corrupt_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(&guests().sample).unwrap();
    let load = || {
        let sandbox = Sandbox::new(Some(cache.path())).unwrap();
        let started = Instant::now();
        sandbox.load("static-discovery", &wasm).unwrap();
        (sandbox.cache_hits(), started.elapsed())
    };
    let (hits, first) = load();
    assert_eq!(hits, 0);
    let (hits, cached) = load();
    assert_eq!(hits, 1, "the second load is a cache hit");
    eprintln!("compile: first load {first:?}, cached load {cached:?}");

    let mut entries = 0;
    for entry in walk(cache.path()) {
        std::fs::write(&entry, b"garbage").unwrap();
        entries += 1;
    }
    assert!(entries > 0, "the cache holds files");
    let (hits, _) = load();
    assert_eq!(hits, 0, "a corrupt entry is no hit, and is compiled again");
    let (hits, _) = load();
    assert_eq!(hits, 1, "and cached again");
}

/// `--data-dir data` is relative, and so is the cache folder under it; wasmtime wants an
/// absolute one.
#[test]
fn a_relative_cache_folder_works() {
    let relative = Path::new("target/test-relative-extension-cache");
    let sandbox = Sandbox::new(Some(relative)).unwrap();
    sandbox
        .load("static-discovery", &std::fs::read(&guests().sample).unwrap())
        .unwrap();
    let _ = std::fs::remove_dir_all(relative);
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
