//! The receiving side of a session handover between live nodes (a client reconnected here
//! while its session was on another node; see `cluster::handed` for the sending side).
//!
//! Messages for the session that reached the old node after it handed the session over are
//! redirected here. While this node still waits for the other nodes' answers (the session is
//! not installed yet), every message routed here is parked with the claim, redirected or not
//! (a message may reach this node directly before the session is here, and the old node after
//! it left), and given, to that session only and if it matches it, once the session is
//! installed. A QoS 2 message may reach the session both directly and redirected (the
//! publishing node's routes were changing): for [`DEDUP_WINDOW_MS`] after the install, a
//! session that was handed over remembers which QoS 2 messages it was given, and a second copy
//! is dropped (exactly once [MQTT-4.3.3]).
//!
//! Order per publisher: a message redirected by the old node can trail one that its
//! publishing node sent here directly. So, from the install, what each node (this one
//! included) sent here directly for the session, parked meanwhile or arriving later, is held
//! ([`OrderHolds`]) until that node's marker came through the old node (see `cluster::handed`),
//! or [`ORDER_HOLD_LIMIT`] passed; a held message is acknowledged (to the node that forwarded
//! it, or to its publisher here) only once the session has it.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use super::message::{Message, now_ms};
use super::session::{ClaimStamp, Effects};
use super::{Broker, Origin, State};
use crate::store::Ticket;

/// How long a handed-over session drops second copies of QoS 2 messages (longer than the old
/// node's redirect window, `cluster::handed::WINDOW`).
pub const DEDUP_WINDOW_MS: u64 = 30_000;

/// A connection of a client id asking the other nodes for its session.
pub(super) struct Claim {
    pub stamp: ClaimStamp,
    /// A newer connection of the id elsewhere won meanwhile.
    pub superseded: bool,
    /// Messages routed here (or redirected to the session) before it was installed, with the
    /// node that sent each directly (this one for its own; `None`: redirected by the old holder).
    pub parked: Vec<(Option<Arc<str>>, Arc<Message>)>,
}

impl Claim {
    pub fn new(stamp: ClaimStamp) -> Claim {
        Claim {
            stamp,
            superseded: false,
            parked: Vec::new(),
        }
    }
}

/// Most messages parked with one claim; beyond, the claim gets only redirected ones.
const MAX_PARKED: usize = 100_000;

/// A message routed here (published or forwarded) while claims are pending: parked with each.
pub(super) fn park_for_claims(state: &mut State, message: &Arc<Message>, sender: Option<&Arc<str>>) {
    for (client, claim) in state.claims.iter_mut().filter(|(_, c)| !c.superseded) {
        if claim.parked.len() == MAX_PARKED {
            tracing::warn!(%client, "{MAX_PARKED} messages parked while its session is handed over; later ones only if redirected");
        }
        if claim.parked.len() < MAX_PARKED {
            claim.parked.push((sender.cloned(), message.clone()));
        }
    }
}

/// The QoS 2 messages given to recently handed-over sessions.
#[derive(Default)]
pub(super) struct RecentQos2 {
    by_client: HashMap<Arc<str>, (u64, HashSet<u64>)>,
}

impl RecentQos2 {
    /// `client`'s session was just installed here with these messages.
    /// `given`: identities of QoS 2 messages it completed moments ago.
    pub fn start<'a>(
        &mut self,
        client: &Arc<str>,
        held: impl Iterator<Item = &'a Message>,
        given: impl Iterator<Item = u64>,
        now: u64,
    ) {
        self.by_client.retain(|_, (until, _)| *until > now);
        let ids = held.filter(|m| m.qos == 2).map(identity).chain(given).collect();
        self.by_client.insert(client.clone(), (now + DEDUP_WINDOW_MS, ids));
    }

    /// Whether `message` (delivered to `client` at QoS 2) is a second copy; records it if not.
    pub fn is_repeat(&mut self, client: &str, message: &Message, now: u64) -> bool {
        match self.by_client.get_mut(client) {
            Some((until, ids)) if *until > now => !ids.insert(identity(message)),
            _ => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

/// What identifies a message across nodes: it is copied unchanged wherever it goes.
pub(super) fn identity(m: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&m.publisher, m.created_ms, &m.topic, &m.payload, m.qos).hash(&mut h);
    h.finish()
}

/// How long a session handed over here waits for the publishing nodes' markers at most (a
/// node that died or is cut off sends none); after it, what was held is delivered.
pub const ORDER_HOLD_LIMIT: Duration = Duration::from_secs(3);

/// What a session handed over here waits for before it takes direct messages (see the module
/// documentation): made by the cluster, which sends the barrier once the session is installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldOrder {
    pub token: u64,
    /// The node that handed the session over.
    pub via: Arc<str>,
    /// The nodes whose direct messages wait for their marker.
    pub waiting: Vec<Arc<str>>,
}

