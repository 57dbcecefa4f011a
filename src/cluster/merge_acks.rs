//! Session copies handed back after a partition, kept until they are merged for good.
//!
//! After a heal, a node hands each session it took over from a returning node back to that
//! node (`SessionMerge`) and drops its own copy, with the copies on its backups. Until the
//! returning node has merged it and stored the result on its backups, the messages queued on
//! this side during the partition exist only in that frame: if the node died now, they would
//! be lost. So the sender keeps the copy until the merge is acknowledged (`SessionMergeAck`,
//! protocol 10).
//!
//! If the node dies first, its own copy of the session lives on at the heir of its sessions.
//! Once the takeover of its sessions is over (every node reported its share), the kept copy is
//! merged into the session wherever it is by then: here, if we hold it; else it is offered to
//! every other node (`SessionMergeIfHeld`), and the one holding the session merges it. If none
//! does, the copy becomes the session here. A node that dies while it was offered the copy is
//! treated the same way: the offer is made again after its takeover.
//!
//! The sender may die too before its copy is out. So its backups keep their copies of the
//! session until the merge is acknowledged (told `SessionHandedBack` instead of "forget it");
//! if the sender dies, the heir of its copies does not adopt such a copy but keeps it here in
//! the same way, and offers it once the sender's takeover is over.
//!
//! A plain state machine: the caller sends, merges and reads the clock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::NodeId;
use crate::broker::session::SessionExport;

/// How long a copy waits for the takeover of the node it was sent to before it is offered
/// anyway (a takeover that never ends here, say because we were leaving).
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct MergeAcks {
    kept: HashMap<Arc<str>, Kept>,
}

#[derive(Debug)]
struct Kept {
    export: SessionExport,
    state: Waiting,
    /// Our backups of the session, which keep their copies until it is merged for good.
    backups: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Waiting {
    /// Sent to this node to merge: its acknowledgement.
    Ack(NodeId),
    /// The node it was sent or offered to died: the end of that node's takeover (or the
    /// deadline), then it is offered again.
    Takeover { gone: NodeId, until: Instant },
    /// Offered to these nodes: their answers (one that merged it ends the wait).
    Answers(HashSet<NodeId>),
}

/// What to do with a kept copy now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Nothing,
    /// It is merged for good: the copies on these backups go.
    Merged(Vec<NodeId>),
    /// Offer it to these nodes (the caller merges it here instead if it holds the session, and
    /// then calls [`MergeAcks::merged_here`]).
    Offer(Vec<NodeId>),
    /// Nobody holds the session: it becomes the session here, once the copies on these
    /// backups are gone.
    Adopt(SessionExport, Vec<NodeId>),
}

impl MergeAcks {
    /// `export`, the copy of `client`'s session, went to `node` to be merged; `backups` keep
    /// their copies until then.
    pub fn sent(&mut self, client: Arc<str>, node: NodeId, export: SessionExport, mut backups: Vec<NodeId>) {
        // Handed back again before the last merge was acknowledged: the backups of both times
        // keep their copies (the newer copy holds what the older one did, or it was merged).
        if let Some(older) = self.kept.remove(&client) {
            backups.extend(
                older
                    .backups
                    .into_iter()
                    .filter(|b| !backups.contains(b))
                    .collect::<Vec<_>>(),
            );
        }
        let state = Waiting::Ack(node);
        self.kept.insert(client, Kept { export, state, backups });
    }

    /// `export`, our copy of `client`'s session, was being handed back by `gone` when it died:
    /// it is offered once `gone`'s takeover is over.
    pub fn orphaned(&mut self, client: Arc<str>, gone: NodeId, export: SessionExport, now: Instant) {
        let state = Waiting::Takeover {
            gone,
            until: now + TAKEOVER_WAIT,
        };
        let backups = Vec::new();
        self.kept.insert(client, Kept { export, state, backups });
    }

