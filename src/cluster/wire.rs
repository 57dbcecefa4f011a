//! The cluster protocol on the wire.
//!
//! A connection between two nodes carries frames: a 4-byte big-endian length, then a postcard
//! encoded body. The first frame each way is a [`Hello`] whose layout never changes, so nodes
//! of any release can read it and agree on the highest protocol version both speak; every
//! later frame is a [`Message`] of that version. Everything read from a peer is untrusted: the
//! length is bounded before anything is buffered, and bodies are checked after decoding.
//!
//! Versions:
//! - 1: the first release.
//! - 2: retained messages carry a hybrid-logical-clock version and deletions travel as
//!   tombstones ([`Message::RetainedPut`], [`Message::RetainedSnapshot`]).
//! - 3: persistent sessions are replicated to their backups ([`Message::SessionOps`], acknowledged
//!   by [`Message::SessionOpsAck`]), and a QoS 1/2 forward asks the receiver to confirm that it
//!   stored the message ([`Message::ForwardAcked`], [`Message::ForwardAck`]). A version 2 peer
//!   gets plain `Forward`s, is never chosen as a backup, and is sent no session ops.
//! - 4: the takeover of a dead node's sessions is reported ([`Message::TakeoverDone`], with the
//!   routes of the adopted sessions), and messages parked for its heirs meanwhile follow
//!   ([`Message::TakeoverForward`], acknowledged by `ForwardAck`); see `cluster::takeover`. A
//!   version 3 peer gets the routes as `RoutesAdded` and is not waited for.
//! - 5: after a partition heals, a session that both sides kept is merged into one
//!   ([`Message::SessionMerge`]). A version 4 peer is sent none (both copies live on).
//! - 6: a message for a session that the receiver just took over from the sender (its client
//!   reconnected there) is redirected to it ([`Message::HandedForward`], acknowledged by
//!   `ForwardAck`); see `cluster::handed`. A version 5 peer is sent none (as before: the
//!   message is lost for that session).
//! - 7: a session's new holder keeps per-publisher order with the messages redirected to it
//!   ([`Message::OrderBarrier`], [`Message::OrderMarker`], [`Message::OrderPassed`]; see
//!   `cluster::handed`). A version 6 peer is sent none and not waited for. A claim asked again
//!   after a node went away meanwhile names it ([`Message::SessionClaimAfter`]), so that its
//!   sessions' heirs hand over their copies even before they noticed; a version 6 peer gets a
//!   plain `SessionClaim`.
//! - 8: a node tells a node that joined when it has sent it every session copy the new
//!   membership gives it ([`Message::CopiesSent`]): the joining node is ready only then. A
//!   version 7 peer is sent none and not waited for.
//! - 9: after a partition heals, a node tells each returning node when it has handed back
//!   every session it took over from it ([`Message::HandBacksDone`]): until then, the
//!   returning node holds what the others send its own sessions directly, so that the merged
//!   copy's messages come first (order per publisher; see `cluster::merge_holds`). A version 8
//!   peer is sent none and not waited for.
//! - 10: a node that merged a session handed back to it says so once the merged session is
//!   stored on its backups ([`Message::SessionMergeAck`]); until then the sender keeps its copy,
//!   and if the node dies first, offers it to whoever holds the session by then
//!   ([`Message::SessionMergeIfHeld`]; see `cluster::merge_acks`). The sender's backups keep
//!   their copies until then ([`Message::SessionHandedBack`]). A version 9 peer is sent none:
//!   its merges are not kept, and as a backup it is told to forget its copy at once.
//!
//! [`Message`] is one enum for every version: a variant's position is its tag on the wire, so
//! variants are only ever appended. A variant added in version N is never sent on a connection
//! that negotiated less; [`frame`] encodes, next to the current form, the form each older peer
//! reads, or none when the message means nothing to it (see [`Message::downgrade`]).

use serde::{Deserialize, Serialize};

use crate::broker::message::Message as MqttMessage;
use crate::broker::retained::RetainedEntry;
use crate::broker::session::SessionExport;
use crate::broker::{ClaimAnswer, ClaimStamp};
use crate::cluster::replication::SessionOp;
use crate::store::records::WillRecord;

