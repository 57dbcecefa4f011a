//! The `docker-discovery` sample (HiveMQ's DNS discovery, as Docker uses it) against a real DNS
//! server: dnsmasq, started by the test with a hosts file of its own that the test rewrites
//! (and reloads with SIGHUP) to add and remove A records, as Docker does when containers come
//! and go. Three `apiary` processes in network namespaces form, grow and shrink a cluster
//! through it; lookup errors are checked in-process, where the node list can be watched.
//!
//! Needs dnsmasq (`apt-get install dnsmasq-base`); the cluster test also needs root and
//! iproute2. Without them each test says so and passes without running.

mod common;
mod guests;
mod hosts;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary::extension::Extensions;
use apiary::extension::discovery::{Input, Policy};
use common::logs;
use hosts::{Net, Node};

const START: Duration = Duration::from_secs(30);
/// The extension's id in the tests.
const ID: &str = "docker-discovery";
/// The domain dnsmasq answers for by itself: a name of it without a record is NXDOMAIN.
const DOMAIN: &str = "apiary";

fn dnsmasq_installed() -> bool {
    let found = Command::new("dnsmasq").arg("--version").output().is_ok();
    if !found {
        // CI must run these: scripts/test.sh installs dnsmasq-base.
        assert!(std::env::var_os("CI").is_none(), "dnsmasq is not installed");
        eprintln!("skipped: dnsmasq is not installed (apt-get install dnsmasq-base)");
    }
    found
}

// ----- the DNS server -----------------------------------------------------------------------

/// A dnsmasq in the foreground on `ip` and a free port, answering A records from a hosts file
/// (and NXDOMAIN for other names under [`DOMAIN`]); killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    /// Holds the hosts file.
    _dir: Option<tempfile::TempDir>,
}

