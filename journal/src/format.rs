//! The on-disk format: segment file names, the segment header, record
//! frames (length prefix + CRC32C + prost body), the streaming frame reader,
//! and the end-of-records rules of the last segment (zero tail, torn tail).
//! Pure byte handling; no directory logic, no threads. `decode_segment` is
//! the entry point for the fuzz targets.
//!
//! ```text
//! segment header (format version 1), little-endian:
//!   0  magic            8 bytes  "LKSTJRNL"
//!   8  format_version   u32
//!  12  header_bytes     u32      total header length, CRC included
//!  16  segment          u64      sequence number, equals the file name
//!  24  step_before      u64      last step journaled before this segment
//!                                (0 = none): anchors the step chain, so it
//!                                stays checkable after older segments are
//!                                collected
//!  32  prev_segment_bytes u64    final length of the previous segment
//!                                (0 = none): a sealed segment cut at a
//!                                record boundary is still detected
//!  40  cluster_id       u16 length + UTF-8 bytes
//!      host_id          u16 length + UTF-8 bytes
//!      header_crc       u32      CRC32C of every header byte before it
//! record frame:
//!   0  length           u32      body bytes, 1..=RECORD_BYTES_LIMIT
//!   4  crc              u32      CRC32C of the length field then the body
//!   8  body             prost-encoded lockstep.journal.v1.JournalRecord
//! ```
//!
//! The CRC covers the length prefix too, so a damaged length is caught even
//! when it happens to point at another plausible frame boundary.
//!
//! A length of 0 is never a frame, so in the last segment zeros from a
//! frame position to the end of the file are unambiguous: preallocated
//! space after the last record (crate doc, "Preallocation"), the end of the
//! records. Every other segment is exactly its header and frames.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use prost::bytes::Bytes;
use prost::Message;

use crate::error::{JournalError, Result};
use crate::{pb, JournalIdent};

pub const MAGIC: [u8; 8] = *b"LKSTJRNL";
/// The version this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// Every version this build reads (see the crate doc's versioning policy).
pub const FORMAT_VERSIONS_READ: &[u32] = &[1];

/// Longest cluster or host id a header can hold.
pub const IDENT_BYTES_MAX: usize = 1024;
const HEADER_FIXED_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8;
/// Smallest and largest possible v1 header (empty / longest ids).
pub const HEADER_BYTES_MIN: usize = HEADER_FIXED_BYTES + 2 + 2 + 4;
pub const HEADER_BYTES_MAX: usize = HEADER_BYTES_MIN + 2 * IDENT_BYTES_MAX;

/// Length prefix + CRC.
pub const FRAME_HEADER_BYTES: usize = 8;
/// Hard upper bound of a record body, whatever the options say: a reader
/// never allocates more than this (nor more than the file holds) for one
/// record, whatever a damaged length prefix claims.
pub const RECORD_BYTES_LIMIT: u32 = 256 << 20;

/// File name of segment `seq`: 20 zero-padded digits (u64::MAX fits).
pub fn segment_file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// Sequence number from a segment file name; `None` if it is not one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A decoded segment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub segment: u64,
    /// Last step journaled before this segment's first record (0 = none).
    pub step_before: u64,
    /// Final length of the previous segment (0 = none).
    pub prev_segment_bytes: u64,
    pub ident: JournalIdent,
    /// Encoded size: records start at this offset.
    pub header_bytes: u64,
}

pub fn encode_header(segment: u64, step_before: u64, prev_segment_bytes: u64, ident: &JournalIdent) -> Vec<u8> {
    assert!(ident.cluster_id.len() <= IDENT_BYTES_MAX && ident.host_id.len() <= IDENT_BYTES_MAX);
    let total = HEADER_BYTES_MIN + ident.cluster_id.len() + ident.host_id.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&step_before.to_le_bytes());
    out.extend_from_slice(&prev_segment_bytes.to_le_bytes());
    for id in [&ident.cluster_id, &ident.host_id] {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    assert_eq!(out.len(), total, "header length computed wrongly");
    out
}

