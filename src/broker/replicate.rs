//! The broker's side of persistent-session replication: which changes go to which backups
//! (from [`Broker::finish`]), moving copies when the membership changes, and turning a dead
//! node's session copy into a session here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::handover::{self, HoldOrder};
use super::message::{Message, now_ms};
use super::session::{Effects, Session, SessionExport};
use super::{Broker, Origin, State, Timer, add_subscription, remove_session};
use crate::cluster::replication::{Replica, SessionOp};
use crate::store::records::{OutgoingRecord, SessionRecord};
use crate::store::{StoreOp, Ticket};

/// Sessions whose copies are moved per lock acquisition (and per round of acknowledgements)
/// while rebalancing.
const REBALANCE_BATCH: usize = 256;
/// How often a long rebalance logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Node ids, in rank order.
type NodeList = Vec<Arc<str>>;

/// The ops that make a full copy of `session` at a backup.
fn snapshot(session: &Session, backups: &[Arc<str>]) -> Vec<SessionOp> {
    let mut ops = vec![SessionOp::Reset {
        backups: backups.iter().map(|b| b.to_string()).collect(),
    }];
    ops.extend(
        session
            .full_record_ops()
            .iter()
            .filter_map(|op| SessionOp::of(op).map(|(_, op)| op)),
    );
    ops
}

impl Broker {
    /// Sends this operation's session changes to each session's backups (the whole session to
    /// backups that have no copy yet), and records the requests the ticket must wait for.
    pub(super) fn replicate_sessions(&self, state: &mut State, effects: &mut Effects) {
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        // Ops per client, in order.
        let mut order: Vec<Arc<str>> = Vec::new();
        let mut per_client: HashMap<Arc<str>, Vec<SessionOp>> = HashMap::new();
        for op in &effects.ops {
            if let Some((client, op)) = SessionOp::of(op) {
                per_client
                    .entry(client.clone())
                    .or_insert_with(|| {
                        order.push(client.clone());
                        Vec::new()
                    })
                    .push(op);
            }
        }
        let dropped: HashMap<Arc<str>, Vec<Arc<str>>> =
            std::mem::take(&mut effects.dropped_backups).into_iter().collect();
        for client in order {
            let Some(ops) = per_client.remove(&client) else {
                continue;
            };
            let (targets, ops) = match state.sessions.get_mut(&client) {
                Some(session) if session.is_persistent() => match &session.backups {
                    Some(backups) if effects.recopy.contains(&client) => (backups.clone(), snapshot(session, backups)),
                    Some(backups) => (backups.clone(), ops),
                    None => {
                        let backups = cluster.backups_for(&client);
                        let ops = snapshot(session, &backups);
                        session.backups = Some(backups.clone());
                        (backups, ops)
                    }
                },
                // Ended or no longer persistent: its copies go.
                Some(session) => (
                    session.backups.take().unwrap_or_default(),
                    vec![SessionOp::DeleteSession],
                ),
                None => match dropped.get(&client) {
                    Some(backups) => (backups.clone(), vec![SessionOp::DeleteSession]),
                    None => continue,
                },
            };
            if let Some(seq) = cluster.send_session_ops(&client, &targets, ops) {
                effects.awaits.push(seq);
            }
        }
    }

    /// Local persistent sessions (for the replication on leave).
    pub fn persistent_session_count(&self) -> usize {
        self.lock().sessions.values().filter(|s| s.is_persistent()).count()
    }

