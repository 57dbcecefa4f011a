//! `apiary-bench`: the load generator that compares Apiary with another broker (mosquitto).
//!
//! Every scenario runs against each `--target` in turn, in the same process and with the same
//! settings, and the figures are printed side by side with the ratio of the first target to the
//! second ([`report`]). Scenarios (numbers as in `README.md`, "Performance"):
//!
//! 1. fan-in: N publishers → 1 subscriber (`+` filter), QoS 0 and 1, delivered msg/s;
//! 2. fan-out: 1 publisher → N subscribers of one topic, QoS 0 and 1, delivered msg/s;
//! 3. one-to-one: N publisher/subscriber pairs, QoS 1: saturation msg/s, saturation msg/s with one
//!    message under way per pair, then end-to-end latency percentiles at half the latter;
//! 4. idle connections: broker resident memory per connection;
//! 5. connect rate: connections per second;
//! 6. persistent QoS 1: pairs with persistent-session subscribers, delivered msg/s.
//!
//! Layout: [`client`] speaks MQTT 5 with our codec, [`pubsub`] runs publishers and subscribers
//! under flow control (scenarios 1, 2, 3, 6), [`conns`] holds many connections from worker
//! processes (4, 5), [`report`] prints and stores the results.

pub mod client;
pub mod conns;
pub mod pubsub;
pub mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use self::client::Sources;
use self::pubsub::{Dial, Group, Plan, Running};
use self::report::{Figure, Report, TargetReport};
use crate::mqtt::QoS;

/// A broker to measure: `NAME=HOST:PORT[,pid=PID]` (the pid is needed for memory, scenario 4).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: Option<u32>,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let (name, rest) = s.split_once('=').ok_or("expected NAME=HOST:PORT[,pid=PID]")?;
        let (addr, pid) = match rest.split_once(',') {
            Some((addr, pid)) => {
                let pid = pid.strip_prefix("pid=").ok_or("expected pid=PID after the address")?;
                (addr, Some(pid.parse::<u32>().map_err(|e| format!("pid: {e}"))?))
            }
            None => (rest, None),
        };
        let addr = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
        Ok(Target {
            name: name.to_owned(),
            addr,
            pid,
        })
    }
}

/// The command line of a run. Counts and durations left out take the defaults of the issue, or
/// small values with `--quick` (about a second per scenario, for smoke tests).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A broker: NAME=HOST:PORT[,pid=PID]. Give two to compare; ratios are first / second.
    #[arg(long = "target", required = true)]
    pub targets: Vec<Target>,
    /// Scenarios to run, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', default_values_t = [1u8, 2, 3, 4, 5, 6])]
    pub scenarios: Vec<u8>,
    /// Small counts and short durations.
    #[arg(long)]
    pub quick: bool,
    /// Seconds of traffic before a measurement starts [1; quick 0.2].
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Seconds each throughput figure is measured [5; quick 0.5].
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds latency is measured in scenario 3 [10; quick 0.5].
    #[arg(long)]
    pub latency_duration: Option<f64>,
    /// Scenario 1 publishers [1000; quick 20].
    #[arg(long)]
    pub fan_in_publishers: Option<usize>,
    /// Scenario 2 subscribers [1000; quick 20].
    #[arg(long)]
    pub fan_out_subscribers: Option<usize>,
    /// Scenario 3 publisher/subscriber pairs [5000; quick 50].
    #[arg(long)]
    pub pairs: Option<usize>,
    /// Scenario 4 idle connections [15000; quick 200].
    #[arg(long)]
    pub idle_connections: Option<usize>,
    /// Scenario 5 connections [15000; quick 200].
    #[arg(long)]
    pub connect_connections: Option<usize>,
    /// Scenario 6 publisher/subscriber pairs [100; quick 10].
    #[arg(long)]
    pub persistent_pairs: Option<usize>,
    /// Payload bytes (the first 8 carry the send time).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// QoS 1 messages in flight per publisher, and the receive maximum subscribers announce.
    #[arg(long, default_value_t = 10)]
    pub inflight: u16,
    /// Messages the subscribers of a topic may be behind its publishers (scenarios 1, 2).
    #[arg(long, default_value_t = 200)]
    pub max_ahead: u64,
    /// Messages a subscriber may be behind its publisher (scenarios 3, 6).
    #[arg(long, default_value_t = 20)]
    pub pair_max_ahead: u64,
    /// Total msg/s for the latency measurement of scenario 3 [half the saturation rate measured
    /// with one message under way per pair].
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// Keep alive of every client, seconds.
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// Connection handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Connections per worker process in scenarios 4 and 5 (a process may open 20,000 files).
    #[arg(long, default_value_t = 5000)]
    pub conns_per_process: usize,
    /// Loopback source addresses to spread client sockets over (127.0.0.1..=127.0.0.N).
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A note printed under the table and stored in the JSON (repeatable).
    #[arg(long)]
    pub note: Vec<String>,
}

