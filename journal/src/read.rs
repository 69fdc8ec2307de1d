//! Reading a journal directory: a cursor that streams frames across
//! segments up to a durable bound (bounded memory: one buffered file and one
//! record body), the step-chain check, and the iterators and summary built
//! on them.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{io_err, JournalError, Result};
use crate::format::{self, Frame, FrameReader, HeaderRead, SegmentHeader};
use crate::{pb, view, Checksum, JournalIdent, JournalSummary, Position, TidSummary};

/// Tells the kernel a segment is about to be read front to back (a larger
/// readahead window for cold reads). Advisory: failure is ignored.
pub(crate) fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open fd; no memory is passed.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Checks a header against the segment it should be.
pub(crate) fn check_header(header: &SegmentHeader, path: &Path, seq: u64, ident: &JournalIdent) -> Result<()> {
    if header.ident != *ident {
        return Err(JournalError::ForeignJournal {
            path: path.to_owned(),
            expected_cluster: ident.cluster_id.clone(),
            expected_host: ident.host_id.clone(),
            found_cluster: header.ident.cluster_id.clone(),
            found_host: header.ident.host_id.clone(),
        });
    }
    if header.segment != seq {
        return Err(JournalError::SegmentNumberMismatch { path: path.to_owned(), expected: seq, found: header.segment });
    }
    Ok(())
}

/// The step chain: each step record names the step record before it as its
/// `prev_step`, step numbers grow, and tids never go backwards. The first
/// step seen is accepted as it is (after GC its predecessor is gone).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Chain {
    /// (step, tid) of the last step record seen.
    pub last: Option<(u64, u64)>,
}

impl Chain {
    /// At the start of a segment: its header's `step_before` must be the
    /// last step seen so far; if nothing was seen, it seeds the chain.
    pub fn at_segment_start(&mut self, path: &Path, header: &SegmentHeader) -> Result<()> {
        match self.last {
            None => self.last = Some((header.step_before, 0)),
            Some((last_step, _)) if last_step != header.step_before => {
                return Err(JournalError::StepOrder {
                    path: path.to_owned(),
                    offset: 24,
                    what: "segment header's step_before must equal the last step before this segment",
                    expected: last_step.to_string(),
                    found: header.step_before.to_string(),
                })
            }
            Some(_) => {}
        }
        Ok(())
    }

    pub fn check(&mut self, path: &Path, offset: u64, step: u64, prev_step: u64, tid: u64) -> Result<()> {
        let order = |what, expected: String, found: u64| JournalError::StepOrder {
            path: path.to_owned(),
            offset,
            what,
            expected,
            found: found.to_string(),
        };
        if step <= prev_step {
            return Err(order("step number must exceed its previous step", format!("> {prev_step}"), step));
        }
        if let Some((last_step, last_tid)) = self.last {
            if prev_step != last_step {
                return Err(JournalError::StepGap { path: path.to_owned(), offset, step, expected: last_step, found: prev_step });
            }
            if tid < last_tid {
                return Err(order("tid went backwards", format!(">= {last_tid}"), tid));
            }
        }
        self.last = Some((step, tid));
        Ok(())
    }
}

/// Which part of the journal a reader may see: segments `first..=last`,
/// and in `last` only bytes before `last_end` (the durable end).
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub dir: PathBuf,
    pub ident: JournalIdent,
    pub first: u64,
    pub last: u64,
    pub last_end: u64,
}

/// Streams frames across segments.
pub(crate) struct Cursor {
    span: Span,
    /// Next segment to open.
    next_seg: u64,
    /// Offset to start at in the next segment opened (0 = after header).
    start_offset: u64,
    current: Option<(u64, PathBuf, FrameReader<File>)>,
    /// The step chain of what this cursor read; callers check step records
    /// against it, the cursor checks segment anchors.
    pub chain: Chain,
}

impl Cursor {
    pub fn new(span: Span, from: Position) -> Result<Cursor> {
        let (next_seg, start_offset) = if from == Position::default() { (span.first, 0) } else { (from.segment, from.offset) };
        let past_end = from.segment == span.last && from.offset > span.last_end;
        if next_seg < span.first || next_seg > span.last || past_end {
            return Err(JournalError::PositionOutOfRange {
                segment: from.segment,
                offset: from.offset,
                first: span.first,
                last: span.last,
            });
        }
        Ok(Cursor { span, next_seg, start_offset, current: None, chain: Chain::default() })
    }