    /// Copies kept now.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// `node` answered for `client`'s copy: it merged it (`merged`), or holds no such session.
    /// When every node offered the copy said no, it is returned to become the session here.
    pub fn answered(&mut self, client: &str, node: &NodeId, merged: bool) -> Next {
        let Some(kept) = self.kept.get_mut(client) else {
            return Next::Nothing;
        };
        let done = match &mut kept.state {
            Waiting::Ack(to) => to == node,
            Waiting::Answers(waiting) => waiting.remove(node) && (merged || waiting.is_empty()),
            _ => false,
        };
        if !done {
            return Next::Nothing;
        }
        match self.kept.remove(client) {
            Some(kept) if matches!(kept.state, Waiting::Answers(_)) && !merged => {
                Next::Adopt(kept.export, kept.backups)
            }
            Some(kept) => Next::Merged(kept.backups),
            None => Next::Nothing,
        }
    }

    /// `node` died: copies sent or offered to it wait for the end of its takeover.
    pub fn node_gone(&mut self, node: &NodeId, now: Instant) {
        for kept in self.kept.values_mut() {
            let involved = match &kept.state {
                Waiting::Ack(to) => to == node,
                Waiting::Answers(waiting) => waiting.contains(node),
                Waiting::Takeover { .. } => false,
            };
            if involved {
                kept.state = Waiting::Takeover {
                    gone: node.clone(),
                    until: now + TAKEOVER_WAIT,
                };
            }
        }
    }

    /// The takeover of `gone`'s sessions is over (or `None`: only the deadlines count): the
    /// copies waiting for it are offered to `peers`, the live nodes that answer offers. Returns
    /// each copy's client with what to do: `Offer` (the caller merges it here instead if it
    /// holds the session), or `Adopt` when there is nobody to ask.
    pub fn takeover_over(&mut self, gone: Option<&NodeId>, now: Instant, peers: &[NodeId]) -> Vec<(Arc<str>, Next)> {
        let due: Vec<Arc<str>> = self
            .kept
            .iter()
            .filter(|(_, k)| match &k.state {
                Waiting::Takeover { gone: g, until } => Some(g) == gone || now >= *until,
                _ => false,
            })
            .map(|(c, _)| c.clone())
            .collect();
        let mut out = Vec::new();
        for client in due {
            if peers.is_empty() {
                if let Some(kept) = self.kept.remove(&client) {
                    out.push((client, Next::Adopt(kept.export, kept.backups)));
                }
            } else if let Some(kept) = self.kept.get_mut(&client) {
                kept.state = Waiting::Answers(peers.iter().cloned().collect());
                out.push((client, Next::Offer(peers.to_vec())));
            }
        }
        out
    }

    /// The copy of `client`, to offer or merge.
    pub fn export(&self, client: &str) -> Option<&SessionExport> {
        self.kept.get(client).map(|k| &k.export)
    }

    /// The copy of `client` was merged here (we held the session): nothing to wait for but
    /// the copies on the returned backups to go.
    pub fn merged_here(&mut self, client: &str) -> Vec<NodeId> {
        self.kept.remove(client).map(|k| k.backups).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        Arc::from(s)
    }

    fn export(n: u32) -> SessionExport {
        SessionExport {
            expiry_interval: n,
            subscriptions: Vec::new(),
            outgoing: Vec::new(),
            incoming_qos2: Vec::new(),
        }
    }

    /// Copy `c` (backup `b`) sent to `home`, which died; its takeover over, the copy is
    /// offered to `b` and `d`.
    fn offered_to_b_and_d() -> (MergeAcks, Instant) {
        let mut acks = MergeAcks::default();
        let now = Instant::now();
        acks.sent(Arc::from("c"), id("home"), export(1), vec![id("b")]);
        acks.node_gone(&id("home"), now);
        let offers = acks.takeover_over(Some(&id("home")), now, &[id("b"), id("d")]);
        assert_eq!(offers, vec![(Arc::from("c"), Next::Offer(vec![id("b"), id("d")]))]);
        (acks, now)
    }

    #[test]
    fn an_acknowledged_merge_is_forgotten() {
        let mut acks = MergeAcks::default();
        acks.sent(Arc::from("c"), id("home"), export(1), vec![id("b")]);
        assert_eq!(acks.answered("c", &id("other"), true), Next::Nothing);
        assert_eq!(acks.len(), 1, "only the node it went to answers for it");
        assert_eq!(acks.answered("c", &id("home"), true), Next::Merged(vec![id("b")]));
        assert_eq!(acks.len(), 0);
        let now = Instant::now();
        acks.node_gone(&id("home"), now);
        assert!(acks.takeover_over(Some(&id("home")), now, &[id("b")]).is_empty());
    }

