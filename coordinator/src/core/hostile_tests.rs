//! Hostile input: host reports that decode but may say anything. Real
//! encoded reports of a running pipeline are mutated byte by byte, decoded
//! the way the service decodes them (prost, then `wire::hello_from` or
//! `wire::report_to_events`), and whatever decodes is handed to a running
//! core. Neither layer may panic: a report is refused with a typed error or
//! handled, and the core answers nonsense by failing the pipeline with a
//! diagnosis or by dropping the host, never by trusting it.
//!
//! The hand-written tests (here, `wire.rs`, `table_tests.rs`) pin each
//! malformation the protocol names; this one covers the combinations
//! nobody wrote down.

use lockstep_proto::columns;
use lockstep_proto::v1 as pb;
use prost::Message as _;
use proptest::prelude::*;

use super::tests::{cfg, Harness};
use super::*;
use crate::wire;

fn cell(count: u64, hash: u64) -> Vec<u8> {
    let mut c = Vec::new();
    columns::push_cell(&mut c, count, hash);
    c
}

fn report(seq: u64, r: pb::host_report::Report) -> pb::HostReport {
    pb::HostReport { seq, report: Some(r) }
}

/// Valid reports a host of `Harness::running()` (tid 1 open, live) could
/// send, one of each kind, and a Hello of a host coming back.
fn seeds() -> Vec<pb::HostReport> {
    use pb::host_report::Report as R;
    let gen = |n| pb::EndpointChecksum { endpoint: "gen".into(), count: n, hash: n * 7 };
    let mut replayed = pb::ReplayedTid { tid: 1, journaled_as_replayed: true, ..Default::default() };
    columns::push_step(&mut replayed.steps, 1);
    replayed.replayed = cell(2, 14);
    replayed.prepared = Some(pb::PreparedCells { steps: 1, aggregate: cell(2, 14), absent: vec![], output_digest: 5, output_count: 1 });
    vec![
        report(
            2,
            R::StepDone(pb::StepDone {
                tid: 1,
                step: 1,
                checksums: vec![gen(2)],
                journaled: vec![],
                state: pb::HostTxnState::OpenLive as i32,
                mode: pb::TxnMode::Live as i32,
            }),
        ),
        report(3, R::Prepared(pb::Prepared { tid: 1, steps: 1, aggregate: vec![gen(2)], output_digest: 5, output_count: 1 })),
        report(4, R::Committed(pb::Committed { tid: 1 })),
        report(5, R::CommittedTids(pb::CommittedTids { tids: vec![1, 2] })),
        report(6, R::CheckpointDone(pb::CheckpointDone { tid: 1 })),
        report(7, R::Restored(pb::Restored { checkpoint_tid: 0 })),
        report(8, R::Error(pb::HostError { kind: "disk_write".into(), tid: 1, message: "no space".into() })),
        report(9, R::Heartbeat(pb::Heartbeat {})),
        report(10, R::ReplayedTids(pb::ReplayedTids { endpoints: vec!["gen".into()], tids: vec![replayed] })),
        report(
            1,
            R::Hello(pb::Hello {
                protocol_version: lockstep_proto::PROTOCOL_VERSION,
                host_id: "h0".into(),
                cluster_id: "c1".into(),
                highest_epoch: 1,
                checkpoints: vec![0],
                journal: vec![pb::TidSummary { tid: 1, first_step: 1, last_step: 2, steps: 2, committed: false, counts: vec![3], hashes: vec![21], absent: vec![] }],
                journal_endpoints: vec!["gen".into()],
                last_step: 2,
                ingest_addr: "127.0.0.1:1".into(),
                data_id: 0x5eed_0000 + u64::from(b'h') + u64::from(b'0'),
                resumable: Some(pb::Resumable {
                    last_committed_tid: 0,
                    state: pb::HostTxnState::OpenLive as i32,
                    tid: 1,
                    steps: 2,
                    aggregate: vec![gen(3)],
                    prepared: None,
                    awaiting: vec![],
                }),
            }),
        ),
    ]
}

