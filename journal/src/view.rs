//! Record bodies decoded without copying payloads: the same messages and
//! field numbers as `journal.proto` (and the same decoder, prost), except
//! that an endpoint's `value` payload is a [`Bytes`] sharing the buffer the
//! journal was read into. Yielded by [`crate::Journal::read_shared_from`].
//!
//! Also the in-place decoder [`decode_view`]: [`RecordView`] /
//! [`StepView`] / [`EndpointView`] borrow the body (names `&str`, payloads
//! `&[u8]`), nothing is allocated. Yielded by
//! [`crate::Journal::views_from`], `for_each_record` and `for_each_step`.
//!
//! A payload keeps the read chunk it lies in (about
//! [`crate::format::READ_CHUNK_BYTES`]) alive while it is held; a reader
//! that drops records as it goes stays at bounded memory.

use prost::bytes::Bytes;
use prost::Message;

use crate::pb;

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct JournalRecord {
    #[prost(oneof = "Kind", tags = "1, 2, 3")]
    pub kind: Option<Kind>,
}

#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum Kind {
    #[prost(message, tag = "1")]
    Step(StepRecord),
    #[prost(message, tag = "2")]
    Commit(pb::CommitMarker),
    #[prost(message, tag = "3")]
    Checkpoint(pb::CheckpointRecord),
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StepRecord {
    #[prost(uint64, tag = "1")]
    pub step: u64,
    #[prost(uint64, tag = "2")]
    pub prev_step: u64,
    #[prost(uint64, tag = "3")]
    pub tid: u64,
    #[prost(uint64, tag = "4")]
    pub epoch: u64,
    #[prost(message, repeated, tag = "5")]
    pub endpoints: Vec<EndpointInput>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
pub struct EndpointInput {
    #[prost(string, tag = "1")]
    pub endpoint: String,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(fixed64, tag = "3")]
    pub hash: u64,
    #[prost(oneof = "Payload", tags = "4, 5")]
    pub payload: Option<Payload>,
}

#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum Payload {
    #[prost(bytes = "bytes", tag = "4")]
    Value(Bytes),
    #[prost(message, tag = "5")]
    Reference(pb::GeneratorRef),
}

/// Decodes a record body held in `body` (payloads become slices of it); a
/// body without a kind is rejected, as by `format::decode_record`.
pub fn decode(body: Bytes) -> std::result::Result<JournalRecord, String> {
    let record = JournalRecord::decode(body).map_err(|e| e.to_string())?;
    if record.kind.is_none() {
        return Err("record has no kind (step, commit or checkpoint)".into());
    }
    Ok(record)
}

impl From<EndpointInput> for pb::EndpointInput {
    fn from(e: EndpointInput) -> Self {
        pb::EndpointInput {
            endpoint: e.endpoint,
            count: e.count,
            hash: e.hash,
            payload: e.payload.map(|p| match p {
                Payload::Value(v) => pb::endpoint_input::Payload::Value(v.to_vec()),
                Payload::Reference(r) => pb::endpoint_input::Payload::Reference(r),
            }),
        }
    }
}

