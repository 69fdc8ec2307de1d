//! A randomized fault soak of one coordinator and three host agents, as real
//! processes: opt-in (`#[ignore]`), since it is meant to run for as long as
//! an operator gives it, not in every `cargo test`.
//!
//! ```sh
//! LOCKSTEP_SOAK_CYCLES=300 LOCKSTEP_SOAK_MINUTES=30 \
//!   cargo test --release -p lockstep-tests --test soak -- --ignored --nocapture
//! ```
//!
//! Each cycle waits a random moment (so that faults land anywhere in a
//! transaction, a checkpoint or a replay), then injects one fault: SIGKILL
//! of one host, of several, of the coordinator or of everything; a clean
//! SIGTERM restart of a host or of the coordinator; or a host frozen with
//! SIGSTOP past its report deadline, or the coordinator frozen. Now and then a second fault follows
//! while the cluster is still recovering from the first. The cycle passes
//! when the pipeline is Running again and commits past where it was; it
//! fails at once on Stopped or Failed. At the end every host's sink must
//! hold every committed tid exactly once, with the aggregates an
//! independent computation from the generator's seed gives.
//!
//! The crash cycles of `e2e.rs` run a fixed schedule in every `cargo test`;
//! this one draws its schedule from `LOCKSTEP_SOAK_SEED` (printed at the
//! start, from the clock when unset), and prints every fault as it injects
//! it. A failed run keeps its data directories and logs and prints where.
//!
//! Knobs (environment): `LOCKSTEP_SOAK_CYCLES` (100), `LOCKSTEP_SOAK_MINUTES`
//! (10; no new cycle starts after that), `LOCKSTEP_SOAK_SEED`,
//! `LOCKSTEP_SOAK_PIPELINE_DEPTH` (1: one transaction at a time; more runs
//! the pipelined commit path).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use lockstep_tests::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// How long one cycle may take to come back Running and commit again.
const RECOVERY: Duration = Duration::from_secs(90);
/// Short, so that a frozen host is declared lost within a cycle.
const REPORT_DEADLINE_MS: u64 = 1500;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

fn running(s: &lockstep_proto::v1::Status) -> bool {
    s.pipeline_state == "Running"
}

#[derive(Debug, Clone)]
enum Fault {
    KillHost(usize),
    /// Two or more hosts at once.
    KillHosts(Vec<usize>),
    KillCoordinator,
    KillEverything,
    /// SIGTERM and start again: the clean stop path under load.
    RestartHost(usize),
    RestartCoordinator,
    /// SIGSTOP past the report deadline, then SIGCONT: the host is declared
    /// lost (fail closed) while its process and sockets stay as they were.
    FreezeHost(usize, Duration),
    /// The same for the coordinator: its hosts' keepalives and its own
    /// report deadlines run out while it is frozen, and all of it is seen
    /// at once when it wakes.
    FreezeCoordinator(Duration),
}

impl Fault {
    fn draw(rng: &mut StdRng, hosts: usize) -> Fault {
        let host = rng.random_range(0..hosts);
        match rng.random_range(0..100) {
            0..40 => Fault::KillHost(host),
            40..52 => {
                let mut set: Vec<usize> = (0..hosts).filter(|_| rng.random_bool(0.6)).collect();
                while set.len() < 2 {
                    let more = rng.random_range(0..hosts);
                    if !set.contains(&more) {
                        set.push(more);
                    }
                }
                set.sort_unstable();
                Fault::KillHosts(set)
            }
            52..64 => Fault::KillCoordinator,
            64..74 => Fault::KillEverything,
            74..84 => Fault::RestartHost(host),
            84..90 => Fault::RestartCoordinator,
            90..94 => Fault::FreezeCoordinator(Duration::from_millis(rng.random_range(500..4000))),
            _ => Fault::FreezeHost(host, Duration::from_millis(REPORT_DEADLINE_MS + rng.random_range(300..2000))),
        }
    }

    /// Whether the pipeline must come back in a new epoch: a host that
    /// went away (or a coordinator that lost every host with it) is only
    /// taken back through recovery. A coordinator restarted alone may carry
    /// on in its own new epoch or not, and a frozen host may or may not
    /// have been declared lost yet when it wakes, so those only have to
    /// commit again.
    fn needs_new_epoch(&self) -> bool {
        matches!(self, Fault::KillHost(_) | Fault::KillHosts(_) | Fault::KillEverything | Fault::RestartHost(_))
    }

