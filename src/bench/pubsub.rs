//! Publishers and subscribers under flow control, the engine of the message scenarios (1, 2, 3, 6).
//!
//! Publishers are grouped with the subscribers of their topic into a [`Flow`]. A publisher sends
//! only while its flow's subscribers are on average fewer than `cap` messages behind it, so the
//! broker's queues stay short (below Apiary's default `max-queue-size` of 1000 and far below
//! mosquitto's), nothing is dropped, and the figure is the rate the broker *delivers* rather than
//! how much it can buffer. QoS 1 publishers also keep at most `window` PUBLISHes unacknowledged.
//!
//! Publishers are either unpaced (as fast as flow control allows: saturation) or paced at a fixed
//! period per publisher, each with a random phase (open loop: the timestamp in the payload is the
//! *scheduled* send time, so a broker that stalls the publisher is charged for the stall).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use super::client::{Client, ConnectOptions, Sources, Template, nanos, payload_timestamp};
use crate::mqtt::{Packet, QoS};

/// PUBLISHes written per socket write at most.
const BATCH: usize = 16;
/// How often a publisher waiting for credit checks again even without a wake-up.
const FLOW_WAIT: Duration = Duration::from_millis(50);
/// How long the clients get to say goodbye when a scenario ends.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Publishers' pacing, shared by all of them: 0 = as fast as flow control allows,
/// [`PAUSED`] = send nothing, otherwise the period between two PUBLISHes of one publisher in ns.
pub const PAUSED: u64 = u64::MAX;

/// Credit between the publishers and the subscribers of one topic (see the module docs).
pub struct Flow {
    sent: AtomicU64,
    delivered: AtomicU64,
    subscribers: u64,
    cap: AtomicU64,
    /// Publishers waiting for credit; woken one per message of credit freed, not all at once
    /// (with a thousand publishers on one topic, waking every one of them on every delivery
    /// cost the load generator more CPU than the broker it measured).
    notify: Notify,
}

impl Flow {
    pub fn new(subscribers: usize, cap: u64) -> Flow {
        Flow {
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            subscribers: subscribers.max(1) as u64,
            cap: AtomicU64::new(cap.max(1)),
            notify: Notify::new(),
        }
    }

    pub fn has_credit(&self) -> bool {
        let sent = self.sent.load(Ordering::SeqCst);
        let delivered = self.delivered.load(Ordering::SeqCst);
        let cap = self.cap.load(Ordering::SeqCst);
        sent * self.subscribers < delivered + cap * self.subscribers
    }

    /// Changes how far the subscribers may be behind; publishers waiting for credit look again.
    fn set_cap(&self, cap: u64) {
        self.cap.store(cap.max(1), Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Every message sent has reached every subscriber.
    pub fn caught_up(&self) -> bool {
        self.delivered.load(Ordering::SeqCst) >= self.sent.load(Ordering::SeqCst) * self.subscribers
    }

    fn on_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::SeqCst);
    }

    fn on_delivered(&self, n: u64) {
        let before = self.delivered.fetch_add(n, Ordering::SeqCst);
        // `has_credit` is `sent - cap < delivered / subscribers`, for an integer left side the
        // same as `sent - cap < ceil(delivered / subscribers)`: this many more messages may go.
        let freed = (before + n).div_ceil(self.subscribers) - before.div_ceil(self.subscribers);
        // Each woken publisher takes what credit there is and sends; one that finds none left
        // waits again. A notification with nobody waiting is kept for the next waiter.
        for _ in 0..freed {
            self.notify.notify_one();
        }
    }

    /// Waits until there is credit, at most `limit`.
    async fn wait(&self, limit: Duration) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before looking, so that credit freed in between wakes this waiter.
        notified.as_mut().enable();
        if self.has_credit() {
            return;
        }
        let _ = tokio::time::timeout(limit, notified).await;
    }
}

/// Counters of one run, read by the driver to compute rates.
#[derive(Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    /// Subscribers keep latency samples only while this is set.
    pub recording: AtomicBool,
    /// Paced publishers' lateness (actual − scheduled send time) while recording: sum and maximum
    /// in ns, and count. Large values mean the load generator, not the broker, fell behind.
    pub lag_sum: AtomicU64,
    pub lag_max: AtomicU64,
    pub lag_count: AtomicU64,
}

