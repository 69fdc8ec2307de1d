//! Durable raft storage for the ledger group: the log in append-only
//! segment files ([`super::log`], `<data dir>/raft-log/`), the current
//! snapshot in a file of its own ([`super::snapshot`],
//! `<data dir>/snapshots/`), everything else in one redb file
//! (`<data dir>/ledger.redb`).
//!
//! Layout of `ledger.redb` (table `raft_meta`, key → value):
//!
//! | key | value |
//! |---|---|
//! | `"format"` | [`FORMAT`]: marks the file as a Lockstep ledger, with its version |
//! | `"vote"` | JSON `Vote` |
//! | `"snapshot_meta"` | JSON `SnapshotMeta` of the current snapshot, which names its file |
//!
//! in the raft log directory: each entry as JSON of
//! `openraft::Entry<TypeConfig>`, the committed id (JSON `Option<LogId>`) as
//! the log's committed hint, and the last purged id (JSON `LogId`) as its
//! purge marker; in the snapshot directory: the snapshot as JSON
//! [`SnapshotPayload`], in a file named after its last log id.
//!
//! Why the split: appends are the hot path (one per proposal) and are a
//! few hundred bytes at the end of a file, which the log writes with one
//! `pwrite` and one `fdatasync`; a redb transaction costs ~8 page writes
//! before its fsync. The vote and the snapshot's meta are rare writes
//! (elections, every ~1000 entries) that must be replaced atomically, and
//! redb gives that plus the exclusive file lock that keeps a second
//! coordinator off the whole data directory (the log and the snapshot files
//! have no lock of their own: redb is opened first and closed last, see
//! [`Db`]). The snapshot itself grows with the tids the ledger keeps
//! (hundreds of bytes each), and a redb value is held whole in memory to
//! write or read it; as a file it is written, read and sent as a stream.
//! Format 2 kept it in `ledger.redb` (`"snapshot_data"`); opening such a
//! directory moves it to a file (`migrate_v2`).
//!
//! Durability: the vote and snapshot meta writes are redb transactions with
//! redb's default durability (fsync before `commit` returns), and a snapshot
//! file is fsynced and in place before the meta naming it commits; an
//! append is durable before openraft hears `IOFlushed`. The committed id is
//! a hint (see `LogStore::save_committed`) kept in memory and written after
//! the entries of the next append, in the same write. Storage calls do
//! blocking file I/O, so each runs on tokio's blocking pool, except log
//! appends under a one-thread runtime, which run inline (`append`).
//!
//! The state machine ([`StateMachine`]) is the ledger in memory plus the last
//! applied log id and membership. It is not written on every apply: on
//! restart it is rebuilt from the current snapshot, and openraft re-applies
//! the committed entries after it (`read_committed`).

