//! Journal benchmarks against baselines on the same disk, in one run
//! (plain std timing; not a timed test). Run:
//!
//! ```text
//! CARGO_TARGET_DIR=target/journal-helper cargo bench -p lockstep-journal --bench journal
//! ```
//!
//! (a) append throughput and p50/p99 latency with 1, 8 and 32 concurrent
//!     appenders vs a plain loop of write + fdatasync per record of the same
//!     size (target: >= 5x the loop at 32 appenders);
//! (b) sequential replay (read_from: CRC + full decode into owned records;
//!     read_shared_from: payloads shared; views_from: decoded in place, no
//!     allocation per record) vs a raw sequential read of the same segment
//!     files (target: >= 0.5x);
//! (c) VmRSS while replaying and summarising a large journal stays flat;
//! (d) CRC32C throughput on this CPU: the `crc32c` crate (SSE4.2 `crc32`
//!     instruction, 3-way interleaved) vs `crc-fast` (PCLMULQDQ /
//!     VPCLMULQDQ folding fused with `crc32`, what `format::crc32c` uses) on
//!     256 B, 4 KiB and 256 KiB buffers, and the frame CRC as the reader
//!     computes it (length prefix, then body). In memory, no disk.
//!
//! `LOCKSTEP_BENCH_SECTIONS` picks sections, comma-separated, from `crc`,
//! `append`, `replay` (default: all; `replay` includes (c)).
//!
//! Sizes: `LOCKSTEP_BENCH_PAYLOAD_BYTES` (appends, default 256),
//! `LOCKSTEP_BENCH_REPLAY_RECORDS` (default 50000) and
//! `LOCKSTEP_BENCH_REPLAY_PAYLOAD_BYTES` (default 4096) for replay,
//! `LOCKSTEP_BENCH_DIR` (default: a temp dir under target/, i.e. the disk the
//! build is on).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lockstep_journal::{format, view, Journal, JournalOptions, Position};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn vm_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct AppendResult {
    records_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// `appenders` threads, each appending `per_appender` step records, with