impl Stats {
    /// Mean and maximum publisher lateness in ms, if any paced message was recorded.
    pub fn lag_ms(&self) -> Option<(f64, f64)> {
        let n = self.lag_count.load(Ordering::SeqCst);
        (n > 0).then(|| {
            let sum = self.lag_sum.load(Ordering::SeqCst) as f64;
            (sum / n as f64 / 1e6, self.lag_max.load(Ordering::SeqCst) as f64 / 1e6)
        })
    }
}

/// One topic: its publishers' topic names and its subscribers' filters.
pub struct Group {
    pub publish_topics: Vec<String>,
    pub subscribe_filters: Vec<String>,
}

/// What to run.
pub struct Plan {
    pub groups: Vec<Group>,
    pub qos: QoS,
    pub payload: usize,
    /// Messages a group's subscribers may be behind (each, on average).
    pub cap: u64,
    /// QoS 1 PUBLISHes in flight per publisher (also the receive maximum subscribers announce).
    pub window: u16,
    pub keep_alive: u16,
    /// Subscribers use persistent sessions (clean start off, session expiry 1 h).
    pub persistent: bool,
    /// Subscribers record end-to-end latency.
    pub latency: bool,
}

/// How clients reach the broker.
pub struct Dial {
    pub broker: SocketAddr,
    pub sources: Sources,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// Prefix of every client identifier (unique per run).
    pub prefix: String,
}

/// Opens one connection per option (with SUBSCRIBE if a filter is given), `dial.concurrency` at a
/// time. Returns each outcome in order.
pub async fn connect_all(
    dial: &Dial,
    first: u64,
    clients: Vec<(ConnectOptions, Option<(String, QoS)>)>,
) -> Vec<anyhow::Result<Client>> {
    let limit = Arc::new(Semaphore::new(dial.concurrency.max(1)));
    let mut set = JoinSet::new();
    let total = clients.len();
    for (i, (options, subscription)) in clients.into_iter().enumerate() {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (broker, sources) = (dial.broker, dial.sources);
        set.spawn(async move {
            let result = async {
                let mut c = Client::connect(broker, sources, first + i as u64, &options).await?;
                if let Some((filter, qos)) = subscription {
                    c.subscribe(&[filter], qos).await?;
                }
                Ok(c)
            }
            .await;
            drop(permit);
            (i, result)
        });
    }
    let mut out: Vec<Option<anyhow::Result<Client>>> = (0..total).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((i, r)) = joined {
            out[i] = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("connection task failed"))))
        .collect()
}

/// Every connection of `clients`, or the first error with the count of failures.
fn all_or_first_error(what: &str, clients: Vec<anyhow::Result<Client>>) -> anyhow::Result<Vec<Client>> {
    let total = clients.len();
    let mut ok = Vec::with_capacity(total);
    let mut first_error = None;
    let mut failed = 0;
    for c in clients {
        match c {
            Ok(c) => ok.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        None => Ok(ok),
        Some(e) => Err(e.context(format!("{failed} of {total} {what} could not connect"))),
    }
}

/// A started plan: every client connected and subscribed, publishers paused.
pub struct Running {
    pub stats: Arc<Stats>,
    flows: Vec<Arc<Flow>>,
    pace: Arc<AtomicU64>,
    /// The plan's cap, and a limit on every publisher's window (`usize::MAX`: the plan's).
    cap: u64,
    window_limit: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    publishers: JoinSet<anyhow::Result<()>>,
    subscribers: JoinSet<anyhow::Result<Vec<u64>>>,
}

/// Delivered and published counts over a measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub delivered: u64,
    pub published: u64,
    pub secs: f64,
}