use std::collections::VecDeque;
use std::io::{BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;
use std::sync::RwLockWriteGuard;

use anyhow::{anyhow, bail, Context as _};
use futures::{Stream, StreamExt as _};
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use redb::{
    Database, DatabaseError, ReadableDatabase as _, ReadableTable as _,
    TableDefinition, TableError, TableHandle as _,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::log::{RaftLog, DEFAULT_SEGMENT_BYTES};
use super::snapshot::{self, SnapshotDir, SNAPSHOT_DIR};
use super::{Entry, LogId, Snapshot, SnapshotData, StoredMembership, TypeConfig, Verdict, Vote};
use crate::ledger::LedgerState;

/// The ledger file inside the coordinator's data directory.
pub const LEDGER_FILE: &str = "ledger.redb";
/// The raft log directory inside the coordinator's data directory.
pub const LOG_DIR: &str = "raft-log";
/// Format marker stored under `raft_meta["format"]`. Version 1 kept the raft
/// log inside `ledger.redb`; version 2 keeps it in [`LOG_DIR`]; version 3
/// keeps the snapshot in [`SNAPSHOT_DIR`]; version 4 may hold
/// `LedgerEntry::Batch` entries in the log, which a version-3 build cannot
/// decode (versions 2 and 3 are upgraded on open; from 3 only the stamp
/// changes).
pub const FORMAT: &str = "lockstep-ledger/4";
const FORMAT_V3: &str = "lockstep-ledger/3";
const FORMAT_V2: &str = "lockstep-ledger/2";
const SNAPSHOT_FORMAT: &str = "lockstep-ledger-snapshot/1";
/// The first bytes of every redb file (redb's `MAGICNUMBER`).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// redb's page cache. Its default (1 GiB) keeps every page ever read or
/// written, and the pages here are mostly the snapshot's, read once on start
/// and written every ~1000 entries: cached, they would hold a copy of the
/// snapshot (hundreds of bytes per tid) for the life of the process. The
/// few pages of the table tree fit in this.
const REDB_CACHE_BYTES: usize = 64 << 10;

const K_FORMAT: &str = "format";
const K_VOTE: &str = "vote";
const K_SNAPSHOT_META: &str = "snapshot_meta";
const K_SNAPSHOT_DATA: &str = "snapshot_data";

/// What openraft's storage calls fail with.
type SErr = std::io::Error;

/// Opens (creating if new) the ledger storage in `dir`: `ledger.redb` first
/// (its lock keeps other coordinators off the directory), then the raft log.
/// Never panics on foreign or damaged files: every failure is an error
/// naming the file and what to do. The receiver reports when the returned
/// [`Db`] is closed.
pub fn open(dir: &Path) -> anyhow::Result<(Db, tokio::sync::watch::Receiver<()>, PathBuf)> {
    open_with(dir, DEFAULT_SEGMENT_BYTES)
}

/// [`open`] with a given segment size of the raft log.
pub fn open_with(dir: &Path, segment_bytes: u64) -> anyhow::Result<(Db, tokio::sync::watch::Receiver<()>, PathBuf)> {
    let (db, path, found) = open_db(dir)?;
    let fresh = found == Found::Fresh;
    let log_dir = dir.join(LOG_DIR);
    let snap_dir = dir.join(SNAPSHOT_DIR);
    for d in [&log_dir, &snap_dir] {
        let shown = d.display();
        if fresh && d.exists() && std::fs::read_dir(d).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!(
                "{shown} holds files but {} was just created: this data directory is incomplete or mixes two \
                 ledgers; restore the whole directory, or move {shown} away to start an empty ledger",
                path.display()
            );
        }
    }
    let shown = log_dir.display();
    if !fresh && !log_dir.exists() {
        let has_vote = get_meta::<Vote>(&db, K_VOTE)?.is_some();
        let has_snapshot = get_meta::<Meta>(&db, K_SNAPSHOT_META)?.is_some();
        if has_vote || has_snapshot {
            bail!(
                "{} holds a raft vote or snapshot but the raft log directory {shown} is missing: restore it from \
                 a backup or, in a multi-node group, rebuild this member from the others: RemoveNode it on the \
                 leader, start it on an empty data directory with --join instead of --peers, then AddNode it \
                 (docs/OPERATIONS.md, \"A coordinator member that cannot rejoin\")",
                path.display()
            );
        }
    }
    let snapshots = SnapshotDir::open(snap_dir)?;
    if found == Found::V2 {
        migrate_v2(&db, &snapshots, &path)?;
    }
    if found == Found::V3 {
        let wtx = db.begin_write()?;
        {
            let mut t = wtx.open_table(META)?;
            t.insert(K_FORMAT, FORMAT.as_bytes())?;
        }
        wtx.commit()?;
        tracing::info!(ledger = %path.display(), "ledger format 3 upgraded to 4 (the raft log may now hold batch entries)");
    }
    // Nothing writes yet: leftovers of interrupted writes go too.
    let current = get_meta::<Meta>(&db, K_SNAPSHOT_META)?.map(|m| snapshot::file_name(m.last_log_id.as_ref()));
    let removed = snapshots.remove_superseded(current.as_deref(), true)?;
    if !removed.is_empty() {
        tracing::info!(?removed, "superseded or incomplete snapshot files deleted on open");
    }
    let (log, report) = RaftLog::open(&log_dir, segment_bytes)?;
    if report.torn_tail.is_some() || !report.removed.is_empty() {
        tracing::warn!(?report, "raft log repaired on open");
    }
    let (tx, rx) = tokio::sync::watch::channel(());
    Ok((Db { log, snapshots, snapshot_lock: Mutex::new(()), db, _closed: tx }, rx, path))
}

/// What [`check_format`] found in `ledger.redb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// A new file (now stamped with [`FORMAT`]).
    Fresh,
    Current,
    /// [`FORMAT_V3`]: the same layout; restamped on open.
    V3,
    /// [`FORMAT_V2`]: the snapshot is still inside `ledger.redb`.
    V2,
}