    /// Moves the copies of every local persistent session to the backups the current
    /// membership gives it: a full copy to each new backup, the new list to the kept ones, and
    /// "forget it" to the dropped ones that are still alive, only once the new backups have
    /// acknowledged their copies (until then the old copy is the one that counts).
    ///
    /// Works in batches, taking the lock per batch so that client traffic goes on, and waits
    /// for a batch's acknowledgements before the next: at most one batch of copies is in
    /// flight, which bounds the rate to what the backups can store.
    pub async fn rebalance(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.get().cloned() else {
            return;
        };
        let clients: Vec<Arc<str>> = {
            let state = self.lock();
            state
                .sessions
                .iter()
                .filter(|(_, s)| s.is_persistent())
                .map(|(c, _)| c.clone())
                .collect()
        };
        let started = Instant::now();
        let bytes_before = cluster.session_op_bytes();
        let alive: Vec<Arc<str>> = cluster.alive_peers();
        let mut moved = 0usize;
        let mut announced = false;
        let mut last_report = Instant::now();
        let total = clients.len();
        for (i, batch) in clients.chunks(REBALANCE_BATCH).enumerate() {
            // Copies sent in this batch, and the dropped backups to tell once they are in.
            let mut sent: Vec<u64> = Vec::new();
            let mut dropped: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
            // The new order for the backups that keep their copies, told once the added ones
            // hold theirs: told before, a kept backup would defer to a new heir that may not
            // have its copy yet if the home died now (and the session would be lost).
            // (client, kept backups, new order)
            let mut orders: Vec<(Arc<str>, NodeList, NodeList)> = Vec::new();
            {
                let mut state = self.lock();
                for client in batch {
                    let Some(session) = state.sessions.get_mut(client) else {
                        continue;
                    };
                    if !session.is_persistent() {
                        continue;
                    }
                    let new = cluster.backups_for(client);
                    let old = session.backups.clone();
                    if old.as_ref() == Some(&new) {
                        continue;
                    }
                    if !announced {
                        announced = true;
                        tracing::info!(
                            "Starting cluster replication process. This may take a while. Please do not shut down HiveMQ."
                        );
                    }
                    let old = old.unwrap_or_default();
                    let added: Vec<Arc<str>> = new.iter().filter(|n| !old.contains(n)).cloned().collect();
                    let kept: Vec<Arc<str>> = new.iter().filter(|n| old.contains(n)).cloned().collect();
                    let gone: Vec<Arc<str>> = old
                        .iter()
                        .filter(|n| !new.contains(n) && alive.contains(n))
                        .cloned()
                        .collect();
                    sent.extend(cluster.send_session_ops(client, &added, snapshot(session, &new)));
                    if !kept.is_empty() {
                        orders.push((client.clone(), kept, new.clone()));
                    }
                    if !gone.is_empty() {
                        dropped.push((client.clone(), gone));
                    }
                    session.backups = Some(new);
                    moved += 1;
                }
            }
            cluster.wait_requests(&sent).await;
            if !orders.is_empty() {
                let mut told = Vec::new();
                {
                    let state = self.lock();
                    for (client, kept, new) in orders {
                        // Unless it changed meanwhile (that change told them).
                        if state.sessions.get(&client).and_then(|s| s.backups.as_ref()) == Some(&new) {
                            let list = SessionOp::Backups(new.iter().map(|n| n.to_string()).collect());
                            told.extend(cluster.send_session_ops(&client, &kept, vec![list]));
                        }
                    }
                }
                cluster.wait_requests(&told).await;
            }
            if !dropped.is_empty() {
                let state = self.lock();
                for (client, gone) in dropped {
                    // Unless a later change made it a backup again meanwhile. (If the session
                    // moved to another node, that home's copies ignore ops from us.)
                    let current = state.sessions.get(&client).and_then(|s| s.backups.as_ref());
                    let gone: Vec<Arc<str>> = gone
                        .into_iter()
                        .filter(|g| current.is_none_or(|c| !c.contains(g)))
                        .collect();
                    cluster.send_session_ops(&client, &gone, vec![SessionOp::DeleteSession]);
                }
            }
            if announced && last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                tracing::info!(
                    "Replication is still in progress. Please do not shut down HiveMQ. ({}/{total} sessions checked, {moved} moved)",
                    ((i + 1) * REBALANCE_BATCH).min(total)
                );
            }
            tokio::task::yield_now().await;
        }
        if announced {
            tracing::info!(
                "Finished cluster replication successfully in {}ms.",
                started.elapsed().as_millis()
            );
            // (Other session changes sent meanwhile count too.)
            let bytes = cluster.session_op_bytes() - bytes_before;
            tracing::info!(
                "moved the copies of {moved} persistent session(s) to new backups ({bytes} bytes of session ops sent)"
            );
        }
    }

    /// Turns the copies of sessions whose home node is gone into sessions here, under one
    /// hold of the broker lock: disconnected, with their subscriptions (so they receive new
    /// messages), their queues and in-flight state (resent with DUP when the client reconnects),
    /// then replicated to new backups. A client id that has a session here already (it
    /// connected here meanwhile) keeps it.
    ///
    /// Still under the lock, `flush` gets the clients adopted and returns messages parked
    /// elsewhere in the meantime (see `cluster::takeover`), which are delivered to those
    /// sessions only: no publish can come between the adoption and their delivery.
    ///
    /// Then each adopted session holds what the nodes `hold` names send it directly, until
    /// their order markers came (see `handover`): a node's forwards that the dead node never
    /// acknowledged come to us after our takeover report, and must not be overtaken.
    ///
    /// Returns the clients adopted, the new local route filters (which the caller announces
    /// instead of the usual `RoutesAdded`), and the store ticket backing it all.
    pub fn adopt_replicas(
        self: &Arc<Self>,
        replicas: Vec<(Arc<str>, Replica)>,
        flush: impl FnOnce(&HashSet<Arc<str>>) -> Vec<Message>,
        mut hold: impl FnMut(&Arc<str>) -> Option<HoldOrder>,
    ) -> (HashSet<Arc<str>>, Vec<String>, Ticket) {
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut timers = Vec::new();
        let mut adopted = HashSet::new();
        for (client, replica) in replicas {
            if adopt(&mut state, &client, replica, now, &mut effects, &mut timers) {
                // A QoS 2 message can reach it twice: by our routes, and as a forward that
                // the dead node never acknowledged (`TakeoverForward`); the second is dropped.
                Broker::handover_installed(&mut state, &client);
                adopted.insert(client);
            }
        }
        // Announced by the caller, with the takeover report.
        let filters = std::mem::take(&mut state.route_changes.0);
        for message in flush(&adopted) {
            self.route(
                &mut state,
                Arc::new(message),
                Origin::Heir { clients: &adopted },
                &mut effects,
            );
        }
        for client in &adopted {
            if let Some(order) = hold(client) {
                // Nothing was held for a session that did not exist.
                let _ = state.order_holds.start(client, &order);
            }
        }
        let ticket = self.finish(&mut state, effects, timers);
        (adopted, filters, ticket)
    }
}

