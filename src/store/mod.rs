//! Persistence: one redb database per node in the data folder.
//!
//! The broker's state lives in memory; every change that must survive a restart is sent here as
//! a [`StoreOp`], in the order the broker made it. A dedicated writer thread applies the ops in
//! batches, one write transaction per batch (group commit), and reports how far it got. A
//! connection that is about to acknowledge something waits for the [`Ticket`] of the ops that
//! back the acknowledgement, so nothing is acknowledged before it is on disk.

pub mod records;

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::watch;

use crate::broker::message::Message;
use crate::broker::retained::RetainedEntry;
use crate::cluster::hlc::Timestamp;
use crate::cluster::replication::{Replica, SessionOp};
use records::{OutgoingRecord, ReplicaHeader, RetainedVersionRecord, SessionRecord, SubscriptionRecord};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("subscriptions");
const OUTGOING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outgoing");
const INCOMING_QOS2: TableDefinition<(&str, u16), ()> = TableDefinition::new("incoming_qos2");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// Added after the first release: files written before have no such tables, and their retained
/// messages are versioned by their creation time (see [`Timestamp::legacy`]).
const RETAINED_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("retained_versions");
const RETAINED_TOMBSTONES: TableDefinition<&str, &[u8]> = TableDefinition::new("retained_tombstones");
/// Copies of other nodes' persistent sessions (this node is one of their backups), in tables
/// of their own so that they never mix with this node's sessions: a header per client (home
/// node, backups, session record), then its rows keyed like the session tables. Added after the
/// first release; a build that does not know them ignores them.
const REPLICA_SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("replica_sessions");
const REPLICA_SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("replica_subscriptions");
const REPLICA_OUTGOING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replica_outgoing");
const REPLICA_INCOMING_QOS2: TableDefinition<(&str, u16), ()> = TableDefinition::new("replica_incoming_qos2");

/// The marker that tells an Apiary data file from any other redb file. Tables added later
/// (versions, tombstones) do not change it: a file without them is read as before, and a build
/// that does not know them still opens a file that has them (see [`RetainedVersionRecord`]).
const FORMAT_KEY: &str = "format";
const FORMAT_VALUE: &[u8] = b"apiary-store-1";

/// The database file inside the data folder.
pub const DB_FILE: &str = "apiary.redb";
const LOCK_FILE: &str = "data.lock";
/// Where a clustered node moves the persistent data of its previous run (see [`set_aside`]).
pub const CLUSTER_BACKUP_DIR: &str = "cluster-backup";

/// A change to persistent state.
#[derive(Debug, Clone)]
pub enum StoreOp {
    PutSession(Arc<str>, SessionRecord),
    /// Removes the session with its subscriptions, messages and packet ids.
    DeleteSession(Arc<str>),
    PutSubscription(Arc<str>, String, SubscriptionRecord),
    DeleteSubscription(Arc<str>, String),
    PutOutgoing(Arc<str>, u64, OutgoingRecord),
    DeleteOutgoing(Arc<str>, u64),
    PutIncomingQos2(Arc<str>, u16),
    DeleteIncomingQos2(Arc<str>, u16),
    /// Sets a topic's retained message at a version (and forgets its tombstone).
    PutRetained(Arc<Message>, Timestamp),
    /// Deletes a topic's retained message, leaving a tombstone with the deletion's version.
    DeleteRetained(String, Timestamp),
    /// Forgets an expired tombstone.
    DropTombstone(String),
    /// Starts a fresh copy of another node's session (`home`), with its backups.
    ReplicaReset(Arc<str>, Arc<str>, Vec<String>),
    /// A change to a copy of another node's session.
    Replica(Arc<str>, SessionOp),
    /// Forgets the copy of a session.
    ReplicaDelete(Arc<str>),
}

/// Position in the stream of ops; waiting for it means waiting until everything submitted up
/// to it is committed.
pub type Ticket = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the data folder {path} is in use by another Apiary process (lock file {path}/{LOCK_FILE})")]
    Locked { path: PathBuf },
    #[error("cannot use the data folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the data file {path} is corrupt or not an Apiary data file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("persistence failed, nothing more is acknowledged: {0}")]
    Failed(String),
}

