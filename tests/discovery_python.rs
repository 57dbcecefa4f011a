//! The Python extension `extensions/http-discovery-py` (an HTTP-registry discovery built with
//! componentize-py): proof that an extension written in another language runs in the same host.
//!
//! The test builds the component itself with the extension's `build.sh` (componentize-py must be
//! installed: `python3 -m pip install -r extensions/http-discovery-py/requirements.txt`, which
//! scripts/test.sh does), keeping it in `target/wasm-guests/python/` under the hash of its
//! sources, so reruns do not rebuild. Compiled code is cached in
//! `target/wasm-guests/extension-cache/`, shared by the test process and every node it starts, so
//! only the first load of a run on a fresh machine compiles (seconds: the component embeds
//! CPython); the time is printed.
//!
//! Then: calls through the host API against a real HTTP server (node list, errors, the
//! `http.allow` check), the broker keeping its list while the registry fails, and a 3-node
//! cluster in network namespaces forming and re-forming as the served list changes.

mod hosts;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use apiary::extension::Extensions;
use apiary::extension::discovery::{Input, Policy};
use apiary::extension::grants::Grants;
use apiary::extension::sandbox::{Call, DiscoveryInput, DiscoveryOutput, Limits, NodeAddress, Plugin, Sandbox};
use hosts::{Net, Node};

const ID: &str = "http-discovery-py";

// ----- building and loading the component ---------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the extension with its build.sh, and returns the component.
fn component() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = root().join("extensions").join(ID);
        build_cached(ID, &source, &["app.py", "build.sh", "requirements.txt"], |out| {
            std::process::Command::new("bash")
                .arg(source.join("build.sh"))
                .arg(out)
                .status()
                .expect("run bash")
        })
    })
}

/// Builds the Python template `sdk/python/app.py` with the command its README gives, in a copy
/// of the folder (so nothing is written into the source tree), and returns the component.
fn template() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let source = root().join("sdk/python");
        build_cached("sdk-template", &source, &["app.py", "requirements.txt"], |out| {
            let copy = tempfile::tempdir().unwrap();
            std::fs::copy(source.join("app.py"), copy.path().join("app.py")).unwrap();
            std::process::Command::new("componentize-py")
                .arg("-d")
                .arg(root().join("wit"))
                .args(["-w", "discovery", "componentize", "app", "-o"])
                .arg(out)
                .current_dir(copy.path())
                .status()
                .expect("run componentize-py")
        })
    })
}

/// Runs `build` (which writes the component to the path it is given) unless a component of the
/// same sources is in `target/wasm-guests/python/` already: the key is the hash of `files` of
/// `source`, the WIT files and componentize-py's version.
fn build_cached(
    name: &str,
    source: &Path,
    files: &[&str],
    build: impl FnOnce(&Path) -> std::process::ExitStatus,
) -> PathBuf {
    let tool = std::process::Command::new("componentize-py").arg("--version").output();
    let version = match tool {
        Ok(out) if out.status.success() => out.stdout,
        _ => panic!("componentize-py is not installed: python3 -m pip install -r extensions/{ID}/requirements.txt"),
    };
    let mut hash = Fnv::new();
    hash.add(&version);
    for file in files {
        hash.add(&std::fs::read(source.join(file)).unwrap());
    }
    let mut wit: Vec<PathBuf> = std::fs::read_dir(root().join("wit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wit"))
        .collect();
    wit.sort();
    for file in wit {
        hash.add(&std::fs::read(file).unwrap());
    }
    let dir = root().join("target/wasm-guests/python");
    let out = dir.join(format!("{name}-{:016x}.wasm", hash.0));
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(&dir).unwrap();
    // Builds of older sources are of no more use.
    for old in std::fs::read_dir(&dir).unwrap().map_while(Result::ok) {
        if old.file_name().to_string_lossy().starts_with(&format!("{name}-")) {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let partial = dir.join(format!("{name}.{}.partial", std::process::id()));
    let started = Instant::now();
    assert!(build(&partial).success(), "building {} failed", source.display());
    std::fs::rename(&partial, &out).unwrap();
    eprintln!(
        "built {} ({} bytes) in {:.1?}",
        out.display(),
        std::fs::metadata(&out).unwrap().len(),
        started.elapsed()
    );
    out
}

/// FNV-1a: a hash that stays the same across Rust versions (the key of the build cache).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, bytes: &[u8]) {
        for b in bytes.iter().chain(&[0xff]) {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The compiled-code cache shared by this process and every node it starts.
fn cache_dir() -> PathBuf {
    root().join("target/wasm-guests/extension-cache")
}

/// Compiles the component once per process into the shared cache (so nodes started later find
/// it there), printing how long it took.
fn warm_cache() -> &'static Path {
    static WARM: OnceLock<()> = OnceLock::new();
    let wasm = component();
    WARM.get_or_init(|| {
        let entries = files_in(&cache_dir());
        let bytes = std::fs::read(wasm).unwrap();
        let started = Instant::now();
        Sandbox::new(Some(&cache_dir()))
            .unwrap()
            .load(ID, &bytes)
            .expect("the Python component loads");
        let compiled = files_in(&cache_dir()) > entries;
        eprintln!(
            "first load of the Python component ({} MB): {:.1?} ({})",
            bytes.len() >> 20,
            started.elapsed(),
            if compiled {
                "compiled, now cached"
            } else {
                "from the cache"
            }
        );
    });
    wasm
}

/// How many files are in `dir` and below.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map_while(Result::ok)
            .map(|e| if e.path().is_dir() { files_in(&e.path()) } else { 1 })
            .sum()
    })
}

