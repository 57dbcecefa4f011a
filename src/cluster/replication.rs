//! Persistent-session replication, as plain state machines (no I/O):
//!
//! - [`SessionOp`]: one change to a session, as it travels from the home node to its backups.
//! - [`Replicas`]: the copies this node keeps of other nodes' sessions, applying their ops in
//!   order and deciding which copy is promoted when a home node is gone.
//! - [`Waits`]: the acknowledgements a node still waits for (backups that must have committed
//!   a session change, nodes that must have stored a forwarded message), by store ticket, so that
//!   an acknowledgement to a client is written only once every copy it promises exists.
//!
//! Invariant of [`Replicas`]: a replica belongs to one home node at a time. Ops from any other
//! node are ignored unless they start with [`SessionOp::Reset`], which moves the replica to the
//! sender: when a session moves (takeover, promotion), the old home's late deletions cannot
//! erase the new home's copy.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::store::records::{OutgoingRecord, SessionRecord, SubscriptionRecord};
use crate::store::{StoreOp, Ticket};

/// One change to a replicated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionOp {
    /// Starts a full copy: forget what you had, the sender is the home now, and these are the
    /// session's backups in rank order (the first live one promotes the copy if the home dies).
    Reset {
        backups: Vec<String>,
    },
    /// The backup set changed (the copy stays).
    Backups(Vec<String>),
    PutSession(SessionRecord),
    /// The session ended (or moved away): forget the copy.
    DeleteSession,
    PutSubscription(String, SubscriptionRecord),
    DeleteSubscription(String),
    /// A message queued or in flight, by the home's sequence number.
    PutOutgoing(u64, OutgoingRecord),
    DeleteOutgoing(u64),
    PutIncomingQos2(u16),
    DeleteIncomingQos2(u16),
}

impl SessionOp {
    /// The session op of a store op, with its client id; `None` for other ops (retained).
    pub fn of(op: &StoreOp) -> Option<(&Arc<str>, SessionOp)> {
        Some(match op {
            StoreOp::PutSession(c, r) => (c, SessionOp::PutSession(r.clone())),
            StoreOp::DeleteSession(c) => (c, SessionOp::DeleteSession),
            StoreOp::PutSubscription(c, f, r) => (c, SessionOp::PutSubscription(f.clone(), *r)),
            StoreOp::DeleteSubscription(c, f) => (c, SessionOp::DeleteSubscription(f.clone())),
            StoreOp::PutOutgoing(c, s, r) => (c, SessionOp::PutOutgoing(*s, r.clone())),
            StoreOp::DeleteOutgoing(c, s) => (c, SessionOp::DeleteOutgoing(*s)),
            StoreOp::PutIncomingQos2(c, p) => (c, SessionOp::PutIncomingQos2(*p)),
            StoreOp::DeleteIncomingQos2(c, p) => (c, SessionOp::DeleteIncomingQos2(*p)),
            _ => return None,
        })
    }
}

/// A copy of another node's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub home: NodeId,
    /// The session's backups when the home last told us, best ranked first.
    pub backups: Vec<NodeId>,
    /// `None` until the home's `PutSession` arrived (a copy built from deltas only).
    pub record: Option<SessionRecord>,
    pub subscriptions: BTreeMap<String, SubscriptionRecord>,
    /// By the home's sequence number: queued and in-flight messages, oldest first.
    pub outgoing: BTreeMap<u64, OutgoingRecord>,
    pub incoming_qos2: BTreeSet<u16>,
}

impl Replica {
    pub fn new(home: NodeId) -> Replica {
        Replica {
            home,
            backups: Vec::new(),
            record: None,
            subscriptions: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            incoming_qos2: BTreeSet::new(),
        }
    }
}

/// The replicas this node holds, by client id.
#[derive(Debug, Default)]
pub struct Replicas {
    map: HashMap<Arc<str>, Replica>,
    /// Copies whose home was handing the session back to another node after a partition
    /// (`SessionHandedBack`), with that node: kept until the merge is acknowledged, and not
    /// adopted if the home dies meanwhile (see `merge_acks`). In memory only.
    handed_back: HashMap<Arc<str>, NodeId>,
    /// Marked copies set aside when the session's new home sent its own (`Reset`): still kept
    /// until their old home says the merge is done, or dies. In memory only.
    aside: HashMap<Arc<str>, Replica>,
}