/// One byte-level edit: at `at` (modulo the length), `op` 0 flips a bit,
/// 1 overwrites the byte, 2 inserts one, 3 deletes one, 4 cuts the rest.
fn mutate(bytes: &mut Vec<u8>, at: u16, op: u8, byte: u8) {
    if bytes.is_empty() {
        bytes.push(byte);
        return;
    }
    let i = usize::from(at) % bytes.len();
    match op {
        0 => bytes[i] ^= 1 << (byte % 8),
        1 => bytes[i] = byte,
        2 => bytes.insert(i, byte),
        3 => {
            bytes.remove(i);
        }
        _ => bytes.truncate(i),
    }
}

/// A value for a tweaked field: mostly near the values in play (tids,
/// steps and counts around 0-3), sometimes anything.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..4, 1 => any::<u64>()]
}

const NAMES: [&str; 4] = ["gen", "push", "", "h0"];

/// One field-level edit of a decoded report: `field` picks what to change
/// in whichever report it is, `v` the new value. Byte edits mostly break
/// the protobuf framing; these keep it and reach the checks behind it.
fn tweak(r: &mut pb::HostReport, field: u8, v: u64) {
    use pb::host_report::Report as R;
    let name = NAMES[(v % 4) as usize].to_string();
    let small = v as i32;
    match (r.report.as_mut(), field % 8) {
        (_, 7) => r.seq = v,
        (Some(R::StepDone(x)), f) => match f {
            0 => x.tid = v,
            1 => x.step = v,
            2 => x.checksums.iter_mut().for_each(|c| c.count = v),
            3 => x.checksums.push(pb::EndpointChecksum { endpoint: name, count: v, hash: v }),
            4 => x.state = small,
            5 => x.mode = small,
            _ => x.journaled = x.checksums.clone(),
        },
        (Some(R::Prepared(x)), f) => match f {
            0 => x.tid = v,
            1 => x.steps = v,
            2 => x.aggregate.iter_mut().for_each(|c| c.count = v),
            3 => x.aggregate.push(pb::EndpointChecksum { endpoint: name, count: v, hash: v }),
            4 => x.output_digest = v,
            5 => x.output_count = v,
            _ => x.aggregate.clear(),
        },
        (Some(R::Committed(x)), _) => x.tid = v,
        (Some(R::CommittedTids(x)), f) => match f {
            0 => x.tids.clear(),
            _ => x.tids.push(v),
        },
        (Some(R::CheckpointDone(x)), _) => x.tid = v,
        (Some(R::Restored(x)), _) => x.checkpoint_tid = v,
        (Some(R::Error(x)), f) => match f {
            0 => x.tid = v,
            _ => x.kind = ["disk_write", "engine", "sink", "protocol", "internal", ""][(v % 6) as usize].into(),
        },
        (Some(R::ReplayedTids(x)), f) => {
            let Some(t) = x.tids.first_mut() else { return };
            match f {
                0 => t.tid = v,
                1 => columns::push_step(&mut t.steps, v),
                2 => t.replayed = cell(v, v),
                3 => t.journaled_as_replayed = !t.journaled_as_replayed,
                4 => {
                    if let Some(p) = t.prepared.as_mut() {
                        p.steps = v;
                    }
                }
                5 => x.endpoints.push(name),
                _ => t.prepared = None,
            }
        }
        (Some(R::Hello(x)), f) => match f {
            0 => x.protocol_version = v as u32,
            1 => x.host_id = ["h0", "h1", "stranger", ""][(v % 4) as usize].into(),
            2 => x.highest_epoch = v,
            3 => x.checkpoints.push(v),
            4 => {
                if let Some(j) = x.journal.first_mut() {
                    [&mut j.tid, &mut j.steps, &mut j.first_step, &mut j.last_step][(v % 4) as usize].clone_from(&(v / 4));
                }
            }
            5 => {
                if let Some(r) = x.resumable.as_mut() {
                    match v % 4 {
                        0 => r.state = (v / 4) as i32,
                        1 => r.tid = v / 4,
                        2 => r.steps = v / 4,
                        _ => r.prepared = Some(pb::Prepared { tid: 1, steps: 2, aggregate: r.aggregate.clone(), output_digest: v, output_count: 0 }),
                    }
                }
            }
            _ => x.resumable = None,
        },
        (Some(R::Heartbeat(_)), _) | (None, _) => {}
    }
}

