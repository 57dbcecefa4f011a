//! What is kept on disk, one record type per table. The broker's in-memory state is rebuilt
//! from these on start.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::message::Message;
use crate::cluster::hlc::Timestamp;

/// A persistent session (one with a session expiry interval above zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub expiry_interval: u32,
    /// When the client went away; `None` while connected (after a crash: the restart time).
    pub disconnected_at_ms: Option<u64>,
    /// The will of the connection that last held the session, until it is published or dropped.
    pub will: Option<WillRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub message: Message,
    pub delay_secs: u32,
}

/// One subscription of a session. The filter is part of the key (for shared subscriptions the
/// full `$share/{group}/{filter}` string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

/// A message on its way to a session: queued (no packet id yet) or in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRecord {
    pub message: Arc<Message>,
    /// The QoS it is delivered with: the minimum of the published and the subscribed QoS.
    pub qos: u8,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set when it was dispatched through a shared subscription (`$share/{group}/{filter}`), so it
    /// can go to another member if this one leaves with it unacknowledged.
    pub shared: Option<Arc<str>>,
    /// The packet id once it was sent.
    pub packet_id: Option<u16>,
    /// QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
    /// For a shared-group message sent here by another node: that node and its forward id,
    /// told when the message is settled so it stops keeping a copy.
    pub origin: Option<(String, u64)>,
}

/// The version of a topic's retained message (table `retained_versions`, keyed by topic like
/// `retained`). It names the `created_ms` of the message it belongs to: a build that does not
/// know this table can replace the message and leave the row behind, and such a row is then
/// ignored (the message counts as written before versions existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedVersionRecord {
    pub created_ms: u64,
    pub version: Timestamp,
}

/// The header row of a copy of another node's session (table `replica_sessions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaHeader {
    /// The node the session lives on.
    pub home: String,
    /// Its backups, best ranked first.
    pub backups: Vec<String>,
    /// `None` until the home sent the session record.
    pub record: Option<SessionRecord>,
}