/// Identifies an Apiary cluster connection (and not, say, an HTTP client on the port).
pub const MAGIC: [u8; 8] = *b"APIARY-C";

/// The protocol versions this build speaks. A release must keep speaking the previous one
/// (rolling upgrades).
pub const MIN_VERSION: u16 = 1;
pub const MAX_VERSION: u16 = 10;

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

/// The messages after the hellos. Marked with the version that added them; unmarked ones are
/// version 1.
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
    /// Version 1's [`Message::RetainedPut`]: a retained message set (or deleted, with an
    /// empty payload), versioned by its `created_ms`. Sent only to version 1 peers.
    LegacyRetainedPut {
        seq: u64,
        message: MqttMessage,
    },
    /// Acknowledges a `RetainedPut` (or `LegacyRetainedPut`) with the same sequence number.
    RetainedAck {
        seq: u64,
    },
    /// Version 1's [`Message::RetainedSnapshot`]: the sender's retained messages (deletions
    /// as empty payloads). Sent only to version 1 peers.
    LegacyRetainedSnapshot(Vec<MqttMessage>),
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
    /// (2) A retained message set or deleted on the sender, with its version; acknowledged
    /// with `RetainedAck` carrying the same sequence number.
    RetainedPut {
        seq: u64,
        entry: RetainedEntry,
    },
    /// (2) Every retained message and tombstone of the sender, on join and merge.
    RetainedSnapshot(Vec<RetainedEntry>),
    /// (3) Changes to a persistent session living on the sender, for the receiver's copy;
    /// acknowledged with `SessionOpsAck` once committed there.
    SessionOps {
        seq: u64,
        client: String,
        ops: Vec<SessionOp>,
    },
    SessionOpsAck {
        seq: u64,
    },
    /// (3) A `Forward` whose sender waits for `ForwardAck { seq }`: sent once the receiver
    /// stored the message for its persistent sessions (and their backups did).
    ForwardAcked {
        seq: u64,
        message: MqttMessage,
        shared_groups: Vec<String>,
        forward_id: u64,
        shared_only: bool,
    },
    ForwardAck {
        seq: u64,
    },
    /// (4) The sender adopted its share of the sessions of the dead node `gone` (`sessions` of
    /// them); `filters` are its new routes for them (in place of a `RoutesAdded`).
    TakeoverDone {
        gone: String,
        filters: Vec<String>,
        sessions: u32,
    },
    /// (4) A message parked while `gone`'s sessions were taken over, for the sessions the
    /// receiver adopted from it only; acknowledged by `ForwardAck { seq }` like `ForwardAcked`.
    TakeoverForward {
        seq: u64,
        gone: String,
        message: MqttMessage,
    },
    /// (5) A partition healed, and the sender had taken over `client`'s session from the
    /// receiver meanwhile. `Some`: the sender's copy, which it dropped, to merge into the
    /// receiver's (see `Broker::merge_session`). `None`: the client is connected at the sender,
    /// so the receiver is asked to send its copy this way instead.
    SessionMerge {
        client: String,
        export: Option<SessionExport>,
    },
    /// (6) A message for `client`'s session, which the receiver took over from the sender
    /// moments ago; acknowledged by `ForwardAck { seq }` once stored there (or parked until
    /// the session is installed).
    HandedForward {
        seq: u64,
        client: String,
        message: MqttMessage,
    },
    /// (7) The sender just took over `client`'s session from `via` and announced its routes:
    /// the receiver sends an `OrderMarker` to `via`, behind everything it forwarded there.
    OrderBarrier {
        client: String,
        token: u64,
        via: String,
    },
    /// (7) Everything the sender forwarded to the receiver before this is through: the receiver
    /// stops redirecting the sender's messages for `client` and tells `to` (`OrderPassed`).
    OrderMarker {
        client: String,
        token: u64,
        to: String,
    },
    /// (7) Every message `origin` sent the old holder before its marker was redirected here.
    OrderPassed {
        token: u64,
        origin: String,
    },
    /// (7) A `SessionClaim` asked again because `gone` went away while the first was answered:
    /// the receiver counts them as gone (their sessions' heir hands over its copy).
    SessionClaimAfter {
        request: u64,
        client: String,
        stamp: ClaimStamp,
        clean_start: bool,
        gone: Vec<String>,
    },
    /// (8) The sender's rebalancing pass after the receiver joined is over: every copy of the
    /// sender's sessions that the receiver is to hold was stored there (acknowledged).
    CopiesSent,
    /// (9) The sender saw the receiver come back and has sent it (`SessionMerge`, on this link
    /// before this) every session it had taken over from it: no more merges come from it.
    HandBacksDone,
    /// (10) The sender merged `client`'s session that the receiver handed it (`SessionMerge`
    /// or `SessionMergeIfHeld`), and the result is stored on its backups (`merged`); or, for a
    /// `SessionMergeIfHeld`, it holds no such session (`!merged`).
    SessionMergeAck {
        client: String,
        merged: bool,
    },
    /// (10) A copy handed back to a node that died before it acknowledged the merge: merged
    /// into the receiver's session of `client` if it holds one, else left alone; answered by
    /// `SessionMergeAck` either way.
    SessionMergeIfHeld {
        client: String,
        export: SessionExport,
    },
    /// (10) The sender, the home of the receiver's copy of `client`'s session, handed the
    /// session back to `to` after a partition: the copy stays until the merge is acknowledged
    /// (then `DeleteSession` follows), and is not adopted if the sender dies meanwhile.
    SessionHandedBack {
        client: String,
        to: String,
    },
}