/// What became of a session this node took over from a node that is back after a partition.
#[derive(Debug)]
pub enum HandBack {
    /// No such session here any more.
    Nothing,
    /// Its client is connected here: this copy stays, the other side should send theirs.
    Connected,
    /// The copy was removed here; `moved` had it, for its original home to merge.
    Moved,
}

impl Broker {
    /// A node went down: each persistent session notes the QoS 2 messages it holds and those
    /// it completed lately, which a copy taken over there may still hold (see `merge_dedup`).
    pub fn note_for_merge(&self) {
        let now = now_ms();
        let mut state = self.lock();
        let State {
            sessions, merge_dedup, ..
        } = &mut *state;
        merge_dedup.forget_ended(now);
        let mut completed = merge_dedup.recent_by_client(now);
        for (client, session) in sessions.iter().filter(|(_, s)| s.is_persistent()) {
            let held = session
                .outgoing()
                .filter(|r| r.qos == 2)
                .map(|r| handover::identity(&r.message));
            let completed = completed.remove(client).unwrap_or_default();
            merge_dedup.note(client, held.chain(completed), now);
        }
    }

    /// A partition healed: the session of `client`, taken over here while its home seemed
    /// gone, goes back to that home (which kept its own copy meanwhile) unless its client is
    /// connected here. Removing it here also tells its backups to forget it.
    ///
    /// `moved` gets the copy under the broker lock once the session is gone here (the caller
    /// sends it and routes its filters to the home there, so that no publish finds neither copy
    /// and later ones follow the copy), with the session's backups: they keep their copies
    /// until the caller tells them (see `cluster::merge_acks`).
    pub fn hand_back(self: &Arc<Self>, client: &str, moved: impl FnOnce(SessionExport, Vec<Arc<str>>)) -> HandBack {
        let client: Arc<str> = Arc::from(client);
        let mut state = self.lock();
        let (export, backups) = match state.sessions.get(&client) {
            None => return HandBack::Nothing,
            Some(s) if s.connection.is_some() => return HandBack::Connected,
            Some(s) => (s.export(), s.backups.clone().unwrap_or_default()),
        };
        let mut effects = Effects::default();
        remove_session(&mut state, &client, &mut effects);
        effects.dropped_backups.retain(|(c, _)| *c != client);
        moved(export, backups);
        self.finish(&mut state, effects, Vec::new());
        HandBack::Moved
    }

    /// A partition healed, and `export` is the copy of `client`'s session that the other side
    /// kept (it took the session over while this node seemed gone): both copies got messages
    /// meanwhile. Subscriptions this session lacks are added; the copy's messages that this
    /// session does not hold are delivered after what it has (so a QoS 1 message that was
    /// pending at the partition may come twice, which QoS 1 allows). Without a session here, the
    /// copy becomes the session. Then the whole session is replicated afresh: its backups may
    /// hold the other side's copy.
    pub fn merge_session(self: &Arc<Self>, client: &str, export: SessionExport) -> Ticket {
        self.merge(client, export, true).unwrap_or_default()
    }

    /// The backups of `client`'s session here (`None`: no session here, or not replicated yet).
    pub fn session_backups(&self, client: &str) -> Option<Vec<Arc<str>>> {
        self.lock().sessions.get(client).and_then(|s| s.backups.clone())
    }

    /// [`Broker::merge_session`] if this node holds a session of `client` (`None` if not: then
    /// nothing changes).
    pub fn merge_session_if_held(self: &Arc<Self>, client: &str, export: SessionExport) -> Option<Ticket> {
        self.merge(client, export, false)
    }