impl Window {
    pub fn delivered_per_sec(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

impl Running {
    /// Connects and subscribes every subscriber, then connects every publisher (paused).
    pub async fn start(dial: &Dial, plan: &Plan) -> anyhow::Result<Running> {
        let stats = Arc::new(Stats::default());
        let pace = Arc::new(AtomicU64::new(PAUSED));
        let window_limit = Arc::new(AtomicUsize::new(usize::MAX));
        let (stop, stop_rx) = watch::channel(false);
        let flows: Vec<Arc<Flow>> = plan
            .groups
            .iter()
            .map(|g| Arc::new(Flow::new(g.subscribe_filters.len(), plan.cap)))
            .collect();

        let mut sub_specs = Vec::new();
        let mut sub_flows = Vec::new();
        for (g, group) in plan.groups.iter().enumerate() {
            for filter in &group.subscribe_filters {
                let options = ConnectOptions {
                    client_id: format!("{}-s{}", dial.prefix, sub_specs.len()),
                    clean_start: !plan.persistent,
                    keep_alive: plan.keep_alive,
                    session_expiry: if plan.persistent { 3600 } else { 0 },
                    receive_maximum: plan.window,
                };
                sub_specs.push((options, Some((filter.clone(), plan.qos))));
                sub_flows.push(g);
            }
        }
        let subs = all_or_first_error("subscribers", connect_all(dial, 0, sub_specs).await)?;
        let mut subscribers = JoinSet::new();
        for (client, g) in subs.into_iter().zip(sub_flows) {
            subscribers.spawn(subscribe_loop(
                client,
                flows[g].clone(),
                stats.clone(),
                stop_rx.clone(),
                plan.latency,
            ));
        }

        let mut pub_specs = Vec::new();
        let mut pub_topics = Vec::new();
        for (g, group) in plan.groups.iter().enumerate() {
            for topic in &group.publish_topics {
                let options = ConnectOptions {
                    client_id: format!("{}-p{}", dial.prefix, pub_specs.len()),
                    clean_start: true,
                    keep_alive: plan.keep_alive,
                    session_expiry: 0,
                    receive_maximum: plan.window,
                };
                pub_specs.push((options, None));
                pub_topics.push((g, topic.clone()));
            }
        }
        let first = 1 << 32;
        let pubs = all_or_first_error("publishers", connect_all(dial, first, pub_specs).await)?;
        let mut publishers = JoinSet::new();
        for (client, (g, topic)) in pubs.into_iter().zip(pub_topics) {
            let window = usize::from(plan.window.min(client.server_receive_maximum).max(1));
            let publisher = Publisher {
                template: Template::new(&topic, plan.qos, plan.payload)?,
                qos: plan.qos,
                window,
                window_limit: window_limit.clone(),
                flow: flows[g].clone(),
                pace: pace.clone(),
                stats: stats.clone(),
                phase: rand::random::<f64>(),
            };
            publishers.spawn(publisher.run(client, stop_rx.clone()));
        }
        Ok(Running {
            stats,
            flows,
            pace,
            cap: plan.cap,
            window_limit,
            stop,
            publishers,
            subscribers,
        })
    }

    /// Publishers send as fast as flow control allows (`None`) or once per `period` each.
    pub fn go(&self, period: Option<Duration>) {
        let nanos = period.map_or(0, |p| u64::try_from(p.as_nanos()).unwrap_or(PAUSED - 1).max(1));
        self.pace.store(nanos, Ordering::SeqCst);
    }

    pub fn pause(&self) {
        self.pace.store(PAUSED, Ordering::SeqCst);
    }

    /// With `true`, every publisher keeps one message under way: it sends the next only once the
    /// broker acknowledged the previous one and the subscribers have it (window and cap 1), so
    /// nothing is pipelined and every message is a write, a read and a wake-up of its own on each
    /// connection, as in a paced run. With `false`, the plan's window and cap again.
    pub fn one_at_a_time(&self, on: bool) {
        self.window_limit
            .store(if on { 1 } else { usize::MAX }, Ordering::SeqCst);
        for f in &self.flows {
            f.set_cap(if on { 1 } else { self.cap });
        }
    }

    /// Waits `warmup`, then counts what is delivered during `duration`; subscribers keep latency
    /// samples during it if `record`.
    pub async fn measure(&mut self, warmup: Duration, duration: Duration, record: bool) -> anyhow::Result<Window> {
        self.sleep_watching(warmup).await?;
        let (d0, p0, t0) = self.snapshot();
        self.stats.recording.store(record, Ordering::SeqCst);
        self.sleep_watching(duration).await?;
        self.stats.recording.store(false, Ordering::SeqCst);
        let (d1, p1, t1) = self.snapshot();
        Ok(Window {
            delivered: d1 - d0,
            published: p1 - p0,
            secs: (t1 - t0).as_secs_f64(),
        })
    }

    fn snapshot(&self) -> (u64, u64, Instant) {
        (
            self.stats.delivered.load(Ordering::SeqCst),
            self.stats.published.load(Ordering::SeqCst),
            Instant::now(),
        )
    }

    /// Sleeps, failing early if a client task ended with an error.
    async fn sleep_watching(&mut self, d: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + d;
        // A branch whose pattern does not match (an empty set) is disabled, not an early return.
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Ok(()),
            Some(joined) = self.publishers.join_next() => {
                joined.context("publisher task")?.context("a publisher failed")?;
                bail!("a publisher ended early");
            }
            Some(joined) = self.subscribers.join_next() => {
                joined.context("subscriber task")?.context("a subscriber failed")?;
                bail!("a subscriber ended early");
            }
        }
    }

    /// After [`Running::pause`]: waits until every subscriber has everything that was sent, at
    /// most `limit`. Returns whether it got there.
    pub async fn drain(&mut self, limit: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.flows.iter().all(|f| f.caught_up()) {
                return Ok(true);
            }
            self.sleep_watching(Duration::from_millis(20)).await?;
        }
        Ok(false)
    }

