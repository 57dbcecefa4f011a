//! Order per publisher across a partition merge, on the side of a session's home.
//!
//! While a partition lasts, the other side takes over our sessions from their copies: a
//! publishing node there sends its messages for such a session to the node that adopted it.
//! After the heal, that node hands the session back (`SessionMerge`, merged here behind what
//! the session holds), but the publishing node soon has our routes again and sends us its newer
//! messages directly. Given to the session at once, they would come before the older ones that
//! the merge (or the adopter's redirects, see `cluster::handed`) bring.
//!
//! So what a returning node sends our persistent sessions directly is held from the moment we
//! see it back, before our route snapshot goes to it (the hold itself is
//! `broker::handover::OrderHolds`, one per session). For each session:
//! - its merge comes from the node that adopted it: that node's own held messages follow the
//!   merge at once (one link), and every other returning node's wait for its order marker,
//!   which comes through the adopter behind everything it forwarded there (the barrier of a
//!   handover between live nodes, `cluster::handed`). A merge that came before we saw some
//!   node return sends the barrier when that node's hold starts;
//! - no merge comes: once every node that may still hand something back has said it is done
//!   (`HandBacksDone`, behind its `SessionMerge`s), nobody took the session over, and what was
//!   held is given to it. Nodes we saw go down (not leave) within [`LOST_FOR`] and not yet
//!   back may still return with a merge, so they count too;
//! - a held node goes down again: its messages are let go (it is no longer waited for);
//! - [`MERGE_HOLD_LIMIT`] after the last return or merge, everything still held is given
//!   anyway (late beats lost).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;

/// How long after a return (or a merge) our sessions wait for hand-backs at most.
pub const MERGE_HOLD_LIMIT: Duration = Duration::from_secs(10);
/// How long a node that went down may come back with a merge we wait for.
pub const LOST_FOR: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct MergeHolds {
    /// Nodes that went down (not left), with when: they may come back with merges.
    lost: HashMap<NodeId, Instant>,
    /// Returned nodes that have not yet said they handed back what they took from us.
    owing: HashSet<NodeId>,
    /// Nodes whose `HandBacksDone` came before we saw them return.
    early: HashSet<NodeId>,
    /// The held sessions, with their hold's token.
    held: HashMap<Arc<str>, u64>,
    /// Sessions merged in this period, with the node their copy came from.
    merged: HashMap<Arc<str>, NodeId>,
    /// When this period's holds end at the latest.
    until: Option<Instant>,
}

/// What to do for a session whose hold starts or grows as `node` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum OnReturn {
    /// Hold what `node` sends it until the merge (or the end of the period).
    Hold,
    /// Its copy came from `node` already: what `node` sends it is in order (one link).
    Pass,
    /// Its copy came from this other node: `node`'s marker is to come through it.
    Barrier(NodeId),
}

impl MergeHolds {
    /// `node` went down without leaving: it may come back with a merge.
    pub fn lost(&mut self, node: &NodeId, now: Instant) {
        self.owing.remove(node);
        self.early.remove(node);
        // Its merges were of the partition before: the next heal brings new ones.
        self.merged.retain(|_, from| from != node);
        self.lost.insert(node.clone(), now);
    }

    /// `node` left: nothing more comes from it.
    pub fn left(&mut self, node: &NodeId) -> Vec<u64> {
        self.owing.remove(node);
        self.early.remove(node);
        self.lost.remove(node);
        self.ended()
    }

    /// `node` is back after a partition: until it says it handed back everything, our sessions
    /// hold what it sends them directly (its `HandBacksDone` may have come already).
    pub fn returned(&mut self, node: &NodeId, now: Instant) {
        self.until = Some(now + MERGE_HOLD_LIMIT);
        self.lost.remove(node);
        if !self.early.remove(node) {
            self.owing.insert(node.clone());
        }
    }

    /// The token of `client`'s hold, if it has one.
    pub fn token(&self, client: &str) -> Option<u64> {
        self.held.get(client).copied()
    }

    /// `client`'s hold (`token`) now covers what `node` sends it: what to do about it.
    pub fn holding(&mut self, client: Arc<str>, token: u64, node: &NodeId) -> OnReturn {
        let on = match self.merged.get(&client) {
            None => OnReturn::Hold,
            Some(from) if from == node => OnReturn::Pass,
            Some(from) => OnReturn::Barrier(from.clone()),
        };
        self.held.insert(client, token);
        on
    }

    /// `client`'s copy from the other side came from `from`: its hold's token, if held (it
    /// goes on as an order barrier, and no longer ends with the hand-backs).
    pub fn merged(&mut self, client: &str, from: &NodeId, now: Instant) -> Option<u64> {
        self.merged.insert(Arc::from(client), from.clone());
        let until = now + MERGE_HOLD_LIMIT;
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
        self.token(client)
    }

    /// `client`'s session goes to the other side instead: its hold ends (the token).
    pub fn handed_away(&mut self, client: &str) -> Option<u64> {
        self.held.remove(client)
    }

    /// `node` handed back everything it had taken from us: the holds to end now.
    pub fn handed_back(&mut self, node: &NodeId, now: Instant) -> Vec<u64> {
        if !self.owing.remove(node) {
            self.early.insert(node.clone());
        }
        self.lost.remove(node);
        self.ended_at(now)
    }