impl From<StepRecord> for pb::StepRecord {
    fn from(s: StepRecord) -> Self {
        pb::StepRecord {
            step: s.step,
            prev_step: s.prev_step,
            tid: s.tid,
            epoch: s.epoch,
            endpoints: s.endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

/// Copies the payloads: the same record as the fully owned decoder gives.
impl From<JournalRecord> for pb::JournalRecord {
    fn from(r: JournalRecord) -> Self {
        pb::JournalRecord {
            kind: r.kind.map(|k| match k {
                Kind::Step(s) => pb::journal_record::Kind::Step(s.into()),
                Kind::Commit(c) => pb::journal_record::Kind::Commit(c),
                Kind::Checkpoint(c) => pb::journal_record::Kind::Checkpoint(c),
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Borrowed views: no allocation per record.
// ---------------------------------------------------------------------------
//
// `decode_view` reads a record body (varints and keys read inline with
// prost's rules, prost's `WireType`) into a [`RecordView`] whose
// strings and payloads are slices of the body itself. It accepts and refuses
// exactly what `pb::JournalRecord::decode` does (`tests/view_decoder.rs`
// checks it field by field on random records, with unknown fields, repeated
// and merged messages, and on mutated bytes), following prost's rules:
//
// - a field whose tag is unknown is skipped (varint, 32/64-bit, length-
//   delimited, and groups, nested up to prost's recursion limit); a known
//   tag with the wrong wire type is an error;
// - scalars and strings: the last occurrence wins; strings must be UTF-8;
// - a message field of a `oneof` that occurs again with the same variant is
//   merged into it (its scalars last-wins, its repeated fields appended);
//   another variant replaces it;
// - nested messages must end exactly at their length.
//
// The whole body is validated before a view is returned, so a record is
// either refused as a whole (as by prost) or every part of it is readable.
// The endpoints of a step are then walked in place by `StepView::endpoints`
// (a second, infallible pass over the few bytes of each endpoint's header;
// payloads are skipped by length, never touched). When a body is refused the
// reason is prost's own error message (prost decodes the body again on that
// cold path), so errors read the same as `read_from`'s.

use prost::encoding::WireType;

/// A record body decoded in place: strings and payloads borrow the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordView<'a> {
    Step(StepView<'a>),
    Commit(pb::CommitMarker),
    Checkpoint(CheckpointView<'a>),
}

/// A step record; its endpoints are read in place by [`StepView::endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepView<'a> {
    pub step: u64,
    pub prev_step: u64,
    pub tid: u64,
    pub epoch: u64,
    endpoints: usize,
    /// The first endpoint (decoded while validating), and where the walk
    /// continues after it: the rest of its step message (`inner`), then
    /// the record body after that message (`outer`, where further
    /// occurrences of the step may follow and are merged).
    first: Option<EndpointView<'a>>,
    inner: &'a [u8],
    outer: &'a [u8],
}

/// One endpoint's input of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointView<'a> {
    pub endpoint: &'a str,
    pub count: u64,
    pub hash: u64,
    pub payload: Option<PayloadView<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadView<'a> {
    /// The records themselves, as they lie in the read buffer.
    Value(&'a [u8]),
    Reference(pb::GeneratorRef),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointView<'a> {
    pub tid: u64,
    pub location: &'a str,
}

/// prost's recursion budget at the top of a message (`prost::RECURSION_LIMIT`,
/// private there): groups nested in unknown fields count against it.
const RECURSION_LIMIT: u32 = 100;

/// Not decodable; prost gives the reason (see `refusal`).
struct Refused;

type Wire<T> = std::result::Result<T, Refused>;

/// A varint, with prost's rules (`prost::encoding::decode_varint`): at most
/// 10 bytes, the 10th at most 1, running out of bytes is an error. Inline,
/// so the common 1–3 byte numbers cost a few instructions.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Wire<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some(&b) = buf.get(i) else { return Err(Refused) };
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            if i == 9 && b >= 0x02 {
                return Err(Refused);
            }
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(Refused)
}

/// A field key, with prost's rules (`prost::encoding::decode_key`): a
/// varint up to `u32::MAX`, wire type 0..=5, tag at least 1.
#[inline(always)]
fn key(buf: &mut &[u8]) -> Wire<(u32, WireType)> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(Refused);
    }
    let wire = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        2 => WireType::LengthDelimited,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::ThirtyTwoBit,
        _ => return Err(Refused),
    };
    let tag = key as u32 >> 3;
    if tag < 1 {
        return Err(Refused);
    }
    Ok((tag, wire))
}

#[inline(always)]
fn expect(found: WireType, expected: WireType) -> Wire<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Refused)
    }
}

#[inline(always)]
fn uint64(wire: WireType, buf: &mut &[u8]) -> Wire<u64> {
    expect(wire, WireType::Varint)?;
    varint(buf)
}

/// A length-delimited field's bytes.
#[inline(always)]
fn delimited<'a>(wire: WireType, buf: &mut &'a [u8]) -> Wire<&'a [u8]> {
    expect(wire, WireType::LengthDelimited)?;
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return Err(Refused);
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

