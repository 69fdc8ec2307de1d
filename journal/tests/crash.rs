//! Crash test with real processes: a child process (this test binary,
//! re-executed with `LOCKSTEP_JOURNAL_CRASH_DIR` set) appends from several
//! threads through group commit and prints every acknowledged step; the
//! parent SIGKILLs it at a random moment, reopens the journal and checks
//! that every acknowledged record is there, byte for byte. Repeated over
//! many cycles on the same directory, so recovery of one crash is the
//! starting point of the next.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use lockstep_journal::pb::journal_record::Kind;
use lockstep_journal::{Journal, JournalOptions, Position};

const DIR_ENV: &str = "LOCKSTEP_JOURNAL_CRASH_DIR";
const CYCLES: u64 = 20;
const APPENDERS: usize = 8;
/// The parent kills the child after at most this many acknowledgements.
const ACKS_BEFORE_KILL_MAX: u64 = 200;

fn opts() -> JournalOptions {
    // Small segments so crashes also land around segment rolls.
    JournalOptions { segment_bytes_max: 16 << 10, ..JournalOptions::default() }
}

fn tid_of(step: u64) -> u64 {
    step / 10 + 1
}

fn payload_bytes(step: u64) -> usize {
    50 + (step % 7) as usize * 40
}

/// Child mode: append forever (until killed). A no-op in a normal run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let (journal, _) = Journal::open(&dir, ident(), opts()).expect("child: open");
    let journal = Arc::new(journal);
    let next = Arc::new(Mutex::new(journal.last_step()));
    let threads: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let (journal, next) = (journal.clone(), next.clone());
            std::thread::spawn(move || loop {
                // Number and enqueue under the lock (append_async queues in
                // call order), wait for durability outside it: the appenders
                // share fsyncs.
                let (s, durable) = {
                    let mut last = next.lock().unwrap();
                    let s = *last + 1;
                    *last = s;
                    (s, journal.append_async(step(s, s - 1, tid_of(s), payload_bytes(s))))
                };
                let pos = block_on(durable).expect("child: append");
                println!("ACK {s} {} {}", pos.segment, pos.offset);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("crash test seed {seed}");
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // step -> position acknowledged.
    let mut acked: BTreeMap<u64, Position> = BTreeMap::new();
    let mut torn_total = 0;
    for cycle in 0..CYCLES {
        let child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
            .env(DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().unwrap();
        let kill_after = 1 + rand() % ACKS_BEFORE_KILL_MAX;
        let mut seen = 0u64;
        let mut killed = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ACK ") else { continue };
            let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
            acked.insert(f[0], Position { segment: f[1], offset: f[2] });
            seen += 1;
            if seen == kill_after && !killed {
                // A little random spin so the kill lands at varied points of
                // the writer's cycle (write, fsync, ack).
                for _ in 0..rand() % 20_000 {
                    std::hint::spin_loop();
                }
                // SAFETY: plain syscall on our own child's pid.
                let rc = unsafe { libc::kill(child.0.id() as libc::pid_t, libc::SIGKILL) };
                assert_eq!(rc, 0, "kill failed");
                killed = true;
            }
            // Keep reading to EOF: acks printed before the kill count too.
        }
        let status = child.0.wait().unwrap();
        assert!(killed && !status.success(), "cycle {cycle}: child ended on its own: {status:?}");

        let (journal, report) = Journal::open(dir.path(), ident(), opts()).unwrap();
        torn_total += report.torn_tail_bytes;
        let mut found: BTreeMap<u64, (Position, lockstep_journal::pb::StepRecord)> = BTreeMap::new();
        for r in journal.read_from(Position::default()).unwrap() {
            let (pos, rec) = r.unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
            if let Some(Kind::Step(s)) = rec.kind {
                found.insert(s.step, (pos, s));
            }
        }
        for (&s, &pos) in &acked {
            let (got_pos, got) = found.get(&s).unwrap_or_else(|| panic!("cycle {cycle}: acknowledged step {s} lost"));
            assert_eq!(*got_pos, pos, "cycle {cycle}: step {s} moved");
            let Some(Kind::Step(expected)) = step(s, s - 1, tid_of(s), payload_bytes(s)).kind else { unreachable!() };
            assert_eq!(*got, expected, "cycle {cycle}: step {s} differs");
        }
        // The chain is gapless from step 1 (read_from checks it; here we
        // also check nothing is missing at the start).
        if let Some((&first, _)) = found.iter().next() {
            assert_eq!(first, 1);
            assert_eq!(found.len() as u64, journal.last_step());
        }
    }
    eprintln!("crash test: {} steps acknowledged over {CYCLES} kills, {torn_total} torn bytes repaired", acked.len());
    assert!(acked.len() as u64 >= CYCLES);
}
