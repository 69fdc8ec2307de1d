//! Preallocation of append-only files: `fallocate` mode 0, so that a later
//! write inside the range changes no file size and allocates no block, and
//! its fdatasync has no metadata to commit. Used by the journal's writer
//! and by the coordinator's raft log, which keep the same rule for the
//! zeros this leaves after their records (crate doc, "Preallocation").

use std::fs::File;
use std::io;

/// Allocates `from..to` of `file`: zeros, and the file's size becomes at
/// least `to`. An error means the filesystem cannot (or the disk is nearly
/// full); the file is then as it was or partly grown, never shorter.
#[cfg(target_os = "linux")]
pub fn fallocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let range = |v: u64| libc::off_t::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (offset, len) = (range(from)?, range(to.saturating_sub(from))?);
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: a plain syscall on a descriptor `file` keeps open; no
        // memory is passed.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Without `fallocate`: files grow with each append.
#[cfg(not(target_os = "linux"))]
pub fn fallocate(_file: &File, _from: u64, _to: u64) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}