/// Opens (creating if new) `<dir>/ledger.redb`, holding redb's exclusive
/// file lock for as long as the returned database lives, and says which
/// format it found.
fn open_db(dir: &Path) -> anyhow::Result<(Database, PathBuf, Found)> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "ledger data directory {} exists but is not a directory; pass a directory path",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating ledger data directory {}", dir.display()))?;
    // Before any state is read: what a killed predecessor wrote but never
    // synced (a log entry, a vote, a redb commit) must not count until it
    // is on the disk.
    lockstep_journal::pagecache::sync_filesystem(dir).with_context(|| {
        format!("writing back the filesystem of {} before reading the ledger (the disk reported an error)", dir.display())
    })?;
    let path = dir.join(LEDGER_FILE);
    let shown = path.display();

    if path.exists() {
        if path.is_dir() {
            bail!("{shown} is a directory, not a Lockstep ledger file; move it away or choose another data directory");
        }
        let mut head = Vec::with_capacity(REDB_MAGIC.len());
        std::fs::File::open(&path)
            .and_then(|f| f.take(REDB_MAGIC.len() as u64).read_to_end(&mut head))
            .with_context(|| format!("reading {shown}"))?;
        // An empty file is what a crash during the very first create leaves
        // behind; redb initialises it.
        if !head.is_empty() && head != REDB_MAGIC {
            bail!(
                "{shown} is not a Lockstep ledger (not a redb database): this data directory holds something else; \
                 move the file away or choose another data directory"
            );
        }
    }

    // redb checks its own invariants with debug assertions; a damaged file
    // must still be an error, never a crash of the coordinator.
    let opened = std::panic::catch_unwind(|| Database::builder().set_cache_size(REDB_CACHE_BYTES).create(&path));
    let db = match opened {
        Ok(Ok(db)) => db,
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) | Ok(Err(DatabaseError::LockProtocolMismatch)) => bail!(
            "{shown} is locked: another coordinator is using this ledger (two coordinators cannot share one data \
             directory); stop the other process or give this one its own data directory"
        ),
        Ok(Err(DatabaseError::UpgradeRequired(v))) => bail!(
            "{shown} uses redb file format {v}, which this build cannot open; open it with the Lockstep version \
             that wrote it, or move it away to start an empty ledger"
        ),
        Ok(Err(DatabaseError::Storage(redb::StorageError::Io(e)))) if e.kind() == std::io::ErrorKind::InvalidData => {
            bail!(
                "{shown} is not a Lockstep ledger (not a redb database: {e}); move the file away or choose another \
                 data directory"
            )
        }
        Ok(Err(e)) => bail!(
            "cannot open the ledger {shown}: {e}; if the file is damaged, restore it from a backup (or, in a \
             multi-node group, rebuild this member from the others: docs/OPERATIONS.md, \"A coordinator member \
             that cannot rejoin\")"
        ),
        Err(_) => bail!(
            "the ledger {shown} is damaged (redb failed an internal check while opening it); restore it from a \
             backup (or, in a multi-node group, rebuild this member from the others: docs/OPERATIONS.md, \"A \
             coordinator member that cannot rejoin\")"
        ),
    };
    let found = check_format(&db, &path)?;
    Ok((db, path, found))
}

/// The open ledger storage, shared by the log store and the state machine.
/// Dropping the last handle closes the log, then `ledger.redb` (releasing
/// redb's lock); the receiver from [`open`] reports when that has
/// *finished* (redb's drop does I/O, so "no handles left" alone does not
/// mean the directory can be opened again yet).
pub struct Db {
    /// Dropped first: the log is closed while redb's lock still guards it
    /// (fields drop in declaration order).
    pub log: RaftLog,
    snapshots: SnapshotDir,
    /// One snapshot commit at a time: a commit deletes the files it
    /// supersedes, which must not include one another commit is installing.
    snapshot_lock: Mutex<()>,
    db: Database,
    /// Dropped last.
    _closed: tokio::sync::watch::Sender<()>,
}

impl std::ops::Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

/// Stamps a brand-new file with [`FORMAT`]; refuses a redb file that is not
/// a Lockstep ledger or has a format version this build cannot read.
fn check_format(db: &Database, path: &Path) -> anyhow::Result<Found> {
    let shown = path.display();
    let rtx = db
        .begin_read()
        .with_context(|| format!("reading {shown}"))?;
    let tables: Vec<String> = rtx
        .list_tables()
        .with_context(|| format!("reading {shown}"))?
        .map(|t| t.name().to_string())
        .collect();
    if tables.is_empty() {
        drop(rtx);
        let wtx = db
            .begin_write()
            .with_context(|| format!("writing {shown}"))?;
        {
            let mut meta = wtx.open_table(META)?;
            meta.insert(K_FORMAT, FORMAT.as_bytes())?;
        }
        wtx.commit().with_context(|| format!("writing {shown}"))?;
        return Ok(Found::Fresh);
    }
    let not_ours = || {
        anyhow!(
            "{shown} is a redb database but not a Lockstep ledger (tables: {tables:?}); move it away or choose \
             another data directory"
        )
    };
    let meta = match rtx.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) | Err(TableError::TableTypeMismatch { .. }) => {
            return Err(not_ours())
        }
        Err(e) => return Err(anyhow!(e).context(format!("reading {shown}"))),
    };
    let found = meta
        .get(K_FORMAT)
        .with_context(|| format!("reading {shown}"))?
        .map(|v| v.value().to_vec());
    match found {
        Some(v) if v == FORMAT.as_bytes() => Ok(Found::Current),
        Some(v) if v == FORMAT_V3.as_bytes() => Ok(Found::V3),
        Some(v) if v == FORMAT_V2.as_bytes() => Ok(Found::V2),
        Some(v) => bail!(
            "{shown} has ledger format {:?}, this build supports {FORMAT:?}, {FORMAT_V3:?} and {FORMAT_V2:?} (format 1 \
             kept the raft log inside ledger.redb, format 2 in {LOG_DIR}/, format 3 also the snapshot in \
             {SNAPSHOT_DIR}/, format 4 may hold batch entries in the log); open it with the Lockstep version that \
             wrote it, or move the data directory away to start an empty ledger",
            String::from_utf8_lossy(&v)
        ),
        None => Err(not_ours()),
    }
}

