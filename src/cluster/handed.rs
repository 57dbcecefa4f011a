//! Sessions this node just handed to another node's connection (a client reconnected
//! elsewhere), kept for a short while so that nothing published for them meanwhile is lost.
//!
//! The other nodes learn that the session moved from two route updates that travel on two
//! different links: ours saying we no longer have its filters, the new holder's saying it
//! has them. Until both arrived everywhere, a publishing node may still forward a message for
//! the session to us, or to nobody. So for [`WINDOW`] after a handover:
//! - a message that arrives here (or is published here) and matches one of the session's
//!   filters is redirected to the new holder as a `HandedForward` for that client only (it
//!   parks it if the session is not installed there yet, and drops a second copy of a QoS 2
//!   message it got both ways);
//! - our route updates withdrawing the session's filters wait for [`ROUTE_LINGER`], so that the
//!   others keep sending here (and we redirect) rather than to nobody.
//!
//! Order: a publishing node's message redirected through us could reach the new holder after
//! a later one it sent there directly. So the new holder holds what it gets directly from each
//! publishing node until that node's marker came through us (`OrderBarrier` → `OrderMarker` →
//! `OrderPassed`; the holding is in `broker::handover`): every message the publishing node sent us before its
//! marker has been redirected by then, and every later one it sent the new holder directly, so
//! from then on we no longer redirect that node's messages for the session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;
use crate::broker::topic_tree::TopicTree;

/// How long messages for a handed-over session are redirected to its new holder.
pub const WINDOW: Duration = Duration::from_secs(20);
/// How long our routes for a handed-over session's filters stay advertised.
pub const ROUTE_LINGER: Duration = Duration::from_secs(10);

/// One session handed to another node.
struct HandedSession {
    holder: NodeId,
    /// Its plain (not shared) filters.
    filters: Vec<String>,
    until: Instant,
    /// Publishing nodes whose marker came through: they send the new holder directly.
    passed: HashSet<NodeId>,
}