/// Everything read back from disk on start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: HashMap<Arc<str>, LoadedSession>,
    /// Retained messages and tombstones, each with its version.
    pub retained: Vec<RetainedEntry>,
    /// Copies of other nodes' sessions (this node was one of their backups).
    pub replicas: Vec<(Arc<str>, Replica)>,
}

impl Loaded {
    /// True when the file held no persistent data at all.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.retained.is_empty() && self.replicas.is_empty()
    }
}

#[derive(Debug)]
pub struct LoadedSession {
    pub record: SessionRecord,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// By sequence number, oldest first.
    pub outgoing: Vec<(u64, OutgoingRecord)>,
    pub incoming_qos2: Vec<u16>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    committed: Ticket,
    failed: Option<String>,
}

struct Batch {
    ticket: Ticket,
    ops: Vec<StoreOp>,
}

/// Handle to the writer thread.
pub struct Store {
    /// The last ticket handed out and the writer's queue; `None` once closed.
    submit: Mutex<(Ticket, Option<mpsc::Sender<Batch>>)>,
    progress: watch::Receiver<Progress>,
    path: PathBuf,
    /// The writer thread (it owns the database) and the folder lock, released by `close`.
    closing: Mutex<Option<(thread::JoinHandle<()>, File)>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, takes the folder lock, and reads everything back.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let io = |source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let lock = lock_folder(dir)?;
        let path = dir.join(DB_FILE);
        let corrupt = |reason: String| StoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        let existed = path.exists();
        let db = Database::create(&path).map_err(|e| corrupt(e.to_string()))?;
        init_or_check_format(&db, existed).map_err(&corrupt)?;
        let loaded = load(&db).map_err(&corrupt)?;

        let (tx, rx) = mpsc::channel();
        let (progress_tx, progress) = watch::channel(Progress::default());
        let writer_path = path.clone();
        let thread = thread::Builder::new()
            .name("apiary-store".into())
            .spawn(move || writer(db, rx, progress_tx, writer_path))
            .map_err(io)?;
        let store = Store {
            submit: Mutex::new((0, Some(tx))),
            progress,
            path,
            closing: Mutex::new(Some((thread, lock))),
        };
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues ops for the writer; they are applied in submission order.
    pub fn submit(&self, ops: Vec<StoreOp>) -> Ticket {
        self.submit_with(ops, false)
    }

    /// [`Store::submit`]; with `fresh`, a new ticket even for no ops (something else, such as
    /// a replication acknowledgement, is tied to it).
    pub fn submit_with(&self, ops: Vec<StoreOp>, fresh: bool) -> Ticket {
        let mut guard = self.submit.lock().unwrap_or_else(|e| e.into_inner());
        if ops.is_empty() && !fresh {
            return guard.0;
        }
        guard.0 += 1;
        let ticket = guard.0;
        match &guard.1 {
            // A send error means the writer has stopped after a failure; `wait` reports it.
            Some(tx) => {
                let _ = tx.send(Batch { ticket, ops });
            }
            None => tracing::error!("a change was submitted after the store was closed; it is not saved"),
        }
        ticket
    }

    /// Writes out everything submitted, closes the database and releases the folder lock.
    /// Later submissions are not saved.
    pub fn close(&self) {
        let sender = self.submit.lock().unwrap_or_else(|e| e.into_inner()).1.take();
        drop(sender);
        let closing = self.closing.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((thread, lock)) = closing {
            if thread.join().is_err() {
                tracing::error!("the store writer panicked");
            }
            drop(lock);
        }
    }

    /// Waits until everything up to `ticket` is committed.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut rx = self.progress.clone();
        let progress = rx
            .wait_for(|p| p.committed >= ticket || p.failed.is_some())
            .await
            .map_err(|_| StoreError::Failed("the store writer stopped".into()))?;
        match &progress.failed {
            Some(reason) if progress.committed < ticket => Err(StoreError::Failed(reason.clone())),
            _ => Ok(()),
        }
    }

    /// True once everything up to `ticket` is committed (no waiting).
    pub fn is_committed(&self, ticket: Ticket) -> bool {
        self.progress.borrow().committed >= ticket
    }
}

