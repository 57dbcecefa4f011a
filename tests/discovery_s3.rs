//! The `aws-discovery` sample extension (extensions/aws-discovery) against a real S3 server,
//! s3s-fs (crates.io: `cargo install s3s-fs@0.14.1 --features binary`): it keeps each object as
//! a plain file under its root folder and checks every request's SigV4 signature.
//!
//! - On loopback, the plugin alone in the sandbox: the objects it writes are HiveMQ's (key =
//!   prefix + cluster id, Base64 of `4||||time||||id||||host||||port`); it reads other nodes'
//!   objects, skips foreign ones, deletes expired ones, rewrites its own, deletes it on
//!   `destroy`; a wrong secret is refused by the server.
//! - In network namespaces: a 3-node cluster forms through the plugin, a killed node's object
//!   expires and is deleted by the others, a node stopped with SIGTERM deletes its own, and a
//!   node started later is found.
//!
//! Without s3s-fs on the PATH (or in `S3S_FS`) the tests say so and pass without running, except
//! in CI (`CI` set), where that is a failure; the namespace test also needs root and iproute2.

mod guests;
mod hosts;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiary::extension::grants::Grants;
use apiary::extension::sandbox::{Call, DiscoveryInput, Instance, Limits, NodeAddress, Plugin, Sandbox};
use hosts::{Net, Node};

const BUCKET: &str = "cluster-bucket";
const PREFIX: &str = "hivemq/cluster/nodes/";
const ACCESS_KEY: &str = "APIARYTESTKEY";
const SECRET_KEY: &str = "apiary-test-secret";
const WAIT: Duration = Duration::from_secs(20);

// ----- the S3 server -------------------------------------------------------------------------

/// An s3s-fs process serving one bucket from a temporary folder; killed on drop.
struct S3Server {
    child: Child,
    addr: SocketAddr,
    root: tempfile::TempDir,
}

