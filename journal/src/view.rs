//! Record bodies decoded without copying payloads: the same messages and
//! field numbers as `journal.proto` (and the same decoder, prost), except
//! that an endpoint's `value` payload is a [`Bytes`] sharing the buffer the
//! journal was read into. Yielded by [`crate::Journal::read_shared_from`].
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