    pub fn path(&self) -> &Path {
        match &self.current {
            Some((_, path, _)) => path,
            None => &self.span.dir,
        }
    }

    /// Checks a step record just read against the chain.
    pub fn check_step(&mut self, offset: u64, step: u64, prev_step: u64, tid: u64) -> Result<()> {
        let path = match &self.current {
            Some((_, path, _)) => path.as_path(),
            None => self.span.dir.as_path(),
        };
        self.chain.check(path, offset, step, prev_step, tid)
    }

    /// Body of the frame `advance` last returned.
    pub fn body(&self) -> &[u8] {
        match &self.current {
            Some((_, _, frames)) => frames.body(),
            None => &[],
        }
    }

    /// Body of the frame `advance` last returned, shared (no copy).
    pub fn take_body(&mut self) -> prost::bytes::Bytes {
        match &mut self.current {
            Some((_, _, frames)) => frames.take_body(),
            None => Default::default(),
        }
    }

    /// Moves to the next frame and decodes it in place ([`view::decode_view`]:
    /// no allocation), checking step records against the chain. The view
    /// borrows the read buffer until the next call.
    pub fn next_view(&mut self) -> Result<Option<(Position, view::RecordView<'_>)>> {
        let Some(pos) = self.advance()? else { return Ok(None) };
        let Cursor { current, chain, span, .. } = self;
        let (path, body) = match current {
            Some((_, path, frames)) => (path.as_path(), frames.body()),
            None => (span.dir.as_path(), &[][..]),
        };
        let record = view::decode_view(body).map_err(|reason| JournalError::Undecodable {
            path: path.to_owned(),
            offset: pos.offset,
            reason,
        })?;
        if let view::RecordView::Step(s) = &record {
            chain.check(path, pos.offset, s.step, s.prev_step, s.tid)?;
        }
        Ok(Some((pos, record)))
    }

    fn open_segment(&mut self, seq: u64) -> Result<(PathBuf, FrameReader<File>)> {
        let path = self.span.dir.join(format::segment_file_name(seq));
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_bytes = file.metadata().map_err(io_err(&path))?.len();
        advise_sequential(&file);
        let mut r = file;
        let header = match format::read_header(&mut r, &path, file_bytes)? {
            HeaderRead::Ok(h) => h,
            HeaderRead::Torn { available } => {
                return Err(JournalError::Truncated {
                    path,
                    offset: 0,
                    expected: format::HEADER_BYTES_MIN as u64,
                    found: available,
                    where_: " (segment header of a segment already validated at open)",
                })
            }
        };
        check_header(&header, &path, seq, &self.span.ident)?;
        if self.start_offset <= header.header_bytes {
            // Starting at the segment's first record: its anchor applies.
            self.chain.at_segment_start(&path, &header)?;
        }
        let end = if seq == self.span.last { self.span.last_end } else { file_bytes };
        let mut offset = header.header_bytes;
        if self.start_offset > offset {
            offset = self.start_offset;
            if offset > end {
                return Err(JournalError::PositionOutOfRange { segment: seq, offset, first: self.span.first, last: self.span.last });
            }
            r.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
        }
        self.start_offset = 0;
        Ok((path, FrameReader::new(r, offset, end)))
    }

    /// Moves to the next frame and returns its position; `None` at the end.
    pub fn advance(&mut self) -> Result<Option<Position>> {
        loop {
            if self.current.is_none() {
                if self.next_seg > self.span.last {
                    return Ok(None);
                }
                let seq = self.next_seg;
                let (path, frames) = self.open_segment(seq)?;
                self.current = Some((seq, path, frames));
                self.next_seg += 1;
            }
            let Some((seq, path, frames)) = &mut self.current else { unreachable!("set above") };
            match frames.next_frame().map_err(io_err(path.as_path()))? {
                Frame::Record { offset } => return Ok(Some(Position { segment: *seq, offset })),
                Frame::End => self.current = None,
                Frame::Torn(torn) => {
                    return Err(torn.into_error(path, " (inside the durable part of the journal)"));
                }
            }
        }
    }
}

/// Every record from a position, fully decoded, chain-checked.
pub struct RecordIter {
    cursor: Cursor,
    done: bool,
}