#[derive(Default)]
pub struct Handed {
    by_client: HashMap<Arc<str>, HandedSession>,
    /// The handed sessions' filters, by client.
    tree: TopicTree<Arc<str>, ()>,
    /// How many handed sessions have each filter.
    filters: HashMap<String, usize>,
    /// Filters withdrawn from our routes only after the linger: filter → until when.
    lingering: HashMap<String, Instant>,
    /// Handovers in the order they happened, to expire them.
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Handed {
    /// `client`'s session went to `node`, with these filters (shared ones are left out: their
    /// messages are redelivered by the shared-subscription machinery).
    pub fn handed(&mut self, client: Arc<str>, node: NodeId, filters: Vec<String>, now: Instant) {
        self.forget(&client);
        let plain: Vec<String> = filters
            .into_iter()
            .filter(|f| !matches!(crate::mqtt::topic::parse_shared(f), Ok(Some(_))))
            .collect();
        for f in &plain {
            self.tree.insert(f, client.clone(), ());
            *self.filters.entry(f.clone()).or_insert(0) += 1;
        }
        let until = now + WINDOW;
        self.order.push_back((until, client.clone()));
        let session = HandedSession {
            holder: node,
            filters: plain,
            until,
            passed: HashSet::new(),
        };
        self.by_client.insert(client, session);
    }

    /// The session is back here (or gone for good): no more redirects for it.
    pub fn forget(&mut self, client: &str) {
        if let Some((key, session)) = self.by_client.remove_entry(client) {
            for f in session.filters {
                self.tree.remove(&f, &key);
                if let Some(n) = self.filters.get_mut(&f) {
                    *n -= 1;
                    if *n == 0 {
                        self.filters.remove(&f);
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The handed sessions a message on `topic` from node `origin` is to be redirected for,
    /// each with its new holder. `None`: from no node whose marker counts (a message a dead
    /// node's forwards left behind: never sent to the new holder directly).
    pub fn matching(&self, topic: &str, origin: Option<&str>) -> Vec<(Arc<str>, NodeId)> {
        let mut out: Vec<(Arc<str>, NodeId)> = Vec::new();
        if self.by_client.is_empty() {
            return out;
        }
        self.tree.for_each_match(topic, |_, client, _| {
            if out.iter().any(|(c, _)| c == client) {
                return;
            }
            if let Some(session) = self.by_client.get(client)
                && !origin.is_some_and(|o| session.passed.contains(o))
            {
                out.push((client.clone(), session.holder.clone()));
            }
        });
        out
    }

    /// The new holder of `client`'s session, if it was handed over within the window.
    pub fn holder(&self, client: &str) -> Option<NodeId> {
        self.by_client.get(client).map(|s| s.holder.clone())
    }

    /// `origin`'s marker for `client`'s session came through: its later messages reach the new
    /// holder directly, so they are no longer redirected.
    pub fn passed(&mut self, client: &str, origin: NodeId) {
        if let Some(session) = self.by_client.get_mut(client) {
            session.passed.insert(origin);
        }
    }

    /// Our route for `filter` went away: whether its withdrawal should wait (a handed session
    /// had it). From then on the filter lingers until [`Handed::expire`] lets it go.
    pub fn linger(&mut self, filter: &str, now: Instant) -> bool {
        let handed = self.filters.contains_key(filter);
        if handed {
            self.lingering.insert(filter.to_owned(), now + ROUTE_LINGER);
        }
        handed
    }

    /// Our route for `filter` is back (a subscriber here again): it no longer lingers.
    pub fn route_back(&mut self, filter: &str) {
        self.lingering.remove(filter);
    }

    /// Ends the windows that are over; returns the lingering filters to withdraw now.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        while let Some((until, client)) = self.order.front() {
            if *until > now {
                break;
            }
            // A later handover of the same client has a later deadline of its own.
            if self.by_client.get(client).is_some_and(|s| s.until <= now) {
                let client = client.clone();
                self.forget(&client);
            }
            self.order.pop_front();
        }
        let due: Vec<String> = self
            .lingering
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(f, _)| f.clone())
            .collect();
        for f in &due {
            self.lingering.remove(f);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_message_for_a_handed_session_goes_to_its_new_holder_until_the_window_ends() {
        let now = Instant::now();
        let mut h = Handed::default();
        assert!(h.matching("a/b", Some("p")).is_empty());
        h.handed(id("c1"), id("node-d"), vec!["a/+".into(), "a/#".into()], now);
        h.handed(id("c2"), id("node-e"), vec!["x".into()], now);
        assert_eq!(
            h.matching("a/b", Some("p")),
            vec![(id("c1"), id("node-d"))],
            "once per client"
        );
        assert_eq!(h.matching("x", Some("p")), vec![(id("c2"), id("node-e"))]);
        assert!(h.matching("y", Some("p")).is_empty());
        assert_eq!(h.holder("c1"), Some(id("node-d")));
        assert!(h.expire(now + WINDOW - Duration::from_millis(1)).is_empty());
        assert_eq!(h.matching("a/b", Some("p")).len(), 1);
        h.expire(now + WINDOW);
        assert!(h.matching("a/b", Some("p")).is_empty() && h.is_empty());
    }

    #[test]
    fn a_publishing_node_whose_marker_came_through_is_no_longer_redirected() {
        let now = Instant::now();
        let mut h = Handed::default();
        h.handed(id("c1"), id("d"), vec!["t".into()], now);
        h.handed(id("c2"), id("d"), vec!["t".into()], now);
        h.passed("c1", id("p"));
        h.passed("unknown", id("p"));
        assert_eq!(h.matching("t", Some("p")), vec![(id("c2"), id("d"))]);
        assert_eq!(h.matching("t", Some("q")).len(), 2, "other publishing nodes still are");
        assert_eq!(h.matching("t", None).len(), 2, "and what no marker covers");
        h.handed(id("c1"), id("e"), vec!["t".into()], now);
        assert_eq!(h.matching("t", Some("p")).len(), 2, "a new handover starts over");
    }

    #[test]
    fn a_session_claimed_back_is_forgotten_and_a_second_handover_restarts_the_window() {
        let now = Instant::now();
        let mut h = Handed::default();
        h.handed(id("c1"), id("d"), vec!["t".into()], now);
        h.forget("c1");
        assert!(h.matching("t", Some("p")).is_empty());
        assert!(!h.linger("t", now), "a forgotten session's filters do not linger");
        h.handed(id("c1"), id("d"), vec!["t".into()], now);
        let later = now + Duration::from_secs(5);
        h.handed(id("c1"), id("e"), vec!["t".into()], later);
        h.expire(now + WINDOW);
        assert_eq!(
            h.matching("t", Some("p")),
            vec![(id("c1"), id("e"))],
            "the first deadline does not end the second window"
        );
    }

    #[test]
    fn shared_filters_are_not_redirected() {
        let now = Instant::now();
        let mut h = Handed::default();
        h.handed(id("c1"), id("d"), vec!["$share/g/t".into()], now);
        assert!(h.matching("t", Some("p")).is_empty());
    }

    #[test]
    fn a_handed_sessions_filter_lingers_in_the_routes_unless_a_subscriber_returns() {
        let now = Instant::now();
        let mut h = Handed::default();
        h.handed(id("c1"), id("d"), vec!["t/1".into(), "t/2".into()], now);
        assert!(h.linger("t/1", now) && h.linger("t/2", now));
        assert!(
            !h.linger("other", now),
            "not a handed session's filter: withdrawn at once"
        );
        h.route_back("t/2");
        assert!(h.expire(now + Duration::from_secs(1)).is_empty());
        assert_eq!(h.expire(now + ROUTE_LINGER), vec!["t/1".to_string()]);
        assert!(h.expire(now + ROUTE_LINGER).is_empty(), "withdrawn once");
    }
}