fn init_or_check_format(db: &Database, existed: bool) -> Result<(), String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let marker = match read.open_table(META) {
        Ok(table) => table
            .get(FORMAT_KEY)
            .map_err(|e| e.to_string())?
            .map(|v| v.value().to_vec()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.to_string()),
    };
    drop(read);
    match marker {
        Some(m) if m == FORMAT_VALUE => Ok(()),
        Some(m) => Err(format!("unknown format marker {:?}", String::from_utf8_lossy(&m))),
        None if existed && has_tables(db)? => Err("it holds tables but no Apiary format marker".into()),
        None => {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                meta.insert(FORMAT_KEY, FORMAT_VALUE).map_err(|e| e.to_string())?;
                // Create every table so that reads on a fresh store find them.
                txn.open_table(SESSIONS).map_err(|e| e.to_string())?;
                txn.open_table(SUBSCRIPTIONS).map_err(|e| e.to_string())?;
                txn.open_table(OUTGOING).map_err(|e| e.to_string())?;
                txn.open_table(INCOMING_QOS2).map_err(|e| e.to_string())?;
                txn.open_table(RETAINED).map_err(|e| e.to_string())?;
                txn.open_table(RETAINED_VERSIONS).map_err(|e| e.to_string())?;
                txn.open_table(RETAINED_TOMBSTONES).map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        }
    }
}

fn has_tables(db: &Database) -> Result<bool, String> {
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let mut tables = read.list_tables().map_err(|e| e.to_string())?;
    Ok(tables.next().is_some())
}

fn decode<T: serde::de::DeserializeOwned>(table: &str, key: &dyn std::fmt::Debug, bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("table {table}, key {key:?}: undecodable record ({e})"))
}

fn load(db: &Database) -> Result<Loaded, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let read = db.begin_read().map_err(|e| err(&e))?;
    let mut loaded = Loaded::default();

    let sessions = read.open_table(SESSIONS).map_err(|e| err(&e))?;
    for row in sessions.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let record: SessionRecord = decode("sessions", &k.value(), v.value())?;
        loaded.sessions.insert(
            Arc::from(k.value()),
            LoadedSession {
                record,
                subscriptions: Vec::new(),
                outgoing: Vec::new(),
                incoming_qos2: Vec::new(),
            },
        );
    }
    // Rows of a session that is not in the sessions table are left-overs of an interrupted
    // delete; they are skipped (and removed on the next delete of that client id).
    let subs = read.open_table(SUBSCRIPTIONS).map_err(|e| err(&e))?;
    for row in subs.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let (client, filter) = k.value();
        let record: SubscriptionRecord = decode("subscriptions", &(client, filter), v.value())?;
        if let Some(s) = loaded.sessions.get_mut(client) {
            s.subscriptions.push((filter.to_owned(), record));
        }
    }
    let outgoing = read.open_table(OUTGOING).map_err(|e| err(&e))?;
    for row in outgoing.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let (client, seq) = k.value();
        let record: OutgoingRecord = decode("outgoing", &(client, seq), v.value())?;
        if let Some(s) = loaded.sessions.get_mut(client) {
            s.outgoing.push((seq, record));
        }
    }
    let qos2 = read.open_table(INCOMING_QOS2).map_err(|e| err(&e))?;
    for row in qos2.iter().map_err(|e| err(&e))? {
        let (k, _) = row.map_err(|e| err(&e))?;
        let (client, pid) = k.value();
        if let Some(s) = loaded.sessions.get_mut(client) {
            s.incoming_qos2.push(pid);
        }
    }
    // A table added after the first release is missing in files written before it.
    let optional = |table| match read.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(err(&e)),
    };
    let versions = optional(RETAINED_VERSIONS)?;
    let retained = read.open_table(RETAINED).map_err(|e| err(&e))?;
    for row in retained.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let message: Message = decode("retained", &k.value(), v.value())?;
        let recorded = match &versions {
            Some(table) => match table.get(k.value()).map_err(|e| err(&e))? {
                Some(v) => Some(decode::<RetainedVersionRecord>(
                    "retained_versions",
                    &k.value(),
                    v.value(),
                )?),
                None => None,
            },
            None => None,
        };
        // A version row written for another message of the topic (by this build, before a
        // build without versions replaced the message) does not apply.
        let version = match recorded {
            Some(r) if r.created_ms == message.created_ms => r.version,
            _ => Timestamp::legacy(message.created_ms),
        };
        loaded.retained.push(RetainedEntry {
            topic: k.value().to_owned(),
            version,
            message: Some(message),
        });
    }
    if let Some(tombstones) = optional(RETAINED_TOMBSTONES)? {
        for row in tombstones.iter().map_err(|e| err(&e))? {
            let (k, v) = row.map_err(|e| err(&e))?;
            loaded.retained.push(RetainedEntry {
                topic: k.value().to_owned(),
                version: decode("retained_tombstones", &k.value(), v.value())?,
                message: None,
            });
        }
    }
    loaded.replicas = load_replicas(&read)?;
    Ok(loaded)
}