impl Replicas {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, client: &str) -> Option<&Replica> {
        self.map.get(client)
    }

    /// Applies ops from `from` for `client`, in order. Returns the store ops that put the same
    /// change on this node's disk (the replica tables).
    pub fn apply(&mut self, from: &NodeId, client: &Arc<str>, ops: Vec<SessionOp>) -> Vec<StoreOp> {
        let mut store = Vec::new();
        for op in ops {
            if let SessionOp::Reset { backups } = &op {
                tracing::debug!(%client, %from, ?backups, "a session copy starts");
                if self.handed_back.remove(client).is_some()
                    && let Some(old) = self.map.remove(client)
                    && old.home != *from
                {
                    tracing::debug!(%client, home = %old.home, "a copy being handed back is set aside");
                    self.aside.insert(client.clone(), old);
                }
                let mut replica = Replica::new(from.clone());
                replica.backups = backups.iter().map(|b| Arc::from(b.as_str())).collect();
                self.map.insert(client.clone(), replica);
                store.push(StoreOp::ReplicaReset(client.clone(), from.clone(), backups.clone()));
                continue;
            }
            // A copy starts with the home's `Reset`: ops for a copy we do not hold are late ones
            // (queued to us before a partition, say, while we took the session over). A copy
            // made of them would lack the session and still name us its heir.
            // The old home's "forget it" ends a copy set aside.
            if matches!(op, SessionOp::DeleteSession) && self.aside.get(client).is_some_and(|r| r.home == *from) {
                tracing::debug!(%client, %from, "a copy set aside ends");
                self.aside.remove(client);
                continue;
            }
            let Some(replica) = self.map.get_mut(client) else {
                continue;
            };
            if replica.home != *from {
                // An old home's late op: the copy belongs to another node now.
                continue;
            }
            match &op {
                SessionOp::Reset { .. } => {}
                SessionOp::Backups(b) => replica.backups = b.iter().map(|b| Arc::from(b.as_str())).collect(),
                SessionOp::PutSession(r) => replica.record = Some(r.clone()),
                SessionOp::DeleteSession => {
                    tracing::debug!(%client, %from, "a session copy ends");
                    self.map.remove(client);
                    self.handed_back.remove(client);
                    store.push(StoreOp::ReplicaDelete(client.clone()));
                    continue;
                }
                SessionOp::PutSubscription(f, r) => {
                    replica.subscriptions.insert(f.clone(), *r);
                }
                SessionOp::DeleteSubscription(f) => {
                    replica.subscriptions.remove(f);
                }
                SessionOp::PutOutgoing(seq, r) => {
                    replica.outgoing.insert(*seq, r.clone());
                }
                SessionOp::DeleteOutgoing(seq) => {
                    replica.outgoing.remove(seq);
                }
                SessionOp::PutIncomingQos2(p) => {
                    replica.incoming_qos2.insert(*p);
                }
                SessionOp::DeleteIncomingQos2(p) => {
                    replica.incoming_qos2.remove(p);
                }
            }
            store.push(StoreOp::Replica(client.clone(), op));
        }
        store
    }

    /// Whether this node is the one to take over `client`'s copy: its home is not alive, and
    /// this node is the first alive one among the session's backups (or the copy names none).
    pub fn is_heir(&self, client: &str, me: &NodeId, alive: &HashSet<NodeId>) -> bool {
        let Some(replica) = self.map.get(client) else {
            return false;
        };
        if alive.contains(&replica.home) || replica.home == *me {
            return false;
        }
        match replica.backups.iter().find(|b| *b == me || alive.contains(*b)) {
            Some(first) => first == me,
            None => true,
        }
    }

    /// The copies this node is to take over (see [`Replicas::is_heir`]).
    pub fn orphans(&self, me: &NodeId, alive: &HashSet<NodeId>) -> Vec<Arc<str>> {
        let mut clients: Vec<Arc<str>> = self
            .map
            .keys()
            .filter(|c| self.is_heir(c, me, alive))
            .cloned()
            .collect();
        clients.sort();
        clients
    }

    /// Our copies of `home`'s sessions, with their backup lists and whether they are whole
    /// (for the debug log of a takeover).
    pub fn copies_of(&self, home: &NodeId) -> Vec<(Arc<str>, Vec<NodeId>, bool)> {
        self.map
            .iter()
            .filter(|(_, r)| r.home == *home)
            .map(|(c, r)| (c.clone(), r.backups.clone(), r.record.is_some()))
            .collect()
    }

    /// Removes a copy (it becomes a session here, or was handed to a connecting client).
    pub fn take(&mut self, client: &str) -> Option<Replica> {
        tracing::debug!(%client, "a session copy is taken");
        self.handed_back.remove(client);
        self.map.remove(client)
    }

    /// `from`, the home of our copy of `client`, is handing the session back to `to`. Returns
    /// whether we hold such a copy.
    pub fn mark_handed_back(&mut self, from: &NodeId, client: &str, to: NodeId) -> bool {
        match self.map.get_key_value(client) {
            Some((key, replica)) if replica.home == *from => {
                self.handed_back.insert(key.clone(), to);
                true
            }
            _ => false,
        }
    }

    /// Takes the copies set aside (see `aside`) whose home is `home`.
    pub fn take_aside_of(&mut self, home: &NodeId) -> Vec<(Arc<str>, Replica)> {
        let clients: Vec<Arc<str>> = self
            .aside
            .iter()
            .filter(|(_, r)| r.home == *home)
            .map(|(c, _)| c.clone())
            .collect();
        clients
            .into_iter()
            .filter_map(|c| self.aside.remove(&c).map(|r| (c, r)))
            .collect()
    }

    /// Whether our copy of `client` is one its home was handing back (see `mark_handed_back`).
    pub fn is_handed_back(&self, client: &str) -> bool {
        self.handed_back.contains_key(client)
    }
}

