//! The page cache between a daemon's files and its disk: writing back
//! everything a killed predecessor left there (`syncfs`); for tests that
//! check that an open leaves nothing it counts as written only in memory,
//! counting a file's dirty pages (Linux's `cachestat`, 6.5+) and making
//! them dirty again.

use std::fs::File;
use std::io;

/// Writes back every dirty page and inode of the filesystem holding `dir`
/// and waits for it (`syncfs`). A daemon calls it before reading its state:
/// a predecessor killed between a write and its fsync left that write in
/// the page cache, where reads find it although a power cut would still
/// take it (a log record, a sink line, a state file's rename). PostgreSQL
/// syncs its data directory after a crash for the same reason.
#[cfg(target_os = "linux")]
pub fn sync_filesystem(dir: &std::path::Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let d = File::open(dir)?;
    // SAFETY: a plain syscall on a descriptor `d` keeps open.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn sync_filesystem(dir: &std::path::Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes the file at `path` again through the page cache with its own
/// bytes: its content stays, its pages become dirty, as a process killed
/// between a write and its fsync leaves them. Returns a handle to count them
/// with ([`unwritten_pages`]), or `None` where dirty pages cannot be seen
/// here (tests then have nothing to check).
pub fn redirty(path: &std::path::Path) -> io::Result<Option<File>> {
    use std::os::unix::fs::FileExt as _;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&std::fs::read(path)?, 0)?;
    Ok(match unwritten_pages(&file)? {
        Some(n) if n > 0 => Some(file),
        _ => None,
    })
}

/// `cachestat` has one number on every architecture (it came after the
/// syscall tables were unified); the libc crate does not name it for all.
#[cfg(target_os = "linux")]
const SYS_CACHESTAT: libc::c_long = 451;

#[cfg(target_os = "linux")]
#[repr(C)]
struct Range {
    off: u64,
    /// 0: to the end of the file.
    len: u64,
}

/// `struct cachestat`; only the dirty and writeback counts are read.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct Stat {
    _nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    _nr_evicted: u64,
    _nr_recently_evicted: u64,
}

/// Pages of `file` that are dirty or under writeback: written, and not yet
/// on the disk. `Ok(None)` where this cannot be told: a kernel without
/// `cachestat`, or tmpfs, whose pages are never written anywhere.
#[cfg(target_os = "linux")]
pub fn unwritten_pages(file: &File) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `statfs` fills the struct passed; the descriptor is open.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if fs.f_type == libc::TMPFS_MAGIC {
        return Ok(None);
    }
    let range = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both live and of
    // the layout `cachestat(2)` documents; flags must be 0.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range as *const Range, &mut stat as *mut Stat, 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOSYS) { Ok(None) } else { Err(e) };
    }
    Ok(Some(stat.nr_dirty + stat.nr_writeback))
}

#[cfg(not(target_os = "linux"))]
pub fn unwritten_pages(_file: &File) -> io::Result<Option<u64>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_filesystem_leaves_no_dirty_page_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, [7u8; 20_000]).unwrap();
        let Some(f) = redirty(&path).unwrap() else { return eprintln!("dirty pages cannot be seen here; skipping") };
        sync_filesystem(dir.path()).unwrap();
        assert_eq!(unwritten_pages(&f).unwrap(), Some(0));
        assert_eq!(std::fs::read(&path).unwrap(), [7u8; 20_000], "redirty keeps the content");
    }
}
