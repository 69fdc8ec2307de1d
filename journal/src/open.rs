//! Opening a journal directory: find the segments, check the sequence has
//! no holes (it may start at any number: GC deletes from the front), check
//! every header and record, rebuild the indexes, find where the records of
//! the last segment end (before its preallocated zeros, if any) and repair
//! a torn tail there. Everything else that is wrong is a hard error.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{io_err, JournalError, Result};
use crate::format::{self, light, Scan, Tail};
use crate::read::{check_header, Chain};
use crate::writer::{create_segment, sync_dir, State};
use crate::{JournalIdent, JournalOptions, OpenReport, Position};

/// What `open_dir` hands to `Journal::open`.
pub(crate) struct Opened {
    /// The directory's lock (`LOCK_FILE`), held while this is open.
    pub lock: File,
    pub state: State,
    pub report: OpenReport,
    pub file: File,
    pub header_bytes: u64,
    /// Length of the active segment file: its records end at
    /// `state.durable_end`, preallocated zeros may follow.
    pub allocated: u64,
    /// (step, tid) of the last step record (or the anchor of the segments).
    pub last: (u64, u64),
}

/// The segment the writer resumes in.
struct Active {
    seq: u64,
    /// Where its records end.
    end: u64,
    header_bytes: u64,
    /// Its file length (at least `end`).
    allocated: u64,
}

pub(crate) fn check_options(opts: &JournalOptions, ident: &JournalIdent) -> Result<()> {
    for (what, id) in [("cluster id", &ident.cluster_id), ("host id", &ident.host_id)] {
        if id.len() > format::IDENT_BYTES_MAX {
            return Err(JournalError::InvalidIdent {
                ident: ident.clone(),
                reason: format!("{what} is {} bytes, at most {} fit in a segment header", id.len(), format::IDENT_BYTES_MAX),
            });
        }
    }
    let header_bytes = (format::HEADER_BYTES_MIN + ident.cluster_id.len() + ident.host_id.len()) as u64;
    if opts.record_bytes_max == 0 || opts.record_bytes_max > format::RECORD_BYTES_LIMIT {
        return Err(JournalError::InvalidOptions(format!(
            "record_bytes_max is {}, must be 1..={}",
            opts.record_bytes_max,
            format::RECORD_BYTES_LIMIT
        )));
    }
    if opts.segment_bytes_max < header_bytes + format::FRAME_HEADER_BYTES as u64 + 1 {
        return Err(JournalError::InvalidOptions(format!(
            "segment_bytes_max is {}, must hold a header and a record (at least {})",
            opts.segment_bytes_max,
            header_bytes + format::FRAME_HEADER_BYTES as u64 + 1
        )));
    }
    if opts.group_commit_records_max == 0 {
        return Err(JournalError::InvalidOptions("group_commit_records_max must be at least 1".into()));
    }
    Ok(())
}

/// Lists segment numbers, sorted; removes leftovers of interrupted
/// segment creation.
fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    let mut removed_tmp = false;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(path = %path.display(), "ignoring a file with a non-UTF-8 name in the journal directory");
            continue;
        };
        if name.ends_with(".seg.tmp") {
            // A crash between creating and renaming a segment: it never
            // held records (records are written only after the rename).
            tracing::warn!(path = %path.display(), "removing an unfinished segment left by a crash");
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed_tmp = true;
        } else if name == LOCK_FILE {
            // Ours: the directory's lock (`lock_dir`), not a segment.
        } else if name.ends_with(".seg") {
            match format::parse_segment_file_name(name) {
                Some(seq) => seqs.push(seq),
                None => return Err(JournalError::BadSegmentName { path }),
            }
        } else {
            tracing::warn!(path = %path.display(), "ignoring a file that is not a journal segment");
        }
    }
    if removed_tmp {
        sync_dir(dir)?;
    }
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(JournalError::MissingSegment { dir: dir.to_owned(), expected: pair[0] + 1, found: pair[1] });
        }
    }
    Ok(seqs)
}

/// The file in a journal directory whose exclusive lock (`flock`) the open
/// `Journal` holds; it names the holder's process id, for the error a
/// second opener gets. The kernel drops the lock when the holder exits,
/// however it exits, so a crash leaves nothing stale behind.
pub(crate) const LOCK_FILE: &str = "LOCK";