/// The core before the hostile reports: tid 1 open on both hosts, and
/// (`preparing`) its commit interval passed, so it waits for Prepared.
fn core_at(preparing: bool) -> Harness {
    let mut h = Harness::running();
    if preparing {
        h.now += cfg().commit_interval_ms + 1;
        h.ev(Event::Tick);
    }
    h
}

/// Hands one decoded report from `host` to the core as the service would:
/// a Hello opens a new stream, anything else goes through the wire layer.
/// Returns the tids whose Prepared reached the core.
fn deliver(h: &mut Harness, host: &str, msg: pb::HostReport) -> Vec<Tid> {
    let mut prepared = Vec::new();
    match msg.report {
        Some(pb::host_report::Report::Hello(hello)) => {
            let shadow = h.shadow.clone();
            let host_id = hello.host_id.clone();
            if let Ok(hello) = wire::hello_from(hello, |tid| shadow.txn(tid)?.hosts.get(&host_id).map(|r| &r.aggregate)) {
                let conn = h.next_conn;
                h.next_conn += 1;
                h.ev(Event::Hello { conn, hello });
            }
        }
        _ => {
            let mut events = Vec::new();
            match wire::report_to_events(&host.to_string(), msg, &mut events) {
                Ok(()) => {
                    for e in events {
                        match &e {
                            Event::Prepared { report, .. } => prepared.push(report.tid),
                            Event::Replayed { batch, .. } => prepared.extend(batch.prepared.as_ref().map(|p| p.tid)),
                            _ => {}
                        }
                        h.ev(e);
                    }
                }
                Err(e) => assert!(events.is_empty(), "a refused report added events: {e}"),
            }
        }
    }
    prepared
}

type Hostile = (usize, Vec<(u8, u64)>, Vec<(u16, u8, u8)>, &'static str);

/// One hostile report: a seed, its field edits, then its byte edits, and
/// who sends it.
fn hostile() -> impl Strategy<Value = Hostile> {
    (
        0usize..10,
        prop_oneof![1 => Just(vec![]), 2 => proptest::collection::vec((any::<u8>(), value()), 1..4)],
        prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec((any::<u16>(), 0u8..5, any::<u8>()), 1..4)],
        prop_oneof![Just("h0"), Just("h1"), Just("stranger")],
    )
}

/// What the core is handed, in order.
#[derive(Clone, Debug)]
enum Input {
    Report(Hostile),
    /// The commit interval passes: the core sends Prepare.
    Due,
}