impl RecordIter {
    pub(crate) fn new(cursor: Cursor) -> Self {
        RecordIter { cursor, done: false }
    }

    fn next_record(&mut self) -> Result<Option<(Position, pb::JournalRecord)>> {
        let Some(pos) = self.cursor.advance()? else { return Ok(None) };
        let record = format::decode_record(self.cursor.body()).map_err(|reason| JournalError::Undecodable {
            path: self.cursor.path().to_owned(),
            offset: pos.offset,
            reason,
        })?;
        if let Some(pb::journal_record::Kind::Step(s)) = &record.kind {
            self.cursor.check_step(pos.offset, s.step, s.prev_step, s.tid)?;
        }
        Ok(Some((pos, record)))
    }
}

impl Iterator for RecordIter {
    type Item = Result<(Position, pb::JournalRecord)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_record();
        fuse(&mut self.done, r)
    }
}

/// Adapts a `next_record` result to `Iterator::next`: the end, or one
/// error, ends the stream for good (nothing after damage is trusted).
fn fuse<T>(done: &mut bool, r: Result<Option<T>>) -> Option<Result<T>> {
    match r {
        Ok(Some(v)) => Some(Ok(v)),
        Ok(None) => {
            *done = true;
            None
        }
        Err(e) => {
            *done = true;
            Some(Err(e))
        }
    }
}

/// Every record from a position, decoded into [`crate::view`] types whose
/// payloads share the read buffer (no copy), chain-checked.
pub struct SharedRecordIter {
    cursor: Cursor,
    done: bool,
}

impl SharedRecordIter {
    pub(crate) fn new(cursor: Cursor) -> Self {
        SharedRecordIter { cursor, done: false }
    }

    fn next_record(&mut self) -> Result<Option<(Position, crate::view::JournalRecord)>> {
        let Some(pos) = self.cursor.advance()? else { return Ok(None) };
        let body = self.cursor.take_body();
        let record = crate::view::decode(body).map_err(|reason| JournalError::Undecodable {
            path: self.cursor.path().to_owned(),
            offset: pos.offset,
            reason,
        })?;
        if let Some(crate::view::Kind::Step(s)) = &record.kind {
            self.cursor.check_step(pos.offset, s.step, s.prev_step, s.tid)?;
        }
        Ok(Some((pos, record)))
    }
}

impl Iterator for SharedRecordIter {
    type Item = Result<(Position, crate::view::JournalRecord)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_record();
        fuse(&mut self.done, r)
    }
}

/// The step records of the tids `first..=last`, in order. Stops at the
/// first step record of a later tid. It starts at the first step record of
/// a tid of the range, and the chain check fails a step record whose tid
/// goes backwards (`StepOrder`), so a step of a tid before `first` is never
/// met after it: the records it passes over are the other kinds.
pub struct StepsIter {
    records: Option<RecordIter>,
    first: u64,
    last: u64,
}

impl StepsIter {
    pub(crate) fn new(records: Option<RecordIter>, first: u64, last: u64) -> Self {
        StepsIter { records, first, last }
    }
}

impl Iterator for StepsIter {
    type Item = Result<pb::StepRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        let records = self.records.as_mut()?;
        loop {
            match records.next()? {
                Err(e) => return Some(Err(e)),
                Ok((_, pb::JournalRecord { kind: Some(pb::journal_record::Kind::Step(step)) })) => {
                    if (self.first..=self.last).contains(&step.tid) {
                        return Some(Ok(step));
                    }
                    if step.tid > self.last {
                        records.done = true;
                        return None;
                    }
                }
                Ok(_) => {}
            }
        }
    }
}

/// Every record from a position, decoded in place into
/// [`view::RecordView`]s (no allocation per record), chain-checked. A
/// lending iterator: each view borrows the reader until the next call.
pub struct RecordViews {
    cursor: Cursor,
    done: bool,
}

impl RecordViews {
    pub(crate) fn new(cursor: Cursor) -> Self {
        RecordViews { cursor, done: false }
    }