/// The replica tables (missing in files written before they existed). Rows of a client with
/// no header are left-overs of an interrupted delete and skipped.
fn load_replicas(read: &redb::ReadTransaction) -> Result<Vec<(Arc<str>, Replica)>, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let headers = match read.open_table(REPLICA_SESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(err(&e)),
    };
    let mut replicas: HashMap<Arc<str>, Replica> = HashMap::new();
    for row in headers.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let header: ReplicaHeader = decode("replica_sessions", &k.value(), v.value())?;
        let mut replica = Replica::new(Arc::from(header.home.as_str()));
        replica.backups = header.backups.iter().map(|b| Arc::from(b.as_str())).collect();
        replica.record = header.record;
        replicas.insert(Arc::from(k.value()), replica);
    }
    let subs = read.open_table(REPLICA_SUBSCRIPTIONS).map_err(|e| err(&e))?;
    for row in subs.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let (client, filter) = k.value();
        let record: SubscriptionRecord = decode("replica_subscriptions", &(client, filter), v.value())?;
        if let Some(r) = replicas.get_mut(client) {
            r.subscriptions.insert(filter.to_owned(), record);
        }
    }
    let outgoing = read.open_table(REPLICA_OUTGOING).map_err(|e| err(&e))?;
    for row in outgoing.iter().map_err(|e| err(&e))? {
        let (k, v) = row.map_err(|e| err(&e))?;
        let (client, seq) = k.value();
        let record: OutgoingRecord = decode("replica_outgoing", &(client, seq), v.value())?;
        if let Some(r) = replicas.get_mut(client) {
            r.outgoing.insert(seq, record);
        }
    }
    let qos2 = read.open_table(REPLICA_INCOMING_QOS2).map_err(|e| err(&e))?;
    for row in qos2.iter().map_err(|e| err(&e))? {
        let (k, _) = row.map_err(|e| err(&e))?;
        let (client, pid) = k.value();
        if let Some(r) = replicas.get_mut(client) {
            r.incoming_qos2.insert(pid);
        }
    }
    let mut replicas: Vec<(Arc<str>, Replica)> = replicas.into_iter().collect();
    replicas.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(replicas)
}

