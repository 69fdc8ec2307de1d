//! Small durable-file helpers: atomic replace (write temporary, fsync,
//! rename, fsync directory) and the persisted epoch / complete-checkpoint
//! numbers of a host's data directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Fsyncs a directory so that creations, renames and deletions in it are
/// durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why `dir` cannot be a daemon's `--data-dir` (`whose`: "the host's",
/// "the coordinator's"): it exists and is not a directory. The plain
/// `create_dir_all` error would only say "File exists".
pub fn data_dir_problem(dir: &Path, whose: &str) -> Option<String> {
    (dir.exists() && !dir.is_dir()).then(|| {
        format!("--data-dir {} is a file, not a directory; point it at {whose} data directory (created if missing)", dir.display())
    })
}

/// Replaces `path` with `bytes` atomically and durably: after a crash the
/// file holds either the old or the new contents, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// A `u64` kept in a one-line text file, replaced atomically (the epoch,
/// the newest complete checkpoint).
#[derive(Clone, Debug)]
pub struct DurableU64 {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DurableU64Error {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds {found:?}, not a number; if the file was damaged, restore it from a sibling host's value or remove the host's data directory and let it rejoin")]
    Parse { path: PathBuf, found: String },
    #[error("cannot durably write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl DurableU64 {
    pub fn new(path: PathBuf) -> Self {
        DurableU64 { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored value, 0 if the file does not exist.
    pub fn load(&self) -> Result<u64, DurableU64Error> {
        match fs::read_to_string(&self.path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| DurableU64Error::Parse { path: self.path.clone(), found: s.chars().take(40).collect() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(DurableU64Error::Read { path: self.path.clone(), source }),
        }
    }

    pub fn store(&self, value: u64) -> Result<(), DurableU64Error> {
        write_atomic(&self.path, format!("{value}\n").as_bytes())
            .map_err(|source| DurableU64Error::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_u64_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let v = DurableU64::new(dir.path().join("epoch"));
        assert_eq!(v.load().unwrap(), 0);
        v.store(17).unwrap();
        assert_eq!(v.load().unwrap(), 17);
        fs::write(v.path(), "x").unwrap();
        assert!(v.load().unwrap_err().to_string().contains("not a number"));
    }
}