    /// The next record and its position; `Ok(None)` at the durable end.
    /// The same records, positions, checks and errors as `read_from`; after
    /// an error, `Ok(None)` (nothing after damage is trusted).
    pub fn next_record(&mut self) -> Result<Option<(Position, view::RecordView<'_>)>> {
        if self.done {
            return Ok(None);
        }
        match self.cursor.next_view() {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => {
                self.done = true;
                Ok(None)
            }
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }
}

/// Streams the span, decoding in place, and builds the summary. Validates
/// every record as fully as `read_from` (payload fields included).
pub(crate) fn summarize(span: Span, after_tid: u64) -> Result<JournalSummary> {
    let mut cursor = Cursor::new(span, Position::default())?;
    let mut tids: Vec<TidSummary> = Vec::new();
    let mut names = Names::default();
    let mut checkpoints = Vec::new();
    let mut last_step = 0u64;
    while let Some((_, record)) = cursor.next_view()? {
        match record {
            view::RecordView::Step(s) => {
                last_step = s.step;
                if s.tid > after_tid {
                    let t = tid_entry(&mut tids, s.tid);
                    if t.steps == 0 {
                        t.first_step = s.step;
                    }
                    t.last_step = s.step;
                    t.steps += 1;
                    for e in s.endpoints() {
                        let index = names.index(e.endpoint);
                        let checksum = Checksum { count: e.count, hash: e.hash };
                        match t.sums.binary_search_by_key(&index, |(i, _)| *i) {
                            Ok(i) => t.sums[i].1.merge(checksum),
                            Err(i) => t.sums.insert(i, (index, checksum)),
                        }
                    }
                }
            }
            view::RecordView::Commit(c) => {
                if c.tid > after_tid {
                    tid_entry(&mut tids, c.tid).committed = true;
                }
            }
            view::RecordView::Checkpoint(c) => checkpoints.push((c.tid, c.location.to_owned())),
        }
    }
    // Stable: equal tids keep journal order.
    checkpoints.sort_by_key(|(tid, _)| *tid);
    let endpoints = names.into_sorted(&mut tids);
    Ok(JournalSummary { endpoints, tids, checkpoints, last_step })
}

/// The entry of `tid` in `tids` (ascending by tid), added if missing. Step
/// records come in tid order, so it is nearly always the last one or a new
/// last one; a commit marker may name an earlier tid.
fn tid_entry(tids: &mut Vec<TidSummary>, tid: u64) -> &mut TidSummary {
    let at = match tids.last() {
        Some(last) if last.tid == tid => tids.len() - 1,
        Some(last) if last.tid > tid => match tids.binary_search_by_key(&tid, |t| t.tid) {
            Ok(i) => i,
            Err(i) => {
                tids.insert(i, blank(tid, 0));
                i
            }
        },
        // A tid's steps nearly always name the endpoints the tid before
        // named: room for exactly as many (a first push would make room
        // for four).
        last => {
            let endpoints = last.map_or(0, |t| t.sums.len());
            tids.push(blank(tid, endpoints));
            tids.len() - 1
        }
    };
    &mut tids[at]
}

fn blank(tid: u64, endpoints: usize) -> TidSummary {
    TidSummary { tid, first_step: 0, last_step: 0, steps: 0, sums: Vec::with_capacity(endpoints), committed: false }
}

/// The summary's endpoint table while it is built: names in the order they
/// were first seen (a tid's sums index them), and those indices sorted by
/// name, for lookups.
#[derive(Default)]
struct Names {
    seen: Vec<String>,
    by_name: Vec<u32>,
}

impl Names {
    fn index(&mut self, name: &str) -> u32 {
        match self.by_name.binary_search_by(|&i| self.seen[i as usize].as_str().cmp(name)) {
            Ok(at) => self.by_name[at],
            Err(at) => {
                let index = self.seen.len() as u32;
                self.seen.push(name.to_owned());
                self.by_name.insert(at, index);
                index
            }
        }
    }

    /// The names sorted, with every tid's sums renumbered to match (and
    /// kept ascending by index).
    fn into_sorted(self, tids: &mut [TidSummary]) -> Vec<String> {
        let Names { mut seen, by_name } = self;
        let mut rank = vec![0u32; seen.len()];
        for (r, &i) in by_name.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        if rank.iter().enumerate().any(|(i, &r)| i as u32 != r) {
            for t in tids.iter_mut() {
                for (i, _) in t.sums.iter_mut() {
                    *i = rank[*i as usize];
                }
                t.sums.sort_unstable_by_key(|(i, _)| *i);
            }
        }
        by_name.iter().map(|&i| std::mem::take(&mut seen[i as usize])).collect()
    }
}
