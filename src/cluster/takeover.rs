//! The takeover window, as a plain state machine (no I/O).
//!
//! When a node dies, its persistent sessions live on at their heirs (the first live backup of
//! each, see [`super::replication`]) — but only once each heir has noticed the death, promoted
//! its copies and told the other nodes about the subscriptions it took over. A QoS 1/2 message
//! published meanwhile must not be acknowledged to its publisher while it reached none of those
//! sessions. So on every node, for each dead node:
//!
//! - the dead node's routes stay in the route table under a *takeover id* ([`takeover_id`]) until
//!   every live peer (protocol 4) and this node reported `TakeoverDone` for it;
//! - a QoS 1/2 message matching them is *parked* here with the peers that have not reported
//!   yet, and its publisher's acknowledgement waits for it (a [`super::replication::Waits`]
//!   request on the takeover id);
//! - a forward to the dead node that it never acknowledged is parked the same way;
//! - when a peer reports, it has adopted its share of the sessions and its routes for them
//!   arrive with the report, atomically (the report and the route change are applied under the
//!   route table's write lock, and parking happens under its read lock): every parked message
//!   still owed to that peer goes to it as a `TakeoverForward`, which it delivers to the
//!   sessions it adopted from the dead node only. Later messages reach it by its routes, after
//!   the parked ones on the same connection, so per-publisher order holds.
//! - A parked message is released (its publisher acknowledged) once every peer it was owed to
//!   reported and acknowledged its `TakeoverForward`s (stored there and at their backups).
//!
//! A peer that dies meanwhile does not get its share, but the sessions it would have adopted
//! pass on to the heirs of its own takeover: what was owed to it is passed on to them, each
//! getting it once it reported that takeover (and so adopted them). A report that never comes
//! (the peer does not see the node as dead: a partition) is given up after a deadline, so
//! acknowledgements never wait forever.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;
use crate::broker::message::Message;

/// The id under which a dead node's routes and parked messages are kept. A `/` cannot be in a
/// node id that we generate, and a peer naming itself so only confuses its own routes.
pub fn takeover_id(gone: &NodeId) -> NodeId {
    Arc::from(format!("{gone}{TAKEOVER_SUFFIX}"))
}

/// What [`takeover_id`] appends to the dead node's id.
pub const TAKEOVER_SUFFIX: &str = "/takeover";

/// A message parked for the heirs of a dead node.
#[derive(Debug)]
struct Parked {
    message: Message,
    /// Peers that have not reported their takeover yet: each gets the message when it does.
    owed: HashSet<NodeId>,
    /// Owed to a heir that died before it got it: by that heir, the heirs of its own takeover
    /// that have not reported it yet. Each gets the message when it does.
    passed_on: HashMap<NodeId, HashSet<NodeId>>,
    /// `TakeoverForward` requests sent for it and not yet acknowledged.
    children: HashSet<u64>,
}

impl Parked {
    /// A `TakeoverForward` of this message (request `seq` of takeover `id`) to `to`, for the
    /// sessions it adopted from `gone`; its acknowledgement is waited for (`children`).
    fn forward(
        &mut self,
        (id, seq): (&NodeId, u64),
        to: &NodeId,
        gone: &NodeId,
        children: &mut HashMap<u64, (NodeId, u64, NodeId)>,
        next: &mut impl FnMut() -> u64,
    ) -> Flush {
        let child = next();
        self.children.insert(child);
        children.insert(child, (id.clone(), seq, to.clone()));
        Flush {
            gone: gone.clone(),
            to: to.clone(),
            child,
            parent: seq,
            message: self.message.clone(),
        }
    }
}

#[derive(Debug)]
struct Record {
    gone: NodeId,
    /// Peers (and this node) whose report we wait for.
    pending: HashSet<NodeId>,
    /// Peers that reported.
    done: HashSet<NodeId>,
    since: Instant,
    /// By the request sequence number the publisher's acknowledgement waits on.
    parked: BTreeMap<u64, Parked>,
}

/// What the caller must do after an event.
#[derive(Debug, Default, PartialEq)]
#[must_use]
pub struct Outcome {
    /// Send `message` to `to` as `TakeoverForward` request `child`, for the sessions adopted
    /// from `gone`.
    pub flush: Vec<Flush>,
    /// These requests (on the takeover id of their dead node) are settled: acknowledge them.
    pub release: Vec<(NodeId, u64)>,
}

