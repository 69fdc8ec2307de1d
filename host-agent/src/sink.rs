//! The exactly-once file sink: `<data-dir>/sink/output.jsonl`, one JSON line
//! per committed tid, `{"epoch":E,"tid":T,"rows":[...], <engine metadata>}`,
//! appended and fsynced. The runtime does not call it on its commit path:
//! the ordered background writer (`sink_writer.rs`) owns it and appends
//! groups of tids with one fdatasync each.
//!
//! Exactly once, in strictly increasing tid order, across any number of
//! crashes (DESIGN invariant 2): on open the sink reads the file back to
//! learn the last tid it emitted (cutting a torn last line, with a warning);
//! after a restore the coordinator replays committed tids again, and the
//! sink skips every tid it already holds. Outside such a replay, a tid at or
//! below the last emitted one is a bug in the caller and is refused.

use crate::engine::OutputRow;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// The sink file's name inside the sink directory.
pub const SINK_FILE_NAME: &str = "output.jsonl";

/// Longest line accepted when reading the file back (a torn or corrupt file
/// must not make the agent allocate without bound).
pub const LINE_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("sink file {path} is corrupt at line {line} (byte offset {offset}): {reason}; this is not a torn tail (more lines follow), so it was not repaired: move the file aside to inspect it")]
    Corrupt { path: PathBuf, line: u64, offset: u64, reason: String },
    #[error("bug: sink {path} asked to emit tid {tid} after tid {last} outside a replay; tids must strictly increase")]
    OutOfOrder { path: PathBuf, tid: u64, last: u64 },
}

/// What `emit` (or `SinkWriter::submit`) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmitOutcome {
    Written,
    /// Handed to the background writer (`SinkWriter::submit`); durable once
    /// `SinkWriter::sync` returns.
    Queued,
    /// The tid was already in the file, or already queued for it (a
    /// replayed, committed tid).
    AlreadyEmitted,
}

/// One committed tid's outputs, as the sink writes them (one line).
#[derive(Clone, Debug)]
pub struct SinkBatch {
    pub epoch: u64,
    pub tid: u64,
    pub rows: Vec<OutputRow>,
    /// Engine metadata, flattened into the line (`epoch`, `tid` and `rows`
    /// are reserved and dropped from it).
    pub meta: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct LineOut<'a> {
    epoch: u64,
    tid: u64,
    rows: Vec<&'a serde_json::Value>,
    #[serde(flatten)]
    meta: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct LineIn {
    tid: u64,
}

pub struct FileSink {
    path: PathBuf,
    file: File,
    len: u64,
    last_emitted: u64,
    /// True after open and after `expect_replay` until the next new tid is
    /// written: tids at or below `last_emitted` are skipped, not refused.
    replaying: bool,
    /// Test fault: the next append holding this tid fails (once), as on a
    /// full disk, writing nothing. In every build, so that the daemon can be
    /// tested against it (`--fault-fail-sink-write-at-tid`).
    #[doc(hidden)]
    pub fail_append_at: Option<u64>,
}

impl FileSink {
    /// Opens (creating) `dir/output.jsonl` and recovers its last tid.
    pub fn open(dir: &Path) -> Result<FileSink, SinkError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SinkError::Io { path: path.clone(), source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let path = dir.join(SINK_FILE_NAME);
        let existed = path.exists();
        let file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io_err(&path))?;
        if !existed {
            crate::fsutil::fsync_dir(dir).map_err(io_err(dir))?;
        }
        let (good_len, last_emitted, file_len) = Self::scan(&path, &file)?;
        if good_len < file_len {
            tracing::warn!(
                file = %path.display(),
                offset = good_len,
                cut_bytes = file_len - good_len,
                last_tid = last_emitted,
                "sink file ends in a torn line (crash while writing); cutting it off, the tid will be emitted again after replay"
            );
            file.set_len(good_len).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        } else {
            // Tids a killed process wrote but never synced are still in the
            // page cache, and the scan counted them as emitted: they would
            // be skipped on replay, and lost with a power cut. Durable
            // before they count.
            file.sync_data().map_err(io_err(&path))?;
        }
        Ok(FileSink {
            path,
            file,
            len: good_len,
            last_emitted,
            replaying: true,
            fail_append_at: None,
        })
    }