impl Dnsmasq {
    fn start(ip: IpAddr, records: &[(&str, Ipv4Addr)]) -> Dnsmasq {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, hosts_file(records)).unwrap();
        // The port is free when probed; should dnsmasq lose a race for it, it exits: try again.
        let mut failures = String::new();
        for _ in 0..5 {
            let addr = SocketAddr::new(ip, free_udp_and_tcp_port(ip));
            let (child, log) = spawn_dnsmasq(addr, &hosts);
            let mut dns = Dnsmasq {
                child,
                addr,
                hosts: hosts.clone(),
                log,
                _dir: None,
            };
            if dns.wait_reads(1) {
                dns._dir = Some(dir);
                return dns;
            }
            failures.push_str(&format!("on {addr}:\n{}\n", dns.log_text()));
        }
        panic!("dnsmasq did not start {failures}");
    }

    /// Replaces every record, and waits until dnsmasq has read them again (SIGHUP re-reads
    /// `--addn-hosts` files and empties the cache).
    fn set(&mut self, records: &[(&str, Ipv4Addr)]) {
        let before = self.reads();
        std::fs::write(&self.hosts, hosts_file(records)).unwrap();
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(status.success());
        assert!(
            self.wait_reads(before + 1),
            "dnsmasq did not re-read its hosts file:\n{}",
            self.log_text()
        );
    }

    /// How often dnsmasq has logged reading the hosts file (`read <file> - N names`).
    fn reads(&self) -> usize {
        let needle = format!("read {}", self.hosts.display());
        self.log.lock().unwrap().iter().filter(|l| l.contains(&needle)).count()
    }

    /// Waits until dnsmasq has read the hosts file `n` times; false if it exited or took long.
    fn wait_reads(&mut self, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.reads() < n {
            if Instant::now() > deadline || self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts dnsmasq in the foreground on `addr`, answering from `hosts` only; its log is collected.
fn spawn_dnsmasq(addr: SocketAddr, hosts: &Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut command = Command::new("dnsmasq");
    command
        .args(["--no-daemon", "--keep-in-foreground", "--conf-file=/dev/null"])
        .args(["--no-resolv", "--no-hosts", "--bind-interfaces", "--pid-file"])
        .arg(format!("--addn-hosts={}", hosts.display()))
        .arg(format!("--local=/{DOMAIN}/"))
        .arg(format!("--listen-address={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg("--log-facility=-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if is_root() {
        // Stay root: the hosts file is in a folder only root may read.
        command.arg("--user=root");
    }
    let mut child = command.spawn().expect("start dnsmasq");
    let log = Arc::new(Mutex::new(Vec::new()));
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
    }
    (child, log)
}

fn hosts_file(records: &[(&str, Ipv4Addr)]) -> String {
    records.iter().map(|(name, ip)| format!("{ip} {name}\n")).collect()
}

fn free_udp_and_tcp_port(ip: IpAddr) -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind((ip, 0)).expect("bind a UDP socket");
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

// ----- a cluster in network namespaces ------------------------------------------------------

/// Starts node `i` (0-based) of `net` with the extension installed in its own extensions
/// folder. The discovery address comes from the environment (granted by `env.allow`), which
/// wins over the file's — a name the sandbox refuses, so the file's value would fail.
fn start_node(net: &Net, dir: &Path, i: usize, dns: &Dnsmasq) -> Node {
    let host = &net.hosts[i];
    let node_dir = dir.join(format!("n{}", i + 1));
    let extensions = node_dir.join("extensions");
    let folder = guests::install(
        &extensions,
        ID,
        &guests::build(ID),
        "discoveryAddress=refused.apiary\nreloadInterval=1\nresolutionTimeout=1\n",
        1000,
    );
    guests::allow(
        &folder,
        &format!(
            "dns.allow=tasks.apiary\ndns.server={}\n\
             env.allow=APIARY_DNS_DISCOVERY_ADDRESS, HIVEMQ_DNS_DISCOVERY_ADDRESS\n",
            dns.addr
        ),
    );
    // HiveMQ's variable name works as well as ours.
    let address_var = if i == 2 {
        "HIVEMQ_DNS_DISCOVERY_ADDRESS"
    } else {
        "APIARY_DNS_DISCOVERY_ADDRESS"
    };
    let extensions = extensions.to_string_lossy().into_owned();
    Node::spawn_with_env(
        &format!("node{}", i + 1),
        &host.ns,
        host.ip,
        &node_dir,
        &hosts::extension_cluster_config(host.ip),
        &[("APIARY_EXTENSIONS_DIR", &extensions), (address_var, "tasks.apiary")],
    )
}

/// Two A records make a 2-node cluster; a third record is seen by the running nodes at their
/// next reload and its node joins; a removed record drops out of every node's list, and its
/// node, killed, out of the cluster.
#[test]
fn the_cluster_follows_the_dns_records() {
    if !hosts::available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    if !dnsmasq_installed() {
        return;
    }
    let started = Instant::now();
    guests::build(ID);
    let net = Net::new(3);
    let ip: Vec<Ipv4Addr> = net.hosts.iter().map(|h| h.ip).collect();
    let mut dns = Dnsmasq::start(
        IpAddr::V4(net.gateway()),
        &[("tasks.apiary", ip[0]), ("tasks.apiary", ip[1])],
    );
    let dir = tempfile::tempdir().unwrap();

    // Two records, two nodes.
    let mut nodes = vec![
        start_node(&net, dir.path(), 0, &dns),
        start_node(&net, dir.path(), 1, &dns),
    ];
    for n in &nodes {
        n.wait_log("nodes: the A records of \"tasks.apiary\", on cluster port 8000", START);
        n.wait_size(2, START);
    }
    let formed = started.elapsed();

    // Grow: the running nodes find the third record at their next reload (its node is not
    // up yet); then its node starts and joins.
    dns.set(&[
        ("tasks.apiary", ip[0]),
        ("tasks.apiary", ip[1]),
        ("tasks.apiary", ip[2]),
    ]);
    let grown = format!(
        "tasks.apiary resolves to 3 node(s): {}, {}, {} (new {})",
        ip[0], ip[1], ip[2], ip[2]
    );
    for n in &nodes {
        n.wait_log(&grown, START);
    }
    nodes.push(start_node(&net, dir.path(), 2, &dns));
    for n in &nodes {
        n.wait_size(3, START);
    }
    assert!(
        nodes[2].log_text().contains(&format!(
            "tasks.apiary resolves to 3 node(s): {}, {}, {}",
            ip[0], ip[1], ip[2]
        )),
        "{}",
        nodes[2].log_text()
    );

    // Shrink: node 1's record goes (every node's list loses it), then node 1 dies.
    dns.set(&[("tasks.apiary", ip[1]), ("tasks.apiary", ip[2])]);
    let shrunk = format!(
        "tasks.apiary resolves to 2 node(s): {}, {} (gone {})",
        ip[1], ip[2], ip[0]
    );
    for n in &nodes[1..] {
        n.wait_log(&shrunk, START);
    }
    nodes[0].kill();
    for n in &nodes[1..] {
        n.wait_size(2, START);
    }
    for n in &nodes[1..] {
        let log = n.log_text();
        assert!(!log.contains("returned an error"), "{}: {log}", n.name);
        assert!(
            !log.contains("refused.apiary"),
            "the environment wins over the file: {log}"
        );
    }
    eprintln!(
        "formed in {formed:?} (build, start, first lookups), whole test {:?}",
        started.elapsed()
    );
}

// ----- errors, in-process -------------------------------------------------------------------

fn own_node() -> Input {
    Input {
        own_cluster_id: "node-a".into(),
        own_host: "127.0.0.1".into(),
        own_port: 7800,
        reload_interval: Duration::from_secs(1),
    }
}

/// How many log lines contain every one of `parts`.
fn lines_with(parts: &[&str]) -> usize {
    logs::text()
        .lines()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .count()
}

/// Waits until `n` log lines contain every one of `parts` (the extension errs at every reload).
async fn wait_lines(parts: &[&str], n: usize) {
    let deadline = Instant::now() + common::WAIT;
    while lines_with(parts) < n {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} log lines with {parts:?}; logged:\n{}",
            logs::text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A missing discovery address, a name outside `dns.allow` and a name that does not exist are
/// each an error with a clear log line, and the node list stays what it was; once the
/// configuration is mended the list follows it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_errors_are_logged_and_keep_the_node_list() {
    if !dnsmasq_installed() {
        return;
    }
    logs::capture();
    let id = "dns-errors";
    let dns = Dnsmasq::start(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        &[
            ("tasks.apiary", Ipv4Addr::new(10, 0, 0, 1)),
            ("tasks.apiary", Ipv4Addr::new(10, 0, 0, 2)),
            ("other.apiary", Ipv4Addr::new(10, 0, 0, 9)),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let folder = guests::install(
        dir.path(),
        id,
        &guests::build(ID),
        "reloadInterval=1\nresolutionTimeout=1\n",
        1000,
    );
    let sandbox = |allow: &str| format!("dns.allow={allow}\ndns.server={}\n", dns.addr);
    guests::allow(&folder, &sandbox("tasks.apiary"));
    let config = |address: &str| {
        std::fs::write(
            folder.join("conf/config.properties"),
            format!("discoveryAddress={address}\nreloadInterval=1\nresolutionTimeout=1\n"),
        )
        .unwrap()
    };
    let ext = Extensions::start(dir.path(), Policy::default(), None).await.unwrap();
    ext.start_discovery(own_node(), Arc::new(|_| {}));

    // No address at all: `init` fails with an error that says where to set one.
    wait_lines(
        &[
            id,
            "init returned an error, the previous node list is kept: no discovery address: \
             set APIARY_DNS_DISCOVERY_ADDRESS (and allow it with env.allow in conf/sandbox.properties) \
             or discoveryAddress in conf/config.properties",
        ],
        1,
    )
    .await;
    assert!(ext.discovered().is_empty());

    // Mended: the A records on this node's cluster port.
    config("tasks.apiary");
    let list = ["10.0.0.1:7800", "10.0.0.2:7800"];
    common::wait_until("the node list", || ext.discovered() == list).await;

    // A name the sandbox does not allow: refused by the host, the list stays.
    config("other.apiary");
    let refused = "reload returned an error, the previous node list is kept: DNS lookup of \"other.apiary\" \
                   failed: not allowed: \"other.apiary\" is not in dns.allow of conf/sandbox.properties";
    wait_lines(&[id, refused], 2).await;
    assert_eq!(ext.discovered(), list);

    // Allowed, but no such name: NXDOMAIN, the list stays.
    guests::allow(&folder, &sandbox("*.apiary"));
    config("gone.apiary");
    let nxdomain = "reload returned an error, the previous node list is kept: DNS lookup of \"gone.apiary\" \
                    failed: looking up \"gone.apiary\": no such name (NXDOMAIN)";
    wait_lines(&[id, nxdomain], 2).await;
    assert_eq!(ext.discovered(), list);

    // The address removed again while running: the same clear error, the list stays.
    config("");
    wait_lines(&[id, "reload returned an error", "no discovery address"], 2).await;
    assert_eq!(ext.discovered(), list);

    // And back to a name that resolves: the list follows.
    config("other.apiary");
    common::wait_until("the new node list", || ext.discovered() == ["10.0.0.9:7800"]).await;
    ext.stop().await;
}