/// One session's held direct messages.
struct Hold {
    token: u64,
    waiting: HashSet<Arc<str>>,
    /// By the node that sent them: each node's are given to the session once its marker came
    /// (a publisher's messages all come from the node it is connected to).
    held: Vec<(Arc<str>, Arc<Message>)>,
    /// The held forwards to acknowledge (sending node, sequence number).
    acks: Vec<(Arc<str>, u64)>,
}

/// The direct messages held for sessions just handed over here, until the markers came.
#[derive(Default)]
pub(super) struct OrderHolds {
    by_client: HashMap<Arc<str>, Hold>,
    clients: HashMap<u64, Arc<str>>,
    /// A held forward is acknowledged once every hold that has it is over: how many are left.
    acks_left: HashMap<(Arc<str>, u64), (usize, HeldAck)>,
}

/// The acknowledgement of a forward that was held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldAck {
    pub node: Arc<str>,
    pub seq: u64,
    /// Backs the message's copies here that were not held.
    pub ticket: Ticket,
    /// The cluster requests it waits for as well (the message's redirects from here).
    pub requests: Vec<u64>,
}

/// Held messages let go (a hold ended, or one node's part of it): in the order they came, and
/// the forwards now due an acknowledgement.
pub(super) struct Released {
    pub messages: Vec<Arc<Message>>,
    pub acks: Vec<HeldAck>,
}

impl OrderHolds {
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// `client`'s session was just installed: hold what the `waiting` nodes send it directly.
    /// A hold it still had ends (returned, to be delivered first).
    pub fn start(&mut self, client: &Arc<str>, order: &HoldOrder) -> Option<Released> {
        let previous = self.release(client);
        if !order.waiting.is_empty() {
            let hold = Hold {
                token: order.token,
                waiting: order.waiting.iter().cloned().collect(),
                held: Vec::new(),
                acks: Vec::new(),
            };
            self.clients.insert(order.token, client.clone());
            self.by_client.insert(client.clone(), hold);
        }
        previous
    }

    /// `client`'s hold `token` waits for `node` too; whether that hold is still on.
    pub fn wait_also(&mut self, client: &str, token: u64, node: &Arc<str>) -> bool {
        match self.by_client.get_mut(client) {
            Some(hold) if hold.token == token => {
                hold.waiting.insert(node.clone());
                true
            }
            _ => false,
        }
    }

    /// Whether `message`, sent here directly by `sender`, waits for `sender`'s marker before
    /// `client`'s session gets it; kept if so.
    pub fn hold(&mut self, client: &str, sender: &str, message: &Arc<Message>) -> bool {
        match self.by_client.get_mut(client) {
            Some(hold) => match hold.waiting.get(sender) {
                Some(sender) => {
                    hold.held.push((sender.clone(), message.clone()));
                    true
                }
                None => false,
            },
            None => false,
        }
    }

    /// The forward `ack.seq` from `ack.node`, held for `clients`, is acknowledged once they all
    /// have it.
    pub fn hold_ack(&mut self, clients: &[Arc<str>], ack: HeldAck) {
        let mut count = 0;
        for client in clients {
            if let Some(hold) = self.by_client.get_mut(client) {
                hold.acks.push((ack.node.clone(), ack.seq));
                count += 1;
            }
        }
        if count > 0 {
            self.acks_left.insert((ack.node.clone(), ack.seq), (count, ack));
        }
    }