    #[test]
    fn a_copy_handed_back_again_keeps_the_backups_of_both_times() {
        let mut acks = MergeAcks::default();
        acks.sent(Arc::from("c"), id("home"), export(1), vec![id("b")]);
        acks.sent(Arc::from("c"), id("home"), export(2), vec![id("d"), id("b")]);
        assert_eq!(acks.export("c"), Some(&export(2)));
        assert_eq!(
            acks.answered("c", &id("home"), true),
            Next::Merged(vec![id("d"), id("b")])
        );
    }

    #[test]
    fn a_copy_whose_home_died_is_offered_after_its_takeover_and_merged_by_the_holder() {
        let mut acks = MergeAcks::default();
        let now = Instant::now();
        acks.sent(Arc::from("c"), id("home"), export(1), vec![id("b")]);
        acks.node_gone(&id("home"), now);
        assert!(
            acks.takeover_over(Some(&id("elsewhere")), now, &[id("b")]).is_empty(),
            "another node's takeover does not count"
        );
        let offers = acks.takeover_over(Some(&id("home")), now, &[id("b"), id("d")]);
        assert_eq!(offers, vec![(Arc::from("c"), Next::Offer(vec![id("b"), id("d")]))]);
        assert_eq!(acks.export("c"), Some(&export(1)));
        assert_eq!(acks.answered("c", &id("b"), false), Next::Nothing);
        assert_eq!(acks.answered("c", &id("d"), true), Next::Merged(vec![id("b")]));
        assert_eq!(acks.len(), 0);
    }

    #[test]
    fn a_copy_nobody_holds_becomes_the_session_here() {
        let (mut acks, now) = offered_to_b_and_d();
        assert_eq!(acks.answered("c", &id("b"), false), Next::Nothing);
        assert_eq!(
            acks.answered("c", &id("d"), false),
            Next::Adopt(export(1), vec![id("b")])
        );
        assert_eq!(acks.len(), 0);
        // Alone: nobody to ask.
        acks.sent(Arc::from("e"), id("home"), export(2), vec![id("b")]);
        acks.node_gone(&id("home"), now);
        let alone = acks.takeover_over(Some(&id("home")), now, &[]);
        assert_eq!(alone, vec![(Arc::from("e"), Next::Adopt(export(2), vec![id("b")]))]);
    }

    #[test]
    fn an_offered_node_that_dies_is_waited_for_again_and_the_deadline_counts() {
        let (mut acks, now) = offered_to_b_and_d();
        assert_eq!(acks.answered("c", &id("b"), false), Next::Nothing);
        acks.node_gone(&id("d"), now);
        assert_eq!(
            acks.answered("c", &id("d"), true),
            Next::Nothing,
            "a dead node's late answer is not waited for any more"
        );
        assert_eq!(acks.len(), 1);
        assert!(acks.takeover_over(None, now + TAKEOVER_WAIT / 2, &[id("b")]).is_empty());
        let late = acks.takeover_over(None, now + TAKEOVER_WAIT, &[id("b")]);
        assert_eq!(late, vec![(Arc::from("c"), Next::Offer(vec![id("b")]))]);
        assert_eq!(acks.merged_here("c"), vec![id("b")]);
        assert_eq!(acks.len(), 0);
    }

    #[test]
    fn a_copy_the_dead_sender_was_handing_back_is_offered_after_its_takeover() {
        let mut acks = MergeAcks::default();
        let now = Instant::now();
        acks.orphaned(Arc::from("c"), id("sender"), export(3), now);
        assert_eq!(acks.answered("c", &id("sender"), true), Next::Nothing);
        let offers = acks.takeover_over(Some(&id("sender")), now, &[id("home")]);
        assert_eq!(offers, vec![(Arc::from("c"), Next::Offer(vec![id("home")]))]);
        assert_eq!(acks.answered("c", &id("home"), true), Next::Merged(Vec::new()));
    }
}