    /// The holds still on.
    pub fn tokens(&self) -> Vec<u64> {
        self.held.values().copied().collect()
    }

    /// Every hold, once the limit passed; the period ends.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        self.lost.retain(|_, at| now.duration_since(*at) < LOST_FOR);
        match self.until {
            Some(until) if until <= now => {
                let unmerged = self.held.keys().filter(|c| !self.merged.contains_key(*c)).count();
                if unmerged > 0 && (!self.owing.is_empty() || !self.lost.is_empty()) {
                    tracing::warn!(
                        sessions = unmerged,
                        "not every node handed back our sessions within {}ms after a partition; what the others sent them directly is delivered now",
                        MERGE_HOLD_LIMIT.as_millis()
                    );
                }
                self.until = None;
                self.owing.clear();
                self.early.clear();
                self.merged.clear();
                self.held.drain().map(|(_, token)| token).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The holds of sessions that no merge brought, once no node may bring one any more.
    pub fn ended(&mut self) -> Vec<u64> {
        if !self.owing.is_empty() || !self.lost.is_empty() {
            return Vec::new();
        }
        let merged = &self.merged;
        let ended: Vec<Arc<str>> = self.held.keys().filter(|c| !merged.contains_key(*c)).cloned().collect();
        ended.iter().filter_map(|c| self.held.remove(c)).collect()
    }

    fn ended_at(&mut self, now: Instant) -> Vec<u64> {
        self.lost.retain(|_, at| now.duration_since(*at) < LOST_FOR);
        self.ended()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        Arc::from(n)
    }

    #[test]
    fn unmerged_holds_end_when_every_returning_node_handed_back() {
        let mut holds = MergeHolds::default();
        let now = Instant::now();
        holds.lost(&node("b"), now);
        holds.lost(&node("c"), now);
        holds.returned(&node("b"), now);
        assert_eq!(holds.holding(Arc::from("s1"), 1, &node("b")), OnReturn::Hold);
        assert_eq!(holds.holding(Arc::from("s2"), 2, &node("b")), OnReturn::Hold);
        assert!(
            holds.handed_back(&node("b"), now).is_empty(),
            "c may still come back with a merge"
        );
        holds.returned(&node("c"), now);
        assert_eq!(holds.holding(Arc::from("s1"), 1, &node("c")), OnReturn::Hold);
        assert_eq!(holds.holding(Arc::from("s2"), 2, &node("c")), OnReturn::Hold);
        assert_eq!(holds.merged("s1", &node("c"), now), Some(1), "s1 came back from c");
        assert_eq!(
            holds.handed_back(&node("c"), now),
            vec![2],
            "nobody took s2: it is let go"
        );
        assert_eq!(holds.token("s1"), Some(1), "s1's hold goes on as a barrier");
        assert_eq!(holds.expired(now + MERGE_HOLD_LIMIT), vec![1]);
        assert!(holds.tokens().is_empty());
    }

    #[test]
    fn a_merge_before_a_return_decides_what_that_return_needs() {
        let mut holds = MergeHolds::default();
        let now = Instant::now();
        holds.lost(&node("b"), now);
        holds.lost(&node("c"), now);
        assert_eq!(holds.merged("s", &node("c"), now), None, "not held yet");
        assert!(holds.handed_back(&node("c"), now).is_empty(), "early");
        holds.returned(&node("c"), now);
        assert_eq!(holds.holding(Arc::from("s"), 4, &node("c")), OnReturn::Pass);
        holds.returned(&node("b"), now);
        assert_eq!(
            holds.holding(Arc::from("s"), 4, &node("b")),
            OnReturn::Barrier(node("c")),
            "b's messages may still be on their way through c"
        );
        assert!(
            holds.handed_back(&node("b"), now).is_empty(),
            "merged holds end by their markers"
        );
        assert_eq!(holds.handed_away("s"), Some(4));
        holds.lost(&node("c"), now);
        holds.returned(&node("c"), now);
        assert_eq!(
            holds.holding(Arc::from("s"), 5, &node("c")),
            OnReturn::Hold,
            "a merge of an earlier heal does not count for the next one (flapping links)"
        );
    }

    #[test]
    fn departures_and_the_limit_end_the_waiting() {
        let mut holds = MergeHolds::default();
        let now = Instant::now();
        holds.lost(&node("b"), now);
        holds.returned(&node("b"), now);
        holds.holding(Arc::from("s"), 7, &node("b"));
        holds.lost(&node("b"), now);
        assert!(holds.ended().is_empty(), "b may come back again");
        assert_eq!(holds.left(&node("b")), vec![7], "b left for good: nobody owes");
        holds.lost(&node("c"), now);
        holds.returned(&node("c"), now);
        holds.holding(Arc::from("s"), 8, &node("c"));
        assert!(holds.expired(now + Duration::from_secs(1)).is_empty());
        assert_eq!(holds.expired(now + MERGE_HOLD_LIMIT), vec![8]);
        holds.lost(&node("d"), now);
        assert!(holds.ended_at(now + LOST_FOR).is_empty(), "no hold");
        assert!(holds.lost.is_empty(), "a node lost long ago no longer counts");
    }
}
