//! Durable appends with one synchronous direct write instead of a buffered
//! write plus `fdatasync`.
//!
//! A buffered append's `fdatasync` waits for two trips to the disk: the
//! data pages are written back, the thread sleeps and wakes, then a cache
//! flush is sent, and it sleeps and wakes again. A write through a
//! descriptor opened with `O_DIRECT | O_DSYNC` hands the block layer the
//! data with a "force unit access" flag (or, on a disk without it, a write
//! and a flush that the kernel sequences by itself), and the writing thread
//! wakes once. On the 2-vCPU bench VM (ext4 on virtio-blk) that is ~32 µs
//! per append against ~50 µs for `pwrite` + `fdatasync`; on the ledger it
//! is on every commit's path (docs/BENCHMARKS.md, session 25).
//!
//! Direct I/O moves whole aligned blocks from an aligned buffer, so
//! [`DirectTail`] keeps a copy of the file's last, partial block and
//! rewrites it with the new bytes after it. The bytes already there are
//! written again unchanged, so a torn write of that block cannot change
//! them (a sector holds either its old or its new content, and for those
//! bytes the two are equal); what follows the new bytes up to the block's
//! end is zeros, which the append-only files that use this already read
//! as "nothing written here" (their crate docs, "Preallocation").
//!
//! Not every filesystem takes `O_DIRECT` (older kernels' tmpfs refuses it
//! at `open`, some filesystems at the first write, both with `EINVAL`);
//! [`DirectError::Unsupported`] says so, and [`Appender`], which both the
//! journal and the coordinator's raft log write through, then warns once
//! and appends the buffered way (`pwrite`, then the caller's `fdatasync`)
//! from there on; so it does when the direct descriptor cannot be opened
//! for another reason, since nothing was written yet. A failure to read the
//! file's last block back is the file's or the disk's fault, not the
//! filesystem's answer to direct I/O: the append fails
//! ([`DirectError::TailRead`]). Reads of the file through an ordinary
//! descriptor see what was written: the kernel drops the cached pages a
//! direct write covers.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;

use tracing::warn;

/// What direct writes align to: the page size, a multiple of the logical
/// block size of any disk Linux supports.
pub const BLOCK: u64 = 4096;

/// Largest write buffer kept between appends; beyond it, freed after use.
const SCRATCH_KEPT_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// This file's filesystem does not do direct I/O; nothing was written.
    #[error("direct I/O is not supported here: {0}")]
    Unsupported(io::Error),
    /// The write failed; what reached the disk is unknown.
    #[error(transparent)]
    Io(io::Error),
    /// Reading the file's last, partial block back failed: the file or the
    /// disk is at fault, and appending another way would hide it.
    #[error("reading back the last block before appending failed: {0}")]
    TailRead(io::Error),
}

/// A descriptor of one file opened for direct, synchronous writes, and the
/// content of the file's last, partial block (see the module doc).
#[derive(Debug)]
pub struct DirectTail {
    file: File,
    /// Offset of `tail[0]`: the start of the block holding the file's end.
    block_start: u64,
    /// The file's bytes from `block_start` to its end.
    tail: Vec<u8>,
    /// Reused for each write: aligned blocks are cut out of it.
    scratch: Vec<u8>,
}

impl DirectTail {
    /// Opens `path` for direct writes at `end`, the end of its data. The
    /// bytes of the block before `end` are read through `current`, an
    /// ordinary descriptor of the same file.
    pub fn open(path: &Path, current: &File, end: u64) -> Result<DirectTail, DirectError> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(path)
            .map_err(|e| if e.raw_os_error() == Some(libc::EINVAL) { DirectError::Unsupported(e) } else { DirectError::Io(e) })?;
        let block_start = end - end % BLOCK;
        let mut tail = vec![0u8; (end - block_start) as usize];
        current.read_exact_at(&mut tail, block_start).map_err(DirectError::TailRead)?;
        Ok(DirectTail { file, block_start, tail, scratch: Vec::new() })
    }

    /// Where the next write must start: the end of the file's data.
    pub fn end(&self) -> u64 {
        self.block_start + self.tail.len() as u64
    }

    /// Writes `bytes` at [`Self::end`] and returns once they are durable;
    /// the blocks it covers are zero after them.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), DirectError> {
        let data = self.tail.len() + bytes.len();
        let total = data.div_ceil(BLOCK as usize) * BLOCK as usize;
        self.scratch.clear();
        self.scratch.resize(total + BLOCK as usize, 0);
        let at = self.scratch.as_ptr().align_offset(BLOCK as usize);
        let blocks = &mut self.scratch[at..at + total];
        blocks[..self.tail.len()].copy_from_slice(&self.tail);
        blocks[self.tail.len()..data].copy_from_slice(bytes);
        let written = loop {
            match self.file.write_at(blocks, self.block_start) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match written {
            // Refused before any I/O: the filesystem does not align or
            // support direct writes after all.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Err(DirectError::Unsupported(e)),
            Err(e) => return Err(DirectError::Io(e)),
            Ok(n) if n == total => {}
            // A direct write is all or nothing in practice; a short one
            // leaves the file's end unknown to us, so it is an error.
            Ok(n) => return Err(DirectError::Io(io::Error::other(format!("short direct write: {n} of {total} bytes")))),
        }
        let end = self.block_start + data as u64;
        let new_start = end - end % BLOCK;
        let keep = (new_start - self.block_start) as usize..data;
        self.tail.clear();
        self.tail.extend_from_slice(&blocks[keep]);
        self.block_start = new_start;
        // A rare large batch (a big pushed record) must not pin its size in
        // memory for the life of the log.
        if self.scratch.capacity() > SCRATCH_KEPT_MAX {
            self.scratch = Vec::new();
        }
        Ok(())
    }
}