/// [`RunArgs`] with every default applied.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scenarios: Vec<u8>,
    pub quick: bool,
    pub warmup: f64,
    pub duration: f64,
    pub latency_duration: f64,
    pub fan_in_publishers: usize,
    pub fan_out_subscribers: usize,
    pub pairs: usize,
    pub idle_connections: usize,
    pub connect_connections: usize,
    pub persistent_pairs: usize,
    pub payload: usize,
    pub inflight: u16,
    pub max_ahead: u64,
    pub pair_max_ahead: u64,
    pub latency_rate: Option<f64>,
    pub keep_alive: u16,
    pub connect_concurrency: usize,
    pub conns_per_process: usize,
    pub source_ips: u8,
}

impl RunArgs {
    pub fn settings(&self) -> Settings {
        let q = self.quick;
        let pick = |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let secs = |v: Option<f64>, full: f64, quick: f64| v.unwrap_or(if q { quick } else { full });
        Settings {
            scenarios: self.scenarios.clone(),
            quick: q,
            warmup: secs(self.warmup, 1.0, 0.2),
            duration: secs(self.duration, 5.0, 0.5),
            latency_duration: secs(self.latency_duration, 10.0, 0.5),
            fan_in_publishers: pick(self.fan_in_publishers, 1000, 20),
            fan_out_subscribers: pick(self.fan_out_subscribers, 1000, 20),
            pairs: pick(self.pairs, 5000, 50),
            idle_connections: pick(self.idle_connections, 15_000, 200),
            connect_connections: pick(self.connect_connections, 15_000, 200),
            persistent_pairs: pick(self.persistent_pairs, 100, 10),
            payload: self.payload,
            inflight: self.inflight.max(1),
            max_ahead: self.max_ahead,
            pair_max_ahead: self.pair_max_ahead,
            latency_rate: self.latency_rate,
            keep_alive: self.keep_alive,
            connect_concurrency: self.connect_concurrency,
            conns_per_process: self.conns_per_process,
            source_ips: self.source_ips,
        }
    }
}

/// Runs every scenario against every target (per scenario, targets in order), printing progress
/// to stderr.
pub async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    let settings = args.settings();
    let run_id = format!("{:x}{:04x}", std::process::id(), rand::random::<u16>());
    let mut report = Report {
        targets: args
            .targets
            .iter()
            .map(|t| TargetReport {
                name: t.name.clone(),
                addr: t.addr.to_string(),
                figures: Vec::new(),
            })
            .collect(),
        parameters: serde_json::to_value(&settings)?,
        notes: args.note.clone(),
    };
    for &scenario in &settings.scenarios {
        for (i, target) in args.targets.iter().enumerate() {
            eprintln!(
                "apiary-bench: scenario {scenario} against {} ({})",
                target.name, target.addr
            );
            let bench = Bench {
                s: &settings,
                target,
                prefix: format!("ab{run_id}-{i}-{scenario}"),
            };
            let figures = bench.scenario(scenario).await;
            for f in &figures {
                match (&f.value, &f.error) {
                    (Some(v), _) => eprintln!("  {} {}: {}", f.key, f.unit, report::format_value(*v, &f.unit)),
                    (None, Some(e)) => eprintln!("  {}: error: {e}", f.key),
                    (None, None) => {}
                }
            }
            report.targets[i].figures.extend(figures);
        }
    }
    Ok(report)
}

/// One scenario against one target.
struct Bench<'a> {
    s: &'a Settings,
    target: &'a Target,
    prefix: String,
}