#[inline(always)]
fn string<'a>(wire: WireType, buf: &mut &'a [u8]) -> Wire<&'a str> {
    std::str::from_utf8(delimited(wire, buf)?).map_err(|_| Refused)
}

/// prost's `skip_field`, with its recursion budget `ctx` (`skip_any` does
/// groups).
#[inline(always)]
fn skip(wire: WireType, tag: u32, buf: &mut &[u8], ctx: u32) -> Wire<()> {
    let len = match wire {
        _ if ctx == 0 => return Err(Refused),
        WireType::Varint => {
            varint(buf)?;
            return Ok(());
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => varint(buf)?,
        WireType::StartGroup | WireType::EndGroup => return skip_any(wire, tag, buf, ctx),
    };
    if len > buf.len() as u64 {
        return Err(Refused);
    }
    *buf = &buf[len as usize..];
    Ok(())
}

#[inline(never)]
fn skip_any(wire: WireType, tag: u32, buf: &mut &[u8], ctx: u32) -> Wire<()> {
    if ctx == 0 {
        return Err(Refused);
    }
    let len = match wire {
        WireType::Varint => {
            varint(buf)?;
            0
        }
        WireType::ThirtyTwoBit => 4,
        WireType::SixtyFourBit => 8,
        WireType::LengthDelimited => varint(buf)?,
        WireType::StartGroup => loop {
            let (inner_tag, inner_wire) = key(buf)?;
            if inner_wire == WireType::EndGroup {
                if inner_tag != tag {
                    return Err(Refused);
                }
                break 0;
            }
            skip_any(inner_wire, inner_tag, buf, ctx - 1)?;
        },
        WireType::EndGroup => return Err(Refused),
    };
    if len > buf.len() as u64 {
        return Err(Refused);
    }
    *buf = &buf[len as usize..];
    Ok(())
}

/// Merges a `GeneratorRef` message (fields at budget `ctx`).
fn merge_generator(mut buf: &[u8], g: &mut pb::GeneratorRef, ctx: u32) -> Wire<()> {
    while !buf.is_empty() {
        let (tag, wire) = key(&mut buf)?;
        match tag {
            1 => g.seed = uint64(wire, &mut buf)?,
            2 => g.offset = uint64(wire, &mut buf)?,
            3 => g.count = uint64(wire, &mut buf)?,
            _ => skip(wire, tag, &mut buf, ctx)?,
        }
    }
    Ok(())
}

/// Decodes one `EndpointInput` message (fields at budget `ctx`). Inlined:
/// returned through memory, the view costs a store-forwarding stall.
#[inline(always)]
fn endpoint(mut buf: &[u8], ctx: u32) -> Wire<EndpointView<'_>> {
    let mut e = EndpointView { endpoint: "", count: 0, hash: 0, payload: None };
    while !buf.is_empty() {
        let (tag, wire) = key(&mut buf)?;
        match tag {
            1 => e.endpoint = string(wire, &mut buf)?,
            2 => e.count = uint64(wire, &mut buf)?,
            3 => {
                expect(wire, WireType::SixtyFourBit)?;
                let Some((hash, rest)) = buf.split_first_chunk::<8>() else { return Err(Refused) };
                e.hash = u64::from_le_bytes(*hash);
                buf = rest;
            }
            4 => e.payload = Some(PayloadView::Value(delimited(wire, &mut buf)?)),
            5 => {
                let msg = delimited(wire, &mut buf)?;
                // Same variant again: merged, as prost does.
                let mut g = match e.payload {
                    Some(PayloadView::Reference(g)) => g,
                    _ => pb::GeneratorRef::default(),
                };
                merge_generator(msg, &mut g, ctx - 1)?;
                e.payload = Some(PayloadView::Reference(g));
            }
            _ => skip(wire, tag, &mut buf, ctx)?,
        }
    }
    Ok(e)
}