    fn merge(self: &Arc<Self>, client: &str, export: SessionExport, create: bool) -> Option<Ticket> {
        let client: Arc<str> = Arc::from(client);
        let now = now_ms();
        let mut state = self.lock();
        let mut effects = Effects::default();
        let mut timers = Vec::new();
        if !state.sessions.contains_key(&client) {
            if !create {
                return None;
            }
            let record = SessionRecord {
                expiry_interval: export.expiry_interval,
                disconnected_at_ms: Some(now),
                will: None,
            };
            let outgoing = export.outgoing.into_iter().map(|o| (0, o)).collect();
            let replica = Replica {
                home: Arc::from(""),
                backups: Vec::new(),
                record: Some(record),
                subscriptions: export.subscriptions.into_iter().collect(),
                outgoing,
                incoming_qos2: export.incoming_qos2.into_iter().collect(),
            };
            adopt(&mut state, &client, replica, now, &mut effects, &mut timers);
            Broker::handover_installed(&mut state, &client);
            tracing::info!(%client, "merged a session kept on the other side of a partition (it had none here)");
            return Some(self.finish(&mut state, effects, timers));
        }
        let held: Vec<Arc<Message>> = match state.sessions.get(&client) {
            Some(s) => s.export().outgoing.into_iter().map(|o| o.message).collect(),
            None => Vec::new(),
        };
        for (filter, sub) in export.subscriptions {
            let known = state
                .sessions
                .get(&client)
                .is_some_and(|s| s.subscriptions.contains_key(&filter));
            if !known {
                add_subscription(&mut state, &client, filter, sub);
            }
        }
        let clients: HashSet<Arc<str>> = HashSet::from([client.clone()]);
        let mut added = 0usize;
        for record in export.outgoing {
            if held.iter().any(|m| **m == *record.message) {
                continue;
            }
            if record.qos == 2 && state.merge_dedup.had(&client, handover::identity(&record.message), now) {
                tracing::debug!(%client, topic = %record.message.topic, "a QoS 2 message this side had already, not merged again");
                continue;
            }
            self.route(
                &mut state,
                record.message,
                Origin::Heir { clients: &clients },
                &mut effects,
            );
            added += 1;
        }
        if let Some(session) = state.sessions.get_mut(&client)
            && session.is_persistent()
        {
            effects.ops.extend(session.full_record_ops());
            // The same backups, in the same order: the first one holds a copy already (a new
            // order would name heirs that may not have theirs yet; the rebalance moves copies
            // with care). Without backups yet, the membership gives them.
            match session.backups.as_ref().is_some_and(|b| !b.is_empty()) {
                true => effects.recopy.push(client.clone()),
                false => session.backups = None,
            }
        }
        // Messages for it that reached the other side meanwhile are redirected here, and may
        // arrive directly too.
        Broker::handover_installed(&mut state, &client);
        tracing::info!(%client, "merged the session kept on the other side of a partition ({added} message(s) added)");
        Some(self.finish(&mut state, effects, timers))
    }
}

/// Adds the session of `client` from its replica to `state` (see [`Broker::adopt_replicas`]).
fn adopt(
    state: &mut State,
    client: &Arc<str>,
    replica: Replica,
    now: u64,
    effects: &mut Effects,
    timers: &mut Vec<Timer>,
) -> bool {
    // In the same write as the session it becomes (or, if it does not, as its end).
    effects.ops.push(StoreOp::ReplicaDelete(client.clone()));
    if state.sessions.contains_key(client) {
        tracing::info!(%client, "a replicated session was not taken over: the client is here already");
        return false;
    }
    let record = match replica.record {
        Some(r) => SessionRecord {
            disconnected_at_ms: Some(r.disconnected_at_ms.unwrap_or(now)),
            will: None,
            ..r
        },
        None => {
            tracing::warn!(%client, "the replica of a session had no session record: not taken over");
            return false;
        }
    };
    // Its home had these too: merged back after a partition, they must not come twice.
    let qos2 = replica
        .outgoing
        .values()
        .filter(|r| r.qos == 2)
        .map(|r| handover::identity(&r.message));
    state.merge_dedup.note(client, qos2, now);
    let outgoing: Vec<(u64, OutgoingRecord)> = replica.outgoing.into_values().map(|r| (state.seq(), r)).collect();
    let incoming: Vec<u16> = replica.incoming_qos2.into_iter().collect();
    let session = Session::restore(client.clone(), &record, outgoing, incoming, now);
    let generation = session.generation;
    let expiry = session.expiry_interval;
    state.sessions.insert(client.clone(), Box::new(session));
    for (filter, sub) in replica.subscriptions {
        add_subscription(state, client, filter, sub);
    }
    if let Some(session) = state.sessions.get(client) {
        effects.ops.extend(session.full_record_ops());
    }
    if expiry != u32::MAX {
        let gone_for = Duration::from_millis(now.saturating_sub(record.disconnected_at_ms.unwrap_or(now)));
        timers.push(Timer::Expiry {
            client: client.clone(),
            generation,
            after: Duration::from_secs(u64::from(expiry)).saturating_sub(gone_for),
        });
    }
    true
}
