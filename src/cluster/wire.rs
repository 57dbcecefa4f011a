//! The cluster protocol on the wire.
//!
//! A connection between two nodes carries frames: a 4-byte big-endian length, then a postcard
//! encoded body. The first frame each way is a [`Hello`] whose layout never changes, so nodes
//! of any release can read it and agree on the highest protocol version both speak; every
//! later frame is a [`Message`] of that version. Everything read from a peer is untrusted: the
//! length is bounded before anything is buffered, and bodies are checked after decoding.

use serde::{Deserialize, Serialize};

use crate::broker::message::Message as MqttMessage;
use crate::broker::{ClaimAnswer, ClaimStamp};
use crate::store::records::WillRecord;

/// Identifies an Apiary cluster connection (and not, say, an HTTP client on the port).
pub const MAGIC: [u8; 8] = *b"APIARY-C";

/// The protocol versions this build speaks. A release must keep speaking the previous one
/// (rolling upgrades).
pub const MIN_VERSION: u16 = 1;
pub const MAX_VERSION: u16 = 1;

/// The largest frame accepted: a maximal MQTT message plus room for the envelope.
pub const MAX_FRAME: usize = 268_435_460 + 64 * 1024;

/// Node ids are short strings made by [`super::node_id`]; anything longer is junk.
pub const MAX_NODE_ID: usize = 64;

/// The first frame on a connection, both ways. Its layout is frozen for all versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 8],
    pub min_version: u16,
    pub max_version: u16,
    /// The sender's cluster id.
    pub node: String,
    /// Where the sender accepts cluster connections (`host:port`, the external address
    /// behind NAT).
    pub address: String,
    /// On the answer: the version chosen, or 0 with `refusal` set.
    pub chosen_version: u16,
    pub refusal: Option<String>,
}

/// Picks the highest version both sides speak.
pub fn negotiate(peer_min: u16, peer_max: u16) -> Option<u16> {
    let high = peer_max.min(MAX_VERSION);
    let low = peer_min.max(MIN_VERSION);
    (high >= low).then_some(high)
}

/// Version 1 messages, after the hellos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Liveness; sent every heartbeat interval.
    Heartbeat,
    /// The addresses of the nodes the sender is connected to, so that a node learns of members
    /// its discovery did not list.
    Members(Vec<String>),
    /// The sender now has local subscribers for these filters.
    RoutesAdded(Vec<String>),
    /// The sender no longer has local subscribers for these filters.
    RoutesRemoved(Vec<String>),
    /// Anti-entropy: how many filters the sender has and a hash of them.
    RouteDigest {
        count: u64,
        hash: u64,
    },
    /// Asks for the full filter set (after a digest mismatch).
    RouteSnapshotRequest,
    /// The sender's complete filter set, replacing what the receiver had for it.
    RouteSnapshot(Vec<String>),
    /// A message for the receiver's local subscribers, and for the shared subscription
    /// groups (`$share/{group}/{filter}`) the sender chose the receiver to serve.
    ///
    /// `forward_id` (non-zero for QoS 1/2 with shared groups) is answered with
    /// `SharedSettled` once each group's member has the message; `shared_only` marks a
    /// redelivery to shared groups, which plain subscribers already had.
    Forward {
        message: MqttMessage,
        shared_groups: Vec<String>,
        forward_id: u64,
        shared_only: bool,
    },
    /// The member of `group` that got forward `forward_id` acknowledged it (or it was dropped).
    SharedSettled {
        forward_id: u64,
        group: String,
    },
    /// A retained message set (or deleted, with an empty payload) on the sender; acknowledged
    /// with `RetainedAck` carrying the same sequence number.
    RetainedPut {
        seq: u64,
        message: MqttMessage,
    },
    RetainedAck {
        seq: u64,
    },
    /// Every retained message of the sender, on join and merge.
    RetainedSnapshot(Vec<MqttMessage>),
    /// The receiver has applied our snapshots: our join or merge with it is complete.
    SyncDone,
    /// The sender is leaving the cluster on purpose (shutdown).
    Leave,
    /// A client connected on the sender: whoever holds its session hands it over (and closes
    /// its connection with 0x8E), unless it has a newer connection of that client id.
    SessionClaim {
        request: u64,
        client: String,
        stamp: ClaimStamp,
        clean_start: bool,
    },
    SessionHandover {
        request: u64,
        answer: ClaimAnswer,
    },
    /// A client connected on the sender has this will: if the sender dies, another node
    /// publishes it.
    WillRegistered {
        client: String,
        will: WillRecord,
    },
    /// That client's will is no longer the sender's to keep (published, discarded, moved).
    WillCleared {
        client: String,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    FrameTooLarge(usize),
    #[error("undecodable frame: {0}")]
    Undecodable(String),
    #[error("not an Apiary cluster peer (bad magic)")]
    BadMagic,
    #[error("invalid node id")]
    BadNodeId,
    #[error("invalid topic in a peer message: {0:?}")]
    BadTopic(String),
}

/// Frames a body: length prefix plus postcard.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own in-memory types cannot fail (no maps with non-string keys etc.).
    let body = postcard::to_stdvec(value).unwrap_or_default();
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The body length announced by a frame header.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(WireError::FrameTooLarge(len));
    }
    Ok(len)
}