impl S3Server {
    /// Starts s3s-fs on `ip` (a free port) with the test's keys and an empty bucket; `None` if
    /// s3s-fs is not installed.
    fn start(ip: IpAddr) -> Option<S3Server> {
        let program = std::env::var("S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
        if Command::new(&program).arg("--version").output().is_err() {
            // CI must run these: scripts/test.sh installs s3s-fs.
            assert!(std::env::var_os("CI").is_none(), "s3s-fs is not installed");
            eprintln!("skipped: s3s-fs not installed (cargo install s3s-fs@0.14.1 --features binary)");
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let port = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port();
        let child = Command::new(&program)
            .args(["--host", &ip.to_string(), "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server {
            child,
            addr: SocketAddr::new(ip, port),
            root,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(server.addr).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs does not listen on {}", server.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Every object under the node prefix, key → content.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.root.path().join(BUCKET).join(PREFIX);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return BTreeMap::new();
        };
        entries
            .map_while(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| {
                let key = format!("{PREFIX}{}", e.file_name().to_string_lossy());
                (key, std::fs::read(e.path()).unwrap_or_default())
            })
            .collect()
    }

    /// Puts an object as if another node (or a person) had written it.
    fn put(&self, key: &str, content: &[u8]) {
        let path = self.path(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Waits until the node objects' keys are `keys`.
    fn wait_keys(&self, keys: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut want: Vec<String> = keys.to_vec();
        want.sort();
        loop {
            let have: Vec<String> = self.objects().into_keys().collect();
            if have == want {
                return;
            }
            assert!(Instant::now() < deadline, "bucket holds {have:?}, expected {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ----- HiveMQ's object format, decoded independently of the plugin ---------------------------

/// The fields of a node object: version, creation time (ms), cluster id, host, port.
#[derive(Debug, PartialEq, Eq)]
struct NodeObject {
    version: String,
    created_ms: u64,
    cluster_id: String,
    host: String,
    port: u16,
}

fn decode(content: &[u8]) -> NodeObject {
    let text = base64_decode(content).unwrap_or_else(|| panic!("not Base64: {:?}", String::from_utf8_lossy(content)));
    let text = String::from_utf8(text).expect("UTF-8");
    let fields: Vec<&str> = text.split("||||").collect();
    assert_eq!(fields.len(), 5, "{text:?}");
    NodeObject {
        version: fields[0].into(),
        created_ms: fields[1].parse().expect("creation time"),
        cluster_id: fields[2].into(),
        host: fields[3].into(),
        port: fields[4].parse().expect("port"),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard Base64 with padding, as Java's `Base64.getEncoder()` writes it.
fn encode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                BASE64[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    out
}

/// Strict standard Base64 (padding required), as the plugin must write it.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for chunk in text.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk[..4 - pad].iter().enumerate() {
            let v = BASE64.iter().position(|&b| b == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

// ----- the plugin alone, on loopback ---------------------------------------------------------

/// `conf/config.properties` for `server`, with `credentials` lines and the two intervals.
fn plugin_config(endpoint: &str, credentials: &str, expiration: u64, update: u64) -> String {
    format!(
        "s3-bucket-name:{BUCKET}\ns3-bucket-region:us-east-1\nfile-prefix:{PREFIX}\n\
         file-expiration:{expiration}\nupdate-interval:{update}\ns3-endpoint:{endpoint}\n{credentials}\n"
    )
}

fn access_key(secret: &str) -> String {
    format!(
        "credentials-type:access_key\ncredentials-access-key-id:{ACCESS_KEY}\ncredentials-secret-access-key:{secret}"
    )
}

/// A fresh instance of the plugin (compiled once per test process) with `config` and the
/// grants in `sandbox`.
fn instance(config: &str, sandbox: &str) -> Instance {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    let plugin = PLUGIN.get_or_init(|| {
        let wasm = std::fs::read(guests::build("aws-discovery")).unwrap();
        Sandbox::new(None).unwrap().load("aws-discovery", &wasm).unwrap()
    });
    let config = apiary::extension::properties::parse(config);
    let limits = Limits {
        memory_bytes: 64 << 20,
        call_timeout: Duration::from_secs(10),
    };
    plugin
        .instantiate(limits, config, Grants::parse(sandbox).unwrap())
        .unwrap()
}

fn input(id: &str, host: &str, port: u16) -> DiscoveryInput {
    DiscoveryInput {
        own_cluster_id: id.into(),
        own_address: NodeAddress {
            host: host.into(),
            port,
        },
        reload_interval_secs: 1,
    }
}

/// The plugin's node list as sorted `host:port`, or its error.
fn discover(instance: &mut Instance, call: Call, input: &DiscoveryInput) -> Result<Vec<String>, String> {
    let output = instance.discover(call, input).expect("no trap")?;
    let mut nodes: Vec<String> = output
        .nodes
        .expect("a node list")
        .iter()
        .map(|n| format!("{}:{}", n.host, n.port))
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// `init` writes HiveMQ's object and reports the nodes of the valid, unexpired objects;
/// expired objects are deleted, foreign ones left alone; `destroy` deletes the own object.
#[test]
fn writes_hivemqs_objects_and_reads_the_others() {
    let Some(s3) = S3Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)) else {
        return;
    };
    let now = now_ms();
    let other = format!("{PREFIX}OTHERNODE1");
    s3.put(
        &other,
        &encode(&format!("4||||{now}||||OTHERNODE1||||10.9.9.2||||8000")),
    );
    let expired = format!("{PREFIX}GONENODE01");
    let an_hour_ago = now - 3_600_000;
    s3.put(
        &expired,
        &encode(&format!("4||||{an_hour_ago}||||GONENODE01||||10.9.9.3||||8000")),
    );
    let foreign = format!("{PREFIX}README");
    s3.put(&foreign, b"not a node file");
    let outside = "elsewhere/NODE";
    s3.put(
        outside,
        &encode(&format!("4||||{now}||||ELSEWHERE1||||10.9.9.4||||8000")),
    );

    let sandbox = format!("http.allow={}", s3.addr);
    let mut plugin = instance(
        &plugin_config(&s3.endpoint(), &access_key(SECRET_KEY), 360, 180),
        &sandbox,
    );
    let me = input("MYNODE0001", "127.0.0.1", 7800);
    let before = now_ms();
    let nodes = discover(&mut plugin, Call::Init, &me).unwrap();
    assert_eq!(nodes, ["10.9.9.2:8000", "127.0.0.1:7800"]);

    let objects = s3.objects();
    let own_key = format!("{PREFIX}MYNODE0001");
    let mut keys: Vec<&String> = objects.keys().collect();
    keys.sort();
    assert_eq!(keys, [&own_key, &other, &foreign], "the expired object is deleted");
    assert!(s3.path(outside).exists(), "objects outside the prefix are not touched");
    let own = decode(&objects[&own_key]);
    assert_eq!(
        (
            own.version.as_str(),
            own.cluster_id.as_str(),
            own.host.as_str(),
            own.port
        ),
        ("4", "MYNODE0001", "127.0.0.1", 7800)
    );
    assert!((before..=now_ms()).contains(&own.created_ms), "{own:?}");

    // Another node appears: found at the next reload.
    let third = format!("{PREFIX}THIRDNODE1");
    s3.put(
        &third,
        &encode(&format!("4||||{}||||THIRDNODE1||||10.9.9.5||||8001", now_ms())),
    );
    let nodes = discover(&mut plugin, Call::Reload, &me).unwrap();
    assert_eq!(nodes, ["10.9.9.2:8000", "10.9.9.5:8001", "127.0.0.1:7800"]);

    // The own object deleted behind the node's back is back at the next reload.
    std::fs::remove_file(s3.path(&own_key)).unwrap();
    discover(&mut plugin, Call::Reload, &me).unwrap();
    assert!(s3.path(&own_key).exists());

    plugin.destroy(&me).unwrap();
    assert!(!s3.path(&own_key).exists(), "destroy deletes the own object");
    assert!(s3.path(&other).exists());
}

/// The own object is rewritten (with a new creation time) once it is older than
/// update-interval, so it never reaches file-expiration while the node runs.
#[test]
fn the_own_object_is_rewritten_after_update_interval() {
    let Some(s3) = S3Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)) else {
        return;
    };
    let sandbox = format!("http.allow={}", s3.addr);
    let mut plugin = instance(&plugin_config(&s3.endpoint(), &access_key(SECRET_KEY), 3, 1), &sandbox);
    let me = input("MYNODE0002", "127.0.0.1", 7800);
    discover(&mut plugin, Call::Init, &me).unwrap();
    let key = format!("{PREFIX}MYNODE0002");
    let first = decode(&s3.objects()[&key]).created_ms;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(discover(&mut plugin, Call::Reload, &me).unwrap(), ["127.0.0.1:7800"]);
        let created = decode(&s3.objects()[&key]).created_ms;
        if created != first {
            assert!(
                created >= first + 1000,
                "rewritten only after update-interval: {first} → {created}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never rewritten");
    }
}

/// The server checks signatures: a wrong secret is refused, and the error says why.
#[test]
fn requests_signed_with_a_wrong_secret_are_refused() {
    let Some(s3) = S3Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)) else {
        return;
    };
    let sandbox = format!("http.allow={}", s3.addr);
    let mut plugin = instance(&plugin_config(&s3.endpoint(), &access_key("wrong"), 360, 180), &sandbox);
    let e = discover(&mut plugin, Call::Init, &input("MYNODE0003", "127.0.0.1", 7800)).unwrap_err();
    assert!(e.contains("no permission") && e.contains(BUCKET), "{e}");
    assert!(s3.objects().is_empty());
    // Without the grant nothing is sent at all.
    let mut plugin = instance(&plugin_config(&s3.endpoint(), &access_key(SECRET_KEY), 360, 180), "");
    let e = discover(&mut plugin, Call::Init, &input("MYNODE0003", "127.0.0.1", 7800)).unwrap_err();
    assert!(e.contains("not allowed"), "{e}");
}

// ----- a cluster in network namespaces --------------------------------------------------------

/// Starts node `i` (0-based) of `net` with the plugin installed: credentials from the
/// environment (env.allow), or from its config file when `keys_in_file`.
fn start_node(net: &Net, dir: &Path, s3: &S3Server, i: usize, keys_in_file: bool) -> Node {
    let host = &net.hosts[i];
    let node_dir = dir.join(format!("n{}", i + 1));
    let extensions = node_dir.join("extensions");
    std::fs::create_dir_all(&extensions).unwrap();
    let credentials = if keys_in_file {
        access_key(SECRET_KEY)
    } else {
        "credentials-type:environment_variables".to_owned()
    };
    // file-expiration 4 s, update-interval 1 s: a killed node's object expires within seconds.
    let config = plugin_config(&s3.endpoint(), &credentials, 4, 1);
    let folder = guests::install(
        &extensions,
        "aws-discovery",
        &guests::build("aws-discovery"),
        &config,
        1000,
    );
    guests::allow(
        &folder,
        &format!(
            "http.allow={}\nenv.allow=AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN\n",
            s3.addr
        ),
    );
    let cache = dir.join("extension-cache");
    Node::spawn_with_env(
        &format!("node{}", i + 1),
        &host.ns,
        host.ip,
        &node_dir,
        &hosts::extension_cluster_config(host.ip),
        &[
            ("APIARY_EXTENSIONS_DIR", extensions.to_str().unwrap()),
            ("APIARY_EXTENSION_CACHE_DIR", cache.to_str().unwrap()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    )
}

/// The object key of a running node: the prefix and the cluster id from its data folder.
fn key_of(node: &Node) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(id) = std::fs::read_to_string(node.data_dir.join("cluster-id")) {
            return format!("{PREFIX}{}", id.trim());
        }
        assert!(Instant::now() < deadline, "{}: no cluster id", node.name);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three nodes find each other through the bucket; the registry follows the cluster: a killed
/// node's object expires and is deleted by the others, a stopped node deletes its own, and a
/// node started later is found.
#[test]
fn a_cluster_forms_and_reforms_through_the_bucket() {
    if !hosts::available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let net = Net::new(4);
    let Some(s3) = S3Server::start(IpAddr::V4(net.gateway())) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Node 1 first: it compiles the plugin into the cache the others then load it from.
    let mut nodes = vec![start_node(&net, dir.path(), &s3, 0, false)];
    nodes[0].wait_log("Started Apiary in", WAIT);
    nodes.extend((1..3).map(|i| start_node(&net, dir.path(), &s3, i, i == 2)));
    for node in &nodes {
        node.wait_size(3, WAIT);
    }
    eprintln!("3 nodes formed a cluster in {:?}", started.elapsed());

    // The bucket: one object per node, key = prefix + cluster id, HiveMQ's content.
    let keys: Vec<String> = nodes.iter().map(key_of).collect();
    s3.wait_keys(&keys, WAIT);
    let objects = s3.objects();
    for (i, node) in nodes.iter().enumerate() {
        let object = decode(&objects[&keys[i]]);
        let id = keys[i].strip_prefix(PREFIX).unwrap();
        assert_eq!(
            (object.version.as_str(), object.cluster_id.as_str(), object.port),
            ("4", id, 8000),
            "{}",
            node.name
        );
        assert_eq!(object.host, net.hosts[i].ip.to_string());
        assert!(object.created_ms + 10_000 > now_ms(), "{object:?}");
    }

    // SIGKILL: node 3 cannot clean up; its object expires and another node deletes it.
    let killed = Instant::now();
    nodes[2].kill();
    s3.wait_keys(&keys[..2], WAIT);
    // Logged just before the delete; the log line may reach the test a moment after.
    let deleted_as_expired = format!("the object {:?} of node", keys[2]);
    let deadline = Instant::now() + WAIT;
    while !nodes[..2].iter().any(|n| n.log_text().contains(&deleted_as_expired)) {
        assert!(Instant::now() < deadline, "node 3's object was not deleted as expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("the killed node's object was deleted after {:?}", killed.elapsed());
    for node in &nodes[..2] {
        node.wait_size(2, WAIT);
    }

    // SIGTERM: node 2 deletes its own object on destroy.
    nodes[1].terminate(WAIT);
    s3.wait_keys(&keys[..1], WAIT);
    nodes[1].wait_log("deleted this node's object", WAIT);
    nodes[0].wait_size(1, WAIT);

    // A node started later is found.
    let joined = Instant::now();
    let late = start_node(&net, dir.path(), &s3, 3, false);
    late.wait_size(2, WAIT);
    nodes[0].wait_size(2, WAIT);
    s3.wait_keys(&[keys[0].clone(), key_of(&late)], WAIT);
    eprintln!("a late node joined in {:?}", joined.elapsed());
}