/// A fresh sandbox on the shared cache, with the component loaded.
fn load() -> Plugin {
    let bytes = std::fs::read(warm_cache()).unwrap();
    let started = Instant::now();
    let plugin = Sandbox::new(Some(&cache_dir())).unwrap().load(ID, &bytes).unwrap();
    eprintln!("load from the compiled-code cache: {:.1?}", started.elapsed());
    plugin
}

// ----- a registry: a tiny HTTP server -------------------------------------------------------

/// An HTTP server answering every request with what [`Registry::serve`] set, remembering who
/// asked what. One connection at a time, `Connection: close`.
struct Registry {
    addr: SocketAddr,
    state: Arc<Mutex<Served>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Served {
    status: u16,
    body: Vec<u8>,
    /// (peer, request head) of every request.
    requests: Vec<(IpAddr, String)>,
}

impl Registry {
    fn start(ip: IpAddr) -> Registry {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Served {
            status: 503,
            body: Vec::new(),
            requests: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, stopped) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let _ = answer(stream, &s);
                }
            }
        });
        Registry {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/nodes.txt", self.addr)
    }

    fn serve(&self, status: u16, body: impl AsRef<[u8]>) {
        let mut state = self.state.lock().unwrap();
        state.status = status;
        state.body = body.as_ref().to_vec();
    }

    fn requests(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    fn requests_from(&self, ip: Ipv4Addr) -> usize {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|(peer, _)| *peer == IpAddr::V4(ip))
            .count()
    }

    fn last_request(&self) -> String {
        let state = self.state.lock().unwrap();
        state.requests.last().map(|(_, head)| head.clone()).unwrap_or_default()
    }
}