#[derive(Debug, PartialEq)]
pub struct Flush {
    pub gone: NodeId,
    pub to: NodeId,
    pub child: u64,
    /// The parked request: this node numbers every request in one sequence, in the order it
    /// routed the messages, so flushes go out sorted by it (a publisher's order).
    pub parent: u64,
    pub message: Message,
}

/// Takeovers in progress on this node, keyed by takeover id.
#[derive(Debug, Default)]
pub struct Takeovers {
    records: HashMap<NodeId, Record>,
    /// Reports for a node that this node did not see die yet: dead node → reporters.
    early: HashMap<NodeId, HashSet<NodeId>>,
    /// Acknowledged forwards (`ForwardAcked`) whose acknowledgement has not come yet:
    /// seq → (node, message).
    in_flight: HashMap<u64, (NodeId, Message)>,
    /// `TakeoverForward` request → (takeover id, parent request, node it went to).
    children: HashMap<u64, (NodeId, u64, NodeId)>,
    /// Takeover ids whose record ended: their routes are to be dropped.
    ended: Vec<NodeId>,
    /// Takeover ids that have routes in the route table.
    ids: HashSet<NodeId>,
}

impl Takeovers {
    /// Whether `node` is a takeover id still collecting messages, and if so for which dead
    /// node; `None` also when every heir reported (nothing to park any more).
    pub fn parking(&self, node: &NodeId) -> Option<&NodeId> {
        self.records
            .get(node)
            .filter(|r| !r.pending.is_empty())
            .map(|r| &r.gone)
    }

    /// Whether `node` is a takeover id (its routes are a dead node's: never sent to).
    pub fn is_takeover_id(&self, node: &NodeId) -> bool {
        self.ids.contains(node)
    }

    /// An acknowledged forward `seq` went to `node`.
    pub fn track(&mut self, seq: u64, node: NodeId, message: Message) {
        self.in_flight.insert(seq, (node, message));
    }