/// What a request asks of the nodes it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Commit session ops to a copy: answered after the receiver's disk write only.
    Session,
    /// Store a forwarded message: answered after the receiver's disk write and its own
    /// `Session` requests (its sessions' backups), never after its `Forward` requests — so
    /// that two nodes forwarding to each other cannot wait on each other in a circle.
    Forward,
}

/// Acknowledgements still outstanding, and the store tickets they hold back.
///
/// A request (a `SessionOps` or acknowledged `Forward` message, by its sequence number) is
/// [`Waits::open`]ed with the nodes that must answer before it is sent, then [`Waits::bind`]ed to
/// the store ticket of the operation that made it. A ticket is done when no request bound to it
/// or to an earlier ticket is still open: tickets complete in order, like the store's.
#[derive(Debug, Default)]
pub struct Waits {
    requests: HashMap<u64, (Option<Ticket>, HashSet<NodeId>, Kind)>,
    /// Open requests per ticket: `Session` ones, and `Forward` ones.
    tickets: [BTreeMap<Ticket, usize>; 2],
}

fn level(kind: Kind) -> usize {
    match kind {
        Kind::Session => 0,
        Kind::Forward => 1,
    }
}

impl Waits {
    /// A request `seq` sent to `nodes`, each of which must acknowledge it.
    pub fn open(&mut self, seq: u64, kind: Kind, nodes: impl IntoIterator<Item = NodeId>) {
        let nodes: HashSet<NodeId> = nodes.into_iter().collect();
        if !nodes.is_empty() {
            self.requests.insert(seq, (None, nodes, kind));
        }
    }

    /// Ties request `seq` to `ticket`: the ticket is not done while the request is open.
    pub fn bind(&mut self, seq: u64, ticket: Ticket) {
        if let Some((bound @ None, _, kind)) = self.requests.get_mut(&seq) {
            *bound = Some(ticket);
            *self.tickets[level(*kind)].entry(ticket).or_insert(0) += 1;
        }
    }

    /// Request `seq` now waits for `to` instead of `from` (a forward to a dead node that is
    /// parked for its heirs: see [`super::takeover`]).
    pub fn retarget(&mut self, seq: u64, from: &NodeId, to: NodeId) {
        if let Some((_, nodes, _)) = self.requests.get_mut(&seq)
            && nodes.remove(from)
        {
            nodes.insert(to);
        }
    }

    /// `node` acknowledged `seq`. Returns whether a request closed (a ticket may be done).
    pub fn ack(&mut self, node: &NodeId, seq: u64) -> bool {
        let Some((_, nodes, _)) = self.requests.get_mut(&seq) else {
            return false;
        };
        nodes.remove(node);
        if nodes.is_empty() {
            return self.close(seq);
        }
        false
    }

    /// `node` is gone: nothing waits for it any more. Returns whether a request closed.
    pub fn drop_node(&mut self, node: &NodeId) -> bool {
        let emptied: Vec<u64> = self
            .requests
            .iter_mut()
            .filter_map(|(seq, (_, nodes, _))| (nodes.remove(node) && nodes.is_empty()).then_some(*seq))
            .collect();
        let mut changed = false;
        for seq in emptied {
            changed |= self.close(seq);
        }
        changed
    }