pub fn decode_hello(body: &[u8]) -> Result<Hello, WireError> {
    let hello: Hello = postcard::from_bytes(body).map_err(|e| WireError::Undecodable(e.to_string()))?;
    if hello.magic != MAGIC {
        return Err(WireError::BadMagic);
    }
    if hello.node.is_empty() || hello.node.len() > MAX_NODE_ID {
        return Err(WireError::BadNodeId);
    }
    Ok(hello)
}

/// Decodes and validates a message: topics and filters must be valid MQTT.
pub fn decode_message(body: &[u8]) -> Result<Message, WireError> {
    let message: Message = postcard::from_bytes(body).map_err(|e| WireError::Undecodable(e.to_string()))?;
    let topics_ok = |m: &MqttMessage| crate::mqtt::topic::valid_topic_name(&m.topic);
    let filters_ok = |fs: &[String]| fs.iter().find(|f| !valid_subscription(f)).cloned();
    match &message {
        Message::Forward { shared_groups, .. } if shared_groups.iter().any(|g| !valid_shared(g)) => {
            Err(WireError::BadTopic(shared_groups.join(",")))
        }
        Message::Forward { message: m, .. } | Message::RetainedPut { message: m, .. } if !topics_ok(m) => {
            Err(WireError::BadTopic(m.topic.clone()))
        }
        Message::RetainedSnapshot(ms) => match ms.iter().find(|m| !topics_ok(m)) {
            Some(m) => Err(WireError::BadTopic(m.topic.clone())),
            None => Ok(message),
        },
        Message::SessionHandover {
            answer: ClaimAnswer::Handover(Some(export)),
            ..
        } => {
            let filters: Vec<String> = export.subscriptions.iter().map(|(f, _)| f.clone()).collect();
            if let Some(bad) = filters.iter().find(|f| !valid_subscription(f)) {
                return Err(WireError::BadTopic(bad.clone()));
            }
            match export.outgoing.iter().find(|o| !topics_ok(&o.message)) {
                Some(o) => Err(WireError::BadTopic(o.message.topic.clone())),
                None => Ok(message),
            }
        }
        Message::WillRegistered { will, .. } if !topics_ok(&will.message) => {
            Err(WireError::BadTopic(will.message.topic.clone()))
        }
        Message::SessionClaim { client, .. } if client.is_empty() || client.len() > 65_535 => {
            Err(WireError::BadTopic(client.clone()))
        }
        Message::RoutesAdded(fs) | Message::RoutesRemoved(fs) | Message::RouteSnapshot(fs) => match filters_ok(fs) {
            Some(bad) => Err(WireError::BadTopic(bad)),
            None => Ok(message),
        },
        _ => Ok(message),
    }
}

/// A subscription as a client may write it: a filter, or a valid `$share/{group}/{filter}`.
fn valid_subscription(filter: &str) -> bool {
    match crate::mqtt::topic::parse_shared(filter) {
        Ok(Some(shared)) => crate::mqtt::topic::valid_topic_filter(shared.filter),
        Ok(None) => crate::mqtt::topic::valid_topic_filter(filter),
        Err(_) => false,
    }
}

fn valid_shared(key: &str) -> bool {
    matches!(crate::mqtt::topic::parse_shared(key), Ok(Some(s)) if crate::mqtt::topic::valid_topic_filter(s.filter))
}

/// Order-independent hash of a filter set, for anti-entropy digests.
pub fn filter_set_hash<'a>(filters: impl Iterator<Item = &'a str>) -> u64 {
    use std::hash::{Hash, Hasher};
    filters.fold(0u64, |acc, f| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        f.hash(&mut h);
        acc ^ h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            magic: MAGIC,
            min_version: 1,
            max_version: 1,
            node: "abc".into(),
            address: "10.0.0.1:8000".into(),
            chosen_version: 0,
            refusal: None,
        }
    }

    #[test]
    fn versions_negotiate_to_the_highest_common() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 7), Some(MAX_VERSION));
        assert_eq!(negotiate(2, 3), None, "a peer that speaks none of ours");
    }

    #[test]
    fn hello_round_trip_and_validation() {
        let frame = encode(&hello());
        let len = frame_len([frame[0], frame[1], frame[2], frame[3]]).unwrap();
        assert_eq!(decode_hello(&frame[4..4 + len]).unwrap(), hello());
        let mut bad = hello();
        bad.magic = *b"GET / HT";
        assert_eq!(decode_hello(&encode(&bad)[4..]), Err(WireError::BadMagic));
        bad = hello();
        bad.node = "x".repeat(65);
        assert_eq!(decode_hello(&encode(&bad)[4..]), Err(WireError::BadNodeId));
        assert!(decode_hello(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        assert!(matches!(
            frame_len([0xff, 0xff, 0xff, 0xff]),
            Err(WireError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn invalid_topics_from_peers_are_refused() {
        let body = &encode(&Message::RoutesAdded(vec!["a/#/b".into()]))[4..];
        assert!(matches!(decode_message(body), Err(WireError::BadTopic(_))));
        let body = &encode(&Message::RoutesAdded(vec!["a/+/b".into()]))[4..];
        assert!(decode_message(body).is_ok());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_message(&bytes);
            let _ = decode_hello(&bytes);
        }
    }

    #[test]
    fn digest_ignores_order() {
        let a = filter_set_hash(["a", "b/#", "c"].into_iter());
        let b = filter_set_hash(["c", "a", "b/#"].into_iter());
        assert_eq!(a, b);
        assert_ne!(a, filter_set_hash(["a", "b/#"].into_iter()));
    }
}