// ---- small helpers ----------------------------------------------------------

/// Runs blocking storage work on tokio's blocking pool; a failure is an
/// I/O error carrying the whole context chain.
async fn blocking<T, F>(f: F) -> Result<T, SErr>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let res = match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(anyhow!("ledger storage task failed: {e}")),
    };
    res.map_err(storage_error)
}

/// A storage failure as openraft takes it: an I/O error with the whole
/// context chain as its message, and the kind of the I/O error inside, if
/// any (ENOSPC stays ENOSPC).
fn storage_error(e: anyhow::Error) -> SErr {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map_or(std::io::ErrorKind::Other, |io| io.kind());
    std::io::Error::new(kind, format!("{e:#}"))
}

/// True on a current-thread tokio runtime (the coordinator's default, see
/// `--worker-threads`).
fn on_one_thread() -> bool {
    matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
    )
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> anyhow::Result<Option<T>> {
    let rtx = db.begin_read()?;
    let meta = rtx.open_table(META)?;
    let Some(v) = meta.get(key)? else {
        return Ok(None);
    };
    let t = serde_json::from_slice(v.value())
        .with_context(|| format!("decoding raft_meta[{key:?}]"))?;
    Ok(Some(t))
}

/// Test hook: make the committed-id hint on disk `committed`, as a crash
/// before the hint's next write leaves it. Rewrites the raft log with the
/// same entries (the test's log has no purge marker).
#[cfg(test)]
pub fn rewind_committed_hint(dir: &Path, committed: Option<LogId>) -> anyhow::Result<()> {
    let log_dir = dir.join(LOG_DIR);
    let entries = {
        let (db, _, _) = open(dir)?;
        let (first, last) = (db.log.first_index(), db.log.last_index());
        match (first, last) {
            (Some(f), Some(l)) => db.log.read(f, l)?,
            _ => Vec::new(),
        }
    };
    std::fs::remove_dir_all(&log_dir)?;
    let (log, _) = RaftLog::open(&log_dir, DEFAULT_SEGMENT_BYTES)?;
    let hint = serde_json::to_vec(&committed)?;
    log.append(&entries, Some((committed.map_or(0, |c| c.index), &hint)))?;
    Ok(())
}

/// Test hook: stamp a closed data directory as format 3 (the layout of
/// format 4, before batch entries).
#[cfg(test)]
pub fn stamp_v3(dir: &Path) -> anyhow::Result<()> {
    let (db, _, _) = open(dir)?;
    let wtx = db.begin_write()?;
    {
        let mut t = wtx.open_table(META)?;
        t.insert(K_FORMAT, FORMAT_V3.as_bytes())?;
    }
    wtx.commit()?;
    Ok(())
}

/// Test hook: turn a closed format-4 data directory into the format-2
/// layout (the snapshot's bytes inside `ledger.redb`, no snapshot files).
#[cfg(test)]
pub fn downgrade_to_v2(dir: &Path) -> anyhow::Result<()> {
    let (db, _, _) = open(dir)?;
    let bytes = match current_snapshot(&db)? {
        Some((_, mut f)) => {
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            Some(b)
        }
        None => None,
    };
    let wtx = db.begin_write()?;
    {
        let mut t = wtx.open_table(META)?;
        if let Some(b) = &bytes {
            t.insert(K_SNAPSHOT_DATA, b.as_slice())?;
        }
        t.insert(K_FORMAT, FORMAT_V2.as_bytes())?;
    }
    wtx.commit()?;
    drop(db);
    std::fs::remove_dir_all(dir.join(SNAPSHOT_DIR))?;
    Ok(())
}

/// Test hook: whether `ledger.redb` still holds snapshot bytes, and its
/// format marker (read as they are, without the upgrade `open` does).
#[cfg(test)]
pub fn redb_snapshot_and_format(dir: &Path) -> anyhow::Result<(bool, String)> {
    let db = Database::open(dir.join(LEDGER_FILE))?;
    let rtx = db.begin_read()?;
    let t = rtx.open_table(META)?;
    let has_data = t.get(K_SNAPSHOT_DATA)?.is_some();
    let format = t.get(K_FORMAT)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()).unwrap_or_default();
    Ok((has_data, format))
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(value)?;
    let wtx = db.begin_write()?;
    wtx.open_table(META)?.insert(key, bytes.as_slice())?;
    // Default durability: fsync before commit returns.
    wtx.commit()?;
    Ok(())
}

fn decode_entry(index: u64, bytes: &[u8]) -> anyhow::Result<Entry> {
    serde_json::from_slice(bytes).with_context(|| format!("decoding raft log entry {index}"))
}

/// `range` as inclusive bounds; `None` if it is empty.
fn inclusive(range: (Bound<u64>, Bound<u64>)) -> Option<(u64, u64)> {
    let first = match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let last = match range.1 {
        Bound::Included(e) => e,
        Bound::Excluded(e) => e.checked_sub(1)?,
        Bound::Unbounded => u64::MAX,
    };
    (first <= last).then_some((first, last))
}