/// How an [`Appender`] writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WriteMode {
    /// Direct where the filesystem takes it, else buffered.
    #[default]
    DirectIfSupported,
    /// Always `pwrite`, made durable by the caller's `fdatasync`.
    Buffered,
}

/// What [`Appender::write`] did with the bytes.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written directly: durable already.
    Durable,
    /// Written to the page cache: durable after the file's `fdatasync`.
    NeedsSync,
}

/// Where [`Appender::refuse`] makes direct I/O be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    AtOpen,
    AtWrite,
}

/// Writes the appends of an append-only log, segment after segment: each
/// directly ([`DirectTail`]) where the filesystem takes it, else buffered.
#[derive(Debug)]
pub struct Appender {
    /// Names the log in the warning of a fallback ("journal", "raft log").
    log: &'static str,
    /// The handle on the file appended to last, with the caller's key for
    /// that file; opened again whenever an append goes to another file or
    /// to another place than its end.
    direct: Option<(u64, DirectTail)>,
    /// Direct writes are off: asked for, or refused here once.
    buffered_only: bool,
    refuse: Option<Refusal>,
}

impl Appender {
    pub fn new(log: &'static str, mode: WriteMode) -> Appender {
        Appender { log, direct: None, buffered_only: mode == WriteMode::Buffered, refuse: None }
    }

    /// Writes `bytes` at `at`, the end of the data of `file` (at `path`),
    /// which the caller knows as `key` (a segment number): directly, or
    /// buffered, as the result says.
    pub fn write(&mut self, key: u64, file: &File, path: &Path, at: u64, bytes: &[u8]) -> io::Result<Written> {
        if !self.buffered_only {
            if self.direct.as_ref().is_none_or(|(k, d)| *k != key || d.end() != at) {
                self.direct = None;
                let opened = match self.refuse {
                    Some(Refusal::AtOpen) => Err(refused()),
                    _ => DirectTail::open(path, file, at),
                };
                match opened {
                    Ok(d) => self.direct = Some((key, d)),
                    // Nothing was written: the ordinary descriptor still
                    // serves (whatever kept the second one from opening,
                    // be it EINVAL or a descriptor limit).
                    Err(DirectError::Unsupported(e) | DirectError::Io(e)) => self.fall_back(path, &e),
                    // The file's own bytes could not be read: a buffered
                    // append would go ahead on a file or disk that just
                    // failed, so the append fails as its write would.
                    Err(DirectError::TailRead(e)) => return Err(e),
                }
            }
            let refuse_write = self.refuse == Some(Refusal::AtWrite);
            if let Some((_, d)) = self.direct.as_mut() {
                let res = if refuse_write { Err(refused()) } else { d.append(bytes) };
                match res {
                    Ok(()) => return Ok(Written::Durable),
                    // Refused before any I/O: written the buffered way below.
                    Err(DirectError::Unsupported(e)) => self.fall_back(path, &e),
                    Err(DirectError::Io(e) | DirectError::TailRead(e)) => {
                        self.direct = None;
                        return Err(e);
                    }
                }
            }
        }
        file.write_all_at(bytes, at)?;
        Ok(Written::NeedsSync)
    }

    /// Drops the handle: the file was cut, replaced or removed.
    pub fn forget(&mut self) {
        self.direct = None;
    }

    /// Whether the last write went directly; false before the first one
    /// and after [`Appender::forget`].
    pub fn last_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Makes this appender meet a filesystem that refuses direct I/O at
    /// `at`, for tests of the fallback (this machine's filesystems, tmpfs
    /// included, all take direct I/O on recent kernels).
    pub fn refuse(&mut self, at: Option<Refusal>) {
        self.refuse = at;
    }

    fn fall_back(&mut self, path: &Path, e: &io::Error) {
        self.direct = None;
        self.buffered_only = true;
        warn!(
            file = %path.display(),
            "{}: direct writes are not available here ({e}: the filesystem refuses O_DIRECT, or the descriptor \
             could not be opened); appending with write + fdatasync from now on, which costs each durable append \
             ~20 µs more on a typical disk",
            self.log
        );
    }
}

