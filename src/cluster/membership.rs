//! Who is in the cluster, as this node sees it: a plain state machine driven by events
//! (a peer connected, something arrived from it, its connection broke, time passed) that
//! answers with what changed. No sockets and no clock of its own, so tests drive it directly.
//!
//! Failure detection follows the configuration: a peer silent for the heartbeat timeout is
//! down; with the TCP health check on, a peer whose connection breaks is down at once. A peer
//! that comes back after being down needs a merge; one never seen (or that left on purpose)
//! joins.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::NodeId;

/// The reason given when a node leaves on purpose.
pub const LEFT: &str = "it left the cluster";

/// How long a node that said it is leaving is not taken back: its links may reconnect while
/// it finishes shutting down, and it must not rejoin then (it would be "back" with sessions
/// that moved away). A restarted node has a new id; one restarted with `--recovery` keeps its
/// id and is taken back after this.
const DEPARTED_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureDetection {
    /// `None` when the heartbeat is disabled.
    pub heartbeat_timeout: Option<Duration>,
    pub health_check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Alive,
    /// Down but remembered: if it comes back, it merges.
    Down,
}

#[derive(Debug)]
struct Peer {
    address: String,
    state: State,
    last_heard: Instant,
}

/// A change the rest of the node acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The peer is in the cluster; `merge` when it was down before (a healed partition or a
    /// restarted node), else it is joining.
    Up { node: NodeId, merge: bool },
    /// The peer is out of the cluster.
    Down { node: NodeId, why: &'static str },
}

#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    detection: FailureDetection,
    peers: BTreeMap<NodeId, Peer>,
    /// Nodes that left on purpose, and when.
    departed: BTreeMap<NodeId, Instant>,
}

impl Membership {
    pub fn new(me: NodeId, detection: FailureDetection) -> Membership {
        Membership {
            me,
            detection,
            peers: BTreeMap::new(),
            departed: BTreeMap::new(),
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Nodes in the cluster, this one included.
    pub fn size(&self) -> usize {
        1 + self.alive().count()
    }

    pub fn alive(&self) -> impl Iterator<Item = &NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state == State::Alive)
            .map(|(id, _)| id)
    }