fn read_entries(log: &RaftLog, range: (Bound<u64>, Bound<u64>)) -> anyhow::Result<Vec<Entry>> {
    let Some((first, last)) = inclusive(range) else {
        return Ok(Vec::new());
    };
    log.read(first, last)?
        .iter()
        .map(|(i, bytes)| decode_entry(*i, bytes))
        .collect()
}

fn read_log_state(log: &RaftLog) -> anyhow::Result<LogState<TypeConfig>> {
    let last_purged: Option<LogId> = match log.purged() {
        Some((i, bytes)) => {
            Some(serde_json::from_slice(&bytes).with_context(|| format!("decoding the purge marker (index {i})"))?)
        }
        None => None,
    };
    let last = match log.last_index() {
        Some(l) => match log.read(l, l)?.first() {
            Some((i, bytes)) => Some(decode_entry(*i, bytes)?.log_id),
            None => bail!("raft log entry {l} vanished while reading the log state"),
        },
        None => last_purged,
    };
    Ok(LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    })
}

// ---- log storage --------------------------------------------------------------

/// The raft log, vote and committed id. Cheap to clone: it is also its own
/// `LogReader`.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    /// The committed id last given to `save_committed` and not yet written:
    /// `Some(hint)` until the next append carries it to disk.
    pending_committed: Arc<Mutex<Option<Option<LogId>>>>,
    /// The newest committed id this store knows (saved, written or read).
    committed: Arc<Mutex<Option<Option<LogId>>>>,
    /// The newest entries, as appended: openraft reads each entry back right
    /// after appending it (to apply it, and to send it to followers), and
    /// serving that from memory saves a trip to the blocking pool and a
    /// decode per proposal. Invariant: if not empty, it is a contiguous run
    /// of the log ending at the log's last entry (writes keep it so; reads
    /// of anything else go to the files).
    recent: Arc<Mutex<VecDeque<Entry>>>,
    /// Test-only fault: appends left before every append fails with ENOSPC
    /// (`RaftTuning::fault_fail_log_appends_after`).
    appends_before_fault: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// Entries kept in [`LogStore::recent`].
const RECENT_MAX: usize = 256;

impl LogStore {
    pub fn new(db: Arc<Db>) -> Self {
        LogStore {
            db,
            pending_committed: Arc::new(Mutex::new(None)),
            committed: Arc::new(Mutex::new(None)),
            recent: Arc::new(Mutex::new(VecDeque::new())),
            appends_before_fault: None,
        }
    }

    /// Test-only fault: after `n` appends, every append fails as on a full
    /// disk (nothing is written).
    pub fn failing_appends_after(mut self, n: Option<u64>) -> Self {
        self.appends_before_fault = n.map(|n| Arc::new(std::sync::atomic::AtomicU64::new(n)));
        self
    }

    /// Adds just-appended entries to `recent`.
    fn remember(&self, appended: Vec<Entry>) {
        let mut recent = lock(&self.recent);
        let follows = match (recent.back(), appended.first()) {
            (Some(b), Some(a)) => b.log_id.index + 1 == a.log_id.index,
            _ => true,
        };
        if !follows {
            // Entries the purge point covers were skipped by the log, or
            // the log restarted after a purge beyond its end.
            recent.clear();
        }
        recent.extend(appended);
        while recent.len() > RECENT_MAX {
            recent.pop_front();
        }
        // Only what the log holds: it skips entries its purge point covers.
        // `recent` is in index order, so those are at the front (this runs
        // on every append, between its fdatasync and the commit).
        let (first, last) = (self.db.log.first_index(), self.db.log.last_index());
        while recent.front().is_some_and(|e| first.is_none_or(|f| e.log_id.index < f)) {
            recent.pop_front();
        }
        if recent.back().map(|e| e.log_id.index) != last {
            recent.clear();
        }
    }

