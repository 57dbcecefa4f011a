//! The receiving side of a session handover between live nodes (a client reconnected here
//! while its session was on another node; see `cluster::handed` for the sending side).
//!
//! Messages for the session that reached the old node after it handed the session over are
//! redirected here. While this node still waits for the other nodes' answers (the session is
//! not installed yet), every message routed here is parked with the claim, redirected or not
//! (a message may reach this node directly before the session is here, and the old node after
//! it left; without this, its redirected copy would come after later ones), and delivered, to
//! that session only and if it matches it, right after the session is installed. A QoS 2 message may reach the session both directly
//! and redirected (the publishing node's routes were changing): for [`DEDUP_WINDOW`] after the
//! install, a session that was handed over remembers which QoS 2 messages it was given, and a
//! second copy is dropped (exactly once [MQTT-4.3.3]).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

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
    /// Messages redirected to the session before it was installed here.
    pub parked: Vec<Arc<Message>>,
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
pub(super) fn park_for_claims(state: &mut State, message: &Arc<Message>) {
    for (client, claim) in state.claims.iter_mut().filter(|(_, c)| !c.superseded) {
        if claim.parked.len() == MAX_PARKED {
            tracing::warn!(%client, "{MAX_PARKED} messages parked while its session is handed over; later ones only if redirected");
        }
        if claim.parked.len() < MAX_PARKED {
            claim.parked.push(message.clone());
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
    pub fn start<'a>(&mut self, client: &Arc<str>, held: impl Iterator<Item = &'a Message>, now: u64) {
        self.by_client.retain(|_, (until, _)| *until > now);
        let ids = held.filter(|m| m.qos == 2).map(identity).collect();
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
fn identity(m: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&m.publisher, m.created_ms, &m.topic, &m.payload, m.qos).hash(&mut h);
    h.finish()
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
                claim.parked.push(Arc::new(message));
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
        parked: Vec<Arc<Message>>,
        effects: &mut Effects,
    ) {
        if parked.is_empty() || !state.sessions.contains_key(client) {
            return;
        }
        tracing::debug!(%client, count = parked.len(), "delivering messages redirected during the handover");
        let clients = HashSet::from([client.clone()]);
        for message in parked {
            self.route(state, message, Origin::Heir { clients: &clients }, effects);
        }
    }

    /// A session handed over by another node was installed here.
    pub(super) fn handover_installed(state: &mut State, client: &Arc<str>) {
        let now = now_ms();
        let State {
            sessions, recent_qos2, ..
        } = state;
        if let Some(session) = sessions.get(client) {
            let held: Vec<Arc<Message>> = session.export().outgoing.into_iter().map(|o| o.message).collect();
            recent_qos2.start(client, held.iter().map(|m| &**m), now);
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

    #[test]
    fn a_second_copy_of_a_qos2_message_is_a_repeat_within_the_window_only() {
        let mut recent = RecentQos2::default();
        let c: Arc<str> = Arc::from("c");
        let held = [message(b"held", 2), message(b"qos1", 1)];
        recent.start(&c, held.iter(), 1_000);
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
        recent.start(&Arc::from("d"), std::iter::empty(), 1_000 + DEDUP_WINDOW_MS);
        assert_eq!(recent.by_client.len(), 1, "ended windows are dropped");
    }
}