/// A clustered node starts on an empty store and takes its data from the cluster: the copy on
/// disk may be older than what the other nodes hold now (they took its sessions over while it
/// was away). So the data file of the previous run, if it holds anything, moves to
/// `dir/cluster-backup/` (replacing the one kept there before) together with `extra_files`
/// (the node's cluster id). Returns where it went; `None` if there was nothing to keep.
///
/// Holds the folder lock throughout: a folder another process uses is an error, not a move.
pub fn set_aside(dir: &Path, extra_files: &[&str]) -> Result<Option<PathBuf>, StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, source }
    };
    let path = dir.join(DB_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let lock = lock_folder(dir)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.clone(),
        reason,
    };
    let db = Database::create(&path).map_err(|e| corrupt(e.to_string()))?;
    init_or_check_format(&db, true).map_err(&corrupt)?;
    let empty = load(&db).map_err(&corrupt)?.is_empty();
    drop(db);
    if empty {
        drop(lock);
        return Ok(None);
    }
    let backup = dir.join(CLUSTER_BACKUP_DIR);
    if backup.exists() {
        fs::remove_dir_all(&backup).map_err(io(&backup))?;
    }
    fs::create_dir_all(&backup).map_err(io(&backup))?;
    fs::rename(&path, backup.join(DB_FILE)).map_err(io(&path))?;
    for name in extra_files {
        let file = dir.join(name);
        if file.exists() {
            fs::rename(&file, backup.join(name)).map_err(io(&file))?;
        }
    }
    File::open(&backup)
        .and_then(|d| d.sync_all())
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(io(&backup))?;
    drop(lock);
    Ok(Some(backup))
}

/// Takes the data folder's lock (held while the returned file is open).
fn lock_folder(dir: &Path) -> Result<File, StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