/// `append_async` + `block_on` (`blocking == false`) or `append`.
fn bench_appends(dir: &Path, appenders: usize, per_appender: usize, payload: usize, blocking: bool) -> AppendResult {
    let (journal, _) = Journal::open(dir, ident(), JournalOptions::default()).unwrap();
    let journal = Arc::new(journal);
    let next = Arc::new(Mutex::new(0u64));
    let start = Instant::now();
    let threads: Vec<_> = (0..appenders)
        .map(|_| {
            let (journal, next) = (journal.clone(), next.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_appender);
                for _ in 0..per_appender {
                    let t0 = Instant::now();
                    if blocking {
                        // `append` must be called in step order: hold the
                        // numbering lock through it (as a caller would).
                        let mut last = next.lock().unwrap();
                        *last += 1;
                        journal.append(&step(*last, *last - 1, 1, payload)).unwrap();
                    } else {
                        let durable = {
                            let mut last = next.lock().unwrap();
                            *last += 1;
                            journal.append_async(step(*last, *last - 1, 1, payload))
                        };
                        block_on(durable).unwrap();
                    }
                    lat.push(t0.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();
    lat.sort();
    AppendResult {
        records_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

/// Plain loop: write one frame-sized buffer, fdatasync, repeat; latencies.
/// Appends to `plain.bin` (created if missing), so over several rounds the
/// file grows just as a journal segment does.
fn plain_loop_latencies(dir: &Path, records: usize, frame_bytes: usize) -> Vec<Duration> {
    let path = dir.join("plain.bin");
    let mut f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
    let buf = vec![0x5au8; frame_bytes];
    let mut lat = Vec::with_capacity(records);
    for _ in 0..records {
        let t0 = Instant::now();
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        lat.push(t0.elapsed());
    }
    lat
}

/// Plain loop: write one frame-sized buffer, fdatasync, repeat.
fn bench_plain_loop(dir: &Path, records: usize, frame_bytes: usize) -> AppendResult {
    let start = Instant::now();
    let mut lat = plain_loop_latencies(dir, records, frame_bytes);
    let elapsed = start.elapsed();
    lat.sort();
    AppendResult {
        records_per_s: records as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    }
}

/// Drops the files' clean pages from the page cache, so the next read
/// comes from the disk (no root needed, unlike drop_caches).
fn evict(paths: &[std::path::PathBuf]) {
    use std::os::fd::AsRawFd;
    for p in paths {
        let f = File::open(p).unwrap();
        f.sync_all().unwrap();
        // SAFETY: plain syscall on an open fd.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise failed");
    }
}

/// Best-of-`rounds` throughput in GB/s (10^9 bytes/s) of `f` over `buf`,
/// each round running it on about `bytes_per_round` bytes.
fn crc_gbps(buf: &[u8], bytes_per_round: usize, rounds: usize, f: &dyn Fn(&[u8]) -> u32) -> f64 {
    let iters = (bytes_per_round / buf.len()).max(1);
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut acc = 0u32;
        for _ in 0..iters {
            acc ^= f(std::hint::black_box(buf));
        }
        std::hint::black_box(acc);
        best = best.min(t0.elapsed());
    }
    (iters * buf.len()) as f64 / best.as_secs_f64() / 1e9
}

/// (d): CRC32C implementations compared on this CPU.
fn bench_crc() {
    println!("\n(d) CRC32C throughput, GB/s (10^9 B/s), best of 7 rounds of ~64 MB each, implementations interleaved");
    // Deterministic pseudo-random bytes (xorshift), so runs are comparable.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..(256 << 10) + 64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    type CrcFn = fn(&[u8]) -> u32;
    let impls: [(&str, CrcFn); 4] = [
        ("crc32c 0.6.9, crc32c::crc32c          ", |b| crc32c::crc32c(b)),
        ("crc-fast, crc_fast::crc32_iscsi       ", |b| crc_fast::crc32_iscsi(b)),
        ("frame CRC (len, body) with crc32c     ", |b| crc32c::crc32c_append(crc32c::crc32c(&b[..4]), &b[8..])),
        ("frame CRC (len, body), format (journal)", |b| format::crc32c_append(format::crc32c(&b[..4]), &b[8..])),
    ];
    for size in [256usize, 4 << 10, 256 << 10] {
        // Odd offset: frame bodies are not aligned in the read buffer.
        let buf = &data[3..3 + size];
        let mut best = [0f64; 4];
        for _ in 0..7 {
            for (i, (_, f)) in impls.iter().enumerate() {
                best[i] = best[i].max(crc_gbps(buf, 64 << 20, 1, f));
            }
        }
        println!("  {:>6} B buffers:", size);
        for (i, (name, _)) in impls.iter().enumerate() {
            println!("    {name}: {:>6.1} GB/s = {:.2}x crc32c", best[i], best[i] / best[0]);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let sections = std::env::var("LOCKSTEP_BENCH_SECTIONS").unwrap_or_else(|_| "crc,append,replay".into());
    let section = |name: &str| sections.split(',').any(|s| s.trim() == name);
    if section("crc") {
        bench_crc();
    }
    if !section("append") && !section("replay") {
        return;
    }
    let payload = env_usize("LOCKSTEP_BENCH_PAYLOAD_BYTES", 256);
    let replay_records = env_usize("LOCKSTEP_BENCH_REPLAY_RECORDS", 50_000);
    let replay_payload = env_usize("LOCKSTEP_BENCH_REPLAY_PAYLOAD_BYTES", 4096);
    let base = std::env::var("LOCKSTEP_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/journal-bench");
        std::fs::create_dir_all(&p).unwrap();
        p
    });
    let root = tempfile::tempdir_in(&base).unwrap();
    let frame_bytes = format::encode_frame(&step(1, 0, 1, payload)).len();
    println!("journal benchmarks: record payload {payload} B (frame {frame_bytes} B), dir {}", root.path().display());

    // (a) appends. fsync latency of a shared virtual disk drifts a lot
    // within a run, so the single-appender comparison alternates: rounds of
    // plain loop / `append` / `append_async`, totals over all rounds.
    if section("append") {
        bench_append_section(root.path(), payload, frame_bytes);
    }
    if section("replay") {
        bench_replay_section(root.path(), replay_records, replay_payload);
    }
}

fn bench_append_section(root: &Path, payload: usize, frame_bytes: usize) {
    println!("\n(a) appends: durable records/s, latency p50 / p99");
    let rounds = env_usize("LOCKSTEP_BENCH_APPEND_ROUNDS", 6);
    let per_round = 400usize;
    let (sync_dir, async_dir) = (root.join("append-1-sync"), root.join("append-1-async"));
    let (sync_j, _) = Journal::open(&sync_dir, ident(), JournalOptions::default()).unwrap();
    let (async_j, _) = Journal::open(&async_dir, ident(), JournalOptions::default()).unwrap();
    let mut lats: [Vec<Duration>; 3] = Default::default();
    let mut totals = [Duration::ZERO; 3];
    let mut next_step = [0u64; 2];
    for _ in 0..rounds {
        let t0 = Instant::now();
        lats[0].extend(plain_loop_latencies(root, per_round, frame_bytes));
        totals[0] += t0.elapsed();
        for (i, j) in [&sync_j, &async_j].into_iter().enumerate() {
            let t0 = Instant::now();
            for _ in 0..per_round {
                let t = Instant::now();
                next_step[i] += 1;
                let s = next_step[i];
                if i == 0 {
                    j.append(&step(s, s - 1, 1, payload)).unwrap();
                } else {
                    block_on(j.append_async(step(s, s - 1, 1, payload))).unwrap();
                }
                lats[i + 1].push(t.elapsed());
            }
            totals[i + 1] += t0.elapsed();
        }
    }
    drop((sync_j, async_j));
    let summary = |i: usize| {
        let mut l = lats[i].clone();
        l.sort();
        AppendResult { records_per_s: l.len() as f64 / totals[i].as_secs_f64(), p50: percentile(&l, 0.5), p99: percentile(&l, 0.99) }
    };
    let plain = summary(0);
    println!(
        "  plain write+fdatasync loop : {:>9.0} rec/s  p50 {:>8.1?}  p99 {:>8.1?}   ({rounds} rounds of {per_round}, alternating with the next two rows)",
        plain.records_per_s, plain.p50, plain.p99
    );
    for (i, api) in [(1usize, "append      "), (2, "append_async")] {
        let r = summary(i);
        println!(
            "  journal,  1 x {api}    : {:>9.0} rec/s  p50 {:>8.1?}  p99 {:>8.1?}  = {:.2}x plain loop (p50 {:.2}x)",
            r.records_per_s,
            r.p50,
            r.p99,
            r.records_per_s / plain.records_per_s,
            plain.p50.as_secs_f64() / r.p50.as_secs_f64(),
        );
    }
    for (appenders, per) in [(8usize, 500usize), (32, 300)] {
        let plain = bench_plain_loop(root, 1000, frame_bytes);
        let dir = root.join(format!("append-{appenders}"));
        let r = bench_appends(&dir, appenders, per, payload, false);
        println!(
            "  journal, {appenders:>2} x append_async    : {:>9.0} rec/s  p50 {:>8.1?}  p99 {:>8.1?}  = {:.1}x plain loop run just before ({:.0} rec/s, p50 {:.1?})",
            r.records_per_s,
            r.p50,
            r.p99,
            r.records_per_s / plain.records_per_s,
            plain.records_per_s,
            plain.p50,
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

}

/// (b) replay vs raw read, (c) memory.
fn bench_replay_section(root: &Path, replay_records: usize, replay_payload: usize) {
    let dir = root.join("replay");
    {
        let (journal, _) = Journal::open(&dir, ident(), JournalOptions::default()).unwrap();
        let batch = 1024u64;
        let mut s = 0u64;
        while s < replay_records as u64 {
            let pending: Vec<_> = (0..batch.min(replay_records as u64 - s))
                .map(|_| {
                    s += 1;
                    journal.append_async(step(s, s - 1, s / 100 + 1, replay_payload))
                })
                .collect();
            for p in pending {
                block_on(p).unwrap();
            }
        }
    }
    let (journal, report) = Journal::open(&dir, ident(), JournalOptions::default()).unwrap();
    let mut bytes = 0u64;
    let mut segs: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    for p in &segs {
        bytes += std::fs::metadata(p).unwrap().len();
    }
    println!(
        "\n(b) replay of {} records ({replay_payload} B payload), {:.1} MiB in {} segments; best of 3",
        report.records,
        bytes as f64 / (1 << 20) as f64,
        report.segments
    );
    let raw_read = |buf: &mut Vec<u8>| {
        let mut n = 0u64;
        for p in &segs {
            let mut f = File::open(p).unwrap();
            loop {
                let k = f.read(buf).unwrap();
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
        }
        assert_eq!(n, bytes);
    };
    // The ceiling of any read()-based replay: the same copy from the page
    // cache in the reader's chunk size, plus one CRC pass over every byte.
    let raw_read_crc = |buf: &mut Vec<u8>| {
        let mut n = 0u64;
        let mut acc = 0u32;
        for p in &segs {
            let mut f = File::open(p).unwrap();
            loop {
                let k = f.read(&mut buf[..format::READ_CHUNK_BYTES]).unwrap();
                if k == 0 {
                    break;
                }
                acc ^= format::crc32c(&buf[..k]);
                n += k as u64;
            }
        }
        std::hint::black_box(acc);
        assert_eq!(n, bytes);
    };
    let mut buf = vec![0u8; 1 << 20];
    let rss_before = vm_kib("VmRSS:");
    let mut rss_max = rss_before;
    let replay = |rss_max: &mut u64| {
        let mut n = 0u64;
        for r in journal.read_from(Position::default()).unwrap() {
            let (_, rec) = r.unwrap();
            std::hint::black_box(&rec);
            n += 1;
            if n.is_multiple_of(20_000) {
                *rss_max = (*rss_max).max(vm_kib("VmRSS:"));
            }
        }
        assert_eq!(n, report.records);
    };
    let replay_shared = |rss_max: &mut u64| {
        let mut n = 0u64;
        for r in journal.read_shared_from(Position::default()).unwrap() {
            let (_, rec) = r.unwrap();
            std::hint::black_box(&rec);
            n += 1;
            if n.is_multiple_of(20_000) {
                *rss_max = (*rss_max).max(vm_kib("VmRSS:"));
            }
        }
        assert_eq!(n, report.records);
    };
    // In place: no allocation per record; every endpoint is walked and its
    // payload slice handed to black_box, as a replaying engine would.
    let replay_views = |rss_max: &mut u64| {
        let mut n = 0u64;
        let mut records = journal.views_from(Position::default()).unwrap();
        while let Some((_, rec)) = records.next_record().unwrap() {
            match rec {
                view::RecordView::Step(s) => {
                    for e in s.endpoints() {
                        std::hint::black_box(&e);
                    }
                }
                other => {
                    std::hint::black_box(&other);
                }
            }
            n += 1;
            if n.is_multiple_of(20_000) {
                *rss_max = (*rss_max).max(vm_kib("VmRSS:"));
            }
        }
        assert_eq!(n, report.records);
    };
    let summarize = || {
        std::hint::black_box(journal.summarize(0).unwrap());
    };
    let mib = bytes as f64 / (1 << 20) as f64;
    for cold in [true, false] {
        // Best of 3 of each, interleaved: raw, read_from, read_shared_from,
        // summarize, raw + CRC, views_from.
        let mut best = [Duration::MAX; 6];
        for _ in 0..3 {
            for (i, best) in best.iter_mut().enumerate() {
                if cold {
                    evict(&segs);
                }
                let t0 = Instant::now();
                match i {
                    0 => raw_read(&mut buf),
                    1 => replay(&mut rss_max),
                    2 => replay_shared(&mut rss_max),
                    3 => summarize(),
                    4 => raw_read_crc(&mut buf),
                    _ => replay_views(&mut rss_max),
                }
                *best = (*best).min(t0.elapsed());
            }
        }
        let mibs = |d: Duration| mib / d.as_secs_f64();
        let raw_mibs = mibs(best[0]);
        let what = if cold { "cold (evicted from page cache)" } else { "warm (in page cache)" };
        println!("  {what}:");
        println!("    raw sequential read                 : {raw_mibs:>8.0} MiB/s");
        for (i, name) in [
            (1, "replay, read_from (owned pb) "),
            (2, "replay, read_shared_from     "),
            (5, "replay, views_from (in place)"),
            (3, "summarize (in place)         "),
            (4, "bound: raw 256 KiB reads+CRC "),
        ] {
            println!(
                "    {name}        : {:>8.0} MiB/s  = {:.2}x raw  ({:.0} records/s)",
                mibs(best[i]),
                mibs(best[i]) / raw_mibs,
                report.records as f64 / best[i].as_secs_f64()
            );
        }
    }
    let rss_after_replay = vm_kib("VmRSS:");
    let summary = journal.summarize(0).unwrap();
    let rss_after = vm_kib("VmRSS:");
    println!(
        "\n(c) memory, replaying {mib:.0} MiB ({} records) eighteen times: VmRSS before {rss_before} KiB, max while reading {rss_max} KiB, after {rss_after_replay} KiB (growth {} KiB)",
        report.records,
        rss_max.max(rss_after_replay).saturating_sub(rss_before)
    );
    println!(
        "    then summarize: VmRSS {rss_after} KiB while holding the summary of {} tids over {} endpoints (it grows with tids, not bytes)",
        summary.tids.len(),
        summary.endpoints.len()
    );
}
