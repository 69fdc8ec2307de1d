//! Randomized fault soaks of three host agents with one coordinator, or
//! with a replicated group of three, as real processes: opt-in
//! (`#[ignore]`), since they are meant to run for as long as an operator
//! gives them, not in every `cargo test`.
//!
//! ```sh
//! LOCKSTEP_SOAK_CYCLES=300 LOCKSTEP_SOAK_MINUTES=30 \
//!   cargo test --release -p lockstep-tests --test soak -- --ignored --nocapture
//! ```
//!
//! (both tests, one after the other; name one, `single` or `replicated`, to
//! run only it).
//!
//! Each cycle waits a random moment (so that faults land anywhere in a
//! transaction, a checkpoint or a replay), then injects one fault: SIGKILL
//! of one host, of several, of the leading coordinator, of another one, of
//! a majority of the group (down for up to 1.5 s) or of everything; a
//! clean SIGTERM restart of a host or of the leader; a host frozen with
//! SIGSTOP past its report deadline, or the leader frozen; or a host
//! restarted on a disk that fills up (its next journal or sink write
//! fails), which must exit with an error and is started again. Now and then a second fault follows
//! while the cluster is still recovering from the first. The cycle passes
//! when the pipeline is Running again and commits past where it was; it
//! fails at once on Stopped or Failed. With a group, a frozen or partly
//! killed group must elect a leader again, and a deposed leader must never
//! commit after its successor (a sink's epochs never go backwards). At the end every host's sink must
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
//! the pipelined commit path), `LOCKSTEP_SOAK_TLS=1` (every daemon on
//! mutual TLS, reading one set of files every 200 ms, and one more fault:
//! the certificate renewed in place, which the daemons take without a
//! restart and every later connection uses).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use lockstep_proto::v1::Status;
use lockstep_tests::certs::{TestCa, TlsFiles};
use lockstep_tests::*;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// How long one cycle may take to come back Running and commit again.
const RECOVERY: Duration = Duration::from_secs(90);
/// Short, so that a frozen host is declared lost within a cycle.
const REPORT_DEADLINE_MS: u64 = 1500;

/// `LOCKSTEP_SOAK_TLS=1`: the daemons' files, rewritten by
/// `Fault::RenewCertificate`, and the CA that signs each renewal.
struct SoakTls {
    dir: tempfile::TempDir,
    ca: TestCa,
    /// What every daemon's flags name.
    live: TlsFiles,
    /// What the soak's own status calls present.
    client: TlsFiles,
    renewals: u64,
}

/// How often the daemons re-read their TLS files in the soak.
const TLS_RELOAD: [&str; 2] = ["--tls-reload-ms", "200"];