/// The form of a message for an older peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Downgrade {
    /// The peer reads the message as it is.
    Same,
    /// The peer reads this form instead.
    Replace(Box<Message>),
    /// The message means nothing to the peer: it is not sent.
    Skip,
}

impl Message {
    /// The form of this message a peer speaking `version` reads, if it differs from this one.
    /// Version 1 peers get retained entries as plain messages: a deletion as an empty payload,
    /// the version's physical time as `created_ms`.
    /// Version 2 peers get acknowledged forwards as plain ones and no session replication.
    pub fn downgrade(&self, version: u16) -> Downgrade {
        if version >= 10 {
            return Downgrade::Same;
        }
        match self {
            Message::SessionMergeAck { .. }
            | Message::SessionMergeIfHeld { .. }
            | Message::SessionHandedBack { .. } => Downgrade::Skip,
            _ if version >= 9 => Downgrade::Same,
            Message::HandBacksDone => Downgrade::Skip,
            _ if version >= 8 => Downgrade::Same,
            Message::CopiesSent => Downgrade::Skip,
            _ if version >= 7 => Downgrade::Same,
            Message::OrderBarrier { .. } | Message::OrderMarker { .. } | Message::OrderPassed { .. } => Downgrade::Skip,
            Message::SessionClaimAfter {
                request,
                client,
                stamp,
                clean_start,
                ..
            } => Downgrade::Replace(Box::new(Message::SessionClaim {
                request: *request,
                client: client.clone(),
                stamp: stamp.clone(),
                clean_start: *clean_start,
            })),
            _ if version >= 6 => Downgrade::Same,
            Message::HandedForward { .. } => Downgrade::Skip,
            _ if version >= 5 => Downgrade::Same,
            Message::SessionMerge { .. } => Downgrade::Skip,
            _ if version >= 4 => Downgrade::Same,
            Message::TakeoverDone { filters, .. } if filters.is_empty() => Downgrade::Skip,
            Message::TakeoverDone { filters, .. } => {
                Downgrade::Replace(Box::new(Message::RoutesAdded(filters.clone())))
            }
            Message::TakeoverForward { .. } => Downgrade::Skip,
            _ if version >= 3 => Downgrade::Same,
            Message::ForwardAcked {
                message,
                shared_groups,
                forward_id,
                shared_only,
                ..
            } => {
                let plain = Message::Forward {
                    message: message.clone(),
                    shared_groups: shared_groups.clone(),
                    forward_id: *forward_id,
                    shared_only: *shared_only,
                };
                Downgrade::Replace(Box::new(plain))
            }
            Message::SessionOps { .. } | Message::SessionOpsAck { .. } | Message::ForwardAck { .. } => Downgrade::Skip,
            Message::RetainedPut { seq, entry } if version < 2 => {
                Downgrade::Replace(Box::new(Message::LegacyRetainedPut {
                    seq: *seq,
                    message: entry.to_legacy(),
                }))
            }
            Message::RetainedSnapshot(entries) if version < 2 => Downgrade::Replace(Box::new(
                Message::LegacyRetainedSnapshot(entries.iter().map(RetainedEntry::to_legacy).collect()),
            )),
            _ => Downgrade::Same,
        }
    }
}