    /// `origin`'s marker for hold `token` came through: its client, and what `origin` sent it
    /// (the whole hold's, if that was the last marker).
    pub fn passed(&mut self, token: u64, origin: &str) -> Option<(Arc<str>, Released)> {
        let client = self.clients.get(&token)?.clone();
        let hold = self.by_client.get_mut(&client)?;
        if !hold.waiting.remove(origin) {
            return None;
        }
        if hold.waiting.is_empty() {
            let released = self.release(&client)?;
            return Some((client, released));
        }
        let (mine, rest) = std::mem::take(&mut hold.held)
            .into_iter()
            .partition(|(s, _)| **s == *origin);
        hold.held = rest;
        let (acks, rest) = std::mem::take(&mut hold.acks)
            .into_iter()
            .partition(|(n, _)| **n == *origin);
        hold.acks = rest;
        let released = Released {
            messages: mine.into_iter().map(|(_, m)| m).collect(),
            acks: self.acks_due(acks),
        };
        Some((client, released))
    }

    /// Of these held forwards, the ones no other hold has any more.
    fn acks_due(&mut self, keys: Vec<(Arc<str>, u64)>) -> Vec<HeldAck> {
        let mut due = Vec::new();
        for key in keys {
            if let Some((left, _)) = self.acks_left.get_mut(&key) {
                *left -= 1;
                if *left == 0
                    && let Some((_, ack)) = self.acks_left.remove(&key)
                {
                    due.push(ack);
                }
            }
        }
        due
    }

    /// The client of hold `token`, if it is still on.
    pub fn client(&self, token: u64) -> Option<Arc<str>> {
        self.clients.get(&token).cloned()
    }

    /// Ends `client`'s hold.
    pub fn release(&mut self, client: &str) -> Option<Released> {
        let hold = self.by_client.remove(client)?;
        self.clients.remove(&hold.token);
        Some(Released {
            messages: hold.held.into_iter().map(|(_, m)| m).collect(),
            acks: self.acks_due(hold.acks),
        })
    }
}

/// Where a redirected message went.
#[derive(Debug)]
pub enum HandedDelivery {
    /// Given to the session (the ticket backs its copies here and at its backups).
    Delivered(Ticket),
    /// Kept with the claim until the session is installed.
    Parked,
    /// No session and no claim of that client here: the message, back.
    NoSession(Box<Message>),
}

impl Broker {
    /// A message redirected by the node that handed `client`'s session to this one.
    pub fn deliver_handed(self: &Arc<Self>, client: &str, message: Message) -> HandedDelivery {
        let mut state = self.lock();
        let client: Arc<str> = Arc::from(client);
        if state.sessions.contains_key(&client) {
            let mut effects = Effects::default();
            let clients = HashSet::from([client]);
            self.route(
                &mut state,
                Arc::new(message),
                Origin::Heir { clients: &clients },
                &mut effects,
            );
            return HandedDelivery::Delivered(self.finish(&mut state, effects, Vec::new()));
        }
        match state.claims.get_mut(&client) {
            Some(claim) if !claim.superseded => {
                // Beyond the limit too: this one is known to be for the session.
                claim.parked.push((None, Arc::new(message)));
                HandedDelivery::Parked
            }
            _ => HandedDelivery::NoSession(Box::new(message)),
        }
    }

    /// Right after a handed-over session was installed: the messages parked for it.
    pub(super) fn deliver_parked(
        &self,
        state: &mut State,
        client: &Arc<str>,
        parked: Vec<(Option<Arc<str>>, Arc<Message>)>,
        effects: &mut Effects,
    ) {
        if parked.is_empty() || !state.sessions.contains_key(client) {
            return;
        }
        tracing::debug!(%client, count = parked.len(), "delivering messages redirected during the handover");
        let clients = HashSet::from([client.clone()]);
        for (sender, message) in parked {
            // What a node sent here directly waits for its order marker, like later messages.
            if let Some(sender) = &sender
                && state.order_holds.hold(client, sender, &message)
            {
                continue;
            }
            self.route(state, message, Origin::Heir { clients: &clients }, effects);
        }
    }

    /// `origin`'s order marker for hold `token` came through (`None`: the hold's time is up):
    /// once no node is waited for, the held messages go to the session and their forwards are
    /// acknowledged.
    pub fn order_passed(self: &Arc<Self>, token: u64, origin: Option<&str>) {
        let mut state = self.lock();
        let released = match origin {
            Some(origin) => state.order_holds.passed(token, origin),
            None => {
                let client = state.order_holds.client(token);
                client.and_then(|c| state.order_holds.release(&c).map(|r| (c, r)))
            }
        };
        let Some((client, released)) = released else { return };
        tracing::debug!(
            %client,
            held = released.messages.len(),
            marker = ?origin,
            "held messages given to a session handed over here (marker: `None` when the time was up)"
        );
        let mut effects = Effects::default();
        let acks = self.deliver_released(&mut state, &client, released, &mut effects);
        let ticket = self.finish(&mut state, effects, Vec::new());
        if let Some(cluster) = self.cluster.get() {
            cluster.ack_held(acks, ticket);
        }
    }