/// Outcome of reading a header from the start of a segment.
#[derive(Debug)]
pub enum HeaderRead {
    Ok(SegmentHeader),
    /// The file ends inside the header (only `available` bytes).
    Torn { available: u64 },
}

/// Reads and checks a header. `file_bytes` is the file's length. Magic,
/// version, length and CRC are checked; identity is checked by the caller.
pub fn read_header(r: &mut impl Read, path: &Path, file_bytes: u64) -> Result<HeaderRead> {
    let io = |e| JournalError::Io { path: path.to_owned(), source: e };
    let prefix_bytes = 16u64;
    if file_bytes < prefix_bytes {
        // Even a short prefix must start like a journal segment, or this is
        // a foreign file, not a torn one.
        let mut head = vec![0u8; file_bytes as usize];
        r.read_exact(&mut head).map_err(io)?;
        let n = head.len().min(MAGIC.len());
        if head[..n] != MAGIC[..n] {
            return Err(JournalError::BadMagic { path: path.to_owned(), expected: MAGIC, found: head[..n].to_vec() });
        }
        return Ok(HeaderRead::Torn { available: file_bytes });
    }
    let mut buf = vec![0u8; 16];
    r.read_exact(&mut buf).map_err(io)?;
    if buf[..8] != MAGIC {
        return Err(JournalError::BadMagic { path: path.to_owned(), expected: MAGIC, found: buf[..8].to_vec() });
    }
    let version = u32::from_le_bytes(le4(&buf[8..12]));
    if !FORMAT_VERSIONS_READ.contains(&version) {
        return Err(JournalError::UnsupportedVersion { path: path.to_owned(), found: version, supported: FORMAT_VERSIONS_READ });
    }
    let header_bytes = u32::from_le_bytes(le4(&buf[12..16])) as usize;
    if !(HEADER_BYTES_MIN..=HEADER_BYTES_MAX).contains(&header_bytes) {
        return Err(JournalError::BadHeader {
            path: path.to_owned(),
            offset: 12,
            expected: format!("header length {HEADER_BYTES_MIN}..={HEADER_BYTES_MAX} bytes"),
            found: format!("{header_bytes} bytes"),
        });
    }
    if file_bytes < header_bytes as u64 {
        return Ok(HeaderRead::Torn { available: file_bytes });
    }
    buf.resize(header_bytes, 0);
    r.read_exact(&mut buf[16..]).map_err(io)?;
    let crc_at = header_bytes - 4;
    let stored = u32::from_le_bytes(le4(&buf[crc_at..]));
    let computed = crc32c(&buf[..crc_at]);
    if stored != computed {
        return Err(JournalError::BadHeader {
            path: path.to_owned(),
            offset: crc_at as u64,
            expected: format!("header CRC32C {computed:#010x}"),
            found: format!("{stored:#010x}"),
        });
    }
    let segment = u64::from_le_bytes(le8(&buf[16..24]));
    let step_before = u64::from_le_bytes(le8(&buf[24..32]));
    let prev_segment_bytes = u64::from_le_bytes(le8(&buf[32..40]));
    let mut at = 40usize;
    let mut ids = [String::new(), String::new()];
    for (i, id) in ids.iter_mut().enumerate() {
        let what = if i == 0 { "cluster id" } else { "host id" };
        let bad = |found: String| JournalError::BadHeader {
            path: path.to_owned(),
            offset: at as u64,
            expected: format!("{what} inside the header"),
            found,
        };
        if at + 2 > crc_at {
            return Err(bad("header ends before it".into()));
        }
        let len = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
        let start = at + 2;
        if start + len > crc_at {
            return Err(bad(format!("length {len} running past the header end")));
        }
        *id = String::from_utf8(buf[start..start + len].to_vec()).map_err(|_| bad("non-UTF-8 bytes".into()))?;
        at = start + len;
    }
    if at != crc_at {
        return Err(JournalError::BadHeader {
            path: path.to_owned(),
            offset: at as u64,
            expected: format!("header CRC at offset {at}"),
            found: format!("{} unexplained bytes", crc_at - at),
        });
    }
    let [cluster_id, host_id] = ids;
    Ok(HeaderRead::Ok(SegmentHeader {
        format_version: version,
        segment,
        step_before,
        prev_segment_bytes,
        ident: JournalIdent { cluster_id, host_id },
        header_bytes: header_bytes as u64,
    }))
}