impl Bench<'_> {
    async fn scenario(&self, n: u8) -> Vec<Figure> {
        let s = self.s;
        match n {
            1 => {
                let mut out = Vec::new();
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                    let label = format!("1 fan-in {}→1 QoS {}", s.fan_in_publishers, qos as u8);
                    let key = format!("1.qos{}", qos as u8);
                    out.push(self.fan(key, label, qos, true).await);
                }
                out
            }
            2 => {
                let mut out = Vec::new();
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                    let label = format!("2 fan-out 1→{} QoS {}", s.fan_out_subscribers, qos as u8);
                    let key = format!("2.qos{}", qos as u8);
                    out.push(self.fan(key, label, qos, false).await);
                }
                out
            }
            3 => self.one_to_one().await,
            4 => vec![self.idle().await],
            5 => vec![self.connect_rate().await],
            6 => vec![self.persistent().await],
            other => vec![failed(
                &format!("{other}.unknown"),
                &format!("{other} unknown"),
                "-",
                "-",
                anyhow::anyhow!("no scenario {other} (1-6)"),
            )],
        }
    }

    fn dial(&self, tag: &str) -> Dial {
        Dial {
            broker: self.target.addr,
            sources: Sources {
                count: self.s.source_ips,
                offset: rand::random::<u32>() % 256,
            },
            concurrency: self.s.connect_concurrency,
            prefix: format!("{}-{tag}", self.prefix),
        }
    }

    fn topic(&self, what: &str) -> String {
        format!("bench/{}/{what}", self.prefix)
    }

    fn plan(&self, groups: Vec<Group>, qos: QoS, cap: u64) -> Plan {
        Plan {
            groups,
            qos,
            payload: self.s.payload,
            cap,
            window: self.s.inflight,
            keep_alive: self.s.keep_alive,
            persistent: false,
            latency: false,
        }
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.s.warmup)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.s.duration)
    }

    /// Bound on a whole message scenario: setup, warm-up, measurement and teardown.
    fn time_limit(&self, measured: f64) -> Duration {
        Duration::from_secs_f64(60.0 + 2.0 * self.s.warmup + measured)
    }

    /// Scenario 1 (`fan_in`) or 2.
    async fn fan(&self, key: String, label: String, qos: QoS, fan_in: bool) -> Figure {
        let s = self.s;
        let group = if fan_in {
            let base = self.topic(&format!("in{}", qos as u8));
            Group {
                publish_topics: (0..s.fan_in_publishers).map(|i| format!("{base}/{i}")).collect(),
                subscribe_filters: vec![format!("{base}/+")],
            }
        } else {
            let topic = self.topic(&format!("out{}", qos as u8));
            Group {
                publish_topics: vec![topic.clone()],
                subscribe_filters: vec![topic; s.fan_out_subscribers],
            }
        };
        let plan = self.plan(vec![group], qos, s.max_ahead);
        let dial = self.dial(&key);
        let result = tokio::time::timeout(self.time_limit(s.duration), async {
            let mut run = Running::start(&dial, &plan).await?;
            run.go(None);
            let w = run.measure(self.warmup(), self.duration(), false).await?;
            run.stop().await?;
            anyhow::Ok(w)
        })
        .await
        .context("timed out")
        .and_then(|r| r);
        match result {
            Ok(w) => Figure {
                key,
                scenario: label,
                metric: "delivered".into(),
                unit: "msg/s".into(),
                value: Some(w.delivered_per_sec()),
                error: None,
                details: json!({"delivered": w.delivered, "published": w.published, "secs": w.secs}),
            },
            Err(e) => failed(&key, &label, "delivered", "msg/s", e),
        }
    }

    fn pairs(&self, what: &str, n: usize) -> Vec<Group> {
        let base = self.topic(what);
        (0..n)
            .map(|i| {
                let topic = format!("{base}/{i}");
                Group {
                    publish_topics: vec![topic.clone()],
                    subscribe_filters: vec![topic],
                }
            })
            .collect()
    }

    /// Scenario 3: saturation rate; the saturation rate with one message under way per pair; then
    /// latency at half of the latter.
    ///
    /// The latency phase sends each message on its own (one per publisher and period), so each
    /// costs a write, a read and a wake-up on every connection it crosses, in the broker and here.
    /// The first rate pipelines (10 in flight per publisher, read and written in batches) and is
    /// not a rate such traffic can reach: on a small machine half of it can be more than the
    /// machine carries unpipelined, and the latency is then that of a growing backlog. The rate the
    /// latency phase takes half of is therefore measured with the same per-message costs.
    async fn one_to_one(&self) -> Vec<Figure> {
        let s = self.s;
        let label = format!("3 one-to-one {} pairs QoS 1", s.pairs);
        let mut plan = self.plan(self.pairs("p2p", s.pairs), QoS::AtLeastOnce, s.pair_max_ahead);
        plan.latency = true;
        let dial = self.dial("p2p");
        let limit = self.time_limit(2.0 * s.duration + s.latency_duration + 30.0);
        let result = tokio::time::timeout(limit, async {
            let mut run = Running::start(&dial, &plan).await?;
            run.go(None);
            let saturation = run.measure(self.warmup(), self.duration(), false).await?;
            run.pause();
            run.drain(Duration::from_secs(15)).await?;
            run.one_at_a_time(true);
            run.go(None);
            let single = run.measure(self.warmup(), self.duration(), false).await?;
            run.pause();
            let drained = run.drain(Duration::from_secs(15)).await?;
            run.one_at_a_time(false);
            let offered = s.latency_rate.unwrap_or(single.delivered_per_sec() / 2.0);
            anyhow::ensure!(offered > 0.0, "nothing was delivered at saturation");
            run.go(Some(Duration::from_secs_f64(s.pairs as f64 / offered)));
            let paced = run
                .measure(
                    self.warmup().max(Duration::from_millis(500)),
                    Duration::from_secs_f64(s.latency_duration),
                    true,
                )
                .await?;
            let lag = run.stats.lag_ms();
            let mut samples = run.stop().await?;
            samples.sort_unstable();
            anyhow::Ok((saturation, single, drained, offered, paced, samples, lag))
        })
        .await
        .context("timed out")
        .and_then(|r| r);
        let keys = [
            ("3.rate", "saturation delivered", "msg/s"),
            ("3.single", "saturation, 1 under way per pair", "msg/s"),
            ("3.offered", "latency measured at", "msg/s"),
            ("3.p50", "latency p50", "ms"),
            ("3.p99", "latency p99", "ms"),
            ("3.p999", "latency p99.9", "ms"),
        ];
        let (saturation, single, drained, offered, paced, samples, lag) = match result {
            Ok(r) => r,
            Err(e) => {
                let e = format!("{e:#}");
                return keys
                    .iter()
                    .map(|(k, m, u)| failed(k, &label, m, u, anyhow::anyhow!("{e}")))
                    .collect();
            }
        };
        let ms = |q: f64| percentile(&samples, q).map(|ns| ns as f64 / 1e6);
        let latency_details = json!({
            "samples": samples.len(),
            "offered_msg_s": offered,
            "delivered_msg_s": paced.delivered_per_sec(),
            "drained_before_latency": drained,
            "max_ms": samples.last().map(|&ns| ns as f64 / 1e6),
            "publisher_lag_mean_ms": lag.map(|l| l.0),
            "publisher_lag_max_ms": lag.map(|l| l.1),
        });
        let values = [
            Some(saturation.delivered_per_sec()),
            Some(single.delivered_per_sec()),
            Some(paced.delivered_per_sec()),
            ms(0.5),
            ms(0.99),
            ms(0.999),
        ];
        keys.iter()
            .zip(values)
            .enumerate()
            .map(|(i, ((k, m, u), v))| Figure {
                key: (*k).into(),
                scenario: label.clone(),
                metric: (*m).into(),
                unit: (*u).into(),
                value: v,
                error: v.is_none().then(|| "no latency samples".to_owned()),
                details: match i {
                    0 => json!({"delivered": saturation.delivered, "published": saturation.published, "secs": saturation.secs}),
                    1 => json!({"delivered": single.delivered, "published": single.published, "secs": single.secs}),
                    _ => latency_details.clone(),
                },
            })
            .collect()
    }

    fn hold_plan(&self, count: usize, pid: Option<u32>, settle: Duration) -> conns::HoldPlan {
        conns::HoldPlan {
            broker: self.target.addr,
            count,
            per_process: self.s.conns_per_process,
            concurrency: self.s.connect_concurrency,
            keep_alive: self.s.keep_alive,
            source_ips: self.s.source_ips,
            prefix: self.prefix.clone(),
            pid,
            settle,
            timeout: Duration::from_secs(if self.s.quick { 20 } else { 120 }),
        }
    }

    /// Scenario 4: resident memory per idle connection.
    async fn idle(&self) -> Figure {
        let s = self.s;
        let label = format!("4 idle {} connections", s.idle_connections);
        let (key, metric, unit) = ("4.bytes", "broker RSS growth", "B/conn");
        let Some(pid) = self.target.pid else {
            return failed(
                key,
                &label,
                metric,
                unit,
                anyhow::anyhow!("no pid: give --target NAME=ADDR,pid=PID"),
            );
        };
        let settle = Duration::from_secs_f64(if s.quick { 0.3 } else { 2.0 });
        match conns::hold(&self.hold_plan(s.idle_connections, Some(pid), settle)).await {
            Ok(r) => Figure {
                key: key.into(),
                scenario: label,
                metric: metric.into(),
                unit: unit.into(),
                value: r.bytes_per_connection(),
                error: None,
                details: json!({
                    "connected": r.connected,
                    "failed": r.failed,
                    "first_error": r.first_error,
                    "rss_before": r.rss.map(|x| x.0),
                    "rss_after": r.rss.map(|x| x.1),
                }),
            },
            Err(e) => failed(key, &label, metric, unit, e),
        }
    }

    /// Scenario 5: connections per second.
    async fn connect_rate(&self) -> Figure {
        let s = self.s;
        let label = format!("5 connect {} clients", s.connect_connections);
        let (key, metric, unit) = ("5.rate", "connected", "conn/s");
        match conns::hold(&self.hold_plan(s.connect_connections, None, Duration::ZERO)).await {
            Ok(r) => Figure {
                key: key.into(),
                scenario: label,
                metric: metric.into(),
                unit: unit.into(),
                value: Some(r.per_second()),
                error: None,
                details: json!({
                    "connected": r.connected,
                    "failed": r.failed,
                    "first_error": r.first_error,
                    "secs": r.secs,
                    "concurrency": s.connect_concurrency,
                }),
            },
            Err(e) => failed(key, &label, metric, unit, e),
        }
    }

    /// Scenario 6: QoS 1 to persistent sessions.
    async fn persistent(&self) -> Figure {
        let s = self.s;
        let label = format!("6 persistent QoS 1 {} pairs", s.persistent_pairs);
        let (key, metric, unit) = ("6.rate", "delivered", "msg/s");
        let mut plan = self.plan(
            self.pairs("persist", s.persistent_pairs),
            QoS::AtLeastOnce,
            s.pair_max_ahead,
        );
        plan.persistent = true;
        let dial = self.dial("persist");
        let result = tokio::time::timeout(self.time_limit(s.duration), async {
            let mut run = Running::start(&dial, &plan).await?;
            run.go(None);
            let w = run.measure(self.warmup(), self.duration(), false).await?;
            run.stop().await?;
            anyhow::Ok(w)
        })
        .await
        .context("timed out")
        .and_then(|r| r);
        match result {
            Ok(w) => Figure {
                key: key.into(),
                scenario: label,
                metric: metric.into(),
                unit: unit.into(),
                value: Some(w.delivered_per_sec()),
                error: None,
                details: json!({"delivered": w.delivered, "published": w.published, "secs": w.secs}),
            },
            Err(e) => failed(key, &label, metric, unit, e),
        }
    }
}

fn failed(key: &str, scenario: &str, metric: &str, unit: &str, e: anyhow::Error) -> Figure {
    Figure {
        key: key.into(),
        scenario: scenario.into(),
        metric: metric.into(),
        unit: unit.into(),
        value: None,
        error: Some(format!("{e:#}")),
        details: serde_json::Value::Null,
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t: Target = "apiary=127.0.0.1:1883,pid=42".parse().unwrap();
        assert_eq!((t.name.as_str(), t.addr.port(), t.pid), ("apiary", 1883, Some(42)));
        let t: Target = "m=127.0.0.1:1884".parse().unwrap();
        assert_eq!(t.pid, None);
        assert!("127.0.0.1:1883".parse::<Target>().is_err());
        assert!("a=127.0.0.1:1883,42".parse::<Target>().is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 0.5), Some(500));
        assert_eq!(percentile(&v, 0.99), Some(990));
        assert_eq!(percentile(&v, 0.999), Some(999));
        assert_eq!(percentile(&[7], 0.999), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