    /// A partition healed and `node` is back: what it sends our persistent sessions directly
    /// waits (see `cluster::merge_holds`). A session whose merge hold is on already (`held`
    /// gives its token) waits for `node` as well; every other one, except those in `skip`,
    /// gets a hold of its own, with a token from `token`. Returns the sessions held, with
    /// their hold's token.
    pub fn hold_for_merge(
        self: &Arc<Self>,
        node: &Arc<str>,
        held: impl Fn(&str) -> Option<u64>,
        skip: &HashSet<Arc<str>>,
        mut token: impl FnMut() -> u64,
    ) -> Vec<(Arc<str>, u64)> {
        let mut state = self.lock();
        let clients: Vec<Arc<str>> = state
            .sessions
            .iter()
            .filter(|(c, s)| s.is_persistent() && !s.subscriptions.is_empty() && !skip.contains(*c))
            .map(|(c, _)| c.clone())
            .collect();
        let mut covered = Vec::new();
        let mut effects = Effects::default();
        let mut acks = Vec::new();
        for client in clients {
            if let Some(t) = held(&client)
                && state.order_holds.wait_also(&client, t, node)
            {
                covered.push((client, t));
                continue;
            }
            let order = HoldOrder {
                token: token(),
                via: node.clone(),
                waiting: vec![node.clone()],
            };
            // A handover's hold still on ends here: what it held goes first.
            if let Some(released) = state.order_holds.start(&client, &order) {
                acks.extend(self.deliver_released(&mut state, &client, released, &mut effects));
            }
            covered.push((client, order.token));
        }
        let ticket = self.finish(&mut state, effects, Vec::new());
        drop(state);
        if let Some(cluster) = self.cluster.get() {
            cluster.ack_held(acks, ticket);
        }
        covered
    }

    /// Whether hold `token` is still on (some node's marker is still waited for).
    pub fn order_hold_on(&self, token: u64) -> bool {
        self.lock().order_holds.client(token).is_some()
    }

    /// Gives a session the messages held for it; returns the forwards now due an
    /// acknowledgement (once the ticket of the caller's operation is stored as well).
    pub(super) fn deliver_released(
        &self,
        state: &mut State,
        client: &Arc<str>,
        released: Released,
        effects: &mut Effects,
    ) -> Vec<HeldAck> {
        let clients = HashSet::from([client.clone()]);
        for message in released.messages {
            self.route(state, message, Origin::Heir { clients: &clients }, effects);
        }
        released.acks
    }