fn answer(mut stream: TcpStream, state: &Mutex<Served>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?.ip();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = {
        let mut state = state.lock().unwrap();
        state.requests.push((peer, String::from_utf8_lossy(&head).into_owned()));
        (state.status, state.body.clone())
    };
    write!(
        stream,
        "HTTP/1.1 {status} Test\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ----- helpers ------------------------------------------------------------------------------

/// Polls `f` every 10 ms until it holds; fails the test after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn input() -> DiscoveryInput {
    DiscoveryInput {
        own_cluster_id: "node-a".into(),
        own_address: NodeAddress {
            host: "127.0.0.1".into(),
            port: 7800,
        },
        reload_interval_secs: 60,
    }
}

fn shown(output: &DiscoveryOutput) -> Option<Vec<String>> {
    output
        .nodes
        .as_ref()
        .map(|nodes| nodes.iter().map(|n| format!("{}:{}", n.host, n.port)).collect())
}

fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Puts the extension folder together as an operator would: the shipped descriptor, the
/// component, `conf/config.properties` and `conf/sandbox.properties`.
fn install(extensions: &Path, wasm: &Path, config: &str, sandbox: &str) -> PathBuf {
    let folder = extensions.join(ID);
    std::fs::create_dir_all(folder.join("conf")).unwrap();
    let source = root().join("extensions").join(ID);
    std::fs::copy(source.join("hivemq-extension.xml"), folder.join("hivemq-extension.xml")).unwrap();
    std::fs::copy(wasm, folder.join(format!("{ID}.wasm"))).unwrap();
    std::fs::write(folder.join("conf/config.properties"), config).unwrap();
    std::fs::write(folder.join("conf/sandbox.properties"), sandbox).unwrap();
    folder
}

// ----- through the host API -----------------------------------------------------------------

/// init/reload GET the URL through the host's `http` and return the served list; every kind of
/// bad answer is an error result naming the problem, after which the instance keeps working;
/// a host outside `http.allow` is refused without a connection.
#[test]
fn the_python_plugin_reads_the_node_list_through_the_host() {
    let plugin = load();
    let registry = Registry::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let url = registry.url();
    let conf = config(&[
        ("url", &url),
        ("reload-interval", "7"),
        ("header.Authorization", "Bearer t0ken"),
    ]);
    let allowed = Grants::parse(&format!("http.allow=127.0.0.1:{}", registry.addr.port())).unwrap();
    let started = Instant::now();
    let mut instance = plugin
        .instantiate(Limits::default(), conf.clone(), allowed.clone())
        .unwrap();
    eprintln!("instantiate: {:.1?}", started.elapsed());

    registry.serve(
        200,
        "# the cluster\n10.0.0.1:8000\n\n   10.0.0.2:8000   # second\r\n[fd00::3]:8000\nnode-4.example:8001\n",
    );
    let started = Instant::now();
    let output = instance.discover(Call::Init, &input()).unwrap().unwrap();
    eprintln!("init (one GET): {:.1?}", started.elapsed());
    assert_eq!(
        shown(&output).unwrap(),
        ["10.0.0.1:8000", "10.0.0.2:8000", "fd00::3:8000", "node-4.example:8001"]
    );
    assert_eq!(output.reload_interval_secs, Some(7));
    let head = registry.last_request().to_ascii_lowercase();
    assert!(head.starts_with("get /nodes.txt http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nauthorization: bearer t0ken\r\n"), "{head}");
    assert!(head.contains("\r\nuser-agent: apiary-http-discovery-py/"), "{head}");

    let mut reload = |status: u16, body: &[u8]| {
        registry.serve(status, body);
        instance.discover(Call::Reload, &input()).expect("no trap")
    };
    let error = |result: Result<DiscoveryOutput, String>| result.expect_err("an error result");

    let e = error(reload(404, b"no such file"));
    assert!(e.contains(&url) && e.contains("HTTP status 404"), "{e}");
    let e = error(reload(500, b"10.0.0.1:8000"));
    assert!(e.contains("HTTP status 500"), "{e}");
    let e = error(reload(200, b"10.0.0.1:8000\n10.0.0.2\n"));
    assert!(
        e.contains("line 2") && e.contains("10.0.0.2") && e.contains("expected host:port"),
        "{e}"
    );
    let e = error(reload(200, b"10.0.0.1:99999\n"));
    assert!(e.contains("bad port"), "{e}");
    let e = error(reload(200, b"fd00::1:8000\n"));
    assert!(e.contains("brackets"), "{e}");
    let e = error(reload(200, b"10.0.0 .1:8000\n"));
    assert!(e.contains("bad host"), "{e}");
    let e = error(reload(200, b"10.0.0.1:8000\n\xff\xfe\n"));
    assert!(e.contains("not UTF-8"), "{e}");

    // After errors the instance still works; comments only is a valid, empty list.
    let output = reload(200, "\u{feff}10.0.0.9:8000".as_bytes()).unwrap();
    assert_eq!(shown(&output).unwrap(), ["10.0.0.9:8000"]);
    let output = reload(200, b"# nobody\n\n").unwrap();
    assert_eq!(shown(&output).unwrap(), Vec::<String>::new());

    // A host:port outside http.allow is refused by the host, before any connection.
    let before = registry.requests();
    for grants in ["http.allow=127.0.0.1:1", "http.allow=localhost", ""] {
        instance.set_config(conf.clone(), Grants::parse(grants).unwrap());
        let e = error(instance.discover(Call::Reload, &input()).unwrap());
        assert!(e.contains("not allowed"), "{grants}: {e}");
    }
    assert_eq!(registry.requests(), before, "a refused request reached the server");

    // Allowed but nobody listening: an error result too.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dead = format!("http://{closed}/nodes.txt");
    instance.set_config(
        config(&[("url", &dead)]),
        Grants::parse(&format!("http.allow=127.0.0.1:{}", closed.port())).unwrap(),
    );
    let e = error(instance.discover(Call::Reload, &input()).unwrap());
    assert!(e.contains(&dead), "{e}");

    // Configuration errors.
    instance.set_config(config(&[]), allowed.clone());
    let e = error(instance.discover(Call::Reload, &input()).unwrap());
    assert!(e.contains("`url` is not set"), "{e}");
    instance.set_config(config(&[("url", &url), ("reload-interval", "soon")]), allowed.clone());
    let e = error(instance.discover(Call::Reload, &input()).unwrap());
    assert!(e.contains("reload-interval"), "{e}");
    instance.set_config(config(&[("url", "ftp://example/nodes")]), allowed);
    let e = error(instance.discover(Call::Reload, &input()).unwrap());
    assert!(e.contains("http:// or https://"), "{e}");

    instance.destroy(&input()).unwrap();
}

/// Inside the extension system, from a real extension folder (the shipped descriptor, the
/// operator's conf/sandbox.properties): the list reaches the broker, a failing registry keeps
/// the previous list, a new list replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_registry_keeps_the_previous_list() {
    let wasm = warm_cache();
    let registry = Registry::start(IpAddr::V4(Ipv4Addr::LOCALHOST));
    registry.serve(200, "10.0.0.1:8000\n10.0.0.2:8000\n");
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        wasm,
        &format!("url={}\nreload-interval=1\n", registry.url()),
        &format!("http.allow=127.0.0.1:{}\n", registry.addr.port()),
    );
    let ext = Extensions::start(dir.path(), Policy::default(), Some(cache_dir()))
        .await
        .unwrap();
    let ids: Vec<String> = ext.started().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, [ID]);
    ext.start_discovery(
        Input {
            own_cluster_id: "node-a".into(),
            own_host: "127.0.0.1".into(),
            own_port: 8000,
            reload_interval: Duration::from_secs(60),
        },
        Arc::new(|_| {}),
    );
    let first = ["10.0.0.1:8000", "10.0.0.2:8000"];
    wait_async("the first list", || ext.discovered() == first).await;

    // Two more requests each: the first failed reload has been handled when the second starts
    // (an extension's calls are sequential). The plugin's 1 s interval is in force, not 60 s.
    for (status, body) in [(503, ""), (200, "10.0.0.1:8000\nnot a node\n")] {
        registry.serve(status, body);
        let seen = registry.requests();
        wait_async("two failed reloads", || registry.requests() >= seen + 2).await;
        assert_eq!(ext.discovered(), first, "after {status} {body:?}");
    }

    registry.serve(200, "10.0.0.3:8000\n");
    wait_async("the new list", || ext.discovered() == ["10.0.0.3:8000"]).await;
    ext.stop().await;
}