    fn close(&mut self, seq: u64) -> bool {
        let Some((ticket, _, kind)) = self.requests.remove(&seq) else {
            return false;
        };
        // An unbound request (a rebalance's) has no ticket, but someone may wait for it.
        let Some(ticket) = ticket else { return true };
        let tickets = &mut self.tickets[level(kind)];
        if let Some(n) = tickets.get_mut(&ticket) {
            *n -= 1;
            if *n == 0 {
                tickets.remove(&ticket);
            }
        }
        true
    }

    /// Whether every request of `kind` (and, for `Forward`, of `Session` too) bound up to
    /// `ticket` is acknowledged.
    pub fn done(&self, ticket: Ticket, kind: Kind) -> bool {
        self.tickets[..=level(kind)]
            .iter()
            .all(|t| t.first_key_value().is_none_or(|(t, _)| *t > ticket))
    }

    /// Nothing is outstanding at all.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    pub fn open_requests(&self) -> usize {
        self.requests.len()
    }

    /// Whether request `seq` still waits for an acknowledgement.
    pub fn is_open(&self, seq: u64) -> bool {
        self.requests.contains_key(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        Arc::from(s)
    }

    fn alive(ids: &[&str]) -> HashSet<NodeId> {
        ids.iter().map(|s| id(s)).collect()
    }

    fn record() -> SessionRecord {
        SessionRecord {
            expiry_interval: 300,
            disconnected_at_ms: None,
            will: None,
        }
    }

    fn sub() -> SubscriptionRecord {
        SubscriptionRecord {
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        }
    }

    #[test]
    fn tickets_complete_in_order_and_a_dead_node_is_not_waited_for() {
        let mut w = Waits::default();
        w.open(1, Kind::Session, [id("b"), id("c")]);
        w.bind(1, 10);
        w.open(2, Kind::Session, [id("b")]);
        w.bind(2, 11);
        assert!(!w.done(10, Kind::Forward) && !w.done(11, Kind::Forward));
        assert!(w.done(9, Kind::Forward), "earlier tickets wait for nothing");
        assert!(!w.ack(&id("b"), 1), "c still owes an ack");
        assert!(w.ack(&id("b"), 2));
        assert!(!w.done(11, Kind::Forward), "11 waits for 10 before it");
        assert!(w.drop_node(&id("c")));
        assert!(w.done(10, Kind::Forward) && w.done(11, Kind::Forward));
        assert!(w.is_idle());
        assert!(!w.ack(&id("b"), 1), "a late ack is harmless");
    }

    /// A forward's acknowledgement waits for session copies, never for other forwards.
    #[test]
    fn forwards_wait_for_sessions_but_not_the_other_way_round() {
        let mut w = Waits::default();
        w.open(1, Kind::Forward, [id("b")]);
        w.bind(1, 1);
        w.open(2, Kind::Session, [id("c")]);
        w.bind(2, 2);
        assert!(!w.done(2, Kind::Session) && w.done(1, Kind::Session));
        assert!(!w.done(1, Kind::Forward));
        w.ack(&id("c"), 2);
        assert!(
            w.done(5, Kind::Session),
            "the open forward does not hold session tickets back"
        );
        assert!(!w.done(5, Kind::Forward));
        w.ack(&id("b"), 1);
        assert!(w.done(5, Kind::Forward));
    }

    #[test]
    fn an_ack_before_binding_counts() {
        let mut w = Waits::default();
        w.open(5, Kind::Session, [id("b")]);
        w.ack(&id("b"), 5);
        w.bind(5, 3);
        assert!(w.done(3, Kind::Forward));
        w.open(6, Kind::Session, []);
        w.bind(6, 4);
        assert!(w.done(4, Kind::Forward), "a request to nobody waits for nothing");
    }

    #[test]
    fn replicas_follow_their_home_and_ignore_an_old_home() {
        let mut r = Replicas::default();
        let c: Arc<str> = Arc::from("c1");
        let (a, b) = (id("a"), id("b"));
        r.apply(
            &a,
            &c,
            vec![
                SessionOp::Reset {
                    backups: vec!["me".into()],
                },
                SessionOp::PutSession(record()),
                SessionOp::PutSubscription("t/#".into(), sub()),
            ],
        );
        let stored = r.apply(&a, &c, vec![SessionOp::DeleteSubscription("x".into())]);
        assert_eq!(stored.len(), 1, "every applied op goes to disk");
        assert_eq!(r.get("c1").unwrap().subscriptions.len(), 1);
        // The session moves to b, then a's late deletion arrives.
        r.apply(
            &b,
            &c,
            vec![SessionOp::Reset { backups: vec![] }, SessionOp::PutSession(record())],
        );
        assert!(r.apply(&a, &c, vec![SessionOp::DeleteSession]).is_empty());
        assert_eq!(r.get("c1").unwrap().home, b);
        assert!(r.get("c1").unwrap().subscriptions.is_empty(), "reset forgot a's copy");
        r.apply(&b, &c, vec![SessionOp::DeleteSession]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_copy_marked_handed_back_is_marked_only_by_its_home_until_it_changes_hands() {
        let mut r = Replicas::default();
        let c: Arc<str> = Arc::from("c1");
        let (home, other, to) = (id("home"), id("other"), id("to"));
        let reset = || SessionOp::Reset {
            backups: vec!["me".into()],
        };
        r.mark_handed_back(&home, "c1", to.clone());
        assert!(!r.is_handed_back("c1"), "no copy, no mark");
        r.apply(&home, &c, vec![reset(), SessionOp::PutSession(record())]);
        r.mark_handed_back(&other, "c1", to.clone());
        assert!(!r.is_handed_back("c1"), "only the copy's home marks it");
        r.mark_handed_back(&home, "c1", to.clone());
        assert!(r.is_handed_back("c1"));
        r.apply(&home, &c, vec![SessionOp::DeleteSession]);
        assert!(
            !r.is_handed_back("c1"),
            "the merge was acknowledged: the copy and its mark go"
        );
        r.apply(&home, &c, vec![reset()]);
        r.mark_handed_back(&home, "c1", to.clone());
        r.apply(&to, &c, vec![reset()]);
        assert!(!r.is_handed_back("c1"), "a new home's copy is not marked");
        r.mark_handed_back(&to, "c1", home.clone());
        assert!(r.take("c1").is_some());
        assert!(!r.is_handed_back("c1"), "taken with its mark");
    }

    #[test]
    fn a_copy_being_handed_back_is_set_aside_by_the_new_homes_copy_until_its_old_home_ends_it() {
        let mut r = Replicas::default();
        let c: Arc<str> = Arc::from("c1");
        let (old, new) = (id("old"), id("new"));
        let reset = || SessionOp::Reset {
            backups: vec!["me".into()],
        };
        r.apply(&old, &c, vec![reset(), SessionOp::PutSession(record())]);
        r.mark_handed_back(&old, "c1", new.clone());
        r.apply(&new, &c, vec![reset(), SessionOp::PutSession(record())]);
        assert_eq!(r.get("c1").unwrap().home, new, "the new home's copy is the copy");
        assert!(!r.is_handed_back("c1"));
        assert!(r.take_aside_of(&new).is_empty());
        let aside = r.take_aside_of(&old);
        assert_eq!(aside.len(), 1, "the old copy waits for the merge");
        assert!(aside[0].1.record.is_some());
        // Set aside again, then ended by its old home once the merge is acknowledged.
        r.apply(&old, &c, vec![reset()]);
        r.mark_handed_back(&old, "c1", new.clone());
        r.apply(&new, &c, vec![reset()]);
        r.apply(&old, &c, vec![SessionOp::DeleteSession]);
        assert!(r.take_aside_of(&old).is_empty());
        assert_eq!(r.get("c1").unwrap().home, new, "the new home's copy stays");
    }

    #[test]
    fn the_first_live_backup_is_the_heir() {
        let mut r = Replicas::default();
        let c: Arc<str> = Arc::from("c1");
        let reset = SessionOp::Reset {
            backups: vec!["x".into(), "me".into(), "y".into()],
        };
        r.apply(&id("home"), &c, vec![reset]);
        let me = id("me");
        assert!(!r.is_heir("c1", &me, &alive(&["home", "x", "y"])), "the home lives");
        assert!(!r.is_heir("c1", &me, &alive(&["x", "y"])), "x ranks first");
        assert!(r.is_heir("c1", &me, &alive(&["y"])), "x is gone too");
        assert_eq!(r.orphans(&me, &alive(&["y"])), vec![c.clone()]);
        assert!(r.take("c1").is_some());
        assert!(r.orphans(&me, &alive(&[])).is_empty());
    }
}