fn le4(b: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    a
}

fn le8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

/// CRC32C (Castagnoli, CRC-32/ISCSI: reflected polynomial 0x82F63B78,
/// init and final XOR 0xFFFFFFFF) of `bytes`. Every CRC of the format
/// (headers, frames) goes through here and `crc32c_append`.
///
/// Computed by `crc-fast` (PCLMULQDQ / VPCLMULQDQ folding fused with the
/// SSE4.2 `crc32` instruction, chosen at run time; portable fallbacks
/// elsewhere): about 2x the `crc32c` crate on 4 KiB and larger buffers on
/// the development machine (bench section (d)). The values are the same
/// bit for bit (`tests/crc.rs` checks it against the `crc32c` crate), so
/// the on-disk format does not depend on which implementation computes it.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(bytes)
}

/// CRC32C of the bytes `crc` covers followed by `bytes` (what `crc32c`
/// gives for the concatenation).
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    // crc-fast's digest state is the CRC register before the final XOR.
    let mut digest = crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    digest.update(bytes);
    digest.finalize() as u32
}

/// CRC32C lookup table (reflected polynomial 0x82F63B78), for the 4-byte
/// length prefix of a frame: four table steps cost less than a call into
/// the SIMD implementation for 4 bytes.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// `crc32c` of 4 bytes, by table.
#[inline]
fn crc32c_4(bytes: [u8; 4]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c = CRC32C_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[inline]
fn frame_crc(len_le: [u8; 4], body: &[u8]) -> u32 {
    crc32c_append(crc32c_4(len_le), body)
}

#[cfg(test)]
#[test]
fn crc32c_of_4_bytes_by_table_is_crc32c() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..100_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = if i < 1024 { i.to_le_bytes() } else { (x as u32).to_le_bytes() };
        assert_eq!(crc32c_4(b), crc32c(&b), "{b:?}");
    }
}

