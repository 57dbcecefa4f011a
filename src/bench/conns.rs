//! Many connections at once (scenarios 4 and 5), spread over worker processes.
//!
//! A process may hold at most 20,000 open files here, so the client sockets are spread over
//! `apiary-bench worker` child processes (`per_process` each). They talk to the parent over
//! stdin/stdout, one line per step:
//!
//! ```text
//! worker → parent   ready
//! parent → worker   go
//! worker → parent   connected <ok> <failed> <seconds> [first error]
//! parent → worker   close                      (or end of input)
//! worker → parent   closed
//! ```
//!
//! The connect rate is measured by the parent from `go` to the last `connected`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::client::{ConnectOptions, Sources};
use super::pubsub::{Dial, connect_all};
use crate::mqtt::Packet;

/// What the parent tells a worker on its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub broker: SocketAddr,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub prefix: String,
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    #[arg(long, default_value_t = 0)]
    pub source_offset: u32,
}

/// The worker side: connect `count` clients on `go`, keep them alive (PINGREQ) until `close`.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    say(&mut out, "ready").await?;
    loop {
        match lines.next_line().await? {
            Some(line) if line.trim() == "go" => break,
            Some(_) => continue,
            None => return Ok(()),
        }
    }
    let dial = Dial {
        broker: args.broker,
        sources: Sources {
            count: args.source_ips,
            offset: args.source_offset,
        },
        concurrency: args.concurrency,
        prefix: args.prefix.clone(),
    };
    let specs = (0..args.count)
        .map(|i| {
            let options = ConnectOptions {
                client_id: format!("{}-{i}", args.prefix),
                clean_start: true,
                keep_alive: args.keep_alive,
                session_expiry: 0,
                receive_maximum: 10,
            };
            (options, None)
        })
        .collect();
    let started = Instant::now();
    let results = connect_all(&dial, 0, specs).await;
    let secs = started.elapsed().as_secs_f64();
    let mut clients = Vec::with_capacity(results.len());
    let mut first_error = None;
    for r in results {
        match r {
            Ok(c) => clients.push(c),
            Err(e) => {
                first_error.get_or_insert(format!("{e:#}").replace('\n', " "));
            }
        }
    }
    let failed = args.count - clients.len();
    let error = first_error.unwrap_or_default();
    say(
        &mut out,
        &format!("connected {} {failed} {secs} {error}", clients.len()),
    )
    .await?;

    // Keep alive: a PINGREQ to everyone well within the keep alive (the PINGRESPs are left unread
    // in the socket buffers, two bytes each).
    let every = Duration::from_secs(u64::from(args.keep_alive.max(2)) / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) if l.trim() != "close" => continue,
                _ => break,
            },
            _ = ping.tick() => {
                for c in &mut clients {
                    if c.queue(&Packet::PingReq).is_ok() {
                        let _ = c.flush().await;
                    }
                }
            }
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for c in clients {
        set.spawn(c.disconnect());
    }
    while set.join_next().await.is_some() {}
    say(&mut out, "closed").await?;
    Ok(())
}

async fn say(out: &mut tokio::io::Stdout, line: &str) -> anyhow::Result<()> {
    out.write_all(format!("{line}\n").as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// What the parent asks for.
pub struct HoldPlan {
    pub broker: SocketAddr,
    pub count: usize,
    pub per_process: usize,
    /// Handshakes in progress at once, over all workers.
    pub concurrency: usize,
    pub keep_alive: u16,
    pub source_ips: u8,
    pub prefix: String,
    /// Broker process whose resident memory is read before and after (scenario 4).
    pub pid: Option<u32>,
    /// How long the connections sit idle before the memory is read.
    pub settle: Duration,
    /// Bound on the whole connect phase.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HoldResult {
    pub connected: usize,
    pub failed: usize,
    pub secs: f64,
    pub first_error: Option<String>,
    /// VmRSS of the broker in bytes, before the connections and after they settled.
    pub rss: Option<(u64, u64)>,
}

impl HoldResult {
    pub fn per_second(&self) -> f64 {
        self.connected as f64 / self.secs
    }

    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (before, after) = self.rss?;
        (self.connected > 0).then(|| (after as f64 - before as f64) / self.connected as f64)
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn expect(&mut self, word: &str, deadline: Instant) -> anyhow::Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        loop {
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .with_context(|| format!("a worker did not say {word:?} in time"))??
                .with_context(|| format!("a worker exited before saying {word:?}"))?;
            if line.starts_with(word) {
                return Ok(line);
            }
        }
    }

    async fn tell(&mut self, word: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{word}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }
}

/// Opens `count` connections from worker processes, measures, and closes them.
pub async fn hold(plan: &HoldPlan) -> anyhow::Result<HoldResult> {
    let processes = plan.count.div_ceil(plan.per_process.max(1)).max(1);
    let exe = std::env::current_exe().context("locating apiary-bench")?;
    let mut workers = Vec::new();
    for k in 0..processes {
        let count = plan.count / processes + usize::from(k < plan.count % processes);
        let mut child = Command::new(&exe)
            .arg("worker")
            .args(["--broker", &plan.broker.to_string()])
            .args(["--count", &count.to_string()])
            .args(["--prefix", &format!("{}-w{k}", plan.prefix)])
            .args(["--keep-alive", &plan.keep_alive.to_string()])
            .args(["--concurrency", &(plan.concurrency / processes).max(1).to_string()])
            .args(["--source-ips", &plan.source_ips.to_string()])
            .args(["--source-offset", &k.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in &mut workers {
        w.expect("ready", deadline).await?;
    }
    let before = plan.pid.map(rss_bytes).transpose()?;

    let started = Instant::now();
    for w in &mut workers {
        w.tell("go").await?;
    }
    let deadline = started + plan.timeout;
    let (mut connected, mut failed, mut first_error) = (0, 0, None);
    for w in &mut workers {
        let line = w.expect("connected", deadline).await?;
        let mut words = line.splitn(5, ' ').skip(1);
        connected += words.next().and_then(|w| w.parse::<usize>().ok()).unwrap_or(0);
        failed += words.next().and_then(|w| w.parse::<usize>().ok()).unwrap_or(0);
        let error = words.nth(1).unwrap_or("").trim();
        if !error.is_empty() {
            first_error.get_or_insert_with(|| error.to_owned());
        }
    }
    let secs = started.elapsed().as_secs_f64();

    tokio::time::sleep(plan.settle).await;
    let after = plan.pid.map(rss_bytes).transpose()?;

    let deadline = Instant::now() + Duration::from_secs(20);
    for w in &mut workers {
        w.tell("close").await?;
    }
    for w in &mut workers {
        if w.expect("closed", deadline).await.is_err() {
            let _ = w.child.start_kill();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), w.child.wait()).await;
    }
    if connected == 0 {
        bail!("no connection succeeded: {}", first_error.unwrap_or_default());
    }
    Ok(HoldResult {
        connected,
        failed,
        secs,
        first_error,
        rss: before.zip(after),
    })
}

/// Resident memory (VmRSS) of a process, in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tmosquitto\nVmPeak:\t  10 kB\nVmRSS:\t    5432 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(parse_vm_rss(status), Some(5432 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
    }
}
