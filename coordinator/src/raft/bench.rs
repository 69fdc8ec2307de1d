//! Micro-benchmark of the ledger write path (not a timed test: `#[ignore]`).
//!
//! ```sh
//! cargo test --release -p lockstep-coordinator raft::bench -- --ignored --nocapture
//! ```
//!
//! In one run, on the disk of `$LOCKSTEP_BENCH_DIR` (default: the system temp
//! dir): a plain `write` + `fdatasync` loop (the floor), the former ledger
//! write (a redb transaction holding the entry and the committed hint), the
//! raft log's append of the same ([`super::log::RaftLog`]), and
//! `Ledger::propose` of a realistic Commit entry on a single-node group.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Instant;

use super::*;
use crate::ledger::HostTxnRecord;

const N: usize = 400;

fn dir() -> tempfile::TempDir {
    match std::env::var_os("LOCKSTEP_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn report(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!("{name:<48} p50 {:>7.0} µs  p90 {:>7.0} µs  p99 {:>7.0} µs", p(0.5), p(0.9), p(0.99));
}

fn commit(tid: u64) -> LedgerEntry {
    let hosts: BTreeMap<String, HostTxnRecord> = ["h0", "h1", "h2"]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                HostTxnRecord {
                    steps: 3,
                    aggregate: Default::default(),
                    output_digest: 7,
                },
            )
        })
        .collect();
    LedgerEntry::Commit { tid, hosts, begin_next: Some(tid + 1) }
}

/// (write syscalls, bytes written) of this process so far (/proc/self/io).
fn io() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    };
    (get("syscw:"), get("wchar:"))
}

type Step = Box<dyn FnMut(usize)>;

/// The ledger's former write path: entry and committed hint in one redb
/// write transaction (fsync on commit).
fn redb_step() -> (tempfile::TempDir, Step) {
    const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
    const M: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("m");
    let d = dir();
    let db = redb::Database::create(d.path().join("x.redb")).unwrap();
    let val = vec![7u8; 400];
    let step = move |i: usize| {
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap().insert(i as u64, val.as_slice()).unwrap();
        w.open_table(M).unwrap().insert("committed", val[..40].as_ref()).unwrap();
        w.commit().unwrap();
    };
    (d, Box::new(step))
}

/// The ledger's write path now: entry and committed hint in one raft log
/// append (one write, one fdatasync).
fn log_step() -> (tempfile::TempDir, Step) {
    let d = dir();
    let (log, _) = super::log::RaftLog::open(&d.path().join("log"), super::log::DEFAULT_SEGMENT_BYTES).unwrap();
    let val = vec![7u8; 400];
    let step = move |i: usize| {
        log.append(&[(i as u64, val.clone())], Some((i as u64, &val[..40]))).unwrap();
    };
    (d, Box::new(step))
}

/// Every variant runs one sample in turn, so all see the same disk load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "micro-benchmark; run with --ignored --nocapture"]
async fn ledger_write_path() {
    let d = dir();
    let mut f = std::fs::File::create(d.path().join("f")).unwrap();
    let buf = vec![7u8; 400];
    let (_d1, mut r1) = redb_step();
    let (_d2, mut r2) = log_step();
    let ld = dir();
    let l = Ledger::open_single(ld.path(), 1, "127.0.0.1:1".into()).await.unwrap();
    l.propose(LedgerEntry::Init {
        cluster_id: "c".into(),
        hosts: vec!["h0".into(), "h1".into(), "h2".into()],
    })
    .await
    .unwrap()
    .unwrap();
    l.propose(LedgerEntry::Begin { tid: 1 }).await.unwrap().unwrap();

    const K: usize = 4;
    let names = [
        "write 400 B + fdatasync (floor)",
        "redb: entry + hint in 1 txn (before)",
        "raft log: entry + hint in 1 append (now)",
        "Ledger::propose (single node, Commit entry)",
    ];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); K];
    let mut ios = [(0u64, 0u64); K];
    for i in 0..N {
        for k in 0..K {
            let (c0, b0) = io();
            let t = Instant::now();
            match k {
                0 => {
                    f.write_all(&buf).unwrap();
                    f.sync_data().unwrap();
                }
                1 => r1(i),
                2 => r2(i),
                _ => {
                    l.propose(commit(1 + i as u64)).await.unwrap().unwrap();
                }
            }
            lat[k].push(t.elapsed().as_secs_f64() * 1e6);
            let (c1, b1) = io();
            ios[k].0 += c1 - c0;
            ios[k].1 += b1 - b0;
        }
    }
    l.shutdown().await.unwrap();
    println!("{N} samples each, interleaved");
    for k in 0..K {
        print!("{:>5.1} writes {:>6} B/op  ", ios[k].0 as f64 / N as f64, ios[k].1 / N as u64);
        report(names[k], std::mem::take(&mut lat[k]));
    }
}