/// Encodes a record as a frame. The caller has checked its size.
pub fn encode_frame(record: &pb::JournalRecord) -> Vec<u8> {
    let body_bytes = record.encoded_len();
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body_bytes);
    let len_le = (body_bytes as u32).to_le_bytes();
    out.extend_from_slice(&len_le);
    out.extend_from_slice(&[0u8; 4]);
    // Encoding into a Vec with enough capacity cannot fail.
    record.encode(&mut out).expect("Vec has capacity for the record");
    let crc = frame_crc(len_le, &out[FRAME_HEADER_BYTES..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Asserts that a frame we are about to write is what we meant to write:
/// our own bug otherwise, so this panics rather than writing garbage.
pub fn assert_frame(frame: &[u8]) {
    assert!(frame.len() > FRAME_HEADER_BYTES, "frame without body");
    let len = u32::from_le_bytes(le4(frame));
    assert_eq!(len as usize, frame.len() - FRAME_HEADER_BYTES, "frame length prefix disagrees with its body");
    let stored = u32::from_le_bytes(le4(&frame[4..]));
    assert_eq!(stored, frame_crc(le4(frame), &frame[FRAME_HEADER_BYTES..]), "frame CRC disagrees with its body");
}

/// Why a frame could not be read at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TornKind {
    /// Fewer than a frame header's bytes left.
    ShortFrameHeader { available: u64 },
    /// Length prefix zero or above the limit.
    BadLength { length: u64, limit: u64, available: u64 },
    /// The body runs past the end.
    ShortBody { length: u64, available: u64 },
    BadCrc { stored: u32, computed: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Torn {
    pub offset: u64,
    pub kind: TornKind,
}

impl Torn {
    /// The hard error for this damage; `where_` says in what context it was
    /// found (e.g. " (not at the end of the last segment)").
    pub fn into_error(self, path: &Path, where_: &'static str) -> JournalError {
        let path = path.to_owned();
        let offset = self.offset;
        match self.kind {
            TornKind::ShortFrameHeader { available } => JournalError::Truncated {
                path,
                offset,
                expected: FRAME_HEADER_BYTES as u64,
                found: available,
                where_,
            },
            TornKind::BadLength { length, limit, available } => {
                JournalError::BadLength { path, offset, found: length, limit, available, where_ }
            }
            TornKind::ShortBody { length, available } => JournalError::Truncated {
                path,
                offset,
                expected: FRAME_HEADER_BYTES as u64 + length,
                found: available,
                where_,
            },
            TornKind::BadCrc { stored, computed } => {
                JournalError::BadCrc { path, offset, expected: stored, found: computed, where_ }
            }
        }
    }
}

pub enum Frame {
    /// A frame at `offset` with a valid CRC; its body is in `body()`.
    Record { offset: u64 },
    /// Clean end: exactly at the end bound.
    End,
    Torn(Torn),
}

/// How much `FrameReader` reads per `read` call (a frame longer than this
/// is read whole). Small enough that the bytes just read are still in the
/// CPU cache when they are checked and decoded, big enough that syscalls do
/// not matter.
pub const READ_CHUNK_BYTES: usize = 256 << 10;

/// Alignment of the destination of each `read` into the frame buffer.
const READ_ALIGN: usize = 64;

/// Streams frames from `r`, which is positioned at `offset`, up to `end`.
///
/// Reads big chunks into one reusable buffer and checks and hands out each
/// frame body in place (no per-record copy or allocation). Memory: the
/// buffer, about `READ_CHUNK_BYTES` or one record if longer, bounded by the
/// file and `RECORD_BYTES_LIMIT`.
///
/// The buffer is zeroed once when it is allocated (or grown) and then
/// reused: later chunks are read over the previous chunk's bytes, so the
/// warm path pays no per-chunk memset and stays free of `unsafe`. Once a
/// body has been handed out as shared `Bytes` (`take_body`), the chunk is
/// reused only if no such body is still alive; otherwise a fresh buffer is
/// allocated and the old chunk lives on in the bodies.
pub struct FrameReader<R> {
    r: R,
    /// The current chunk. Bytes `[start, filled)` of it are file offsets
    /// `[offset - pending, offset - pending + filled - start)`: the frame
    /// `next_frame` last returned (its first `pending` bytes), then bytes
    /// read but not consumed. Bytes after `filled` are stale.
    chunk: Chunk,
    start: usize,
    filled: usize,
    /// File offset of the next frame.
    offset: u64,
    end: u64,
    pending: usize,
}

/// The read buffer: owned until a body is shared out of it.
enum Chunk {
    Owned(Vec<u8>),
    /// Always the whole buffer (never advanced or truncated), so it can be
    /// turned back into the full-length `Vec` once it is unique again.
    Shared(Bytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(b) => b,
        }
    }
}

impl<R: Read> FrameReader<R> {
    pub fn new(r: R, offset: u64, end: u64) -> Self {
        FrameReader { r, chunk: Chunk::Owned(Vec::new()), start: 0, filled: 0, offset, end, pending: 0 }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Body of the frame `next_frame` last returned (empty after
    /// `take_body`).
    pub fn body(&self) -> &[u8] {
        if self.pending == 0 {
            return &[];
        }
        &self.chunk.bytes()[self.start + FRAME_HEADER_BYTES..self.start + self.pending]
    }

    /// The body of the frame `next_frame` last returned as shared bytes (no
    /// copy: it keeps the read chunk it lies in alive). Afterwards `body`
    /// is empty.
    pub fn take_body(&mut self) -> Bytes {
        if self.pending == 0 {
            return Bytes::new();
        }
        if let Chunk::Owned(v) = &mut self.chunk {
            // Zero-copy: the Vec's allocation becomes the shared buffer.
            self.chunk = Chunk::Shared(Bytes::from(std::mem::take(v)));
        }
        let Chunk::Shared(chunk) = &self.chunk else { unreachable!("made shared just above") };
        let body = chunk.slice(self.start + FRAME_HEADER_BYTES..self.start + self.pending);
        self.start += self.pending;
        self.pending = 0;
        body
    }

    /// After `Torn`: every byte from the damage offset to the end bound
    /// (what `next_frame` consumed of the damaged frame, then the rest).
    pub fn rest_from_damage(mut self, _kind: &TornKind) -> io::Result<Vec<u8>> {
        // After `Torn` nothing was consumed: the buffer starts at the damage.
        self.drop_pending();
        let mut rest = self.chunk.bytes()[self.start..self.filled].to_vec();
        let left = self.end.saturating_sub(self.offset + rest.len() as u64);
        (&mut self.r).take(left).read_to_end(&mut rest)?;
        Ok(rest)
    }

    fn drop_pending(&mut self) {
        self.start += self.pending;
        self.pending = 0;
    }

    /// A buffer holding the unconsumed bytes `[start, filled)` of the
    /// current chunk at `lead..lead + have`, with room for `len` bytes from
    /// `lead`; returns it and `lead`. `lead` (< `READ_ALIGN`) makes the read
    /// that follows the leftover start on a `READ_ALIGN` boundary: the
    /// kernel's copy into a misaligned destination is markedly slower here.
    /// Reuses the current chunk's allocation (already initialised: no
    /// zeroing) when nothing else holds it.
    fn take_buffer(&mut self, len: usize) -> (Vec<u8>, usize) {
        let (start, filled) = (self.start, self.filled);
        let have = filled - start;
        let lead = |v: &[u8]| (READ_ALIGN - (v.as_ptr() as usize + have) % READ_ALIGN) % READ_ALIGN;
        let reusable = match std::mem::replace(&mut self.chunk, Chunk::Owned(Vec::new())) {
            Chunk::Owned(v) => Ok(v),
            // Unique: every shared body of it has been dropped. Turning it
            // back into a Vec moves nothing (it starts at the allocation).
            Chunk::Shared(b) if b.is_unique() => Ok(Vec::from(b)),
            Chunk::Shared(b) => Err(b),
        };
        let fresh = |old: &[u8]| {
            let mut v = vec![0u8; len + READ_ALIGN];
            let at = lead(&v);
            v[at..at + have].copy_from_slice(&old[start..filled]);
            (v, at)
        };
        match reusable {
            // Do not keep a buffer grown for one huge record around.
            Ok(v) if len <= READ_CHUNK_BYTES && v.len() > 2 * READ_CHUNK_BYTES => fresh(&v),
            Ok(mut v) => {
                if v.len() < len + READ_ALIGN {
                    // Zeroes only the growth (may move the allocation).
                    v.resize(len + READ_ALIGN, 0);
                }
                let at = lead(&v);
                v.copy_within(start..filled, at);
                (v, at)
            }
            // Still referenced by bodies handed out: leave it to them.
            Err(shared) => fresh(&shared),
        }
    }

    /// Makes the buffer hold at least `need` unconsumed bytes (the caller
    /// checked that the end bound allows it), reading in chunks of
    /// `READ_CHUNK_BYTES`.
    fn fill(&mut self, need: usize) -> io::Result<()> {
        let have = self.filled - self.start;
        if have >= need {
            return Ok(());
        }
        let unread = self.end - self.offset - have as u64;
        let target = need.max(READ_CHUNK_BYTES).min(have + unread as usize);
        let (mut buf, lead) = self.take_buffer(target);
        let (target, mut filled) = (lead + target, lead + have);
        let result = loop {
            if filled - lead >= need {
                break Ok(());
            }
            match self.r.read(&mut buf[filled..target]) {
                // The end bound promised these bytes: the file shrank.
                Ok(0) => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        // Keep what was read even on error (`rest_from_damage` may follow).
        self.chunk = Chunk::Owned(buf);
        self.start = lead;
        self.filled = filled;
        result
    }

    /// Reads the next frame. After `Torn` the reader stays where the damage
    /// starts; the caller must not keep reading.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        self.drop_pending();
        let available = self.end.saturating_sub(self.offset);
        if available == 0 {
            return Ok(Frame::End);
        }
        let offset = self.offset;
        if available < FRAME_HEADER_BYTES as u64 {
            return Ok(Frame::Torn(Torn { offset, kind: TornKind::ShortFrameHeader { available } }));
        }
        self.fill(FRAME_HEADER_BYTES)?;
        let head = &self.chunk.bytes()[self.start..self.start + FRAME_HEADER_BYTES];
        let len_le = le4(head);
        let length = u32::from_le_bytes(len_le) as u64;
        let stored = u32::from_le_bytes(le4(&head[4..]));
        if length == 0 || length > RECORD_BYTES_LIMIT as u64 {
            let kind = TornKind::BadLength { length, limit: RECORD_BYTES_LIMIT as u64, available };
            return Ok(Frame::Torn(Torn { offset, kind }));
        }
        if FRAME_HEADER_BYTES as u64 + length > available {
            return Ok(Frame::Torn(Torn { offset, kind: TornKind::ShortBody { length, available } }));
        }
        // `length` is bounded by the bytes left before the end bound
        // (checked just above), so a damaged prefix cannot make us allocate
        // more than that.
        let frame_bytes = FRAME_HEADER_BYTES + length as usize;
        self.fill(frame_bytes)?;
        let computed = frame_crc(len_le, &self.chunk.bytes()[self.start + FRAME_HEADER_BYTES..self.start + frame_bytes]);
        if computed != stored {
            return Ok(Frame::Torn(Torn { offset, kind: TornKind::BadCrc { stored, computed } }));
        }
        self.pending = frame_bytes;
        self.offset += frame_bytes as u64;
        Ok(Frame::Record { offset })
    }
}

/// Decodes a record body fully; a body without a kind is rejected.
pub fn decode_record(body: &[u8]) -> std::result::Result<pb::JournalRecord, String> {
    let record = pb::JournalRecord::decode(body).map_err(|e| e.to_string())?;
    if record.kind.is_none() {
        return Err("record has no kind (step, commit or checkpoint)".into());
    }
    Ok(record)
}

/// Light views of the record bodies: the same field numbers as
/// `journal.proto` without the payload fields, which prost then skips
/// without copying. Used by `summarize` and the open-time scan so they do
/// not hold payloads.
pub mod light {
    use crate::pb;

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Record {
        #[prost(oneof = "Kind", tags = "1, 2, 3")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Step(Step),
        #[prost(message, tag = "2")]
        Commit(pb::CommitMarker),
        #[prost(message, tag = "3")]
        Checkpoint(pb::CheckpointRecord),
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Step {
        #[prost(uint64, tag = "1")]
        pub step: u64,
        #[prost(uint64, tag = "2")]
        pub prev_step: u64,
        #[prost(uint64, tag = "3")]
        pub tid: u64,
        #[prost(uint64, tag = "4")]
        pub epoch: u64,
        #[prost(message, repeated, tag = "5")]
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Endpoint {
        #[prost(string, tag = "1")]
        pub endpoint: String,
        #[prost(uint64, tag = "2")]
        pub count: u64,
        #[prost(fixed64, tag = "3")]
        pub hash: u64,
    }
}

/// Light decode (payloads skipped); a body without a kind is rejected.
pub fn decode_light(body: &[u8]) -> std::result::Result<light::Kind, String> {
    let record = light::Record::decode(body).map_err(|e| e.to_string())?;
    record.kind.ok_or_else(|| "record has no kind (step, commit or checkpoint)".into())
}

/// Is there any complete, CRC-valid, decodable frame starting anywhere in
/// `rest[1..]`? Decides whether damage at the start of `rest` (in the last
/// segment) is a torn tail (nothing valid after it) or corruption. Returns
/// the offset (within `rest`) of the first such frame.
pub fn find_valid_frame_after(rest: &[u8]) -> Option<usize> {
    (1..rest.len()).find(|&at| {
        let tail = &rest[at..];
        if tail.len() <= FRAME_HEADER_BYTES {
            return false;
        }
        let len_le = le4(tail);
        let length = u32::from_le_bytes(len_le) as usize;
        if length == 0 || length > RECORD_BYTES_LIMIT as usize || FRAME_HEADER_BYTES + length > tail.len() {
            return false;
        }
        let body = &tail[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + length];
        u32::from_le_bytes(le4(&tail[4..])) == frame_crc(len_le, body) && decode_light(body).is_ok()
    })
}

/// Whether every byte of `rest` is zero: space the writer preallocated
/// and never wrote (crate doc, "Preallocation").
fn all_zeros(rest: &[u8]) -> bool {
    rest.iter().all(|&b| b == 0)
}

/// What the torn-tail rule decided for a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tail {
    /// The segment ends with a complete record (or its header).
    Clean,
    /// The records end at `valid_end` and every byte after it is zero:
    /// preallocated space of the last segment, not damage. Nothing to cut.
    Preallocated,
    /// Damage at `torn.offset` with nothing valid after it: cut there.
    Torn(Torn),
}

/// Result of scanning one segment (see `scan_segment`).
#[derive(Debug)]
pub enum Scan {
    /// The file ends inside its header (a crash while creating it, or a
    /// truncated copy); only acceptable for the last segment.
    TornHeader { available: u64 },
    Ok { header: SegmentHeader, records: u64, valid_end: u64, tail: Tail },
}

/// Scans a whole segment from its start. Every frame body is passed to
/// `on_record(offset, body)`. `last` says whether this is the last segment,
/// where a zero tail ends the records (`Tail::Preallocated`) and a torn
/// tail is allowed (`Tail::Torn`); anywhere else a zero or damage where a
/// frame should start is an error (sealed segments are trimmed to their
/// records). Used by `Journal::open` (on files) and `decode_segment`
/// (fuzzing).
pub fn scan_segment<R: Read>(
    mut r: R,
    path: &Path,
    file_bytes: u64,
    last: bool,
    on_header: &mut dyn FnMut(&SegmentHeader) -> Result<()>,
    on_record: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Scan> {
    if file_bytes <= HEADER_BYTES_MAX as u64 {
        // A file this small may end inside its header. Read it whole so a
        // short header can be judged by the torn-tail rule: it is torn
        // only if nothing valid follows (a damaged length field claiming a
        // longer header must not pass as a torn tail).
        let mut all = Vec::with_capacity(file_bytes as usize);
        (&mut r).take(file_bytes).read_to_end(&mut all).map_err(|e| JournalError::Io { path: path.to_owned(), source: e })?;
        let header = match read_header(&mut all.as_slice(), path, file_bytes)? {
            HeaderRead::Ok(h) => h,
            HeaderRead::Torn { available } => {
                if !last {
                    return Err(JournalError::Truncated {
                        path: path.to_owned(),
                        offset: 0,
                        expected: HEADER_BYTES_MIN as u64,
                        found: available,
                        where_: " (segment header, not the last segment)",
                    });
                }
                if let Some(at) = find_valid_frame_after(&all) {
                    return Err(JournalError::BadHeader {
                        path: path.to_owned(),
                        offset: 12,
                        expected: "a header length within the file".into(),
                        found: format!("a header running past the end of the file, with a valid record at offset {at}"),
                    });
                }
                return Ok(Scan::TornHeader { available });
            }
        };
        let body = &all[header.header_bytes as usize..];
        return scan_frames(body, header, path, file_bytes, last, on_header, on_record);
    }
    let header = match read_header(&mut r, path, file_bytes)? {
        HeaderRead::Ok(h) => h,
        // read_header bounds the header length by HEADER_BYTES_MAX, so a
        // file longer than that always holds a whole header.
        HeaderRead::Torn { available } => {
            return Err(JournalError::Truncated {
                path: path.to_owned(),
                offset: 0,
                expected: HEADER_BYTES_MAX as u64,
                found: available,
                where_: " (segment header)",
            })
        }
    };
    scan_frames(r, header, path, file_bytes, last, on_header, on_record)
}

fn scan_frames<R: Read>(
    r: R,
    header: SegmentHeader,
    path: &Path,
    file_bytes: u64,
    last: bool,
    on_header: &mut dyn FnMut(&SegmentHeader) -> Result<()>,
    on_record: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Scan> {
    on_header(&header)?;
    let io = |e| JournalError::Io { path: path.to_owned(), source: e };
    let mut frames = FrameReader::new(r, header.header_bytes, file_bytes);
    let mut records = 0u64;
    loop {
        match frames.next_frame().map_err(io)? {
            Frame::End => {
                return Ok(Scan::Ok { header, records, valid_end: file_bytes, tail: Tail::Clean });
            }
            Frame::Record { offset } => {
                on_record(offset, frames.body())?;
                records += 1;
            }
            Frame::Torn(torn) => {
                if !last {
                    return Err(torn.into_error(path, " (in a sealed segment, not the last)"));
                }
                // Gather every byte from the damage to the end (bounded by
                // the segment size) and look for a valid frame in it.
                let rest = frames.rest_from_damage(&torn.kind).map_err(io)?;
                // The common case on every open (preallocated space after
                // the last record), so it is checked first: one pass over
                // zeros, not a frame parse at every offset.
                if all_zeros(&rest) {
                    return Ok(Scan::Ok { header, records, valid_end: torn.offset, tail: Tail::Preallocated });
                }
                if find_valid_frame_after(&rest).is_some() {
                    return Err(torn.into_error(path, " (valid records follow it, so this is not a torn tail)"));
                }
                let valid_end = torn.offset;
                return Ok(Scan::Ok { header, records, valid_end, tail: Tail::Torn(torn) });
            }
        }
    }
}

/// A segment decoded from memory (see `decode_segment`).
#[derive(Debug)]
pub struct DecodedSegment {
    pub header: Option<SegmentHeader>,
    pub records: Vec<(u64, pb::JournalRecord)>,
    /// Bytes a torn tail would cut (0 if clean, or if only zeros follow
    /// the records).
    pub torn_tail_bytes: u64,
}

/// Decodes one segment held in memory as if it were the last segment of a
/// journal (zero tail and torn tail allowed), without identity checks. For
/// fuzzing and tools: never panics, whatever the bytes.
pub fn decode_segment(bytes: &[u8]) -> Result<DecodedSegment> {
    let path = PathBuf::from("<memory>");
    let mut records = Vec::new();
    let scan = scan_segment(bytes, &path, bytes.len() as u64, true, &mut |_| Ok(()), &mut |offset, body| {
        let record = decode_record(body).map_err(|reason| JournalError::Undecodable { path: path.clone(), offset, reason })?;
        records.push((offset, record));
        Ok(())
    })?;
    Ok(match scan {
        Scan::TornHeader { available } => DecodedSegment { header: None, records, torn_tail_bytes: available },
        Scan::Ok { header, tail: Tail::Clean | Tail::Preallocated, .. } => {
            DecodedSegment { header: Some(header), records, torn_tail_bytes: 0 }
        }
        Scan::Ok { header, valid_end, tail: Tail::Torn(_), .. } => {
            DecodedSegment { header: Some(header), records, torn_tail_bytes: bytes.len() as u64 - valid_end }
        }
    })
}