    /// The entries of `range` if they all are in `recent`.
    fn read_recent(&self, range: (Bound<u64>, Bound<u64>)) -> Option<Vec<Entry>> {
        let (first, last) = inclusive(range)?;
        let recent = lock(&self.recent);
        let (lo, hi) = (recent.front()?.log_id.index, recent.back()?.log_id.index);
        if first < lo {
            return None;
        }
        if first > hi {
            // Nothing exists past the log's last entry.
            return Some(Vec::new());
        }
        let (from, to) = ((first - lo) as usize, (last.min(hi) - lo) as usize);
        Some(recent.range(from..=to).cloned().collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, SErr> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        if let Some(hit) = self.read_recent(bounds) {
            return Ok(hit);
        }
        let db = self.db.clone();
        blocking(move || read_entries(&db.log, bounds)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, SErr> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, K_VOTE)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let db = self.db.clone();
        blocking(move || read_log_state(&db.log)).await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), SErr> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || put_meta(&db, K_VOTE, &vote)).await
    }

    /// The committed id is a hint that lets a restarted node re-apply
    /// committed entries before it hears from a leader; raft's safety never
    /// depends on it (everything it names is in the durable log, and a leader
    /// re-commits it; a restarted single node starts a new term for that,
    /// see `Ledger::bootstrap`). So it costs no I/O here: it is kept in
    /// memory and written after the entries of the next append, in the same
    /// write, at most one append behind.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), SErr> {
        *lock(&self.pending_committed) = Some(committed);
        *lock(&self.committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, SErr> {
        if let Some(c) = *lock(&self.committed) {
            return Ok(c);
        }
        let c: Option<LogId> = match self.db.log.committed() {
            Some((_, bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| SErr::new(std::io::ErrorKind::InvalidData, format!("decoding the committed hint: {e}")))?,
            None => None,
        };
        lock(&self.committed).get_or_insert(c);
        Ok(c)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(left) = &self.appends_before_fault {
            use std::sync::atomic::Ordering;
            if left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
                let full = std::io::Error::from_raw_os_error(28);
                let e = anyhow!(full).context(format!(
                    "appending to the raft log in {} (injected by --fault-fail-log-appends-after)",
                    self.db.log.dir().display()
                ));
                return Err(storage_error(e));
            }
        }
        let mut rows = Vec::new();
        let mut appended = Vec::new();
        for e in entries {
            let bytes = serde_json::to_vec(&e)
                .map_err(|err| SErr::other(format!("encoding raft log entry {}: {err}", e.log_id)))?;
            rows.push((e.log_id.index, bytes));
            appended.push(e);
        }
        let hint = lock(&self.pending_committed).take();
        let hint = hint
            .map(|h| serde_json::to_vec(&h).map(|b| (h.map_or(0, |c| c.index), b)))
            .transpose()
            .map_err(|err| SErr::other(format!("encoding the committed hint: {err}")))?;
        let db = self.db.clone();
        let write = move || -> anyhow::Result<()> {
            // The committed hint rides along: one write, one fdatasync.
            let hint = hint.as_ref().map(|(key, bytes)| (*key, bytes.as_slice()));
            Ok(db.log.append(&rows, hint)?)
        };
        let res = if on_one_thread() {
            // On a one-thread runtime a hop to the blocking pool and back
            // costs two thread wake-ups per proposal, a large part of a
            // live commit's latency. Running inline blocks the runtime for
            // the fdatasync, but what it delays is mostly the next decision,
            // which waits for this append anyway. Appends are the hot path;
            // the rare storage calls (vote, truncate, purge, snapshots) stay
            // on the pool.
            write().map_err(storage_error)
        } else {
            blocking(write).await
        };
        if res.is_ok() {
            self.remember(appended);
        }
        // Acknowledge only what is on disk.
        match &res {
            Ok(()) => callback.io_completed(Ok(())),
            Err(e) => callback.io_completed(Err(SErr::new(e.kind(), e.to_string()))),
        }
        res
    }

    /// Removes every entry after `last` (all of them if `None`).
    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), SErr> {
        let from = last.map_or(0, |l| l.index + 1);
        // Forget first: meanwhile, readers fall back to the files.
        lock(&self.recent).retain(|e| e.log_id.index < from);
        let db = self.db.clone();
        blocking(move || Ok(db.log.truncate(from)?)).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), SErr> {
        lock(&self.recent).retain(|e| e.log_id.index > log_id.index);
        let db = self.db.clone();
        blocking(move || {
            let marker = serde_json::to_vec(&log_id)?;
            Ok(db.log.purge(log_id.index, &marker)?)
        })
        .await
    }
}

// ---- state machine ------------------------------------------------------------

/// The applied state: the ledger plus what raft needs to know about it.
#[derive(Clone, Debug, Default)]
pub struct SmData {
    pub state: LedgerState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// What a snapshot's bytes hold (the meta travels beside it).
#[derive(Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub format: String,
    pub state: LedgerState,
}

/// [`SnapshotPayload`] to write, borrowing the state.
#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    format: &'a str,
    state: &'a LedgerState,
}

/// The ledger state machine. Clones share the same state (the snapshot
/// builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Db>,
    data: Arc<RwLock<SmData>>,
}

impl StateMachine {
    /// Loads the current snapshot, if any, as the starting state.
    pub fn load(db: Arc<Db>) -> anyhow::Result<Self> {
        let mut data = SmData::default();
        if let Some((meta, state)) = load_snapshot(&db)? {
            data = SmData { state, last_applied: meta.last_log_id, membership: meta.last_membership };
        }
        Ok(StateMachine {
            db,
            data: Arc::new(RwLock::new(data)),
        })
    }

