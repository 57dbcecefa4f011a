//! Retained messages with versions. Every topic's retained message carries the [`Timestamp`]
//! of the write that set it; a deletion (an empty retained payload) leaves a tombstone with its
//! version instead of just removing the entry. Nodes merge by one rule for both: the newest
//! version of a topic wins, so after a partition heals a node that missed a deletion cannot
//! bring the old message back, and two writes in the same millisecond still have one winner.
//!
//! Tombstones are kept for [`TOMBSTONE_RETENTION`], then dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::message::Message;
use crate::cluster::hlc::Timestamp;

/// How long a deletion is remembered. A tombstone only matters to a node that still holds an
/// older copy of the message, that is one cut off since before the deletion; after this long
/// such a node is assumed gone or already merged. A partition longer than this can bring a
/// deleted message back (the old copy then meets no tombstone). 24 hours covers any outage an
/// operator lets heal by itself, and tombstones are small (a topic and 20 bytes).
pub const TOMBSTONE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A topic's retained state as nodes exchange it, and as the store reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedEntry {
    pub topic: String,
    pub version: Timestamp,
    /// The message, or `None` for a deletion (a tombstone).
    pub message: Option<Message>,
}

impl RetainedEntry {
    /// The entry for a retained message from a peer or a file that knows no versions: an
    /// empty payload is a deletion, and the version is the message's creation time.
    pub fn from_legacy(message: Message) -> RetainedEntry {
        RetainedEntry {
            topic: message.topic.clone(),
            version: Timestamp::legacy(message.created_ms),
            message: (!message.payload.is_empty()).then_some(message),
        }
    }

    /// The message a peer that knows no versions understands: a deletion is an empty retained
    /// payload, and the creation time is the version's physical time (the closest order it
    /// can compare).
    pub fn to_legacy(&self) -> Message {
        let mut message = self.message.clone().unwrap_or_else(|| Message {
            topic: self.topic.clone(),
            payload: bytes::Bytes::new(),
            qos: 0,
            retain: true,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: String::new(),
            created_ms: 0,
        });
        message.created_ms = self.version.physical_ms;
        message
    }
}

/// What applying an entry changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The topic already has this version or a newer one: nothing changed.
    Stale,
    /// The message is now the topic's retained message.
    Set(Arc<Message>),
    /// The topic is deleted (`was_live`: it had a message until now).
    Deleted { was_live: bool },
}

/// Every topic's retained message or tombstone, by topic.
#[derive(Debug, Default)]
pub struct Retained {
    live: HashMap<String, (Timestamp, Arc<Message>)>,
    tombstones: HashMap<String, Timestamp>,
}

impl Retained {
    /// The newest version known for `topic`, set or deleted.
    pub fn version_of(&self, topic: &str) -> Option<Timestamp> {
        self.live
            .get(topic)
            .map(|(v, _)| *v)
            .or_else(|| self.tombstones.get(topic).copied())
    }

    /// Sets (`Some`) or deletes (`None`) the retained message of `topic` at `version`, unless
    /// the topic already has that version or a newer one. Applying the same entry twice, or
    /// entries in any order, ends in the same state.
    pub fn apply(&mut self, topic: &str, version: Timestamp, message: Option<Arc<Message>>) -> Applied {
        if self.version_of(topic).is_some_and(|current| current >= version) {
            return Applied::Stale;
        }
        match message {
            Some(message) => {
                self.tombstones.remove(topic);
                self.live.insert(topic.to_owned(), (version, message.clone()));
                Applied::Set(message)
            }
            None => {
                let was_live = self.live.remove(topic).is_some();
                self.tombstones.insert(topic.to_owned(), version);
                Applied::Deleted { was_live }
            }
        }
    }

