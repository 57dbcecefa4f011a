//! QoS 2 exactly once across a partition merge.
//!
//! The copy of a session that the other side of a partition took over holds what the session
//! held when the link broke, as far as the replication had got: a completion (PUBCOMP) here in
//! the last moments before the cut may never have reached it. This side then goes on
//! delivering what it held. Merged back after the heal, the copy would bring those messages
//! again: for QoS 2, a second delivery [MQTT-4.3.3]. So:
//! - every QoS 2 message a persistent session here completes is remembered for a short while
//!   (the window: how long the other side may take to find us dead, plus a margin);
//! - when a node goes down, each persistent session notes the QoS 2 messages it holds and
//!   those it completed within the window; a session adopted from a copy notes the copy's
//!   (its home kept them too). Notes last [`NOTED_FOR`];
//! - a merge skips the copy's QoS 2 messages its session noted: this side had them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// How long a session's notes wait for a merge (as long as a returning node is waited for,
/// `cluster::merge_holds::LOST_FOR`).
pub const NOTED_FOR_MS: u64 = 600_000;

#[derive(Default)]
pub(super) struct MergeDedup {
    /// How long completions are remembered (0: not in a cluster, nothing is).
    window_ms: u64,
    /// Completed QoS 2 messages: (when, client, identity), oldest first.
    recent: VecDeque<(u64, Arc<str>, u64)>,
    /// Per session: until when, and the identities a merged copy must not bring again.
    noted: HashMap<Arc<str>, (u64, HashSet<u64>)>,
}

impl MergeDedup {
    /// In a cluster: completions are remembered for `window_ms`.
    pub fn set_window(&mut self, window_ms: u64) {
        self.window_ms = window_ms;
    }

    /// `client`'s persistent session completed the QoS 2 delivery of message `id`
    /// (`handover::identity`).
    pub fn completed(&mut self, client: &Arc<str>, id: u64, now: u64) {
        if self.window_ms == 0 {
            return;
        }
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| now.saturating_sub(*at) > self.window_ms)
        {
            self.recent.pop_front();
        }
        self.recent.push_back((now, client.clone(), id));
    }

    /// A node went down, or `client`'s session was adopted from a copy: it had the QoS 2
    /// deliveries `ids` (held, or completed lately: see [`MergeDedup::recent_by_client`]).
    pub fn note(&mut self, client: &Arc<str>, ids: impl Iterator<Item = u64>, now: u64) {
        if self.window_ms == 0 {
            return;
        }
        let mut ids = ids.peekable();
        if ids.peek().is_none() {
            return;
        }
        let entry = self.noted.entry(client.clone()).or_default();
        entry.0 = now + NOTED_FOR_MS;
        entry.1.extend(ids);
    }

    /// Drops the notes whose time is up (once per departure or adoption, not per session).
    pub fn forget_ended(&mut self, now: u64) {
        self.noted.retain(|_, (until, _)| *until > now);
    }

    /// The completions within the window, by client (one pass, for a departure's notes).
    pub fn recent_by_client(&self, now: u64) -> HashMap<Arc<str>, Vec<u64>> {
        let mut by_client: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for (at, client, id) in &self.recent {
            if now.saturating_sub(*at) <= self.window_ms {
                by_client.entry(client.clone()).or_default().push(*id);
            }
        }
        by_client
    }

    /// The QoS 2 deliveries `client`'s session completed within the window.
    pub fn recent_of<'a>(&'a self, client: &'a str) -> impl Iterator<Item = u64> + 'a {
        self.recent
            .iter()
            .filter(move |(_, c, _)| **c == *client)
            .map(|(_, _, id)| *id)
    }

    /// Whether QoS 2 message `id` in a merged copy of `client`'s session is one this side had:
    /// noted, or completed lately (after the heal, a publishing node reached both copies).
    pub fn had(&self, client: &str, id: u64, now: u64) -> bool {
        self.noted
            .get(client)
            .is_some_and(|(until, ids)| *until > now && ids.contains(&id))
            || self
                .recent
                .iter()
                .any(|(at, c, i)| *i == id && **c == *client && now.saturating_sub(*at) <= self.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::handover::identity;
    use crate::broker::message::Message;

    fn message(payload: &'static [u8]) -> Message {
        Message {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(payload),
            qos: 2,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: "p".into(),
            created_ms: 7,
        }
    }

    #[test]
    fn a_merge_skips_what_the_session_held_or_completed_lately_when_the_node_went() {
        let mut dedup = MergeDedup::default();
        let c: Arc<str> = Arc::from("c");
        let [done, old, held] = [b"done", b"old-", b"held"].map(|p| identity(&message(p)));
        dedup.completed(&c, done, 1_000);
        dedup.note(&c, [held].into_iter(), 1_000);
        assert!(!dedup.had("c", held, 1_000), "outside a cluster nothing is remembered");

        dedup.set_window(5_000);
        dedup.completed(&c, old, 1_000);
        dedup.completed(&c, done, 7_000);
        dedup.completed(&Arc::from("other"), held, 7_000);
        let recent = dedup.recent_by_client(7_000).remove(&c).unwrap_or_default();
        dedup.note(&c, [held].into_iter().chain(recent), 7_000);
        assert!(dedup.had("c", held, 8_000) && dedup.had("c", done, 8_000));
        assert!(!dedup.had("c", old, 13_000), "completed before the window");
        assert!(!dedup.had("other", done, 8_000), "per session");
        assert!(!dedup.had("c", held, 7_000 + NOTED_FOR_MS), "notes end");
        let after_the_heal = identity(&message(b"late"));
        dedup.completed(&c, after_the_heal, 9_000);
        assert!(dedup.had("c", after_the_heal, 9_500), "completed lately, noted or not");
        dedup.forget_ended(7_000 + NOTED_FOR_MS);
        assert!(dedup.noted.is_empty(), "ended notes are dropped");
    }
}