fn writer(db: Database, rx: mpsc::Receiver<Batch>, progress: watch::Sender<Progress>, path: PathBuf) {
    const MAX_BATCHES_PER_COMMIT: usize = 4096;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while batches.len() < MAX_BATCHES_PER_COMMIT {
            match rx.try_recv() {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let last = batches.last().map(|b| b.ticket).unwrap_or(0);
        // Tickets with nothing to write (see `submit_with`) need no transaction.
        let result = match batches.iter().all(|b| b.ops.is_empty()) {
            true => Ok(()),
            false => apply(&db, &batches),
        };
        match result {
            Ok(()) => {
                progress.send_modify(|p| p.committed = last);
            }
            Err(e) => {
                let reason = format!("writing {}: {e}", path.display());
                tracing::error!("persistence failed, no further message is acknowledged: {reason}");
                progress.send_modify(|p| p.failed = Some(reason));
                return;
            }
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| e.to_string())
}

fn apply(db: &Database, batches: &[Batch]) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|x| e(&x))?;
    {
        let mut sessions = txn.open_table(SESSIONS).map_err(|x| e(&x))?;
        let mut subs = txn.open_table(SUBSCRIPTIONS).map_err(|x| e(&x))?;
        let mut outgoing = txn.open_table(OUTGOING).map_err(|x| e(&x))?;
        let mut qos2 = txn.open_table(INCOMING_QOS2).map_err(|x| e(&x))?;
        let mut retained = txn.open_table(RETAINED).map_err(|x| e(&x))?;
        let mut versions = txn.open_table(RETAINED_VERSIONS).map_err(|x| e(&x))?;
        let mut tombstones = txn.open_table(RETAINED_TOMBSTONES).map_err(|x| e(&x))?;
        let mut replicas = ReplicaTables {
            headers: txn.open_table(REPLICA_SESSIONS).map_err(|x| e(&x))?,
            subs: txn.open_table(REPLICA_SUBSCRIPTIONS).map_err(|x| e(&x))?,
            outgoing: txn.open_table(REPLICA_OUTGOING).map_err(|x| e(&x))?,
            qos2: txn.open_table(REPLICA_INCOMING_QOS2).map_err(|x| e(&x))?,
        };
        for op in batches.iter().flat_map(|b| b.ops.iter()) {
            match op {
                StoreOp::PutSession(client, record) => {
                    sessions
                        .insert(&**client, encode(record)?.as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteSession(client) => {
                    let c: &str = client;
                    sessions.remove(c).map_err(|x| e(&x))?;
                    subs.retain_in((c, "")..=(c, "\u{10FFFF}\u{10FFFF}"), |(k, _), _| k != c)
                        .map_err(|x| e(&x))?;
                    outgoing
                        .retain_in((c, 0)..=(c, u64::MAX), |_, _| false)
                        .map_err(|x| e(&x))?;
                    qos2.retain_in((c, 0)..=(c, u16::MAX), |_, _| false)
                        .map_err(|x| e(&x))?;
                }
                StoreOp::PutSubscription(client, filter, record) => {
                    subs.insert((&**client, filter.as_str()), encode(record)?.as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteSubscription(client, filter) => {
                    subs.remove((&**client, filter.as_str())).map_err(|x| e(&x))?;
                }
                StoreOp::PutOutgoing(client, seq, record) => {
                    outgoing
                        .insert((&**client, *seq), encode(record)?.as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DeleteOutgoing(client, seq) => {
                    outgoing.remove((&**client, *seq)).map_err(|x| e(&x))?;
                }
                StoreOp::PutIncomingQos2(client, pid) => {
                    qos2.insert((&**client, *pid), ()).map_err(|x| e(&x))?;
                }
                StoreOp::DeleteIncomingQos2(client, pid) => {
                    qos2.remove((&**client, *pid)).map_err(|x| e(&x))?;
                }
                StoreOp::PutRetained(message, version) => {
                    let topic = message.topic.as_str();
                    retained
                        .insert(topic, encode(&**message)?.as_slice())
                        .map_err(|x| e(&x))?;
                    let record = RetainedVersionRecord {
                        created_ms: message.created_ms,
                        version: *version,
                    };
                    versions.insert(topic, encode(&record)?.as_slice()).map_err(|x| e(&x))?;
                    tombstones.remove(topic).map_err(|x| e(&x))?;
                }
                StoreOp::DeleteRetained(topic, version) => {
                    let topic = topic.as_str();
                    retained.remove(topic).map_err(|x| e(&x))?;
                    versions.remove(topic).map_err(|x| e(&x))?;
                    tombstones
                        .insert(topic, encode(version)?.as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::DropTombstone(topic) => {
                    tombstones.remove(topic.as_str()).map_err(|x| e(&x))?;
                }
                StoreOp::ReplicaReset(client, home, backups) => {
                    replicas.delete(client)?;
                    let header = ReplicaHeader {
                        home: home.to_string(),
                        backups: backups.clone(),
                        record: None,
                    };
                    replicas
                        .headers
                        .insert(&**client, encode(&header)?.as_slice())
                        .map_err(|x| e(&x))?;
                }
                StoreOp::Replica(client, op) => replicas.apply(client, op)?,
                StoreOp::ReplicaDelete(client) => replicas.delete(client)?,
            }
        }
    }
    txn.commit().map_err(|x| e(&x))
}

/// The replica tables, open in one write transaction.
struct ReplicaTables<'txn> {
    headers: redb::Table<'txn, &'static str, &'static [u8]>,
    subs: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
    outgoing: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    qos2: redb::Table<'txn, (&'static str, u16), ()>,
}

impl ReplicaTables<'_> {
    fn delete(&mut self, c: &str) -> Result<(), String> {
        let e = |e: redb::StorageError| e.to_string();
        self.headers.remove(c).map_err(e)?;
        self.subs
            .retain_in((c, "")..=(c, "\u{10FFFF}\u{10FFFF}"), |(k, _), _| k != c)
            .map_err(e)?;
        self.outgoing
            .retain_in((c, 0)..=(c, u64::MAX), |_, _| false)
            .map_err(e)?;
        self.qos2.retain_in((c, 0)..=(c, u16::MAX), |_, _| false).map_err(e)?;
        Ok(())
    }

    fn header(&self, c: &str) -> Result<Option<ReplicaHeader>, String> {
        match self.headers.get(c).map_err(|x| x.to_string())? {
            Some(v) => decode("replica_sessions", &c, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put_header(&mut self, c: &str, header: &ReplicaHeader) -> Result<(), String> {
        self.headers
            .insert(c, encode(header)?.as_slice())
            .map_err(|x| x.to_string())?;
        Ok(())
    }

    fn apply(&mut self, c: &str, op: &SessionOp) -> Result<(), String> {
        let e = |e: redb::StorageError| e.to_string();
        match op {
            SessionOp::Reset { .. } | SessionOp::DeleteSession => {}
            SessionOp::Backups(backups) => {
                if let Some(mut h) = self.header(c)? {
                    h.backups = backups.clone();
                    self.put_header(c, &h)?;
                }
            }
            SessionOp::PutSession(record) => {
                let mut h = self.header(c)?.unwrap_or_default();
                h.record = Some(record.clone());
                self.put_header(c, &h)?;
            }
            SessionOp::PutSubscription(f, r) => {
                self.subs.insert((c, f.as_str()), encode(r)?.as_slice()).map_err(e)?;
            }
            SessionOp::DeleteSubscription(f) => {
                self.subs.remove((c, f.as_str())).map_err(e)?;
            }
            SessionOp::PutOutgoing(seq, r) => {
                self.outgoing.insert((c, *seq), encode(r)?.as_slice()).map_err(e)?;
            }
            SessionOp::DeleteOutgoing(seq) => {
                self.outgoing.remove((c, *seq)).map_err(e)?;
            }
            SessionOp::PutIncomingQos2(p) => {
                self.qos2.insert((c, *p), ()).map_err(e)?;
            }
            SessionOp::DeleteIncomingQos2(p) => {
                self.qos2.remove((c, *p)).map_err(e)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &'static str, created_ms: u64) -> Message {
        Message::retained_for_test(topic, payload, "p", created_ms)
    }

    fn version(physical_ms: u64, logical: u32) -> Timestamp {
        Timestamp {
            physical_ms,
            logical,
            node: 7,
        }
    }

    fn sorted(mut entries: Vec<RetainedEntry>) -> Vec<RetainedEntry> {
        entries.sort_by(|a, b| a.topic.cmp(&b.topic));
        entries
    }

    /// A data file as the first release wrote it: its tables, no versions, no tombstones.
    fn first_release_file(dir: &Path, retained: &[Message]) {
        fs::create_dir_all(dir).unwrap();
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META).unwrap().insert(FORMAT_KEY, FORMAT_VALUE).unwrap();
            txn.open_table(SESSIONS).unwrap();
            txn.open_table(SUBSCRIPTIONS).unwrap();
            txn.open_table(OUTGOING).unwrap();
            txn.open_table(INCOMING_QOS2).unwrap();
            let mut table = txn.open_table(RETAINED).unwrap();
            for m in retained {
                table
                    .insert(m.topic.as_str(), postcard::to_stdvec(m).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_first_release_file_loads_with_creation_times_as_versions() {
        let dir = tempfile::tempdir().unwrap();
        first_release_file(dir.path(), &[message("a", "x", 1_234), message("b", "y", 99)]);
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let entries = sorted(loaded.retained);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].version, Timestamp::legacy(1_234));
        assert_eq!(entries[0].message, Some(message("a", "x", 1_234)));
        assert_eq!(entries[1].version, Timestamp::legacy(99));
        // Writing to it adds the new tables.
        let t = store.submit(vec![StoreOp::DeleteRetained("b".into(), version(100, 0))]);
        store.wait(t).await.unwrap();
        store.close();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let entries = sorted(loaded.retained);
        assert_eq!(entries[1].message, None);
        assert_eq!(entries[1].version, version(100, 0));
    }

    #[tokio::test]
    async fn versions_and_tombstones_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let ops = vec![
            StoreOp::PutRetained(Arc::new(message("a", "x", 10)), version(10, 2)),
            StoreOp::PutRetained(Arc::new(message("b", "y", 11)), version(11, 0)),
            StoreOp::DeleteRetained("b".into(), version(12, 0)),
            StoreOp::DeleteRetained("c".into(), version(13, 0)),
            StoreOp::DeleteRetained("d".into(), version(14, 0)),
            StoreOp::PutRetained(Arc::new(message("d", "z", 15)), version(15, 0)),
            StoreOp::DropTombstone("c".into()),
        ];
        let t = store.submit(ops);
        store.wait(t).await.unwrap();
        store.close();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let got: Vec<(String, Timestamp, bool)> = sorted(loaded.retained)
            .into_iter()
            .map(|e| (e.topic, e.version, e.message.is_some()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), version(10, 2), true),
                ("b".into(), version(12, 0), false),
                ("d".into(), version(15, 0), true),
            ]
        );
    }

    #[tokio::test]
    async fn a_version_row_of_another_message_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let t = store.submit(vec![StoreOp::PutRetained(
            Arc::new(message("a", "new build", 10)),
            version(10, 0),
        )]);
        store.wait(t).await.unwrap();
        store.close();
        // A build without versions replaces the message and leaves the version row.
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let old = message("a", "old build", 20);
                let mut table = txn.open_table(RETAINED).unwrap();
                table
                    .insert("a", postcard::to_stdvec(&old).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.retained.len(), 1);
        assert_eq!(loaded.retained[0].version, Timestamp::legacy(20));
        assert_eq!(loaded.retained[0].message.as_ref().unwrap().payload, "old build");
    }

    fn replica_ops(client: &Arc<str>) -> Vec<StoreOp> {
        let sub = SubscriptionRecord {
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        };
        let record = SessionRecord {
            expiry_interval: 300,
            disconnected_at_ms: Some(5),
            will: None,
        };
        vec![
            StoreOp::ReplicaReset(client.clone(), Arc::from("HOME"), vec!["B1".into()]),
            StoreOp::Replica(client.clone(), SessionOp::PutSession(record)),
            StoreOp::Replica(client.clone(), SessionOp::PutSubscription("a/#".into(), sub)),
            StoreOp::Replica(client.clone(), SessionOp::PutIncomingQos2(7)),
        ]
    }

    #[tokio::test]
    async fn replicas_load_back_with_their_home_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let client: Arc<str> = Arc::from("c1");
        let t = store.submit(replica_ops(&client));
        store.wait(t).await.unwrap();
        store.close();
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert!(!loaded.is_empty());
        let [(c, replica)] = &loaded.replicas[..] else {
            panic!("one replica expected: {:?}", loaded.replicas)
        };
        assert_eq!(c, &client);
        assert_eq!(&*replica.home, "HOME");
        assert_eq!(replica.backups, vec![Arc::<str>::from("B1")]);
        assert_eq!(replica.record.as_ref().map(|r| r.expiry_interval), Some(300));
        assert!(replica.subscriptions.contains_key("a/#"));
        assert!(replica.incoming_qos2.contains(&7));
    }

    #[tokio::test]
    async fn set_aside_moves_a_file_with_data_and_keeps_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(set_aside(dir.path(), &["cluster-id"]).unwrap(), None, "no file yet");
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
        store.close();
        assert_eq!(set_aside(dir.path(), &["cluster-id"]).unwrap(), None, "nothing in it");
        assert!(dir.path().join(DB_FILE).exists());

        let (store, _) = Store::open(dir.path()).unwrap();
        let t = store.submit(vec![StoreOp::PutRetained(
            Arc::new(message("a", "x", 10)),
            version(10, 0),
        )]);
        store.wait(t).await.unwrap();
        store.close();
        fs::write(dir.path().join("cluster-id"), "OLDID").unwrap();
        // A held lock is an error, not a move.
        let (held, _) = Store::open(dir.path()).unwrap();
        assert!(matches!(
            set_aside(dir.path(), &["cluster-id"]),
            Err(StoreError::Locked { .. })
        ));
        held.close();

        let backup = set_aside(dir.path(), &["cluster-id"]).unwrap().expect("moved");
        assert_eq!(backup, dir.path().join(CLUSTER_BACKUP_DIR));
        assert!(!dir.path().join(DB_FILE).exists());
        assert!(!dir.path().join("cluster-id").exists());
        assert_eq!(fs::read_to_string(backup.join("cluster-id")).unwrap(), "OLDID");
        // The backup is a whole data folder: it opens and holds the message.
        let (_kept, loaded) = Store::open(&backup).unwrap();
        assert_eq!(loaded.retained.len(), 1);
        let (_fresh, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.is_empty());
    }
}