    /// The retained messages (not the tombstones).
    pub fn messages(&self) -> impl Iterator<Item = &Arc<Message>> {
        self.live.values().map(|(_, m)| m)
    }

    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        self.live.get(topic).map(|(_, m)| m)
    }

    /// How many topics have a retained message.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// Every message and tombstone, for a node that joins or merges.
    pub fn entries(&self) -> Vec<RetainedEntry> {
        let live = self.live.iter().map(|(topic, (version, m))| RetainedEntry {
            topic: topic.clone(),
            version: *version,
            message: Some((**m).clone()),
        });
        let dead = self.tombstones.iter().map(|(topic, version)| RetainedEntry {
            topic: topic.clone(),
            version: *version,
            message: None,
        });
        live.chain(dead).collect()
    }

    /// Drops the tombstones older than [`TOMBSTONE_RETENTION`] at `now_ms`; returns their topics.
    pub fn expire_tombstones(&mut self, now_ms: u64) -> Vec<String> {
        let retention = TOMBSTONE_RETENTION.as_millis() as u64;
        let expired: Vec<String> = self
            .tombstones
            .iter()
            .filter(|(_, v)| v.physical_ms.saturating_add(retention) <= now_ms)
            .map(|(t, _)| t.clone())
            .collect();
        for topic in &expired {
            self.tombstones.remove(topic);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(physical_ms: u64, logical: u32, node: u64) -> Timestamp {
        Timestamp {
            physical_ms,
            logical,
            node,
        }
    }

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::retained_for_test(topic, payload, "p", 1))
    }

    fn payload(r: &Retained, topic: &str) -> Option<String> {
        r.get(topic).map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    }

    #[test]
    fn a_newer_set_wins_over_an_older_delete() {
        let mut r = Retained::default();
        assert_eq!(r.apply("a", v(10, 0, 1), None), Applied::Deleted { was_live: false });
        assert!(matches!(
            r.apply("a", v(11, 0, 2), Some(msg("a", "x"))),
            Applied::Set(_)
        ));
        assert_eq!(payload(&r, "a").as_deref(), Some("x"));
        assert_eq!(r.tombstone_count(), 0, "the set replaced the tombstone");
        // The delete arriving late (a healed partition) loses.
        assert_eq!(r.apply("a", v(10, 0, 1), None), Applied::Stale);
        assert_eq!(payload(&r, "a").as_deref(), Some("x"));
    }

    #[test]
    fn a_newer_delete_wins_over_an_older_set() {
        let mut r = Retained::default();
        r.apply("a", v(10, 0, 1), Some(msg("a", "old")));
        assert_eq!(r.apply("a", v(10, 1, 1), None), Applied::Deleted { was_live: true });
        assert_eq!(r.get("a"), None);
        // The node that missed the delete sends its old copy back: the tombstone stops it.
        assert_eq!(r.apply("a", v(10, 0, 1), Some(msg("a", "old"))), Applied::Stale);
        assert_eq!(r.get("a"), None);
        assert_eq!(r.version_of("a"), Some(v(10, 1, 1)));
        // Same millisecond and counter on two nodes: the node breaks the tie, both ways alike.
        assert!(matches!(
            r.apply("a", v(10, 1, 2), Some(msg("a", "n2"))),
            Applied::Set(_)
        ));
        assert_eq!(r.apply("a", v(10, 1, 1), None), Applied::Stale);
    }

    #[test]
    fn equal_versions_are_idempotent() {
        let mut r = Retained::default();
        let set = v(5, 0, 1);
        assert!(matches!(r.apply("a", set, Some(msg("a", "x"))), Applied::Set(_)));
        assert_eq!(r.apply("a", set, Some(msg("a", "x"))), Applied::Stale);
        let del = v(6, 0, 1);
        r.apply("b", del, None);
        assert_eq!(r.apply("b", del, None), Applied::Stale);
        assert_eq!((r.len(), r.tombstone_count()), (1, 1));
    }

    #[test]
    fn any_order_converges() {
        let entries = [
            ("a", v(1, 0, 1), Some("a1")),
            ("a", v(3, 0, 2), None),
            ("a", v(2, 0, 3), Some("a3")),
            ("b", v(1, 0, 1), None),
            ("b", v(1, 0, 2), Some("b2")),
            ("c", v(4, 0, 1), Some("c1")),
        ];
        let mut states = Vec::new();
        // Forward, backward, and a rotation.
        for order in [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 5, 0, 4, 1, 3]] {
            let mut r = Retained::default();
            for i in order {
                let (t, version, p) = entries[i];
                r.apply(t, version, p.map(|p| msg(t, p)));
            }
            let mut e = r.entries();
            e.sort_by(|x, y| x.topic.cmp(&y.topic));
            states.push(e);
        }
        assert!(states.windows(2).all(|w| w[0] == w[1]), "{states:#?}");
        let s = &states[0];
        assert_eq!(s[0].message, None, "a: the delete is newest");
        assert_eq!(s[1].message.as_ref().map(|m| m.payload.clone()), Some("b2".into()));
        assert_eq!(s[2].version, v(4, 0, 1));
    }

    #[test]
    fn tombstones_expire_after_the_retention() {
        let mut r = Retained::default();
        let retention = TOMBSTONE_RETENTION.as_millis() as u64;
        r.apply("old", v(1_000, 0, 1), None);
        r.apply("new", v(5_000, 0, 1), None);
        r.apply("live", v(1, 0, 1), Some(msg("live", "x")));
        assert!(r.expire_tombstones(1_000 + retention - 1).is_empty());
        assert_eq!(r.expire_tombstones(1_000 + retention), vec!["old".to_string()]);
        assert_eq!((r.len(), r.tombstone_count()), (1, 1), "messages never expire this way");
    }

    #[test]
    fn legacy_messages_convert_both_ways() {
        let mut m = (*msg("t", "x")).clone();
        m.created_ms = 42;
        let entry = RetainedEntry::from_legacy(m.clone());
        assert_eq!(entry.version, Timestamp::legacy(42));
        assert_eq!(entry.message.as_ref(), Some(&m));
        m.payload = bytes::Bytes::new();
        let deletion = RetainedEntry::from_legacy(m);
        assert_eq!(deletion.message, None);
        let back = RetainedEntry {
            version: v(99, 3, 7),
            ..deletion
        }
        .to_legacy();
        assert!(back.payload.is_empty() && back.retain && back.topic == "t");
        assert_eq!(back.created_ms, 99);
    }
}