fn refused() -> DirectError {
    DirectError::Unsupported(io::Error::new(io::ErrorKind::InvalidInput, "direct I/O refused (test)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct I/O where the test's temporary directory supports it; `None`
    /// (the test then checks nothing more) where it does not, e.g. tmpfs.
    fn open_or_skip(path: &Path, current: &File, end: u64) -> Option<DirectTail> {
        match DirectTail::open(path, current, end) {
            Ok(d) => Some(d),
            Err(DirectError::Unsupported(e)) => {
                eprintln!("direct I/O unsupported in {}: {e}; skipping", path.display());
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// A file holding `content` in a new temporary directory, with a
    /// direct handle at its end (see `open_or_skip`).
    fn direct_after(content: &[u8]) -> Option<(tempfile::TempDir, std::path::PathBuf, DirectTail)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, content).unwrap();
        let current = File::open(&path).unwrap();
        let d = open_or_skip(&path, &current, content.len() as u64)?;
        Some((dir, path, d))
    }

    #[test]
    fn appends_land_after_the_existing_bytes_and_keep_them() {
        let Some((_dir, path, mut d)) = direct_after(b"header-of-17-byte") else { return };
        let mut expect = b"header-of-17-byte".to_vec();
        // Small appends inside one block, one that crosses into the next
        // blocks, and one that ends exactly on a block boundary.
        let sizes = [5usize, 300, 9000, 0, 1];
        for (i, n) in sizes.iter().enumerate() {
            let chunk = vec![b'a' + i as u8; *n];
            d.append(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
            assert_eq!(d.end(), expect.len() as u64);
        }
        let pad = (BLOCK as usize - expect.len() % BLOCK as usize) % BLOCK as usize;
        d.append(&vec![b'z'; pad]).unwrap();
        expect.extend(std::iter::repeat_n(b'z', pad));
        d.append(b"after the boundary").unwrap();
        expect.extend_from_slice(b"after the boundary");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..expect.len()], &expect[..], "every appended byte, in order, and nothing before them changed");
        assert!(on_disk[expect.len()..].iter().all(|&b| b == 0), "zeros after the data up to the block's end");
        assert_eq!(on_disk.len() as u64 % BLOCK, 0);

        // A second handle opened at the end carries on where the first stopped.
        let current = File::open(&path).unwrap();
        let mut again = DirectTail::open(&path, &current, expect.len() as u64).unwrap();
        again.append(b"!").unwrap();
        expect.push(b'!');
        assert_eq!(&std::fs::read(&path).unwrap()[..expect.len()], &expect[..]);
    }

    #[test]
    fn a_large_append_does_not_keep_its_buffer() {
        let Some((_dir, path, mut d)) = direct_after(b"") else { return };
        d.append(&[1u8; 100]).unwrap();
        assert!(d.scratch.capacity() > 0 && d.scratch.capacity() <= SCRATCH_KEPT_MAX, "a small write's buffer is kept");
        let big = vec![2u8; 3 << 20];
        d.append(&big).unwrap();
        assert_eq!(d.scratch.capacity(), 0, "freed after a write larger than it keeps");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[..100], &[1u8; 100][..]);
        assert_eq!(&on_disk[100..100 + big.len()], &big[..]);
    }

    /// When the direct descriptor cannot be opened (here: the path no
    /// longer names the file), the appender writes through the caller's
    /// descriptor instead, and stays with that.
    #[test]
    fn an_appender_that_cannot_open_the_direct_descriptor_writes_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut a = Appender::new("test log", WriteMode::DirectIfSupported);
        assert_eq!(a.write(1, &file, &path, 0, b"abc").unwrap(), Written::NeedsSync);
        assert!(!a.last_direct());
        assert_eq!(a.write(1, &file, &path, 3, b"de").unwrap(), Written::NeedsSync);
        let mut back = [0u8; 5];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(&back, b"abcde");
    }

    /// A last block that cannot be read back (here: through a write-only
    /// descriptor; on a real disk, EIO) fails the append instead of
    /// switching this log to buffered writes for good.
    #[test]
    fn a_tail_that_cannot_be_read_fails_the_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"seven b").unwrap();
        let write_only = OpenOptions::new().write(true).open(&path).unwrap();
        match DirectTail::open(&path, &write_only, 7) {
            Err(DirectError::TailRead(_)) => {}
            Err(DirectError::Unsupported(e)) => return eprintln!("direct I/O unsupported here: {e}; skipping"),
            other => panic!("expected a failed tail read, got {other:?}"),
        }
        let mut a = Appender::new("test log", WriteMode::DirectIfSupported);
        let e = a.write(1, &write_only, &path, 7, b"more").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"seven b", "nothing appended");
        assert!(!a.buffered_only, "a failed read is not a refusal of direct I/O");
    }

    #[test]
    fn a_missing_file_is_an_io_error_not_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let current = tempfile::tempfile().unwrap();
        let e = DirectTail::open(&dir.path().join("absent"), &current, 0).unwrap_err();
        assert!(matches!(e, DirectError::Io(ref io) if io.kind() == io::ErrorKind::NotFound), "{e}");
    }
}