    pub fn is_alive(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|p| p.state == State::Alive)
    }

    pub fn address_of(&self, node: &NodeId) -> Option<&str> {
        self.peers.get(node).map(|p| p.address.as_str())
    }

    /// Addresses of the alive peers (gossiped so others can connect to them).
    pub fn alive_addresses(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.state == State::Alive)
            .map(|p| p.address.clone())
            .collect()
    }

    /// A connection to `node` completed its handshake.
    pub fn connected(&mut self, node: &NodeId, address: &str, now: Instant) -> Option<Change> {
        if *node == self.me {
            return None;
        }
        self.departed.retain(|_, at| now.duration_since(*at) < DEPARTED_FOR);
        if self.departed.contains_key(node) {
            return None;
        }
        match self.peers.get_mut(node) {
            Some(peer) if peer.state == State::Alive => {
                peer.last_heard = now;
                peer.address = address.to_owned();
                None
            }
            Some(peer) => {
                peer.state = State::Alive;
                peer.last_heard = now;
                peer.address = address.to_owned();
                Some(Change::Up {
                    node: node.clone(),
                    merge: true,
                })
            }
            None => {
                let peer = Peer {
                    address: address.to_owned(),
                    state: State::Alive,
                    last_heard: now,
                };
                self.peers.insert(node.clone(), peer);
                Some(Change::Up {
                    node: node.clone(),
                    merge: false,
                })
            }
        }
    }

    /// Anything arrived from `node`.
    pub fn heard(&mut self, node: &NodeId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(node) {
            peer.last_heard = now;
        }
    }

    /// A connection with `node` broke (closed, reset, failed to write).
    pub fn connection_lost(&mut self, node: &NodeId) -> Option<Change> {
        if !self.detection.health_check {
            return None;
        }
        self.mark_down(node, "its connection closed (TCP health check)")
    }

    /// The peer said it is leaving: it is forgotten, so a later return (after
    /// [`DEPARTED_FOR`]) is a join.
    pub fn left(&mut self, node: &NodeId, now: Instant) -> Option<Change> {
        let was_alive = self.is_alive(node);
        self.peers.remove(node);
        self.departed.insert(node.clone(), now);
        was_alive.then(|| Change::Down {
            node: node.clone(),
            why: LEFT,
        })
    }

    /// Time passed: the next peer silent for the heartbeat timeout is down. The caller applies
    /// each change before it asks again: while one departure is handled, a peer not yet found
    /// silent still counts as alive, so its own departure, handled next, takes over what it was
    /// to adopt and was owed (both marked down at once, a forward owed to the first one's
    /// sessions went to neither takeover and was lost).
    pub fn tick(&mut self, now: Instant) -> Option<Change> {
        let timeout = self.detection.heartbeat_timeout?;
        let silent = self
            .peers
            .iter()
            .find(|(_, p)| p.state == State::Alive && now.saturating_duration_since(p.last_heard) > timeout)
            .map(|(id, _)| id.clone())?;
        self.mark_down(&silent, "no heartbeat within the timeout")
    }

    fn mark_down(&mut self, node: &NodeId, why: &'static str) -> Option<Change> {
        let peer = self.peers.get_mut(node)?;
        if peer.state != State::Alive {
            return None;
        }
        peer.state = State::Down;
        Some(Change::Down {
            node: node.clone(),
            why,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::from(s)
    }

    fn membership(health_check: bool) -> Membership {
        let detection = FailureDetection {
            heartbeat_timeout: Some(Duration::from_secs(9)),
            health_check,
        };
        Membership::new(id("me"), detection)
    }

    #[test]
    fn join_then_merge_after_down() {
        let t0 = Instant::now();
        let mut m = membership(true);
        assert_eq!(
            m.connected(&id("b"), "b:8000", t0),
            Some(Change::Up {
                node: id("b"),
                merge: false
            })
        );
        assert_eq!(m.size(), 2);
        assert_eq!(
            m.connected(&id("b"), "b:8000", t0),
            None,
            "a second connection changes nothing"
        );
        assert!(matches!(m.connection_lost(&id("b")), Some(Change::Down { .. })));
        assert_eq!(m.size(), 1);
        assert_eq!(
            m.connected(&id("b"), "b:8000", t0),
            Some(Change::Up {
                node: id("b"),
                merge: true
            })
        );
    }

    /// The Core applies each departure before the next is found (see `tick`).
    #[test]
    fn silent_peers_go_one_at_a_time() {
        let t0 = Instant::now();
        let mut m = membership(false);
        m.connected(&id("b"), "b:8000", t0);
        m.connected(&id("c"), "c:8000", t0);
        let later = t0 + Duration::from_secs(10);
        assert!(matches!(m.tick(later), Some(Change::Down { .. })));
        assert_eq!(
            m.size(),
            2,
            "the other silent peer is alive while the first departure is handled"
        );
        assert!(matches!(m.tick(later), Some(Change::Down { .. })));
        assert_eq!(m.size(), 1);
        assert_eq!(m.tick(later), None);
    }

    #[test]
    fn heartbeat_timeout_marks_down() {
        let t0 = Instant::now();
        let mut m = membership(false);
        m.connected(&id("b"), "b:8000", t0);
        m.connected(&id("c"), "c:8000", t0);
        m.heard(&id("c"), t0 + Duration::from_secs(8));
        assert!(m.tick(t0 + Duration::from_secs(9)).is_none(), "not before the timeout");
        let change = m.tick(t0 + Duration::from_millis(9_001));
        assert_eq!(
            change,
            Some(Change::Down {
                node: id("b"),
                why: "no heartbeat within the timeout"
            })
        );
        assert!(m.is_alive(&id("c")));
    }

    #[test]
    fn without_health_check_a_closed_connection_waits_for_the_timeout() {
        let t0 = Instant::now();
        let mut m = membership(false);
        m.connected(&id("b"), "b:8000", t0);
        assert_eq!(m.connection_lost(&id("b")), None);
        assert!(m.is_alive(&id("b")));
    }

    #[test]
    fn leaving_is_forgotten_so_return_is_a_join() {
        let t0 = Instant::now();
        let mut m = membership(true);
        m.connected(&id("b"), "b:8000", t0);
        assert!(m.left(&id("b"), t0).is_some());
        assert_eq!(
            m.connected(&id("b"), "b:8000", t0 + Duration::from_secs(1)),
            None,
            "not while it finishes shutting down"
        );
        assert!(!m.is_alive(&id("b")));
        assert_eq!(
            m.connected(&id("b"), "b:8000", t0 + DEPARTED_FOR),
            Some(Change::Up {
                node: id("b"),
                merge: false
            })
        );
    }

    #[test]
    fn own_id_is_ignored() {
        let mut m = membership(true);
        assert_eq!(m.connected(&id("me"), "me:8000", Instant::now()), None);
        assert_eq!(m.size(), 1);
    }
}