    /// Stops every client (DISCONNECT) and returns the latency samples (ns) recorded.
    pub async fn stop(mut self) -> anyhow::Result<Vec<u64>> {
        let _ = self.stop.send(true);
        let mut samples = Vec::new();
        let mut first_error = None;
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, self.publishers.join_next()).await {
            if let Ok(Err(e)) = joined {
                first_error.get_or_insert(e);
            }
        }
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, self.subscribers.join_next()).await {
            match joined {
                Ok(Ok(s)) => samples.extend(s),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        self.publishers.abort_all();
        self.subscribers.abort_all();
        match first_error {
            Some(e) => Err(e.context("a client failed")),
            None => Ok(samples),
        }
    }
}

struct Publisher {
    template: Template,
    qos: QoS,
    window: usize,
    /// [`Running::one_at_a_time`]: the window is the smaller of the two.
    window_limit: Arc<AtomicUsize>,
    flow: Arc<Flow>,
    pace: Arc<AtomicU64>,
    stats: Arc<Stats>,
    /// Where in its period this publisher sends, in [0, 1).
    phase: f64,
}

impl Publisher {
    async fn run(self, mut client: Client, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let qos1 = self.qos != QoS::AtMostOnce;
        let mut inflight = 0usize;
        let mut packet_id: u16 = 1;
        let mut period = PAUSED;
        let mut next_due = Instant::now();
        let mut lag_from: Option<Instant> = None;
        while !*stop.borrow() {
            let pace = self.pace.load(Ordering::Relaxed);
            if pace != period {
                period = pace;
                if period != PAUSED && period != 0 {
                    next_due = Instant::now() + Duration::from_nanos((period as f64 * self.phase) as u64);
                }
            }
            let now = Instant::now();
            let window = self.window.min(self.window_limit.load(Ordering::Relaxed));
            let mut queued = 0u64;
            while period != PAUSED && (!qos1 || inflight < window) && queued < BATCH as u64 {
                let at = if period == 0 {
                    if !self.flow.has_credit() {
                        break;
                    }
                    now
                } else {
                    if next_due > now {
                        break;
                    }
                    let at = next_due;
                    next_due += Duration::from_nanos(period);
                    at
                };
                self.template.write(&mut client.wbuf, packet_id, nanos(at));
                packet_id = packet_id.checked_add(1).unwrap_or(1);
                if qos1 {
                    inflight += 1;
                }
                queued += 1;
            }
            if period != 0 && queued > 0 && self.stats.recording.load(Ordering::Relaxed) {
                // Lateness of the oldest message of the batch, measured once it is written below.
                lag_from = Some(next_due - Duration::from_nanos(period * queued));
            }
            if queued > 0 {
                self.flow.on_sent(queued);
                self.stats.published.fetch_add(queued, Ordering::Relaxed);
                client.flush().await?;
                if let Some(scheduled) = lag_from.take() {
                    let lag = u64::try_from(scheduled.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.stats.lag_sum.fetch_add(lag, Ordering::Relaxed);
                    self.stats.lag_max.fetch_max(lag, Ordering::Relaxed);
                    self.stats.lag_count.fetch_add(1, Ordering::Relaxed);
                }
                if queued == BATCH as u64 && !qos1 {
                    tokio::task::yield_now().await;
                    continue;
                }
            }
            let may_send = period != PAUSED && (!qos1 || inflight < window);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                read = client.read_some(), if qos1 && inflight > 0 => {
                    if !read? {
                        bail!("the broker closed a publisher's connection");
                    }
                    while let Some(packet) = client.next_packet()? {
                        if let Packet::PubAck(ack) = packet {
                            if ack.reason >= 0x80 {
                                bail!("PUBACK with reason 0x{:02x}", ack.reason);
                            }
                            inflight = inflight.saturating_sub(1);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_due.into()), if may_send && period != 0 => {}
                _ = self.flow.wait(FLOW_WAIT), if may_send && period == 0 => {}
                _ = tokio::time::sleep(Duration::from_millis(10)), if period == PAUSED => {}
            }
        }
        client.disconnect().await;
        Ok(())
    }
}

async fn subscribe_loop(
    mut client: Client,
    flow: Arc<Flow>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
    latency: bool,
) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = client.read_some() => {
                if !read? {
                    bail!("the broker closed a subscriber's connection");
                }
            }
        }
        let now = nanos(Instant::now());
        let recording = latency && stats.recording.load(Ordering::Relaxed);
        let mut n = 0;
        while let Some(packet) = client.next_packet()? {
            if let Packet::Publish(p) = packet {
                n += 1;
                if p.qos != QoS::AtMostOnce {
                    client.queue_puback(p.packet_id)?;
                }
                if recording && let Some(sent) = payload_timestamp(&p.payload) {
                    samples.push(now.saturating_sub(sent));
                }
            }
        }
        client.flush().await?;
        if n > 0 {
            flow.on_delivered(n);
            stats.delivered.fetch_add(n, Ordering::Relaxed);
        }
    }
    client.disconnect().await;
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_credit_is_per_subscriber_average() {
        let f = Flow::new(2, 3);
        assert!(f.has_credit());
        f.on_sent(3);
        assert!(!f.has_credit(), "3 sent, nobody has any: 3 behind");
        f.on_delivered(1);
        assert!(f.has_credit(), "1 of 6 deliveries done: 2.5 behind on average");
        f.on_sent(1);
        assert!(!f.has_credit(), "4 sent, 1 of 8 deliveries done: 3.5 behind on average");
        f.on_delivered(1);
        assert!(!f.caught_up());
        f.on_delivered(6);
        assert!(f.caught_up());
    }

    #[tokio::test]
    async fn delivery_wakes_a_publisher_waiting_for_credit() {
        for subscribers in [1, 3] {
            let f = Arc::new(Flow::new(subscribers, 2));
            f.on_sent(2);
            assert!(!f.has_credit());
            let waiter = tokio::spawn({
                let f = f.clone();
                async move {
                    let started = Instant::now();
                    f.wait(Duration::from_secs(10)).await;
                    started.elapsed()
                }
            });
            tokio::task::yield_now().await;
            // A third of a message per subscriber: the first delivery already frees credit.
            f.on_delivered(1);
            let waited = waiter.await.unwrap();
            assert!(f.has_credit());
            assert!(
                waited < Duration::from_secs(5),
                "woken by the delivery, not the time limit"
            );
        }
    }
}