fn lock_dir(dir: &Path) -> Result<File> {
    use std::io::{Read, Seek, Write};
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim().parse::<u32>() {
                // flock is per open file: this very process may hold it
                // (a library user opening one journal twice).
                Ok(pid) if pid == std::process::id() => format!(" by this process (pid {pid}), which already has it open"),
                Ok(pid) => format!(" by another process (pid {pid})"),
                Err(_) => " by another process".to_string(),
            };
            return Err(JournalError::Locked { path, holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    // Best effort: the pid only helps the message above.
    let _ = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| write!(file, "{}", std::process::id()));
    Ok(file)
}

pub(crate) fn open_dir(dir: &Path, ident: &JournalIdent) -> Result<Opened> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    // Before anything is read or cut: a second writer would truncate the
    // first one's tail as torn and interleave its appends.
    let lock = lock_dir(dir)?;
    let seqs = list_segments(dir)?;
    let mut report = OpenReport::default();
    let mut chain = Chain::default();
    let mut checkpoints = BTreeMap::new();
    let mut tid_first = BTreeMap::new();
    let mut tail_seg: Option<Active> = None;
    // Path and length of the previous segment, to check the next header's
    // record of it.
    let mut prev: Option<(std::path::PathBuf, u64)> = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let last = i + 1 == seqs.len();
        let path = dir.join(format::segment_file_name(seq));
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_bytes = file.metadata().map_err(io_err(&path))?.len();
        let mut header_bytes = 0;
        // Both callbacks need the chain: the header anchors it, records
        // extend it.
        let chain_cell = RefCell::new(chain);
        let mut on_header = |h: &format::SegmentHeader| {
            check_header(h, &path, seq, ident)?;
            header_bytes = h.header_bytes;
            if let Some((prev_path, prev_bytes)) = &prev {
                if h.prev_segment_bytes != *prev_bytes {
                    return Err(JournalError::Truncated {
                        path: prev_path.clone(),
                        offset: *prev_bytes,
                        expected: h.prev_segment_bytes,
                        found: *prev_bytes,
                        where_: " (the segment's length differs from what the next segment's header records)",
                    });
                }
            }
            chain_cell.borrow_mut().at_segment_start(&path, h)
        };
        let mut on_record = |offset: u64, body: &[u8]| -> Result<()> {
            let kind = format::decode_light(body).map_err(|reason| JournalError::Undecodable {
                path: path.clone(),
                offset,
                reason,
            })?;
            report.records += 1;
            match kind {
                light::Kind::Step(s) => {
                    chain_cell.borrow_mut().check(&path, offset, s.step, s.prev_step, s.tid)?;
                    tid_first.entry(s.tid).or_insert(Position { segment: seq, offset });
                }
                light::Kind::Checkpoint(c) => {
                    checkpoints.entry(c.tid).or_insert(seq);
                }
                light::Kind::Commit(_) => {}
            }
            Ok(())
        };
        crate::read::advise_sequential(&file);
        let scan = format::scan_segment(file, &path, file_bytes, last, &mut on_header, &mut on_record)?;
        chain = chain_cell.into_inner();
        match scan {
            Scan::TornHeader { available } => {
                // Only possible for the last segment. Our own creation is
                // atomic (rename), so this comes from a copy or a damaged
                // disk; the file holds no record. Recreate it below.
                tracing::warn!(path = %path.display(), bytes = available, "journal: removing a last segment whose header is torn");
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                sync_dir(dir)?;
                report.torn_tail_bytes += available;
                let step_before = chain.last.map_or(0, |(s, _)| s);
                let prev_bytes = prev.as_ref().map_or(0, |(_, b)| *b);
                let (_, hb) = create_segment(dir, seq, step_before, prev_bytes, ident)?;
                tail_seg = Some(Active { seq, end: hb, header_bytes: hb, allocated: hb });
            }
            Scan::Ok { valid_end, tail, .. } => {
                // Preallocated zeros (`Tail::Preallocated`) stay: the
                // writer overwrites them, which is what they are for.
                let mut allocated = file_bytes;
                if let Tail::Torn(torn) = tail {
                    let cut = file_bytes - valid_end;
                    tracing::warn!(
                        path = %path.display(),
                        offset = torn.offset,
                        bytes = cut,
                        damage = ?torn.kind,
                        "journal: truncating a torn tail (an append interrupted by a crash, never acknowledged)"
                    );
                    let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                    f.set_len(valid_end).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    report.torn_tail_bytes += cut;
                    allocated = valid_end;
                }
                tail_seg = Some(Active { seq, end: valid_end, header_bytes, allocated });
            }
        }
        prev = Some((path, file_bytes));
    }
    let Active { seq: active, end, header_bytes, allocated } = match tail_seg {
        Some(t) => t,
        None => {
            let (_, hb) = create_segment(dir, 1, 0, 0, ident)?;
            Active { seq: 1, end: hb, header_bytes: hb, allocated: hb }
        }
    };
    let path = dir.join(format::segment_file_name(active));
    // The writer writes at its own offsets (`end` onwards), not at the
    // file position.
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(&path))?;
    // A process killed between a batch's write and its fdatasync leaves
    // the batch in the page cache: the scan above read it, and from now on
    // it counts as written. Made durable here, before any reader sees it,
    // not by whichever later sync happens to cover it (a direct append
    // flushes only its own blocks). PostgreSQL syncs its data directory
    // after a crash for the same reason.
    file.sync_data().map_err(io_err(&path))?;
    let last = chain.last.unwrap_or((0, 0));
    let first = seqs.first().copied().unwrap_or(1);
    report.segments = (active - first + 1) as usize;
    report.last_step = last.0;
    let state = State {
        first_segment: first,
        active_segment: active,
        durable_end: end,
        last_step: last.0,
        records: report.records,
        checkpoints,
        tid_first,
        poisoned: None,
    };
    Ok(Opened { lock, state, report, file, header_bytes, allocated, last })
}