async fn wait_async(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The template a user starts from (`sdk/python/`), built with the README's command: it loads
/// and returns the nodes of its configuration; a bad entry is an error result.
#[test]
fn the_python_sdk_template_builds_and_runs() {
    let bytes = std::fs::read(template()).unwrap();
    let started = Instant::now();
    let plugin = Sandbox::new(Some(&cache_dir()))
        .unwrap()
        .load("template", &bytes)
        .unwrap();
    eprintln!("template: load {:.1?}", started.elapsed());
    let conf = config(&[("nodes", "10.0.0.1:8000, [fd00::2]:8000")]);
    let mut instance = plugin.instantiate(Limits::default(), conf, Grants::default()).unwrap();
    let output = instance.discover(Call::Init, &input()).unwrap().unwrap();
    assert_eq!(shown(&output).unwrap(), ["10.0.0.1:8000", "fd00::2:8000"]);
    instance.set_config(config(&[("nodes", "10.0.0.1")]), Grants::default());
    let e = instance.discover(Call::Reload, &input()).unwrap().unwrap_err();
    assert!(e.contains("expected host:port"), "{e}");
    instance.destroy(&input()).unwrap();
}

// ----- a cluster in network namespaces ------------------------------------------------------

/// Three hosts, one registry on the bridge (`net.gateway()`), every node discovering through
/// the Python extension: nodes 1 and 2 form a cluster from the served list; node 3, started
/// while the registry fails, stays alone (and 1 and 2 keep their list); adding node 3 to the
/// list grows the cluster to 3; taking it out (and stopping it) shrinks it back to 2.
#[test]
fn three_nodes_form_and_re_form_through_the_python_extension() {
    if !hosts::available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let wasm = warm_cache();
    let net = Net::new(3);
    let registry = Registry::start(IpAddr::V4(net.gateway()));
    let ips: Vec<Ipv4Addr> = net.hosts.iter().map(|h| h.ip).collect();
    let list = |nodes: &[usize]| -> String { nodes.iter().map(|&i| format!("{}:8000\n", ips[i])).collect() };
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_dir();
    let start = |i: usize| -> Node {
        let host = &net.hosts[i];
        let home = dir.path().join(format!("n{}", i + 1));
        let extensions = home.join("extensions");
        install(
            &extensions,
            wasm,
            &format!("# node {}\nurl={}\nreload-interval=1\n", i + 1, registry.url()),
            &format!("http.allow={}\n", registry.addr),
        );
        let started = Instant::now();
        let node = Node::spawn_with_env(
            &format!("node{}", i + 1),
            &host.ns,
            host.ip,
            &home,
            &hosts::extension_cluster_config(host.ip),
            &[
                ("APIARY_EXTENSIONS_DIR", extensions.to_str().unwrap()),
                ("APIARY_EXTENSION_CACHE_DIR", cache.to_str().unwrap()),
            ],
        );
        let up = node.wait_log("Started Apiary in", Duration::from_secs(120));
        eprintln!("node{} started in {:.1?}", i + 1, up - started);
        node
    };
    let timeout = Duration::from_secs(30);

    let listed = |n: usize| format!("node list from {} ({n}): ", registry.url());
    // Serves `body` and waits until every node in `nodes` has asked twice since (the first may
    // have been answered just before the change).
    let serve = |status: u16, body: &str, nodes: &[usize]| {
        let asked: Vec<usize> = nodes.iter().map(|&i| registry.requests_from(ips[i])).collect();
        registry.serve(status, body);
        for (&i, before) in nodes.iter().zip(asked) {
            wait_for("a node to fetch the list", timeout, || {
                registry.requests_from(ips[i]) >= before + 2
            });
        }
    };

    registry.serve(200, list(&[0, 1]));
    let n1 = start(0);
    let n2 = start(1);
    for n in [&n1, &n2] {
        n.wait_log(&listed(2), timeout);
        n.wait_size(2, timeout);
    }

    // The registry fails: node 3 gets no list and stays alone; 1 and 2 keep theirs.
    let n3 = {
        registry.serve(503, "");
        let n3 = start(2);
        serve(503, "", &[0, 1, 2]);
        n3
    };
    for n in [&n1, &n2, &n3] {
        n.wait_log("HTTP status 503", timeout);
    }
    assert_eq!(n3.cluster_size(), Some(1), "{}", n3.log_text());
    assert_eq!(n1.cluster_size(), Some(2));
    assert_eq!(n2.cluster_size(), Some(2));

    // Grow: node 3 is listed.
    let grow = Instant::now();
    serve(200, &format!("# grown\n{}", list(&[0, 1, 2])), &[0, 1, 2]);
    for n in [&n1, &n2, &n3] {
        n.wait_log(&listed(3), timeout);
        n.wait_size(3, timeout);
    }
    eprintln!("grown to 3 nodes in {:.1?}", grow.elapsed());

    // Shrink: node 3 is taken out of the list and stopped.
    let shrink = Instant::now();
    serve(200, &list(&[0, 1]), &[0, 1]);
    for n in [&n1, &n2] {
        n.wait_log_count(&listed(2), 2, timeout);
    }
    drop(n3);
    for n in [&n1, &n2] {
        n.wait_size(2, timeout);
    }
    eprintln!("shrunk to 2 nodes in {:.1?}", shrink.elapsed());
}