    async fn inject(&self, c: &mut Cluster) {
        match self {
            Fault::KillHost(i) => {
                c.hosts[*i].kill();
                c.hosts[*i].start();
            }
            Fault::KillHosts(set) => {
                for i in set {
                    c.hosts[*i].kill();
                }
                for i in set {
                    c.hosts[*i].start();
                }
            }
            Fault::KillCoordinator => {
                c.coordinator.kill();
                c.coordinator.start();
            }
            Fault::KillEverything => c.crash_everything(),
            Fault::RestartHost(i) => {
                let code = c.hosts[*i].terminate();
                assert_eq!(code, Some(0), "host-{i} must exit 0 on SIGTERM\n{}", c.logs());
                c.hosts[*i].start();
            }
            Fault::RestartCoordinator => {
                let code = c.coordinator.terminate();
                assert_eq!(code, Some(0), "the coordinator must exit 0 on SIGTERM\n{}", c.logs());
                c.coordinator.start();
            }
            Fault::FreezeHost(i, how_long) => {
                c.hosts[*i].pause(true);
                tokio::time::sleep(*how_long).await;
                c.hosts[*i].pause(false);
            }
            Fault::FreezeCoordinator(how_long) => {
                c.coordinator.pause(true);
                tokio::time::sleep(*how_long).await;
                c.coordinator.pause(false);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with --ignored --nocapture; LOCKSTEP_SOAK_CYCLES, _MINUTES, _SEED, _PIPELINE_DEPTH"]
async fn random_faults_always_recover_with_exactly_once_output() {
    let cycles = env_u64("LOCKSTEP_SOAK_CYCLES", 100);
    let budget = Duration::from_secs(60 * env_u64("LOCKSTEP_SOAK_MINUTES", 10));
    let seed = env_u64("LOCKSTEP_SOAK_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64);
    let depth = env_u64("LOCKSTEP_SOAK_PIPELINE_DEPTH", 1);
    eprintln!("soak: seed {seed} (LOCKSTEP_SOAK_SEED={seed} draws the same faults), up to {cycles} cycles or {budget:?}, pipeline depth {depth}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Cluster::start(ClusterOpts {
        commit_interval_ms: 20,
        report_deadline_ms: REPORT_DEADLINE_MS,
        pipeline_depth: depth,
        cluster_id: "soak".into(),
        ..ClusterOpts::default()
    });
    let outcome = AssertUnwindSafe(soak(&mut c, &mut rng, cycles, budget)).catch_unwind().await;
    if let Err(panic) = outcome {
        // Stop the daemons first, so that the kept directories stay as
        // they were when the cycle failed.
        for h in &mut c.hosts {
            h.kill();
        }
        c.coordinator.kill();
        let dir = std::mem::replace(&mut c.dir, tempfile::tempdir().expect("tempdir")).keep();
        eprintln!("soak: FAILED with seed {seed}; data directories and logs kept in {}", dir.display());
        std::panic::resume_unwind(panic);
    }
}

async fn soak(c: &mut Cluster, rng: &mut StdRng, cycles: u64, budget: Duration) {
    let started = Instant::now();
    let hosts = c.opts.hosts;
    let first = c.wait_for("first commits", RECOVERY, |s| running(s) && s.last_committed_tid >= 3).await;
    let (mut committed, mut epoch) = (first.last_committed_tid, first.epoch);
    let mut done = 0;
    while done < cycles && started.elapsed() < budget {
        // Anywhere in a transaction (20 ms), a checkpoint or the steps
        // between: the point of the fault is random, not its detection.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        let fault = Fault::draw(rng, hosts);
        let mut new_epoch = fault.needs_new_epoch();
        eprintln!("soak: cycle {done}: {fault:?} at tid {committed}, epoch {epoch}");
        fault.inject(c).await;
        if rng.random_bool(0.2) {
            // A second fault while the first is being recovered from.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            let second = Fault::draw(rng, hosts);
            new_epoch |= second.needs_new_epoch();
            eprintln!("soak: cycle {done}: then {second:?} during the recovery");
            second.inject(c).await;
        }
        let what = format!("cycle {done}: Running{} and committing past tid {committed}", if new_epoch { format!(" in an epoch after {epoch}") } else { String::new() });
        let s = c
            .wait_for(&what, RECOVERY, |s| {
                s.pipeline_state == "Failed"
                    || s.pipeline_state == "Stopped"
                    || (running(s) && (!new_epoch || s.epoch > epoch) && s.last_committed_tid > committed)
            })
            .await;
        assert!(running(&s), "cycle {done}: the pipeline must recover, never stop or fail: {}\n{s:#?}\n{}", s.failure, c.logs());
        committed = s.last_committed_tid;
        epoch = s.epoch;
        done += 1;
    }
    let s = c.wait_for("a last commit", RECOVERY, |s| running(s) && s.last_committed_tid > committed).await;
    eprintln!("soak: {done} cycles in {:?}; tid {} committed in epoch {}", started.elapsed(), s.last_committed_tid, s.epoch);
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0), "{} exits cleanly on SIGTERM at the end", h.name);
    }
    assert_eq!(c.coordinator.terminate(), Some(0), "the coordinator exits cleanly on SIGTERM at the end");
    check_sinks(c, s.last_committed_tid);
}