impl SoakTls {
    fn from_env() -> Option<SoakTls> {
        if env_u64("LOCKSTEP_SOAK_TLS", 0) == 0 {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new(dir.path(), "soak");
        let first = ca.issue(dir.path(), "node-0");
        let live = TlsFiles { cert: dir.path().join("node.pem"), key: dir.path().join("node.key"), ca: dir.path().join("ca.pem"), server_name: None };
        first.copy_to(&live);
        let client = ca.issue(dir.path(), "operator");
        Some(SoakTls { dir, ca, live, client, renewals: 0 })
    }

    /// A coordinator's flags with the live files.
    fn coordinator(&self, args: &mut Vec<String>) {
        args.extend(self.live.flags());
        args.extend(TLS_RELOAD.map(String::from));
    }

    /// A host's.
    fn host(&self, args: &mut Vec<String>) {
        self.live.apply_to_host(args);
        args.extend(TLS_RELOAD.map(String::from));
    }

    /// A new certificate and key from the same CA over the live files.
    fn renew(&mut self) {
        self.renewals += 1;
        let fresh = self.ca.issue(self.dir.path(), &format!("node-{}", self.renewals));
        TlsFiles { ca: self.live.ca.clone(), ..fresh }.copy_to(&self.live);
    }
}

fn opts() -> ClusterOpts {
    ClusterOpts {
        commit_interval_ms: 20,
        report_deadline_ms: REPORT_DEADLINE_MS,
        pipeline_depth: env_u64("LOCKSTEP_SOAK_PIPELINE_DEPTH", 1),
        cluster_id: "soak".into(),
        ..ClusterOpts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with --ignored --nocapture; LOCKSTEP_SOAK_CYCLES, _MINUTES, _SEED, _PIPELINE_DEPTH"]
async fn single_coordinator_random_faults_always_recover_with_exactly_once_output() {
    let mut tls = SoakTls::from_env();
    let mut c = match &tls {
        Some(t) => {
            let mut opts = opts();
            opts.coordinator_flags.extend(TLS_RELOAD.map(String::from));
            Cluster::start_tls(opts, &t.live, |_| t.live.clone(), t.client.clone(), |_, args| args.extend(TLS_RELOAD.map(String::from)))
        }
        None => Cluster::start(opts()),
    };
    let daemons = Daemons {
        coordinators: std::slice::from_mut(&mut c.coordinator),
        addrs: std::slice::from_ref(&c.addr),
        hosts: &mut c.hosts,
        tls: tls.as_mut(),
    };
    let outcome = AssertUnwindSafe(soak(daemons, &c.opts)).catch_unwind().await;
    match outcome {
        Ok(committed) => {
            check_sinks_of(&c.opts, |i| c.sink(i), committed);
        }
        Err(panic) => failed(&mut c.dir, std::iter::once(&mut c.coordinator).chain(&mut c.hosts), panic),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with --ignored --nocapture; LOCKSTEP_SOAK_CYCLES, _MINUTES, _SEED, _PIPELINE_DEPTH"]
async fn replicated_coordinator_random_faults_always_recover_with_exactly_once_output() {
    let mut tls = SoakTls::from_env();
    let mut g = match &tls {
        Some(t) => Group::start_nodes_with(3, opts(), |_, args| t.coordinator(args), |_, args| t.host(args)),
        None => Group::start(3, opts()),
    };
    let daemons = Daemons { coordinators: &mut g.nodes, addrs: &g.addrs, hosts: &mut g.hosts, tls: tls.as_mut() };
    let outcome = AssertUnwindSafe(soak(daemons, &g.opts)).catch_unwind().await;
    match outcome {
        Ok(committed) => {
            check_sinks_of(&g.opts, |i| g.sink(i), committed);
        }
        Err(panic) => failed(&mut g.dir, g.nodes.iter_mut().chain(&mut g.hosts), panic),
    }
}

/// A failed soak: stops the daemons, so that the kept directories stay as
/// they were when the cycle failed, keeps them and says where.
fn failed<'a>(dir: &mut tempfile::TempDir, procs: impl Iterator<Item = &'a mut Proc>, panic: Box<dyn std::any::Any + Send>) -> ! {
    for p in procs {
        p.kill();
    }
    let kept = std::mem::replace(dir, tempfile::tempdir().expect("tempdir")).keep();
    eprintln!("soak: FAILED; data directories and logs kept in {}", kept.display());
    std::panic::resume_unwind(panic)
}

/// The processes of either harness, as the soak sees them: coordinator `i`
/// serves at `addrs[i]`.
struct Daemons<'a> {
    coordinators: &'a mut [Proc],
    addrs: &'a [String],
    hosts: &'a mut [Proc],
    tls: Option<&'a mut SoakTls>,
}

impl Daemons<'_> {
    fn logs(&self) -> String {
        let mut out = String::new();
        for p in self.coordinators.iter().chain(self.hosts.iter()) {
            out.push_str(&format!("\n---- {} log ----\n{}", p.name, excerpt(&p.log(), 40)));
        }
        out
    }

    /// The leader (not stale) once its status satisfies `pred` or shows
    /// Failed or Stopped; its index and status. Panics with the logs after
    /// `RECOVERY`.
    async fn wait_leader(&self, what: &str, pred: impl Fn(&Status) -> bool) -> (usize, Status) {
        let over = |s: &Status| s.pipeline_state == "Failed" || s.pipeline_state == "Stopped";
        let client = self.tls.as_ref().map(|t| &t.client);
        wait_leader_among(self.coordinators, self.addrs, client, what, RECOVERY, |s| over(s) || pred(s), || self.logs()).await
    }
}

#[derive(Debug, Clone)]
enum Fault {
    KillHost(usize),
    /// Two or more hosts at once.
    KillHosts(Vec<usize>),
    /// SIGKILL these coordinators, keep them down this long, start them
    /// again. A majority of a group down leaves it without a leader.
    KillCoordinators(Vec<usize>, Duration),
    KillEverything,
    /// SIGTERM and start again: the clean stop path under load.
    RestartHost(usize),
    RestartCoordinator(usize),
    /// SIGSTOP past the report deadline, then SIGCONT: the host is declared
    /// lost (fail closed) while its process and sockets stay as they were.
    FreezeHost(usize, Duration),
    /// The same for a coordinator: its hosts' keepalives and its own report
    /// deadlines run out while it is frozen (and a group elects another
    /// leader), and all of it is seen at once when it wakes.
    FreezeCoordinator(usize, Duration),
    /// The host is killed and started again on a disk that fills up: its
    /// journal append of a step `ahead` steps past its last reported one,
    /// or its sink write of the tid `ahead` past the last commit (`sink`),
    /// fails as on a full disk. It must exit with an error, and is started
    /// once more without the fault, as an orchestrator would once the disk
    /// has room again.
    DiskFull { host: usize, sink: bool, ahead: u64 },
    /// (With TLS) a new certificate and key from the same CA written over
    /// the files every daemon reads: taken within a poll, without a
    /// restart, and used by every connection made after it.
    RenewCertificate,
}

impl Fault {
    /// `leader`: the coordinator that led last.
    fn draw(rng: &mut StdRng, hosts: usize, coordinators: usize, leader: usize, tls: bool) -> Fault {
        if tls && rng.random_bool(0.1) {
            return Fault::RenewCertificate;
        }
        let host = rng.random_range(0..hosts);
        let other = if coordinators > 1 { (leader + rng.random_range(1..coordinators)) % coordinators } else { leader };
        match rng.random_range(0..100) {
            0..36 => Fault::KillHost(host),
            36..46 => {
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
            46..56 => Fault::KillCoordinators(vec![leader], Duration::ZERO),
            56..62 => Fault::KillCoordinators(vec![other], Duration::from_millis(rng.random_range(0..1500))),
            62..66 => {
                let majority = coordinators / 2 + 1;
                let mut set: Vec<usize> = (0..coordinators).collect();
                while set.len() > majority {
                    set.remove(rng.random_range(0..set.len()));
                }
                Fault::KillCoordinators(set, Duration::from_millis(rng.random_range(0..1500)))
            }
            66..74 => Fault::KillEverything,
            74..82 => Fault::RestartHost(host),
            82..88 => Fault::RestartCoordinator(leader),
            88..91 => Fault::FreezeCoordinator(leader, Duration::from_millis(rng.random_range(500..4000))),
            91..95 => Fault::FreezeHost(host, Duration::from_millis(REPORT_DEADLINE_MS + rng.random_range(300..2000))),
            // The last reported step may trail the journal by a few steps.
            95..97 => Fault::DiskFull { host, sink: false, ahead: rng.random_range(10..40) },
            _ => Fault::DiskFull { host, sink: true, ahead: rng.random_range(1..20) },
        }
    }

    /// Whether the pipeline must come back in a new epoch: a host that
    /// went away (or that went away with everything else) is only taken
    /// back through recovery. A coordinator restarted or replaced may carry
    /// on in a new epoch or not, and a frozen host may or may not have been
    /// declared lost yet when it wakes, so those only have to commit again.
    fn needs_new_epoch(&self) -> bool {
        matches!(self, Fault::KillHost(_) | Fault::KillHosts(_) | Fault::KillEverything | Fault::RestartHost(_) | Fault::DiskFull { .. })
    }

    async fn inject(&self, d: &mut Daemons<'_>) {
        match self {
            Fault::RenewCertificate => d.tls.as_mut().expect("drawn only with TLS").renew(),
            Fault::KillHost(i) => {
                d.hosts[*i].kill();
                d.hosts[*i].start();
            }
            Fault::KillHosts(set) => {
                for i in set {
                    d.hosts[*i].kill();
                }
                for i in set {
                    d.hosts[*i].start();
                }
            }
            Fault::KillCoordinators(set, down) => {
                for i in set {
                    d.coordinators[*i].kill();
                }
                tokio::time::sleep(*down).await;
                for i in set {
                    d.coordinators[*i].start();
                }
            }
            Fault::KillEverything => {
                for p in d.hosts.iter_mut().chain(d.coordinators.iter_mut()) {
                    p.kill();
                }
                for p in d.coordinators.iter_mut().chain(d.hosts.iter_mut()) {
                    p.start();
                }
            }
            Fault::RestartHost(i) => {
                let code = d.hosts[*i].terminate();
                assert_eq!(code, Some(0), "host-{i} must exit 0 on SIGTERM\n{}", d.logs());
                d.hosts[*i].start();
            }
            Fault::RestartCoordinator(i) => {
                let code = d.coordinators[*i].terminate();
                assert_eq!(code, Some(0), "{} must exit 0 on SIGTERM\n{}", d.coordinators[*i].name, d.logs());
                d.coordinators[*i].start();
            }
            Fault::FreezeHost(i, how_long) => {
                d.hosts[*i].pause(true);
                tokio::time::sleep(*how_long).await;
                d.hosts[*i].pause(false);
            }
            Fault::FreezeCoordinator(i, how_long) => {
                d.coordinators[*i].pause(true);
                tokio::time::sleep(*how_long).await;
                d.coordinators[*i].pause(false);
            }
            Fault::DiskFull { host, sink, ahead } => {
                let id = host_id(*host);
                let (flag, at) = if *sink {
                    // Killed first: from then on no tid this host has not
                    // written yet can commit, so the ledger's last commit
                    // (which every leader knows) is behind the tid chosen.
                    d.hosts[*host].kill();
                    let (_, s) = d.wait_leader("a leader to read the last commit from", |_| true).await;
                    ("--fault-fail-sink-write-at-tid", s.last_committed_tid + ahead)
                } else {
                    // A host's last step is known only to a leader it is
                    // connected to (a new leader has not seen it yet), and
                    // trails its journal by the steps not yet reported.
                    let (_, s) = d
                        .wait_leader(&format!("{id} connected to the leader"), |s| s.hosts.iter().any(|h| h.host_id == id && h.connected && h.last_step > 0))
                        .await;
                    d.hosts[*host].kill();
                    let last_step = s.hosts.iter().find(|h| h.host_id == id).map_or(0, |h| h.last_step);
                    assert!(last_step > 0, "the pipeline is {}: {}\n{}", s.pipeline_state, s.failure, d.logs());
                    ("--fault-fail-journal-write-at-step", last_step + ahead)
                };
                eprintln!("soak:   host-{host}: {flag} {at}");
                let p = &mut d.hosts[*host];
                let plain = p.args.clone();
                p.args.extend([flag.to_string(), at.to_string()]);
                p.start();
                p.args = plain;
                let exit = p.exited(RECOVERY).await.unwrap_or_else(|| panic!("host-{host} did not fail at {flag} {at}\n{}", tail(&p.log(), 40)));
                assert!(exit.code().is_some_and(|c| c != 0), "host-{host} must exit with an error on a full disk, not {exit:?}\n{}", tail(&p.log(), 40));
                p.start();
            }
        }
    }
}

/// Runs the cycles, then stops every daemon cleanly; returns the last
/// committed tid.
async fn soak(mut d: Daemons<'_>, opts: &ClusterOpts) -> u64 {
    let cycles = env_u64("LOCKSTEP_SOAK_CYCLES", 100);
    let budget = Duration::from_secs(60 * env_u64("LOCKSTEP_SOAK_MINUTES", 10));
    let seed = env_u64("LOCKSTEP_SOAK_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64);
    eprintln!(
        "soak: {} coordinator(s), {} hosts, seed {seed} (LOCKSTEP_SOAK_SEED={seed} draws the same faults), up to {cycles} cycles or {budget:?}, pipeline depth {}{}",
        d.coordinators.len(),
        d.hosts.len(),
        opts.pipeline_depth,
        if d.tls.is_some() { ", mutual TLS" } else { "" }
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let (hosts, coordinators) = (d.hosts.len(), d.coordinators.len());
    let (mut leader, first) = d.wait_leader("first commits", |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let (mut committed, mut epoch) = (first.last_committed_tid, first.epoch);
    let mut done = 0;
    while done < cycles && started.elapsed() < budget {
        // Anywhere in a transaction (20 ms), a checkpoint or the steps
        // between: the point of the fault is random, not its detection.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..120))).await;
        let fault = Fault::draw(&mut rng, hosts, coordinators, leader, d.tls.is_some());
        let mut new_epoch = fault.needs_new_epoch();
        eprintln!("soak: cycle {done}: {fault:?} at tid {committed}, epoch {epoch}, leader {leader}");
        fault.inject(&mut d).await;
        if rng.random_bool(0.2) {
            // A second fault while the first is being recovered from.
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            let second = Fault::draw(&mut rng, hosts, coordinators, leader, d.tls.is_some());
            new_epoch |= second.needs_new_epoch();
            eprintln!("soak: cycle {done}: then {second:?} during the recovery");
            second.inject(&mut d).await;
        }
        let what = format!("cycle {done}: Running{} and committing past tid {committed}", if new_epoch { format!(" in an epoch after {epoch}") } else { String::new() });
        let (at, s) = d
            .wait_leader(&what, |s| s.pipeline_state == "Running" && (!new_epoch || s.epoch > epoch) && s.last_committed_tid > committed)
            .await;
        assert_eq!(s.pipeline_state, "Running", "cycle {done}: the pipeline must recover, never stop or fail: {}\n{s:#?}\n{}", s.failure, d.logs());
        (leader, committed, epoch) = (at, s.last_committed_tid, s.epoch);
        done += 1;
    }
    let (_, s) = d.wait_leader("a last commit", |s| s.pipeline_state == "Running" && s.last_committed_tid > committed).await;
    let renewals = d.tls.as_ref().map_or(String::new(), |t| format!("; {} certificate renewals", t.renewals));
    eprintln!("soak: {done} cycles in {:?}; tid {} committed in epoch {}{renewals}", started.elapsed(), s.last_committed_tid, s.epoch);
    for p in d.hosts.iter_mut().chain(d.coordinators.iter_mut()) {
        assert_eq!(p.terminate(), Some(0), "{} exits cleanly on SIGTERM at the end", p.name);
    }
    s.last_committed_tid
}