    /// Returns (length of the good prefix, last tid, file length).
    fn scan(path: &Path, file: &File) -> Result<(u64, u64, u64), SinkError> {
        let io_err = |source| SinkError::Io { path: path.to_path_buf(), source };
        let mut reader = BufReader::new(file.try_clone().map_err(io_err)?);
        let mut buf = Vec::new();
        let (mut offset, mut good_len, mut last, mut line_no) = (0u64, 0u64, 0u64, 0u64);
        // A bad line is only forgivable as the very last one.
        let mut bad: Option<(u64, u64, String)> = None;
        loop {
            buf.clear();
            let n = (&mut reader)
                .take(LINE_BYTES_MAX as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io_err)?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if let Some((line, off, reason)) = bad.take() {
                return Err(SinkError::Corrupt { path: path.to_path_buf(), line, offset: off, reason });
            }
            let terminated = buf.last() == Some(&b'\n');
            let parsed = if !terminated {
                Err("line is not terminated".to_string())
            } else {
                serde_json::from_slice::<LineIn>(&buf[..buf.len() - 1]).map_err(|e| e.to_string())
            };
            match parsed {
                Ok(line) if line.tid > last => {
                    last = line.tid;
                    good_len = offset + n as u64;
                }
                Ok(line) => {
                    return Err(SinkError::Corrupt {
                        path: path.to_path_buf(),
                        line: line_no,
                        offset,
                        reason: format!("tid {} does not follow tid {last}", line.tid),
                    })
                }
                Err(reason) => bad = Some((line_no, offset, reason)),
            }
            offset += n as u64;
        }
        Ok((good_len, last, offset))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `emit(tid)` would skip `tid` without I/O (replaying a tid the file
    /// already holds).
    pub fn already_emitted(&self, tid: u64) -> bool {
        self.replaying && tid <= self.last_emitted
    }

    /// The last tid in the file (0 = none).
    pub fn last_emitted(&self) -> u64 {
        self.last_emitted
    }

    /// A restore happened: committed tids will be replayed, and those the
    /// file already holds are to be skipped.
    pub fn expect_replay(&mut self) {
        self.replaying = true;
    }

    /// Appends tid's rows durably, or skips a tid already emitted.
    pub fn emit(
        &mut self,
        epoch: u64,
        tid: u64,
        rows: &[OutputRow],
        meta: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<EmitOutcome, SinkError> {
        if tid <= self.last_emitted {
            if self.replaying {
                return Ok(EmitOutcome::AlreadyEmitted);
            }
            return Err(SinkError::OutOfOrder { path: self.path.clone(), tid, last: self.last_emitted });
        }
        let bytes = self.encode_line(epoch, tid, rows, meta)?;
        self.write_durably(&bytes, tid)?;
        Ok(EmitOutcome::Written)
    }

    /// Appends several tids, one line each, with one write and one
    /// fdatasync: all of them or none (on error the file is cut back to
    /// where it was). Every tid must exceed the one before it and the last
    /// in the file; no tid is skipped here, since the caller
    /// (`SinkWriter`) already dropped those the file holds.
    pub fn append(&mut self, batches: &[SinkBatch]) -> Result<(), SinkError> {
        let Some(last) = batches.last() else { return Ok(()) };
        let mut bytes = Vec::new();
        let mut prev = self.last_emitted;
        for b in batches {
            if b.tid <= prev {
                return Err(SinkError::OutOfOrder { path: self.path.clone(), tid: b.tid, last: prev });
            }
            prev = b.tid;
            bytes.extend_from_slice(&self.encode_line(b.epoch, b.tid, &b.rows, &b.meta)?);
        }
        self.write_durably(&bytes, last.tid)
    }

    fn encode_line(
        &self,
        epoch: u64,
        tid: u64,
        rows: &[OutputRow],
        meta: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Vec<u8>, SinkError> {
        let mut meta = meta.clone();
        for reserved in ["epoch", "tid", "rows"] {
            meta.remove(reserved);
        }
        let line = LineOut { epoch, tid, rows: rows.iter().map(|r| &r.0).collect(), meta };
        let mut bytes = serde_json::to_vec(&line).map_err(|e| SinkError::Io { path: self.path.clone(), source: e.into() })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Writes whole lines and fdatasyncs; `last_tid` is the tid of the last
    /// line in `bytes`.
    fn write_durably(&mut self, bytes: &[u8], last_tid: u64) -> Result<(), SinkError> {
        let result = self.inject_fault(last_tid).and_then(|_| self.file.write_all(bytes)).and_then(|_| self.file.sync_data());
        if let Err(source) = result {
            // Leave no partial line behind for the next write to follow.
            let _ = self.file.set_len(self.len);
            return Err(SinkError::Io { path: self.path.clone(), source });
        }
        self.len += bytes.len() as u64;
        self.last_emitted = last_tid;
        self.replaying = false;
        Ok(())
    }

    fn inject_fault(&mut self, last_tid: u64) -> io::Result<()> {
        match self.fail_append_at {
            Some(t) if t <= last_tid && t > self.last_emitted => {
                self.fail_append_at = None;
                Err(io::Error::new(io::ErrorKind::StorageFull, format!("injected: no space left on device (tid {t})")))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows(n: i64) -> Vec<OutputRow> {
        vec![OutputRow(json!({"key": "k", "count": n, "sum": n * 10}))]
    }

    fn meta(offset: u64) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("generator_offset".into(), json!(offset));
        m
    }

    fn lines(dir: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(dir.join(SINK_FILE_NAME))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn exactly_once_across_reopen_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        assert_eq!(sink.last_emitted(), 0);
        assert_eq!(sink.emit(1, 1, &rows(1), &meta(5)).unwrap(), EmitOutcome::Written);
        assert_eq!(sink.emit(1, 3, &rows(2), &meta(9)).unwrap(), EmitOutcome::Written);
        // Outside a replay, going back is a bug.
        assert!(matches!(sink.emit(1, 3, &rows(2), &meta(9)), Err(SinkError::OutOfOrder { tid: 3, last: 3, .. })));
        drop(sink);

        let mut sink = FileSink::open(dir.path()).unwrap();
        assert_eq!(sink.last_emitted(), 3);
        // Replay after a crash: both tids come again and are skipped.
        assert_eq!(sink.emit(2, 1, &rows(1), &meta(5)).unwrap(), EmitOutcome::AlreadyEmitted);
        assert_eq!(sink.emit(2, 3, &rows(2), &meta(9)).unwrap(), EmitOutcome::AlreadyEmitted);
        assert_eq!(sink.emit(2, 4, &rows(3), &meta(12)).unwrap(), EmitOutcome::Written);
        assert!(sink.emit(2, 4, &rows(3), &meta(12)).is_err());
        // A restore without a process restart re-enables skipping.
        sink.expect_replay();
        assert_eq!(sink.emit(3, 4, &rows(3), &meta(12)).unwrap(), EmitOutcome::AlreadyEmitted);

        let got = lines(dir.path());
        assert_eq!(got.iter().map(|l| l["tid"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 3, 4]);
        assert_eq!(got[2], json!({"epoch": 2, "tid": 4, "rows": [{"key": "k", "count": 3, "sum": 30}], "generator_offset": 12}));
    }

    /// A tid a killed process wrote but never synced is in the page cache,
    /// and the next open counts it as emitted (replay skips it). The open
    /// makes it durable first. (Simulated with `pagecache::redirty`.)
    #[test]
    fn open_makes_what_the_page_cache_holds_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        sink.emit(1, 1, &rows(1), &meta(5)).unwrap();
        drop(sink);
        let Some(file) = lockstep_journal::pagecache::redirty(&dir.path().join(SINK_FILE_NAME)).unwrap() else {
            return eprintln!("dirty pages cannot be seen here; skipping");
        };
        assert_eq!(FileSink::open(dir.path()).unwrap().last_emitted(), 1);
        assert_eq!(lockstep_journal::pagecache::unwritten_pages(&file).unwrap(), Some(0), "the sink file is on disk once open");
    }

    #[test]
    fn torn_last_line_is_cut_and_the_tid_emitted_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(dir.path()).unwrap();
        sink.emit(1, 1, &rows(1), &meta(1)).unwrap();
        sink.emit(1, 2, &rows(2), &meta(2)).unwrap();
        drop(sink);
        let path = dir.path().join(SINK_FILE_NAME);
        let full = fs::read(&path).unwrap();
        // Crash in the middle of writing tid 3's line.
        let mut torn = full.clone();
        torn.extend_from_slice(br#"{"epoch":1,"tid":3,"rows":[{"ke"#);
        fs::write(&path, &torn).unwrap();

        let mut sink = FileSink::open(dir.path()).unwrap();
        assert_eq!(sink.last_emitted(), 2);
        assert_eq!(fs::read(&path).unwrap(), full, "the torn tail is cut off");
        assert_eq!(sink.emit(1, 2, &rows(2), &meta(2)).unwrap(), EmitOutcome::AlreadyEmitted);
        assert_eq!(sink.emit(1, 3, &rows(3), &meta(3)).unwrap(), EmitOutcome::Written);
        let tids: Vec<u64> = lines(dir.path()).iter().map(|l| l["tid"].as_u64().unwrap()).collect();
        assert_eq!(tids, vec![1, 2, 3]);
    }

    #[test]
    fn a_complete_but_unterminated_last_line_counts_as_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINK_FILE_NAME);
        fs::write(&path, "{\"epoch\":1,\"tid\":1,\"rows\":[]}\n{\"epoch\":1,\"tid\":2,\"rows\":[]}").unwrap();
        let sink = FileSink::open(dir.path()).unwrap();
        assert_eq!(sink.last_emitted(), 1);
    }

    #[test]
    fn corruption_before_the_last_line_is_a_hard_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SINK_FILE_NAME);
        fs::write(&path, "{\"epoch\":1,\"tid\":1,\"rows\":[]}\ngarbage\n{\"epoch\":1,\"tid\":3,\"rows\":[]}\n").unwrap();
        let err = FileSink::open(dir.path()).err().unwrap();
        assert!(matches!(err, SinkError::Corrupt { line: 2, .. }), "{err}");
        fs::write(&path, "{\"epoch\":1,\"tid\":2,\"rows\":[]}\n{\"epoch\":1,\"tid\":2,\"rows\":[]}\n").unwrap();
        let err = FileSink::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("does not follow"), "{err}");
    }
}
