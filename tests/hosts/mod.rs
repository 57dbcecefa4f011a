//! Real hosts for cluster tests: network namespaces on a bridge, each with its own IP, each
//! running the `apiary` binary as a separate process. Everything is removed on drop, also when
//! a test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `ip` with the arguments; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds (`-I`) or removes (`-D`) the rule that lets `bridge` forward between its ports; a
/// machine without iptables needs none.
fn iptables(op: &str, bridge: &str) {
    let _ = Command::new("iptables")
        .args(["-w", op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"])
        .output();
}

/// Whether this machine lets us make network namespaces (root and iproute2).
pub fn available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let ip = Command::new("ip").arg("-V").output().is_ok();
    root && ip
}

/// A bridge with `n` namespaces on it.
pub struct Net {
    tag: String,
    bridge: String,
    subnet: u8,
    pub hosts: Vec<Host>,
}

pub struct Host {
    pub ns: String,
    /// The veth end on the bridge side (set down to cut the host off).
    pub link: String,
    pub ip: Ipv4Addr,
}

impl Net {
    pub fn new(n: usize) -> Net {
        // Unique per process and test, short enough for interface names (15 chars).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + k;
        let subnet = (id % 200 + 20) as u8;
        let tag = format!("a{id}");
        let bridge = format!("{tag}br");
        let mut net = Net {
            tag: tag.clone(),
            bridge: bridge.clone(),
            subnet,
            hosts: Vec::new(),
        };
        // Left over by an earlier run with the same process id that was killed before it could
        // clean up (seen: "ip link add …br: File exists").
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        for i in 1..=n {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{tag}n{i}")])
                .output();
            let _ = Command::new("ip").args(["link", "del", &format!("{tag}v{i}")]).output();
        }
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.231.{subnet}.254/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        // Docker sets the FORWARD policy to DROP and bridged traffic passes through iptables
        // (br_netfilter): let our bridge forward between its own ports.
        iptables("-I", &bridge);
        for i in 1..=n {
            let ns = format!("{tag}n{i}");
            let link = format!("{tag}v{i}");
            let inner = format!("{tag}i{i}");
            let addr = Ipv4Addr::new(10, 231, subnet, i as u8);
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &link, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &link, "master", &bridge]);
            ip(&["link", "set", &link, "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &inner]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.hosts.push(Host { ns, link, ip: addr });
        }
        net
    }

    /// The address of the bridge itself, reachable from every host: where a test runs the
    /// servers its nodes use (a registry, a DNS server).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.subnet, 254)
    }

    /// Starts host `i`'s node (0-based: `node{i+1}`, data in `dir/n{i+1}`) with static discovery
    /// of every host of the net; does not wait for it.
    pub fn start_node(&self, dir: &std::path::Path, i: usize, health_check: bool) -> Node {
        let all: Vec<_> = self.hosts.iter().map(|h| h.ip).collect();
        let host = &self.hosts[i];
        Node::spawn(
            &format!("node{}", i + 1),
            &host.ns,
            host.ip,
            &dir.join(format!("n{}", i + 1)),
            &cluster_config(host.ip, &all, health_check),
        )
    }

    /// [`Net::start_node`] with `<replication><replica-count>` set (and room for 100,000
    /// queued messages per client).
    pub fn start_node_with_replicas(&self, dir: &std::path::Path, i: usize, replica_count: usize) -> Node {
        self.start_node_with_replicas_env(dir, i, replica_count, &[])
    }

    /// [`Net::start_node_with_replicas`] with extra environment variables for the process (a
    /// fault injection switch).
    pub fn start_node_with_replicas_env(
        &self,
        dir: &std::path::Path,
        i: usize,
        replica_count: usize,
        env: &[(&str, &str)],
    ) -> Node {
        let all: Vec<_> = self.hosts.iter().map(|h| h.ip).collect();
        let host = &self.hosts[i];
        let config = cluster_config(host.ip, &all, true).replacen(
            "<enabled>true</enabled>",
            &format!(
                "<enabled>true</enabled><replication><replica-count>{replica_count}</replica-count></replication>"
            ),
            1,
        );
        // Queues that hold what a partition test publishes meanwhile.
        let config = config.replacen(
            "<cluster>",
            "<mqtt><queued-messages><max-queue-size>100000</max-queue-size></queued-messages></mqtt><cluster>",
            1,
        );
        Node::spawn_with_env(
            &format!("node{}", i + 1),
            &host.ns,
            host.ip,
            &dir.join(format!("n{}", i + 1)),
            &config,
            env,
        )
    }

    /// Cuts host `i` off the network (no FIN, no RST: packets just stop), or repairs it.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.hosts[i].link, if up { "up" } else { "down" }]);
    }

    /// Cluster connections (port 8000) of host `i` that are closing: one end closed, and its
    /// FIN not yet answered (or the other end still to close). After a cut heals, these are
    /// the connections from before it, ending.
    pub fn closing_cluster_connections(&self, i: usize) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].ns, "ss", "-Htan"])
            .args([
                "state",
                "fin-wait-1",
                "state",
                "closing",
                "state",
                "last-ack",
                "state",
                "close-wait",
            ])
            .args(["( sport = :8000 or dport = :8000 )"])
            .output()
            .expect("ss (iproute2)");
        assert!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Partitions host `i` from the other hosts, or heals that: every packet between them is
    /// dropped where it is sent (blackhole routes on both sides, so no FIN, no RST, nothing
    /// arrives). Unlike [`Net::set_link`], each host stays reachable from the test (the bridge
    /// address), so MQTT clients on both sides of the partition keep working.
    pub fn split(&self, i: usize, apart: bool) {
        let op = if apart { "add" } else { "del" };
        let cut = &self.hosts[i];
        for other in self.hosts.iter().filter(|h| h.ns != cut.ns) {
            ip(&["-n", &cut.ns, "route", op, "blackhole", &format!("{}/32", other.ip)]);
            ip(&["-n", &other.ns, "route", op, "blackhole", &format!("{}/32", cut.ip)]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
            let _ = Command::new("ip").args(["link", "del", &h.link]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        iptables("-D", &self.bridge);
    }
}

/// An `apiary` process in a namespace, with its log lines collected.
pub struct Node {
    pub name: String,
    child: Option<Child>,
    pub log: Arc<Mutex<Vec<String>>>,
    pub mqtt: SocketAddr,
    pub data_dir: PathBuf,
    config: PathBuf,
    ns: String,
    /// Extra environment of the process (for example `APIARY_EXTENSIONS_DIR`).
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node in `ns` with `config_xml`, data in `dir`; does not wait for it.
    pub fn spawn(name: &str, ns: &str, ip: Ipv4Addr, dir: &std::path::Path, config_xml: &str) -> Node {
        Node::spawn_with_env(name, ns, ip, dir, config_xml, &[])
    }

    /// [`Node::spawn`] with extra environment variables for the process.
    pub fn spawn_with_env(
        name: &str,
        ns: &str,
        ip: Ipv4Addr,
        dir: &std::path::Path,
        config_xml: &str,
        env: &[(&str, &str)],
    ) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("config.xml");
        std::fs::write(&config, config_xml).unwrap();
        let data_dir = dir.join("data");
        let mut node = Node {
            name: name.into(),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            mqtt: SocketAddr::from((ip, 1883)),
            data_dir,
            config,
            ns: ns.into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        node.start();
        node
    }

    /// (Re)starts the process on the same config and data folder.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// [`Node::start`] with extra arguments to `apiary run` (`--recovery`).
    pub fn start_with(&mut self, args: &[&str]) {
        self.log.lock().unwrap().clear();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(env!("CARGO_BIN_EXE_apiary"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            // APIARY_TEST_LOG_LEVEL: another filter for the nodes (with APIARY_TEST_LOGS to see it).
            .env(
                "APIARY_LOG",
                std::env::var("APIARY_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn apiary in a namespace");
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = self.log.clone();
            let name = self.name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("APIARY_TEST_LOGS").is_some() {
                        eprintln!("[{name}] {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        self.child = Some(child);
    }

    /// Waits until a log line contains `text`; returns when it appeared.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> Instant {
        self.wait_log_count(text, 1, timeout)
    }

    /// Waits until `count` log lines contain `text`.
    pub fn wait_log_count(&self, text: &str, count: usize, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count() >= count {
                return Instant::now();
            }
            if Instant::now() > deadline {
                let log = self.log.lock().unwrap().join("\n");
                panic!(
                    "{}: no log line {text:?} (x{count}) within {timeout:?}; log:\n{log}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `Cluster size = N`.
    pub fn cluster_size(&self) -> Option<usize> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|l| l.split("Cluster size = ").nth(1).and_then(|n| n.trim().parse().ok()))
    }

    /// Waits until the node reports the cluster size `n`.
    pub fn wait_size(&self, n: usize, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            if self.cluster_size() == Some(n) {
                return Instant::now();
            }
            if Instant::now() > deadline {
                let log = self.log.lock().unwrap().join("\n");
                panic!("{}: cluster size never became {n}; log:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // `ip netns exec` execs the broker, so this is the broker's own pid: SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean shutdown: the node hands over and leaves), then waits until the process
    /// has exited; panics if it has not within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) {
        let Some(mut c) = self.child.take() else { return };
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        while c.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "{}: did not exit on SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-node static-discovery config for host `ip` among `all`.
pub fn cluster_config(ip: Ipv4Addr, all: &[Ipv4Addr], health_check: bool) -> String {
    let nodes: String = all
        .iter()
        .map(|a| format!("<node><host>{a}</host><port>8000</port></node>"))
        .collect();
    node_config(ip, &format!("<static>{nodes}</static>"), health_check)
}

/// A config whose only discovery is extensions, reloaded every second (until an extension
/// asks for another interval), with the TCP health check.
pub fn extension_cluster_config(ip: Ipv4Addr) -> String {
    node_config(ip, "<extension><reload-interval>1</reload-interval></extension>", true)
}

/// A node's config.xml: MQTT on 1883 and the cluster transport on 8000 of `ip`, `discovery` (the
/// content of `<discovery>`), quick failure detection.
fn node_config(ip: Ipv4Addr, discovery: &str, health_check: bool) -> String {
    format!(
        "<hivemq>
  <listeners><tcp-listener><port>1883</port><bind-address>{ip}</bind-address></tcp-listener></listeners>
  <cluster>
    <enabled>true</enabled>
    <transport><tcp><bind-address>{ip}</bind-address><bind-port>8000</bind-port></tcp></transport>
    <discovery>{discovery}</discovery>
    <failure-detection>
      <heartbeat><enabled>true</enabled><interval>500</interval><timeout>2000</timeout></heartbeat>
      <tcp-health-check><enabled>{health_check}</enabled></tcp-health-check>
    </failure-detection>
  </cluster>
</hivemq>"
    )
}
pub mod checker;