    /// `node` died. Starts its takeover: we wait for a report of every node in `peers` (this
    /// node included), except those that reported already. Forwards to it that it did not
    /// acknowledge are parked (their requests must be moved to the takeover id: returned).
    /// `next` numbers the `TakeoverForward` requests (in the sequence of every other request).
    pub fn begin(
        &mut self,
        gone: &NodeId,
        peers: HashSet<NodeId>,
        now: Instant,
        next: &mut impl FnMut() -> u64,
    ) -> (Vec<u64>, Outcome) {
        let id = takeover_id(gone);
        let done = self.early.remove(gone).unwrap_or_default();
        let pending: HashSet<NodeId> = peers.into_iter().filter(|p| !done.contains(p) && p != gone).collect();
        let mut record = Record {
            gone: gone.clone(),
            pending,
            done,
            since: now,
            parked: BTreeMap::new(),
        };
        let mut unacked: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, (n, _))| n == gone)
            .map(|(s, _)| *s)
            .collect();
        // In the order they were routed: a publisher's messages reach the heirs in its order.
        unacked.sort_unstable();
        let mut out = Outcome::default();
        for seq in &unacked {
            let Some((_, message)) = self.in_flight.remove(seq) else {
                continue;
            };
            // Owed to every heir: those pending, and those that reported already. Also to a
            // heir that the same publish was forwarded to for its own sessions: if that reached
            // it before it adopted the dead node's sessions, they never got it (a flapping-links
            // run lost such messages). If it came after, the adopted session gets it twice: a
            // QoS 1 duplicate, and a QoS 2 one is dropped (`RecentQos2`, started on adoption).
            let owed: HashSet<NodeId> = record.pending.iter().chain(record.done.iter()).cloned().collect();
            let early: Vec<NodeId> = owed.iter().filter(|n| record.done.contains(*n)).cloned().collect();
            let mut parked = Parked {
                message,
                owed,
                passed_on: HashMap::new(),
                children: HashSet::new(),
            };
            for to in early {
                parked.owed.remove(&to);
                let flush = parked.forward((&id, *seq), &to, gone, &mut self.children, next);
                out.flush.push(flush);
            }
            record.parked.insert(*seq, parked);
        }
        self.ended.retain(|e| *e != id);
        self.ids.insert(id.clone());
        self.records.insert(id.clone(), record);
        self.settle(&id, &mut out);
        (unacked, out)
    }

    /// A message matching the routes of takeover `id` is parked as request `seq`; false if
    /// there is nothing to wait for (the caller then does not wait either).
    pub fn park(&mut self, id: &NodeId, seq: u64, message: Message) -> bool {
        let Some(record) = self.records.get_mut(id) else {
            return false;
        };
        if record.pending.is_empty() {
            return false;
        }
        let owed = record.pending.clone();
        record.parked.insert(
            seq,
            Parked {
                message,
                owed,
                passed_on: HashMap::new(),
                children: HashSet::new(),
            },
        );
        true
    }

    /// `node` reported that it adopted its share of `gone`'s sessions (`adopted`: any at all).
    pub fn reported(&mut self, gone: &NodeId, node: &NodeId, adopted: bool, next: &mut impl FnMut() -> u64) -> Outcome {
        let id = takeover_id(gone);
        let mut out = Outcome::default();
        let Some(record) = self.records.get_mut(&id) else {
            self.early.entry(gone.clone()).or_default().insert(node.clone());
            return out;
        };
        record.pending.remove(node);
        record.done.insert(node.clone());
        for (seq, parked) in record.parked.iter_mut() {
            if parked.owed.remove(node) && adopted {
                let flush = parked.forward((&id, *seq), node, gone, &mut self.children, next);
                out.flush.push(flush);
            }
        }
        // Messages of other takeovers that `gone` was owed when it died: `node` adopted its
        // share of the sessions they were for just now.
        let ids: Vec<NodeId> = self.records.keys().cloned().collect();
        for other in &ids {
            let Some(record) = self.records.get_mut(other) else {
                continue;
            };
            for (seq, parked) in record.parked.iter_mut() {
                let Some(heirs) = parked.passed_on.get_mut(gone) else {
                    continue;
                };
                let owed = heirs.remove(node);
                if heirs.is_empty() {
                    parked.passed_on.remove(gone);
                }
                if owed && adopted {
                    let flush = parked.forward((other, *seq), node, gone, &mut self.children, next);
                    out.flush.push(flush);
                }
            }
        }
        for other in ids {
            self.settle(&other, &mut out);
        }
        // This takeover's messages and those passed on from others, interleaved as routed.
        out.flush.sort_by_key(|f| f.parent);
        out
    }

    /// `seq` was acknowledged: a forward is no longer in flight, or a `TakeoverForward` done.
    pub fn acked(&mut self, seq: u64) -> Outcome {
        self.in_flight.remove(&seq);
        let mut out = Outcome::default();
        if let Some((id, parent, _)) = self.children.remove(&seq) {
            if let Some(parked) = self.records.get_mut(&id).and_then(|r| r.parked.get_mut(&parent)) {
                parked.children.remove(&seq);
            }
            self.settle(&id, &mut out);
        }
        out
    }

    /// `node` is gone: nothing is awaited from it any more. What it was owed, and what it was
    /// sent but had not acknowledged (stored), is passed on to the heirs of its own takeover
    /// (begun before this call): those that reported it already get it now, the others when
    /// they do. `next` numbers the `TakeoverForward` requests.
    pub fn node_gone(&mut self, node: &NodeId, next: &mut impl FnMut() -> u64) -> Outcome {
        let lost: Vec<u64> = self
            .children
            .iter()
            .filter(|(_, (_, _, to))| to == node)
            .map(|(c, _)| *c)
            .collect();
        // (takeover id, parked request) of the forwards `node` never acknowledged.
        let mut unstored: HashSet<(NodeId, u64)> = HashSet::new();
        for child in lost {
            if let Some((id, parent, _)) = self.children.remove(&child)
                && let Some(parked) = self.records.get_mut(&id).and_then(|r| r.parked.get_mut(&parent))
            {
                parked.children.remove(&child);
                unstored.insert((id, parent));
            }
        }
        let own = takeover_id(node);
        let (heirs_pending, heirs_done) = match self.records.get(&own) {
            Some(r) => (r.pending.clone(), r.done.clone()),
            None => Default::default(),
        };
        let ids: Vec<NodeId> = self.records.keys().cloned().collect();
        let mut out = Outcome::default();
        for id in ids {
            if id == own {
                continue;
            }
            if let Some(record) = self.records.get_mut(&id) {
                record.pending.remove(node);
                for (seq, parked) in record.parked.iter_mut() {
                    let mut owed_to_it = parked.owed.remove(node) | unstored.contains(&(id.clone(), *seq));
                    for heirs in parked.passed_on.values_mut() {
                        owed_to_it |= heirs.remove(node);
                    }
                    parked.passed_on.retain(|_, heirs| !heirs.is_empty());
                    if !owed_to_it {
                        continue;
                    }
                    for to in heirs_done.iter().filter(|h| *h != node) {
                        let flush = parked.forward((&id, *seq), to, node, &mut self.children, next);
                        out.flush.push(flush);
                    }
                    let later: HashSet<NodeId> = heirs_pending.iter().filter(|h| *h != node).cloned().collect();
                    if !later.is_empty() {
                        parked.passed_on.entry(node.clone()).or_default().extend(later);
                    }
                }
            }
            self.settle(&id, &mut out);
        }
        out.flush.sort_by_key(|f| f.parent);
        out
    }

    /// Gives up on takeovers older than `limit` (a peer that never reports): their parked
    /// messages are released. Returns the dead nodes given up on, for the log.
    pub fn expire(&mut self, now: Instant, limit: Duration) -> (Vec<NodeId>, Outcome) {
        let old: Vec<NodeId> = self
            .records
            .iter()
            .filter(|(_, r)| now.duration_since(r.since) > limit)
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Outcome::default();
        let mut gone = Vec::new();
        for id in old {
            let Some(record) = self.records.remove(&id) else {
                continue;
            };
            if !record.pending.is_empty() || !record.parked.is_empty() {
                gone.push(record.gone.clone());
            }
            self.children.retain(|_, (i, _, _)| *i != id);
            out.release.extend(record.parked.into_keys().map(|s| (id.clone(), s)));
            self.ended.push(id);
        }
        self.early.clear();
        (gone, out)
    }

    /// Takeover ids whose routes can go now.
    pub fn take_ended(&mut self) -> Vec<NodeId> {
        let ended = std::mem::take(&mut self.ended);
        for id in &ended {
            self.ids.remove(id);
        }
        ended
    }

    /// Releases what is settled in record `id`, and ends the record once nothing is left.
    fn settle(&mut self, id: &NodeId, out: &mut Outcome) {
        let Some(record) = self.records.get_mut(id) else {
            return;
        };
        let settled: Vec<u64> = record
            .parked
            .iter()
            .filter(|(_, p)| p.owed.is_empty() && p.passed_on.is_empty() && p.children.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for seq in settled {
            record.parked.remove(&seq);
            out.release.push((id.clone(), seq));
        }
        if record.pending.is_empty() && record.parked.is_empty() {
            self.records.remove(id);
            self.ended.push(id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        Arc::from(s)
    }

    fn msg(n: u32) -> Message {
        Message {
            topic: "t".into(),
            payload: n.to_string().into(),
            qos: 1,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: "p".into(),
            created_ms: 0,
        }
    }

    fn peers(ids: &[&str]) -> HashSet<NodeId> {
        ids.iter().map(|s| id(s)).collect()
    }

    /// Request numbers for `TakeoverForward`s, from 100 on.
    fn numbers() -> impl FnMut() -> u64 {
        let mut n = 99;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn a_parked_message_waits_for_every_heir_and_goes_to_those_that_adopted() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let d = id("d");
        let tid = takeover_id(&d);
        let (moved, out) = t.begin(&d, peers(&["me", "b", "c"]), Instant::now(), &mut next);
        assert!(moved.is_empty() && out == Outcome::default());
        assert_eq!(t.parking(&tid), Some(&d));
        assert!(t.park(&tid, 7, msg(1)));
        let out = t.reported(&d, &id("me"), false, &mut next);
        assert_eq!(out, Outcome::default(), "nothing adopted here");
        let out = t.reported(&d, &id("b"), true, &mut next);
        assert_eq!(out.flush.len(), 1);
        assert_eq!((out.flush[0].to.clone(), out.flush[0].child), (id("b"), 100));
        assert!(out.release.is_empty());
        assert!(t.park(&tid, 8, msg(2)), "c has not reported: still parking");
        let out = t.reported(&d, &id("c"), false, &mut next);
        assert_eq!(out.release, vec![(tid.clone(), 8)], "8 was owed to c only");
        assert_eq!(t.parking(&tid), None, "everyone reported: nothing is parked any more");
        assert!(!t.park(&tid, 9, msg(3)));
        let out = t.acked(100);
        assert_eq!(out.release, vec![(tid.clone(), 7)]);
        assert_eq!(t.take_ended(), vec![tid]);
    }

    /// A heir that reported before the node died gets its unacknowledged forwards at once, in
    /// the order they were routed (a flapping-links run got them in hash order: out of order).
    #[test]
    fn unacknowledged_forwards_go_to_an_early_heir_in_routing_order() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let d = id("d");
        for seq in [9, 3, 7, 1, 5, 8, 2, 6, 4] {
            t.track(seq, d.clone(), msg(seq as u32));
        }
        assert!(t.reported(&d, &id("b"), true, &mut next).flush.is_empty(), "early");
        let (moved, out) = t.begin(&d, peers(&["b"]), Instant::now(), &mut next);
        assert_eq!(moved, (1..=9).collect::<Vec<u64>>());
        let sent: Vec<Message> = out.flush.iter().map(|f| f.message.clone()).collect();
        assert_eq!(sent, (1..=9).map(msg).collect::<Vec<Message>>());
    }

    /// Messages of two takeovers reach a heir in the order they were routed: a publish went to
    /// both dead nodes, and one had acknowledged an earlier message that the other had not
    /// (a flapping-links run got 991…999 then 990).
    #[test]
    fn a_heir_gets_the_messages_of_two_takeovers_in_routing_order() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let (b, c) = (id("b"), id("c"));
        t.track(1, b.clone(), msg(990));
        for (n, seq) in [(991, 3), (992, 5)] {
            t.track(seq, b.clone(), msg(n));
            t.track(seq + 1, c.clone(), msg(n));
        }
        let _ = t.begin(&b, peers(&["me", "c"]), Instant::now(), &mut next);
        let _ = t.begin(&c, peers(&["me"]), Instant::now(), &mut next);
        assert!(t.reported(&b, &id("me"), false, &mut next).flush.is_empty());
        assert!(
            t.node_gone(&c, &mut next).flush.is_empty(),
            "passed on: me has not reported c"
        );
        let out = t.reported(&c, &id("me"), true, &mut next);
        let sent: Vec<u64> = out.flush.iter().map(|f| f.parent).collect();
        assert_eq!(sent, vec![1, 3, 4, 5, 6], "b's passed-on ones between c's own");
        let payloads: Vec<Message> = out.flush.iter().map(|f| f.message.clone()).collect();
        assert_eq!(payloads, [990, 991, 991, 992, 992].map(msg).to_vec());
    }

    /// The last heir to report is sent the message; it is released only on that one's ack.
    #[test]
    fn the_last_heir_gets_the_message_before_it_is_released() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let d = id("d");
        let tid = takeover_id(&d);
        let _ = t.begin(&d, peers(&["b"]), Instant::now(), &mut next);
        assert!(t.park(&tid, 1, msg(1)));
        let out = t.reported(&d, &id("b"), true, &mut next);
        assert_eq!(out.flush.len(), 1);
        assert!(out.release.is_empty());
        assert_eq!(t.acked(100).release, vec![(tid, 1)]);
    }

    #[test]
    fn an_unacknowledged_forward_to_the_dead_node_is_parked_also_for_early_reporters() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let d = id("d");
        t.track(1, d.clone(), msg(1));
        // The same publish went to b for b's own sessions too (maybe before b adopted d's).
        t.track(2, d.clone(), msg(2));
        t.track(3, id("b"), msg(3));
        // b saw d die first and took over.
        assert_eq!(t.reported(&d, &id("b"), true, &mut next), Outcome::default());
        let (mut moved, out) = t.begin(&d, peers(&["me", "b"]), Instant::now(), &mut next);
        moved.sort();
        assert_eq!(moved, vec![1, 2]);
        let mut flushed: Vec<Message> = out.flush.iter().map(|f| f.message.clone()).collect();
        flushed.sort_by_key(|m| m.payload.clone());
        assert_eq!(
            flushed,
            vec![msg(1), msg(2)],
            "both go to b, for the sessions it adopted"
        );
        assert!(out.flush.iter().all(|f| f.to == id("b")));
        let children: Vec<u64> = out.flush.iter().map(|f| f.child).collect();
        let out = t.reported(&d, &id("me"), false, &mut next);
        assert!(out.release.is_empty(), "b has not stored them yet");
        let mut released = t.acked(children[0]).release;
        released.extend(t.acked(children[1]).release);
        released.sort();
        assert_eq!(released, vec![(takeover_id(&d), 1), (takeover_id(&d), 2)]);
        assert!(t.acked(3).release.is_empty());
    }

    /// A heir that dies before it got its share does not take it along: the sessions it would
    /// have adopted go to the heirs of its own takeover, and so does what it was owed (a
    /// flapping-links run lost a message so: owed to a node about to be found dead too).
    #[test]
    fn what_a_dying_heir_was_owed_goes_to_the_heirs_of_its_own_takeover() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let (b, c, e) = (id("b"), id("c"), id("e"));
        t.track(1, b.clone(), msg(1));
        // b dies first. c, not yet seen dead, is the heir of b's sessions: this node and e
        // adopt none of them.
        let (moved, _) = t.begin(&b, peers(&["me", "c", "e"]), Instant::now(), &mut next);
        assert_eq!(moved, vec![1]);
        assert_eq!(t.reported(&b, &id("me"), false, &mut next), Outcome::default());
        assert_eq!(t.reported(&b, &e, false, &mut next), Outcome::default());
        // c dies before it reported; e saw it first and adopted (b's sessions among them).
        let _ = t.reported(&c, &e, true, &mut next);
        let _ = t.begin(&c, peers(&["me", "e"]), Instant::now(), &mut next);
        let out = t.node_gone(&c, &mut next);
        assert_eq!(out.flush.len(), 1, "e adopted already: it gets message 1 now");
        let to_e = &out.flush[0];
        assert_eq!((&to_e.to, &to_e.gone, &to_e.message), (&e, &c, &msg(1)));
        assert!(out.release.is_empty());
        // This node adopts its share of c's (and so b's) sessions: it gets message 1 too.
        let out = t.reported(&c, &id("me"), true, &mut next);
        let to_me: Vec<&Flush> = out.flush.iter().filter(|f| f.message == msg(1)).collect();
        assert_eq!(to_me.len(), 1);
        assert_eq!((&to_me[0].to, &to_me[0].gone), (&id("me"), &c));
        assert!(out.release.is_empty());
        let (child_e, child_me) = (to_e.child, to_me[0].child);
        assert!(t.acked(child_e).release.is_empty(), "this node has not stored it yet");
        assert_eq!(t.acked(child_me).release, vec![(takeover_id(&b), 1)]);
    }

    /// A heir that got its share but dies before it acknowledged (stored) it: its sessions
    /// pass on to the heirs of its own takeover, and so does the message.
    #[test]
    fn what_a_dying_heir_had_not_stored_goes_to_the_heirs_of_its_own_takeover() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let (b, c) = (id("b"), id("c"));
        t.track(1, b.clone(), msg(1));
        let _ = t.begin(&b, peers(&["me", "c"]), Instant::now(), &mut next);
        assert_eq!(t.reported(&b, &id("me"), false, &mut next), Outcome::default());
        let out = t.reported(&b, &c, true, &mut next);
        assert_eq!(out.flush.len(), 1, "c adopted b's sessions: it is sent message 1");
        // c dies before its acknowledgement came.
        let _ = t.begin(&c, peers(&["me"]), Instant::now(), &mut next);
        let out = t.node_gone(&c, &mut next);
        assert!(
            out.release.is_empty(),
            "not released: nobody holding b's sessions stored it"
        );
        let out = t.reported(&c, &id("me"), true, &mut next);
        assert_eq!(out.flush.len(), 1);
        assert_eq!(
            (&out.flush[0].to, &out.flush[0].gone, &out.flush[0].message),
            (&id("me"), &c, &msg(1))
        );
        assert_eq!(t.acked(out.flush[0].child).release, vec![(takeover_id(&b), 1)]);
    }

    #[test]
    fn a_heir_that_dies_or_never_reports_is_not_waited_for() {
        let mut t = Takeovers::default();
        let mut next = numbers();
        let d = id("d");
        let tid = takeover_id(&d);
        let now = Instant::now();
        let _ = t.begin(&d, peers(&["me", "b", "c"]), now, &mut next);
        assert!(t.park(&tid, 1, msg(1)));
        let out = t.reported(&d, &id("b"), true, &mut next);
        assert_eq!(out.flush.len(), 1);
        let out = t.node_gone(&id("b"), &mut next);
        assert!(out.release.is_empty(), "me and c still owe their reports");
        let _ = t.reported(&d, &id("me"), false, &mut next);
        let (gone, out) = t.expire(now + Duration::from_secs(60), Duration::from_secs(10));
        assert_eq!(gone, vec![d]);
        assert_eq!(out.release, vec![(tid, 1)]);
    }
}