/// One version's encoding of a frame.
#[derive(Debug)]
enum Form {
    Current,
    Other(Vec<u8>),
    Skip,
}

/// An encoded message, with the encodings for older peers where they differ.
#[derive(Debug)]
pub struct Frame {
    current: Vec<u8>,
    /// By version, from [`MIN_VERSION`] up to the one before [`MAX_VERSION`].
    older: Vec<Form>,
}

impl Frame {
    /// The bytes to send on a connection that negotiated `version`; `None`: send nothing.
    pub fn bytes(&self, version: u16) -> Option<&[u8]> {
        let older = usize::from(version.saturating_sub(MIN_VERSION));
        match self.older.get(older) {
            Some(Form::Other(bytes)) => Some(bytes),
            Some(Form::Skip) => None,
            Some(Form::Current) | None => Some(&self.current),
        }
    }

    /// The size of the current encoding (for queue accounting).
    pub fn len(&self) -> usize {
        self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
}

/// Frames a message for any peer version.
pub fn frame(message: &Message) -> Frame {
    let older = (MIN_VERSION..MAX_VERSION)
        .map(|v| match message.downgrade(v) {
            Downgrade::Same => Form::Current,
            Downgrade::Replace(m) => Form::Other(encode(&*m)),
            Downgrade::Skip => Form::Skip,
        })
        .collect();
    Frame {
        current: encode(message),
        older,
    }
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

/// A session copy to merge: a client id, valid filters and topics.
fn check_merge(client: &str, export: Option<&SessionExport>) -> Result<(), WireError> {
    if client.is_empty() || client.len() > 65_535 {
        return Err(WireError::BadTopic(client.to_owned()));
    }
    if let Some(export) = export {
        if let Some((f, _)) = export.subscriptions.iter().find(|(f, _)| !valid_subscription(f)) {
            return Err(WireError::BadTopic(f.clone()));
        }
        if let Some(o) = export
            .outgoing
            .iter()
            .find(|o| !crate::mqtt::topic::valid_topic_name(&o.message.topic))
        {
            return Err(WireError::BadTopic(o.message.topic.clone()));
        }
    }
    Ok(())
}

/// Decodes and validates a message: topics and filters must be valid MQTT.
pub fn decode_message(body: &[u8]) -> Result<Message, WireError> {
    let message: Message = postcard::from_bytes(body).map_err(|e| WireError::Undecodable(e.to_string()))?;
    let topics_ok = |m: &MqttMessage| crate::mqtt::topic::valid_topic_name(&m.topic);
    let filters_ok = |fs: &[String]| fs.iter().find(|f| !valid_subscription(f)).cloned();
    match &message {
        Message::Forward { shared_groups, .. } | Message::ForwardAcked { shared_groups, .. }
            if shared_groups.iter().any(|g| !valid_shared(g)) =>
        {
            Err(WireError::BadTopic(shared_groups.join(",")))
        }
        Message::TakeoverDone { gone, .. } | Message::TakeoverForward { gone, .. }
            if gone.is_empty() || gone.len() > MAX_NODE_ID =>
        {
            Err(WireError::BadNodeId)
        }
        Message::SessionMerge { client, export } => check_merge(client, export.as_ref()).map(|()| message),
        Message::SessionMergeIfHeld { client, export } => check_merge(client, Some(export)).map(|()| message),
        Message::HandedForward { client, .. }
        | Message::OrderBarrier { client, .. }
        | Message::OrderMarker { client, .. }
        | Message::SessionClaimAfter { client, .. }
        | Message::SessionMergeAck { client, .. }
        | Message::SessionHandedBack { client, .. }
            if client.is_empty() || client.len() > 65_535 =>
        {
            Err(WireError::BadTopic(client.clone()))
        }
        Message::OrderBarrier { via: node, .. }
        | Message::OrderMarker { to: node, .. }
        | Message::SessionHandedBack { to: node, .. }
        | Message::OrderPassed { origin: node, .. }
            if node.is_empty() || node.len() > MAX_NODE_ID =>
        {
            Err(WireError::BadNodeId)
        }
        Message::SessionClaimAfter { gone, .. } if gone.iter().any(|n| n.is_empty() || n.len() > MAX_NODE_ID) => {
            Err(WireError::BadNodeId)
        }
        Message::TakeoverDone { filters, .. } => match filters_ok(filters) {
            Some(bad) => Err(WireError::BadTopic(bad)),
            None => Ok(message),
        },
        Message::Forward { message: m, .. }
        | Message::ForwardAcked { message: m, .. }
        | Message::TakeoverForward { message: m, .. }
        | Message::HandedForward { message: m, .. }
        | Message::LegacyRetainedPut { message: m, .. }
            if !topics_ok(m) =>
        {
            Err(WireError::BadTopic(m.topic.clone()))
        }
        Message::SessionOps { client, ops, .. } => {
            if client.is_empty() || client.len() > 65_535 {
                return Err(WireError::BadTopic(client.clone()));
            }
            for op in ops {
                match op {
                    SessionOp::PutSubscription(f, _) if !valid_subscription(f) => {
                        return Err(WireError::BadTopic(f.clone()));
                    }
                    SessionOp::PutOutgoing(_, o) if !topics_ok(&o.message) => {
                        return Err(WireError::BadTopic(o.message.topic.clone()));
                    }
                    SessionOp::Reset { backups } | SessionOp::Backups(backups)
                        if backups.iter().any(|b| b.is_empty() || b.len() > MAX_NODE_ID) =>
                    {
                        return Err(WireError::BadNodeId);
                    }
                    _ => {}
                }
            }
            Ok(message)
        }
        Message::LegacyRetainedSnapshot(ms) => match ms.iter().find(|m| !topics_ok(m)) {
            Some(m) => Err(WireError::BadTopic(m.topic.clone())),
            None => Ok(message),
        },
        Message::RetainedPut { entry, .. } if !entry_ok(entry) => Err(WireError::BadTopic(entry.topic.clone())),
        Message::RetainedSnapshot(entries) => match entries.iter().find(|e| !entry_ok(e)) {
            Some(e) => Err(WireError::BadTopic(e.topic.clone())),
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

/// A retained entry: a valid topic, and a message (if any) for that same topic.
fn entry_ok(entry: &RetainedEntry) -> bool {
    crate::mqtt::topic::valid_topic_name(&entry.topic) && entry.message.as_ref().is_none_or(|m| m.topic == entry.topic)
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
        assert_eq!(negotiate(1, 1), Some(1), "a node of the first release");
        assert_eq!(negotiate(1, 2), Some(2));
        assert_eq!(negotiate(1, 10), Some(MAX_VERSION));
        assert_eq!(negotiate(1, 9), Some(9));
        assert_eq!(negotiate(1, 8), Some(8));
        assert_eq!(negotiate(1, 3), Some(3));
        assert_eq!(negotiate(2, 2), Some(2), "a version 2 node is still served");
        assert_eq!(negotiate(1, 4), Some(4));
        assert_eq!(negotiate(1, 5), Some(5));
        assert_eq!(
            negotiate(MAX_VERSION + 1, MAX_VERSION + 2),
            None,
            "a peer that speaks none of ours"
        );
    }

    /// A version 3 peer gets a takeover report as the routes it carries, and no parked
    /// messages (it is not waited for).
    #[test]
    fn version_3_peers_get_takeover_routes_as_routes_added() {
        let done = frame(&Message::TakeoverDone {
            gone: "n1".into(),
            filters: vec!["a/#".into()],
            sessions: 1,
        });
        let v3 = decode_message(&done.bytes(3).unwrap()[4..]).unwrap();
        assert_eq!(v3, Message::RoutesAdded(vec!["a/#".into()]));
        let v4 = decode_message(&done.bytes(4).unwrap()[4..]).unwrap();
        assert!(matches!(v4, Message::TakeoverDone { sessions: 1, .. }));
        let empty = frame(&Message::TakeoverDone {
            gone: "n1".into(),
            filters: vec![],
            sessions: 0,
        });
        assert!(empty.bytes(3).is_none());
        let bad = encode(&Message::TakeoverDone {
            gone: "n1".into(),
            filters: vec!["a/#/b".into()],
            sessions: 0,
        });
        assert!(decode_message(&bad[4..]).is_err(), "filters are validated");
    }

    #[test]
    fn version_5_peers_get_no_handed_forwards_and_clients_are_checked() {
        let message = crate::broker::message::Message {
            topic: "a/b".into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: 1,
            retain: false,
            properties: Default::default(),
            expires_at_ms: None,
            publisher: "p".into(),
            created_ms: 1,
        };
        let handed = frame(&Message::HandedForward {
            seq: 3,
            client: "c1".into(),
            message: message.clone(),
        });
        assert!(handed.bytes(5).is_none());
        let v6 = decode_message(&handed.bytes(6).unwrap()[4..]).unwrap();
        assert!(matches!(v6, Message::HandedForward { seq: 3, .. }));
        let no_client = encode(&Message::HandedForward {
            seq: 3,
            client: String::new(),
            message: message.clone(),
        });
        assert!(decode_message(&no_client[4..]).is_err());
        let bad_topic = encode(&Message::HandedForward {
            seq: 3,
            client: "c1".into(),
            message: crate::broker::message::Message {
                topic: "a/#".into(),
                ..message
            },
        });
        assert!(decode_message(&bad_topic[4..]).is_err());
    }

    #[test]
    fn version_9_peers_get_no_merge_acknowledgements_or_offers_and_offers_are_checked() {
        let ack = frame(&Message::SessionMergeAck {
            client: "c1".into(),
            merged: true,
        });
        assert!(ack.bytes(9).is_none());
        let v10 = decode_message(&ack.bytes(10).unwrap()[4..]).unwrap();
        assert_eq!(
            v10,
            Message::SessionMergeAck {
                client: "c1".into(),
                merged: true
            }
        );
        let offer = |filter: &str| {
            let sub = crate::store::records::SubscriptionRecord {
                qos: 1,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
                subscription_id: None,
            };
            let export = SessionExport {
                expiry_interval: 300,
                subscriptions: vec![(filter.into(), sub)],
                outgoing: Vec::new(),
                incoming_qos2: Vec::new(),
            };
            frame(&Message::SessionMergeIfHeld {
                client: "c1".into(),
                export,
            })
        };
        assert!(offer("a/#").bytes(9).is_none());
        assert!(decode_message(&offer("a/#").bytes(10).unwrap()[4..]).is_ok());
        assert!(decode_message(&offer("a/#/b").bytes(10).unwrap()[4..]).is_err());
    }

    #[test]
    fn version_8_peers_are_not_told_that_hand_backs_are_done() {
        let done = frame(&Message::HandBacksDone);
        assert!(done.bytes(8).is_none());
        let v9 = decode_message(&done.bytes(9).unwrap()[4..]).unwrap();
        assert_eq!(v9, Message::HandBacksDone);
    }

    #[test]
    fn version_7_peers_are_not_told_that_their_copies_are_sent() {
        let done = frame(&Message::CopiesSent);
        assert!(done.bytes(7).is_none());
        let v8 = decode_message(&done.bytes(8).unwrap()[4..]).unwrap();
        assert_eq!(v8, Message::CopiesSent);
    }

    #[test]
    fn version_6_peers_get_no_order_markers_and_node_ids_are_checked() {
        let barrier = frame(&Message::OrderBarrier {
            client: "c1".into(),
            token: 9,
            via: "n2".into(),
        });
        assert!(barrier.bytes(6).is_none());
        let v7 = decode_message(&barrier.bytes(7).unwrap()[4..]).unwrap();
        assert!(matches!(v7, Message::OrderBarrier { token: 9, .. }));
        let passed = frame(&Message::OrderPassed {
            token: 9,
            origin: "n3".into(),
        });
        assert!(passed.bytes(6).is_none());
        let long_id = encode(&Message::OrderMarker {
            client: "c1".into(),
            token: 9,
            to: "x".repeat(MAX_NODE_ID + 1),
        });
        assert_eq!(decode_message(&long_id[4..]), Err(WireError::BadNodeId));
        let no_client = encode(&Message::OrderMarker {
            client: String::new(),
            token: 9,
            to: "n2".into(),
        });
        assert!(decode_message(&no_client[4..]).is_err());
        let again = frame(&Message::SessionClaimAfter {
            request: 4,
            client: "c1".into(),
            stamp: (5, "n1".into()),
            clean_start: false,
            gone: vec!["n2".into()],
        });
        let v6 = decode_message(&again.bytes(6).unwrap()[4..]).unwrap();
        assert!(matches!(v6, Message::SessionClaim { request: 4, .. }), "a plain claim");
        let bad = encode(&Message::SessionClaimAfter {
            request: 4,
            client: "c1".into(),
            stamp: (5, "n1".into()),
            clean_start: false,
            gone: vec![String::new()],
        });
        assert_eq!(decode_message(&bad[4..]), Err(WireError::BadNodeId));
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

    /// The message enum of protocol version 1 as the first release has it, frozen: what a
    /// node of that release decodes.
    mod v1 {
        use super::super::{ClaimAnswer, ClaimStamp, MqttMessage, WillRecord};
        use serde::Deserialize;

        #[allow(dead_code)]
        #[derive(Debug, Deserialize)]
        pub enum Message {
            Heartbeat,
            Members(Vec<String>),
            RoutesAdded(Vec<String>),
            RoutesRemoved(Vec<String>),
            RouteDigest {
                count: u64,
                hash: u64,
            },
            RouteSnapshotRequest,
            RouteSnapshot(Vec<String>),
            Forward {
                message: MqttMessage,
                shared_groups: Vec<String>,
                forward_id: u64,
                shared_only: bool,
            },
            SharedSettled {
                forward_id: u64,
                group: String,
            },
            RetainedPut {
                seq: u64,
                message: MqttMessage,
            },
            RetainedAck {
                seq: u64,
            },
            RetainedSnapshot(Vec<MqttMessage>),
            SyncDone,
            Leave,
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
            WillRegistered {
                client: String,
                will: WillRecord,
            },
            WillCleared {
                client: String,
            },
        }
    }

    fn retained(topic: &str, payload: &'static str, version: crate::cluster::hlc::Timestamp) -> RetainedEntry {
        RetainedEntry {
            topic: topic.into(),
            version,
            message: (!payload.is_empty()).then(|| MqttMessage::retained_for_test(topic, payload, "p", 5)),
        }
    }

    #[test]
    fn version_1_peers_get_retained_entries_in_their_form() {
        let version = crate::cluster::hlc::Timestamp {
            physical_ms: 1_000,
            logical: 3,
            node: 9,
        };
        let put = frame(&Message::RetainedPut {
            seq: 7,
            entry: retained("a/b", "x", version),
        });
        // A first-release node cannot read the version 2 form at all: hence the negotiation.
        assert!(postcard::from_bytes::<v1::Message>(&put.bytes(2).unwrap()[4..]).is_err());
        match postcard::from_bytes::<v1::Message>(&put.bytes(1).unwrap()[4..]).unwrap() {
            v1::Message::RetainedPut { seq, message } => {
                assert_eq!(seq, 7);
                assert_eq!(message.payload, "x");
                assert_eq!(message.created_ms, 1_000, "its order: the version's physical time");
            }
            other => panic!("{other:?}"),
        }
        let snapshot = frame(&Message::RetainedSnapshot(vec![
            retained("a/b", "x", version),
            retained("gone", "", version),
        ]));
        match postcard::from_bytes::<v1::Message>(&snapshot.bytes(1).unwrap()[4..]).unwrap() {
            v1::Message::RetainedSnapshot(ms) => {
                assert_eq!(ms.len(), 2);
                assert!(
                    ms[1].payload.is_empty() && ms[1].topic == "gone",
                    "a tombstone is a deletion"
                );
            }
            other => panic!("{other:?}"),
        }
        // What a first-release node sends us decodes as the legacy variants.
        let ack = frame(&Message::RetainedAck { seq: 7 });
        assert_eq!(ack.bytes(1), ack.bytes(3), "unchanged messages are encoded once");
        assert!(matches!(
            postcard::from_bytes::<v1::Message>(&ack.bytes(1).unwrap()[4..]).unwrap(),
            v1::Message::RetainedAck { seq: 7 }
        ));
        let legacy = Message::LegacyRetainedPut {
            seq: 1,
            message: retained("a", "x", version).to_legacy(),
        };
        assert_eq!(decode_message(&encode(&legacy)[4..]).unwrap(), legacy);
    }

    /// Version 2 peers read an acknowledged forward as a plain one, and get no replication.
    #[test]
    fn version_2_peers_get_plain_forwards_and_no_session_ops() {
        let message = retained("a/b", "x", crate::cluster::hlc::Timestamp::legacy(1))
            .message
            .unwrap();
        let acked = frame(&Message::ForwardAcked {
            seq: 9,
            message: message.clone(),
            shared_groups: vec![],
            forward_id: 0,
            shared_only: false,
        });
        let plain = Message::Forward {
            message,
            shared_groups: vec![],
            forward_id: 0,
            shared_only: false,
        };
        for v in [1, 2] {
            assert_eq!(decode_message(&acked.bytes(v).unwrap()[4..]).unwrap(), plain);
            assert!(postcard::from_bytes::<v1::Message>(&acked.bytes(v).unwrap()[4..]).is_ok());
        }
        assert!(matches!(
            decode_message(&acked.bytes(3).unwrap()[4..]).unwrap(),
            Message::ForwardAcked { seq: 9, .. }
        ));
        let ops = frame(&Message::SessionOps {
            seq: 1,
            client: "c".into(),
            ops: vec![SessionOp::DeleteSession],
        });
        assert!(ops.bytes(2).is_none() && ops.bytes(1).is_none());
        assert!(decode_message(&ops.bytes(3).unwrap()[4..]).is_ok());
        assert!(frame(&Message::ForwardAck { seq: 1 }).bytes(2).is_none());
    }

    #[test]
    fn session_ops_from_peers_are_checked() {
        let bad = Message::SessionOps {
            seq: 1,
            client: "c".into(),
            ops: vec![
                SessionOp::DeleteSubscription("ok".into()),
                SessionOp::PutSubscription(
                    "a/#/b".into(),
                    crate::store::records::SubscriptionRecord {
                        qos: 1,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: 0,
                        subscription_id: None,
                    },
                ),
            ],
        };
        assert!(matches!(
            decode_message(&encode(&bad)[4..]),
            Err(WireError::BadTopic(_))
        ));
        let nobody = Message::SessionOps {
            seq: 1,
            client: String::new(),
            ops: vec![],
        };
        assert!(decode_message(&encode(&nobody)[4..]).is_err());
    }

    #[test]
    fn retained_entries_from_peers_are_checked() {
        let version = crate::cluster::hlc::Timestamp::legacy(1);
        let mut entry = retained("a/b", "x", version);
        let ok = Message::RetainedSnapshot(vec![entry.clone()]);
        assert!(decode_message(&encode(&ok)[4..]).is_ok());
        entry.topic = "a/+".into();
        let wildcard = Message::RetainedPut {
            seq: 1,
            entry: entry.clone(),
        };
        assert!(matches!(
            decode_message(&encode(&wildcard)[4..]),
            Err(WireError::BadTopic(_))
        ));
        entry.topic = "other".into();
        let mismatch = Message::RetainedSnapshot(vec![entry]);
        assert!(
            matches!(decode_message(&encode(&mismatch)[4..]), Err(WireError::BadTopic(_))),
            "a message for another topic than its entry's"
        );
    }

    #[test]
    fn digest_ignores_order() {
        let a = filter_set_hash(["a", "b/#", "c"].into_iter());
        let b = filter_set_hash(["c", "a", "b/#"].into_iter());
        assert_eq!(a, b);
        assert_ne!(a, filter_set_hash(["a", "b/#"].into_iter()));
    }
}