/// Merges one occurrence of a `StepRecord` message (fields at budget `ctx`):
/// validates every endpoint and counts them. `outer` is the record body
/// after this message.
#[inline(always)]
fn merge_step<'a>(mut buf: &'a [u8], s: &mut StepView<'a>, ctx: u32, outer: &'a [u8]) -> Wire<()> {
    while !buf.is_empty() {
        let (tag, wire) = key(&mut buf)?;
        match tag {
            1 => s.step = uint64(wire, &mut buf)?,
            2 => s.prev_step = uint64(wire, &mut buf)?,
            3 => s.tid = uint64(wire, &mut buf)?,
            4 => s.epoch = uint64(wire, &mut buf)?,
            5 => {
                let e = endpoint(delimited(wire, &mut buf)?, ctx - 1)?;
                if s.endpoints == 0 {
                    s.first = Some(e);
                    s.inner = buf;
                    s.outer = outer;
                }
                s.endpoints += 1;
            }
            _ => skip(wire, tag, &mut buf, ctx)?,
        }
    }
    Ok(())
}

#[inline]
fn parse_record(body: &[u8]) -> Wire<Option<RecordView<'_>>> {
    let ctx = RECURSION_LIMIT;
    let mut buf = body;
    let mut kind: Option<RecordView<'_>> = None;
    while !buf.is_empty() {
        let (tag, wire) = key(&mut buf)?;
        match tag {
            1 => {
                let msg = delimited(wire, &mut buf)?;
                if !matches!(kind, Some(RecordView::Step(_))) {
                    let fresh = StepView {
                        step: 0,
                        prev_step: 0,
                        tid: 0,
                        epoch: 0,
                        endpoints: 0,
                        first: None,
                        inner: &[],
                        outer: &[],
                    };
                    kind = Some(RecordView::Step(fresh));
                }
                let Some(RecordView::Step(s)) = &mut kind else { unreachable!("set just above") };
                merge_step(msg, s, ctx - 1, buf)?;
            }
            2 => {
                let msg = delimited(wire, &mut buf)?;
                let mut c = match kind {
                    Some(RecordView::Commit(c)) => c,
                    _ => pb::CommitMarker::default(),
                };
                let mut m = msg;
                while !m.is_empty() {
                    let (tag, wire) = key(&mut m)?;
                    match tag {
                        1 => c.tid = uint64(wire, &mut m)?,
                        2 => c.epoch = uint64(wire, &mut m)?,
                        _ => skip(wire, tag, &mut m, ctx - 1)?,
                    }
                }
                kind = Some(RecordView::Commit(c));
            }
            3 => {
                let msg = delimited(wire, &mut buf)?;
                let mut c = match kind {
                    Some(RecordView::Checkpoint(c)) => c,
                    _ => CheckpointView { tid: 0, location: "" },
                };
                let mut m = msg;
                while !m.is_empty() {
                    let (tag, wire) = key(&mut m)?;
                    match tag {
                        1 => c.tid = uint64(wire, &mut m)?,
                        2 => c.location = string(wire, &mut m)?,
                        _ => skip(wire, tag, &mut m, ctx - 1)?,
                    }
                }
                kind = Some(RecordView::Checkpoint(c));
            }
            _ => skip(wire, tag, &mut buf, ctx)?,
        }
    }
    Ok(kind)
}

/// Decodes a record body in place (no allocation); a body without a kind
/// is rejected, as by `format::decode_record`. Accepts exactly the bodies
/// `format::decode_record` accepts, with the same values, and refuses the
/// others with the same reason.
pub fn decode_view(body: &[u8]) -> std::result::Result<RecordView<'_>, String> {
    match parse_record(body) {
        Ok(Some(record)) => Ok(record),
        Ok(None) => Err("record has no kind (step, commit or checkpoint)".into()),
        Err(Refused) => Err(refusal(body)),
    }
}

