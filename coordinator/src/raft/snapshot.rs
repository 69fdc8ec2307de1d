//! The files of the ledger's raft snapshots: `<data dir>/snapshots/`.
//!
//! A snapshot is written and read as a stream, never held whole in memory:
//! the builder serializes the ledger straight into a temporary file, a
//! restart decodes the state straight from the file, and the peer network
//! (`network`) sends a snapshot to a follower by reading the file in chunks. (In `ledger.redb` a
//! snapshot was one value: redb holds a value being written, or read, whole
//! in memory, and its page cache kept a copy, so every start and every
//! snapshot cost several copies of a byte string of hundreds of bytes per
//! tid.)
//!
//! This module knows files, not redb: which file is *current* is recorded
//! in `ledger.redb` with the snapshot's meta (`store`), and a file is named
//! after the snapshot's last log id ([`file_name`]), so the meta names it.
//! Crash safety, with `store` doing the redb part:
//!
//! - a new snapshot is written to `<n>.tmp`, fsynced, renamed to its final
//!   name and the directory fsynced ([`SnapshotDir::install`]) *before* the
//!   meta naming it is committed; a crash before the commit leaves the old
//!   meta naming the old file, which is still there;
//! - superseded files are deleted only after that commit
//!   ([`SnapshotDir::remove_superseded`]);
//! - on open, every file the current meta does not name is deleted
//!   (temporary files of interrupted writes, superseded ones whose deletion
//!   a crash interrupted). Files not named like ours are left alone.
//!
//! Two snapshots with the same last log id hold the same state (the state
//! machine is deterministic), so writing one over the other is harmless.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::LogId;

/// The directory inside the coordinator's data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
const FINAL_SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("raft snapshot: {op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the ledger's current snapshot {path} is missing: restore the data directory from a backup or, in a \
         multi-node group, rebuild this member from the others: RemoveNode it on the leader, start it on an empty data \
         directory with --join instead of --peers, then AddNode it (docs/OPERATIONS.md, \"A coordinator member \
         that cannot rejoin\")"
    )]
    Missing { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { op, path: path.to_path_buf(), source }
}

/// The file name of the snapshot whose last log id is `last`.
pub fn file_name(last: Option<&LogId>) -> String {
    match last {
        Some(l) => format!("{:020}-{}-{}{FINAL_SUFFIX}", l.index, l.leader_id.term, l.leader_id.node_id),
        None => format!("empty{FINAL_SUFFIX}"),
    }
}

/// Unique temporary names within this process (the data directory is
/// locked to one process).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens (creating if new) the snapshot directory `dir`.
    pub fn open(dir: PathBuf) -> Result<SnapshotDir, SnapshotError> {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(SnapshotDir { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new temporary file to write a snapshot into, open for writing.
    pub fn temp(&self) -> Result<(PathBuf, File), SnapshotError> {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{}-{n}{TEMP_SUFFIX}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        Ok((path, file))
    }

    /// A file with no name to receive a snapshot into: it disappears with
    /// its last handle, so an abandoned transfer leaves nothing behind.
    pub fn anonymous(&self) -> Result<File, SnapshotError> {
        let (path, file) = self.temp()?;
        std::fs::remove_file(&path).map_err(io_err("unlinking", &path))?;
        Ok(file)
    }

    /// Makes the complete temporary file `temp` (already fsynced) the file
    /// `name`, durably: rename, then fsync the directory.
    pub fn install(&self, temp: &Path, name: &str) -> Result<PathBuf, SnapshotError> {
        let path = self.dir.join(name);
        std::fs::rename(temp, &path).map_err(io_err("renaming into place", &path))?;
        sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Opens the snapshot file `name` for reading.
    pub fn open_file(&self, name: &str) -> Result<File, SnapshotError> {
        let path = self.dir.join(name);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SnapshotError::Missing { path: path.clone() },
            _ => SnapshotError::Io { op: "opening", path: path.clone(), source: e },
        })
    }

    /// Deletes every snapshot file but `keep`; with `temps`, temporary
    /// files too (only when no write can be under way: on open).
    pub fn remove_superseded(&self, keep: Option<&str>, temps: bool) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut removed = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let e = e.map_err(io_err("listing", &self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name.ends_with(FINAL_SUFFIX) || (temps && name.ends_with(TEMP_SUFFIX));
            if ours && Some(name) != keep {
                let path = e.path();
                std::fs::remove_file(&path).map_err(io_err("deleting", &path))?;
                removed.push(path);
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use openraft::impls::leader_id_adv::LeaderId;

    use super::*;

    #[test]
    fn temp_install_and_cleanup() {
        let d = tempfile::tempdir().unwrap();
        let s = SnapshotDir::open(d.path().join(SNAPSHOT_DIR)).unwrap();
        let id = LogId::new(LeaderId { term: 2, node_id: 1 }, 7);
        let name = file_name(Some(&id));
        assert_eq!(name, "00000000000000000007-2-1.json");

        let (tmp, mut f) = s.temp().unwrap();
        f.write_all(b"new").unwrap();
        f.sync_all().unwrap();
        let (stale_tmp, _) = s.temp().unwrap();
        std::fs::write(s.path(&file_name(None)), b"old").unwrap();
        std::fs::write(s.path("notes.txt"), b"not ours").unwrap();
        s.install(&tmp, &name).unwrap();
        assert!(!tmp.exists());

        // After a commit: superseded files go, a write under way stays.
        assert_eq!(s.remove_superseded(Some(&name), false).unwrap(), vec![s.path("empty.json")]);
        assert!(stale_tmp.exists());
        // On open: leftovers of interrupted writes go too.
        assert_eq!(s.remove_superseded(Some(&name), true).unwrap(), vec![stale_tmp]);
        assert!(s.path("notes.txt").exists(), "files not named like ours are left alone");
        let mut back = String::new();
        s.open_file(&name).unwrap().read_to_string(&mut back).unwrap();
        assert_eq!(back, "new");

        assert!(matches!(s.open_file("gone.json"), Err(SnapshotError::Missing { .. })));
        let anon = s.anonymous().unwrap();
        drop(anon);
        assert_eq!(std::fs::read_dir(s.dir()).unwrap().count(), 2, "an anonymous file has no name");
    }
}