/// tid 1 as two honest hosts run it (a step each, the interval passes,
/// each prepares), each report tweaked now and then, with hostile reports
/// slipped in anywhere. Runs whose hostile reports the core refuses or
/// shrugs off commit tid 1; the others must fail or drop a host.
fn script() -> impl Strategy<Value = Vec<Input>> {
    let honest = |seed: usize, host: &'static str| {
        prop_oneof![3 => Just(vec![]), 1 => proptest::collection::vec((any::<u8>(), value()), 1..3)]
            .prop_map(move |tweaks| Input::Report((seed, tweaks, vec![], host)))
    };
    let spine = (honest(0, "h0"), honest(0, "h1"), honest(1, "h0"), honest(1, "h1"))
        .prop_map(|(s0, s1, p0, p1)| vec![s0, s1, Input::Due, p0, p1]);
    (spine, proptest::collection::vec((0usize..6, hostile()), 0..4)).prop_map(|(mut spine, inserted)| {
        for (at, h) in inserted {
            spine.insert(at.min(spine.len()), Input::Report(h));
        }
        spine
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Nothing panics, and a tid the ledger commits is one both hosts'
    /// Prepared reached the core for (the core checked them; it never
    /// commits on one host's word, nor on a report that did not decode).
    #[test]
    fn hostile_reports_never_panic_and_never_commit_without_every_hosts_prepared(inputs in script()) {
        let mut h = Harness::running();
        let before = h.shadow.last_committed;
        let mut prepared: BTreeMap<&str, Vec<Tid>> = BTreeMap::new();
        for input in inputs {
            let (seed, tweaks, edits, host) = match input {
                Input::Due => {
                    h.now += cfg().commit_interval_ms + 1;
                    h.ev(Event::Tick);
                    continue;
                }
                Input::Report(r) => r,
            };
            let mut msg = seeds()[seed].clone();
            for (field, v) in tweaks {
                tweak(&mut msg, field, v);
            }
            let mut bytes = msg.encode_to_vec();
            for (at, op, byte) in edits {
                mutate(&mut bytes, at, op, byte);
            }
            if let Ok(msg) = pb::HostReport::decode(&bytes[..]) {
                prepared.entry(host).or_default().extend(deliver(&mut h, host, msg));
            }
        }
        for tid in before + 1..=h.shadow.last_committed {
            prop_assert!(
                ["h0", "h1"].iter().all(|host| prepared.get(host).is_some_and(|p| p.contains(&tid))),
                "tid {} committed without both hosts' Prepared: {:?}", tid, prepared
            );
        }
        // A failure is said once, loudly, and the first diagnosis is the
        // one kept.
        let said: Vec<&Diagnosis> = h.notices.iter().filter_map(|n| match n {
            Notice::Failed(d) => Some(d),
            _ => None,
        }).collect();
        match h.failure() {
            Some(d) => {
                prop_assert!(!d.summary.is_empty(), "{:?}", d);
                prop_assert_eq!(said, vec![d]);
            }
            None => prop_assert!(said.is_empty(), "{:?}", said),
        }
        // The core still takes ordinary events.
        h.now += 1;
        h.ev(Event::Tick);
    }
}

/// The seeds themselves are what a host sends: delivered unmutated, the
/// ordinary ones leave the pipeline running (the corpus is not all noise
/// that fails on arrival, which would leave the core's deeper paths
/// unexercised).
#[test]
fn the_unmutated_seeds_are_accepted() {
    let seeds = seeds();
    // StepDone, then Prepared, from h0, in the state each belongs to.
    let mut h = core_at(false);
    deliver(&mut h, "h0", seeds[0].clone());
    assert!(h.failure().is_none(), "{:?}", h.failure());
    let mut h = core_at(true);
    deliver(&mut h, "h0", seeds[0].clone());
    deliver(&mut h, "h0", seeds[1].clone());
    assert!(h.failure().is_none(), "{:?}", h.failure());
    // A heartbeat, and a Hello under a connected host's id (refused).
    for i in [7, 9] {
        let mut h = core_at(false);
        deliver(&mut h, "h0", seeds[i].clone());
        assert!(h.failure().is_none(), "seed {i}: {:?}", h.failure());
    }
    // Every seed decodes through the wire layer.
    for (i, s) in seeds.into_iter().enumerate() {
        let mut out = Vec::new();
        match s.report {
            Some(pb::host_report::Report::Hello(hello)) => {
                wire::hello_from(hello, |_| None).unwrap_or_else(|e| panic!("seed {i}: {e}"));
            }
            _ => wire::report_to_events(&"h0".to_string(), s, &mut out).unwrap_or_else(|e| panic!("seed {i}: {e}")),
        }
    }
}