/// Why a body is refused, in prost's words (cold path).
#[cold]
#[inline(never)]
fn refusal(body: &[u8]) -> String {
    match pb::JournalRecord::decode(body) {
        Err(e) => e.to_string(),
        // Would be a bug of this decoder (the tests say it does not happen).
        Ok(_) => "record body refused by the in-place decoder although prost accepts it".into(),
    }
}

impl<'a> StepView<'a> {
    /// The endpoints, in journal order, read in place.
    pub fn endpoints(&self) -> Endpoints<'a> {
        Endpoints { pending: self.first, inner: self.inner, outer: self.outer, left: self.endpoints }
    }

    /// Number of endpoints (without walking them).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }

    /// The owned record (copies names and payloads).
    pub fn to_pb(&self) -> pb::StepRecord {
        pb::StepRecord {
            step: self.step,
            prev_step: self.prev_step,
            tid: self.tid,
            epoch: self.epoch,
            endpoints: self.endpoints().map(|e| e.to_pb()).collect(),
        }
    }
}

impl EndpointView<'_> {
    /// The owned endpoint input (copies name and payload).
    pub fn to_pb(&self) -> pb::EndpointInput {
        pb::EndpointInput {
            endpoint: self.endpoint.to_owned(),
            count: self.count,
            hash: self.hash,
            payload: self.payload.map(|p| match p {
                PayloadView::Value(v) => pb::endpoint_input::Payload::Value(v.to_vec()),
                PayloadView::Reference(r) => pb::endpoint_input::Payload::Reference(r),
            }),
        }
    }
}

impl RecordView<'_> {
    /// The owned record: equal to what `format::decode_record` gives.
    pub fn to_pb(&self) -> pb::JournalRecord {
        use pb::journal_record::Kind;
        let kind = match self {
            RecordView::Step(s) => Kind::Step(s.to_pb()),
            RecordView::Commit(c) => Kind::Commit(*c),
            RecordView::Checkpoint(c) => {
                Kind::Checkpoint(pb::CheckpointRecord { tid: c.tid, location: c.location.to_owned() })
            }
        };
        pb::JournalRecord { kind: Some(kind) }
    }
}

/// The endpoints of a [`StepView`], walked in place. The body was validated
/// by `decode_view`, so the walk cannot fail.
#[derive(Clone, Debug)]
pub struct Endpoints<'a> {
    /// The first endpoint, until yielded.
    pending: Option<EndpointView<'a>>,
    /// Top-level fields of the record body not walked yet.
    outer: &'a [u8],
    /// Fields of the step occurrence being walked.
    inner: &'a [u8],
    left: usize,
}

impl<'a> Endpoints<'a> {
    fn step(&mut self) -> Wire<Option<EndpointView<'a>>> {
        loop {
            while !self.inner.is_empty() {
                let (tag, wire) = key(&mut self.inner)?;
                if tag == 5 {
                    let msg = delimited(wire, &mut self.inner)?;
                    return endpoint(msg, RECURSION_LIMIT - 2).map(Some);
                }
                skip(wire, tag, &mut self.inner, RECURSION_LIMIT - 1)?;
            }
            if self.outer.is_empty() {
                return Ok(None);
            }
            // Only step fields and unknown fields follow the first
            // endpoint's step message (another kind would have replaced
            // the step).
            let (tag, wire) = key(&mut self.outer)?;
            if tag == 1 {
                self.inner = delimited(wire, &mut self.outer)?;
            } else {
                skip(wire, tag, &mut self.outer, RECURSION_LIMIT)?;
            }
        }
    }
}

impl<'a> Iterator for Endpoints<'a> {
    type Item = EndpointView<'a>;

    #[inline]
    fn next(&mut self) -> Option<EndpointView<'a>> {
        if self.left == 0 {
            return None;
        }
        if let Some(e) = self.pending.take() {
            self.left -= 1;
            return Some(e);
        }
        match self.step() {
            Ok(Some(e)) => {
                self.left -= 1;
                Some(e)
            }
            Ok(None) | Err(Refused) => {
                debug_assert!(false, "endpoints of a validated step record failed to decode");
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Endpoints<'_> {}
