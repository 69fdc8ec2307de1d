//! Helpers shared by the journal's integration tests: record builders and
//! a minimal `block_on` (this crate has no async runtime).
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use lockstep_journal::pb::{self, journal_record::Kind};
use lockstep_journal::{JournalIdent, JournalOptions};

pub fn ident() -> JournalIdent {
    JournalIdent { cluster_id: "cluster-a".into(), host_id: "host-0".into() }
}

pub fn small_segments(segment_bytes_max: u64) -> JournalOptions {
    JournalOptions { segment_bytes_max, ..JournalOptions::default() }
}

/// A step record whose payload is derived from `step` (so a reader can
/// check it without remembering it).
pub fn step(step: u64, prev_step: u64, tid: u64, payload_bytes: usize) -> pb::JournalRecord {
    let value: Vec<u8> = (0..payload_bytes).map(|i| (step as usize).wrapping_mul(31).wrapping_add(i) as u8).collect();
    pb::JournalRecord {
        kind: Some(Kind::Step(pb::StepRecord {
            step,
            prev_step,
            tid,
            epoch: 1,
            endpoints: vec![pb::EndpointInput {
                endpoint: "in".into(),
                count: 1 + step % 3,
                hash: step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                payload: Some(pb::endpoint_input::Payload::Value(value)),
            }],
        })),
    }
}

pub fn commit(tid: u64) -> pb::JournalRecord {
    pb::JournalRecord { kind: Some(Kind::Commit(pb::CommitMarker { tid, epoch: 1 })) }
}

pub fn checkpoint(tid: u64) -> pb::JournalRecord {
    pb::JournalRecord { kind: Some(Kind::Checkpoint(pb::CheckpointRecord { tid, location: format!("checkpoints/{tid}") })) }
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}