    /// A session handed over by another node, or adopted from a dead node's copy, was installed
    /// here: for a while, a second copy of a QoS 2 message for it is dropped.
    pub(super) fn handover_installed(state: &mut State, client: &Arc<str>) {
        let now = now_ms();
        let State {
            sessions,
            recent_qos2,
            merge_dedup,
            ..
        } = state;
        if let Some(session) = sessions.get(client) {
            let held: Vec<Arc<Message>> = session.export().outgoing.into_iter().map(|o| o.message).collect();
            // A copy of one it completed just before may still come (redirected).
            recent_qos2.start(client, held.iter().map(|m| &**m), merge_dedup.recent_of(client), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &'static [u8], qos: u8) -> Message {
        Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(payload),
            qos,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: "p".into(),
            created_ms: 7,
        }
    }

    fn order(token: u64, waiting: &[&str]) -> HoldOrder {
        HoldOrder {
            token,
            via: Arc::from("old"),
            waiting: waiting.iter().map(|n| Arc::from(*n)).collect(),
        }
    }

    fn ack(node: &str, seq: u64) -> HeldAck {
        HeldAck {
            node: Arc::from(node),
            seq,
            ticket: 5,
            requests: vec![],
        }
    }

    #[test]
    fn direct_messages_are_held_until_their_senders_marker_came_through() {
        let mut holds = OrderHolds::default();
        let c: Arc<str> = Arc::from("c");
        assert!(holds.start(&c, &order(1, &["n2", "n3"])).is_none());
        let m1 = Arc::new(message(b"1", 1));
        let m2 = Arc::new(message(b"2", 1));
        assert!(holds.hold("c", "n2", &m1));
        assert!(holds.hold("c", "n3", &m2));
        assert!(!holds.hold("other", "n2", &m1), "other sessions are not held");
        assert!(!holds.hold("c", "old", &m1), "nor what the old holder sends (one link)");
        holds.hold_ack(std::slice::from_ref(&c), ack("n2", 10));
        assert!(holds.passed(2, "n3").is_none(), "another hold's marker");
        let (client, n2) = holds.passed(1, "n2").expect("n2's part");
        assert_eq!(client, c);
        assert_eq!(
            n2.messages,
            vec![m1.clone()],
            "n2's messages go, n3 is still waited for"
        );
        assert_eq!(n2.acks, vec![ack("n2", 10)]);
        assert!(holds.passed(1, "n2").is_none(), "once");
        assert!(holds.hold("c", "n3", &m1), "n3's messages are still held");
        assert!(!holds.hold("c", "n2", &m1), "n2's are not any more");
        let (_, rest) = holds.passed(1, "n3").expect("the last marker");
        assert_eq!(rest.messages, vec![m2, m1.clone()], "in arrival order");
        assert!(rest.acks.is_empty());
        assert!(holds.is_empty() && holds.client(1).is_none());
        assert!(!holds.hold("c", "n3", &m1));
    }

    #[test]
    fn a_forward_held_for_two_sessions_is_acknowledged_when_both_have_it() {
        let mut holds = OrderHolds::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        holds.start(&a, &order(1, &["n2"]));
        holds.start(&b, &order(2, &["n2"]));
        let m = Arc::new(message(b"1", 1));
        assert!(holds.hold("a", "n2", &m) && holds.hold("b", "n2", &m));
        holds.hold_ack(&[a.clone(), b.clone()], ack("n2", 7));
        assert!(
            holds.release("a").expect("on").acks.is_empty(),
            "b does not have it yet"
        );
        assert_eq!(holds.client(2), Some(b.clone()));
        assert_eq!(holds.release("b").expect("on").acks, vec![ack("n2", 7)]);
    }

    #[test]
    fn a_new_hold_of_the_same_session_ends_the_previous_one_and_none_is_kept_for_no_node() {
        let mut holds = OrderHolds::default();
        let c: Arc<str> = Arc::from("c");
        holds.start(&c, &order(1, &["n2"]));
        let m = Arc::new(message(b"1", 1));
        holds.hold("c", "n2", &m);
        let previous = holds.start(&c, &order(2, &["n3"])).expect("the first hold ends");
        assert_eq!(previous.messages, vec![m.clone()]);
        assert!(holds.passed(1, "n2").is_none(), "the old token is gone");
        assert_eq!(holds.passed(2, "n3").map(|(client, _)| client), Some(c.clone()));
        assert!(holds.start(&c, &order(3, &[])).is_none());
        assert!(holds.is_empty(), "nothing to wait for: no hold");
    }

    #[test]
    fn a_second_copy_of_a_qos2_message_is_a_repeat_within_the_window_only() {
        let mut recent = RecentQos2::default();
        let c: Arc<str> = Arc::from("c");
        let held = [message(b"held", 2), message(b"qos1", 1)];
        recent.start(&c, held.iter(), std::iter::empty(), 1_000);
        assert!(
            recent.is_repeat("c", &message(b"held", 2), 1_000),
            "held at the install"
        );
        assert!(!recent.is_repeat("c", &message(b"new", 2), 1_000));
        assert!(recent.is_repeat("c", &message(b"new", 2), 1_001), "given once already");
        assert!(
            !recent.is_repeat("c", &message(b"qos1", 2), 1_001),
            "QoS 1 ones are not recorded"
        );
        assert!(!recent.is_repeat("other", &message(b"held", 2), 1_001));
        assert!(!recent.is_repeat("c", &message(b"held", 2), 1_000 + DEDUP_WINDOW_MS));
        recent.start(
            &Arc::from("d"),
            std::iter::empty(),
            std::iter::empty(),
            1_000 + DEDUP_WINDOW_MS,
        );
        assert_eq!(recent.by_client.len(), 1, "ended windows are dropped");
    }
}