    /// The shared applied state (read by `Ledger::state`).
    pub fn shared(&self) -> Arc<RwLock<SmData>> {
        self.data.clone()
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmData> {
        // `LedgerState::apply` never panics, so the lock is never poisoned
        // with a half-applied entry.
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn read_shared(data: &RwLock<SmData>) -> RwLockReadGuard<'_, SmData> {
    data.read().unwrap_or_else(|p| p.into_inner())
}

/// Decodes a snapshot as it streams in from `r` (never the whole bytes in
/// memory beside the state).
fn decode_snapshot(r: impl std::io::Read) -> anyhow::Result<LedgerState> {
    let p: SnapshotPayload = serde_json::from_reader(r).context("snapshot is not valid ledger JSON")?;
    if p.format != SNAPSHOT_FORMAT {
        bail!(
            "snapshot format {:?} is not the supported {SNAPSHOT_FORMAT:?}",
            p.format
        );
    }
    Ok(p.state)
}

type Meta = super::SnapshotMeta;

/// The current snapshot's meta and its open file.
fn current_snapshot(db: &Db) -> anyhow::Result<Option<(Meta, std::fs::File)>> {
    let Some(meta) = get_meta::<Meta>(db, K_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let file = db.snapshots.open_file(&snapshot::file_name(meta.last_log_id.as_ref()))?;
    Ok(Some((meta, file)))
}

/// The current snapshot's meta and state, decoded from its file.
fn load_snapshot(db: &Db) -> anyhow::Result<Option<(Meta, LedgerState)>> {
    let Some((meta, file)) = current_snapshot(db)? else {
        return Ok(None);
    };
    let state = decode_snapshot(BufReader::new(file)).context("decoding the current snapshot")?;
    Ok(Some((meta, state)))
}

/// Writes `state` as a snapshot into a new temporary file, streamed, and
/// fsyncs it. Returns its path and the file, positioned at its start.
fn write_state_file(db: &Db, state: &LedgerState) -> anyhow::Result<(PathBuf, std::fs::File)> {
    let (path, file) = db.snapshots.temp()?;
    let res = (|| {
        let mut w = BufWriter::new(file);
        serde_json::to_writer(&mut w, &SnapshotPayloadRef { format: SNAPSHOT_FORMAT, state })?;
        let mut file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
        anyhow::Ok(file)
    })();
    match res {
        Ok(file) => Ok((path, file)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e.context(format!("writing the snapshot file {}", path.display())))
        }
    }
}

/// Makes the complete, fsynced snapshot file `temp` the current snapshot
/// with `meta`, unless a newer one is already current (a slow build must
/// not replace a later install): then `temp` is deleted and this returns
/// `false`. The file is in place (renamed, directory fsynced) before the
/// meta naming it commits; superseded files go after (see `snapshot`).
fn commit_snapshot(db: &Db, meta: &Meta, temp: &Path) -> anyhow::Result<bool> {
    let _one_at_a_time = lock(&db.snapshot_lock);
    let meta_bytes = serde_json::to_vec(meta)?;
    let name = snapshot::file_name(meta.last_log_id.as_ref());
    let wtx = db.begin_write()?;
    {
        let mut t = wtx.open_table(META)?;
        let current: Option<Meta> = match t.get(K_SNAPSHOT_META)? {
            Some(v) => {
                Some(serde_json::from_slice(v.value()).context("decoding stored snapshot meta")?)
            }
            None => None,
        };
        if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
            drop(t);
            wtx.abort()?;
            std::fs::remove_file(temp).with_context(|| format!("deleting {}", temp.display()))?;
            return Ok(false);
        }
        db.snapshots.install(temp, &name)?;
        t.insert(K_SNAPSHOT_META, meta_bytes.as_slice())?;
    }
    wtx.commit()?;
    db.snapshots.remove_superseded(Some(&name), false)?;
    Ok(true)
}

/// Format 2 kept the snapshot's bytes in `ledger.redb`: move them to a
/// snapshot file (in place before the value goes) and stamp format 3. A
/// crash half-way redoes it on the next open.
fn migrate_v2(db: &Database, snapshots: &SnapshotDir, path: &Path) -> anyhow::Result<()> {
    if let Some(meta) = get_meta::<Meta>(db, K_SNAPSHOT_META)? {
        let rtx = db.begin_read()?;
        let t = rtx.open_table(META)?;
        let data = t
            .get(K_SNAPSHOT_DATA)?
            .ok_or_else(|| anyhow!("{}: snapshot meta present but snapshot data missing", path.display()))?;
        let (temp, mut file) = snapshots.temp()?;
        file.write_all(data.value()).and_then(|()| file.sync_all())
            .with_context(|| format!("writing the snapshot file {}", temp.display()))?;
        snapshots.install(&temp, &snapshot::file_name(meta.last_log_id.as_ref()))?;
    }
    let wtx = db.begin_write()?;
    {
        let mut t = wtx.open_table(META)?;
        t.remove(K_SNAPSHOT_DATA)?;
        t.insert(K_FORMAT, FORMAT.as_bytes())?;
    }
    wtx.commit()?;
    tracing::info!(ledger = %path.display(), "ledger format 2 upgraded to 4: the snapshot moved to {SNAPSHOT_DIR}/");
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, SErr> {
        let (state, last_applied, membership) = {
            let d = read_shared(&self.data);
            (d.state.clone(), d.last_applied, d.membership.clone())
        };
        let meta = Meta { last_log_id: last_applied, last_membership: membership };
        // Streamed into its file; `state` shares its records with the
        // state machine, so the build holds no second copy of the ledger.
        let (db, m) = (self.db.clone(), meta.clone());
        let file = blocking(move || {
            let (temp, file) = write_state_file(&db, &state)?;
            commit_snapshot(&db, &m, &temp)?;
            Ok(file)
        })
        .await?;
        Ok(Snapshot { meta, snapshot: tokio::fs::File::from_std(file) })
    }
}

impl StateMachine {
    /// A nameless file in the snapshot directory to receive a snapshot
    /// into (the peer service writes the chunks a leader sends there, then
    /// hands it to `install_snapshot`): an abandoned transfer leaves nothing
    /// behind.
    /// Whether a snapshot received from the leader decodes as a ledger
    /// (format and JSON). Checked before it is handed to openraft: a
    /// snapshot that fails in `install_snapshot` is a storage error, which
    /// stops this node's raft for good, while a transfer refused here is
    /// only sent again. The file is left at any position; the install
    /// reads it from the start.
    pub async fn check_received(file: &SnapshotData) -> Result<(), String> {
        let mut file = file.try_clone().await.map_err(|e| format!("reopening it: {e}"))?.into_std().await;
        let checked = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            file.seek(SeekFrom::Start(0))?;
            decode_snapshot(BufReader::new(&mut file)).map(|_| ())
        })
        .await;
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(e) => Err(format!("the check failed: {e}")),
        }
    }

    pub async fn receiving_file(&mut self) -> Result<SnapshotData, SErr> {
        let db = self.db.clone();
        let file = blocking(move || Ok(db.snapshots.anonymous()?)).await?;
        Ok(tokio::fs::File::from_std(file))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), SErr> {
        let d = read_shared(&self.data);
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), SErr>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, SErr>> + Unpin + OptionalSend,
    {
        while let Some(next) = entries.next().await {
            let (e, responder) = next?;
            let verdict = {
                let mut d = self.write();
                d.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => vec![Ok(())],
                    // The ledger's verdict: a rejected entry leaves the state
                    // unchanged, identically on every replica.
                    EntryPayload::Normal(entry) => d.state.apply_all(&entry),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(e.log_id), m);
                        vec![Ok(())]
                    }
                }
            };
            if let Some(r) = responder {
                r.send(Verdict(verdict));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Copies the received snapshot into a file of our own (streamed: the
    /// data may be any file, not only one `receiving_file` made), decodes
    /// the state from it, makes it current, then the state.
    async fn install_snapshot(&mut self, meta: &Meta, snapshot: SnapshotData) -> Result<(), SErr> {
        let received = snapshot.into_std().await;
        let (db, m) = (self.db.clone(), meta.clone());
        let state = blocking(move || {
            let (temp, mut file) = db.snapshots.temp()?;
            let res = (|| {
                let mut received = received;
                received.seek(SeekFrom::Start(0))?;
                std::io::copy(&mut received, &mut file)?;
                file.sync_all()?;
                file.seek(SeekFrom::Start(0))?;
                decode_snapshot(BufReader::new(&mut file))
            })();
            let state = match res {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_file(&temp);
                    return Err(e.context("installing a received snapshot"));
                }
            };
            commit_snapshot(&db, &m, &temp)?;
            Ok(state)
        })
        .await?;
        let mut d = self.write();
        *d = SmData {
            state,
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, SErr> {
        // Opened, not read: the network reads it in chunks when it sends it
        // to a follower (and on start openraft only looks at the meta).
        let db = self.db.clone();
        let snap = blocking(move || current_snapshot(&db)).await?;
        Ok(snap.map(|(meta, file)| Snapshot { meta, snapshot: tokio::fs::File::from_std(file) }))
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    async fn file_with(bytes: &[u8]) -> SnapshotData {
        let mut f = tempfile::tempfile().expect("temp file");
        f.write_all(bytes).expect("write");
        // Left at its end, as the receiver leaves it after the last chunk.
        tokio::fs::File::from_std(f)
    }

    #[tokio::test]
    async fn a_received_snapshot_is_checked_before_it_is_installed() {
        let good = serde_json::to_vec(&SnapshotPayloadRef { format: SNAPSHOT_FORMAT, state: &LedgerState::default() }).unwrap();
        assert_eq!(StateMachine::check_received(&file_with(&good).await).await, Ok(()));

        let cut = StateMachine::check_received(&file_with(&good[..good.len() / 2]).await).await.unwrap_err();
        assert!(cut.contains("not valid ledger JSON"), "{cut}");

        let foreign = serde_json::to_vec(&SnapshotPayloadRef { format: "lockstep-ledger-snapshot-v0", state: &LedgerState::default() }).unwrap();
        let foreign = StateMachine::check_received(&file_with(&foreign).await).await.unwrap_err();
        assert!(foreign.contains("is not the supported"), "{foreign}");
    }
}
