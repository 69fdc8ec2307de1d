//! A randomized soak of network partitions, in real containers: a raft
//! group of three coordinators and three host agents, each link between
//! two daemons on a Docker network of its own ([`Wiring::Links`]), so that
//! any set of links can be cut while the rest stay up. Opt-in
//! (`#[ignore]`), like tests/soak.rs, and skipped without Docker:
//!
//! ```sh
//! LOCKSTEP_SOAK_CYCLES=100 LOCKSTEP_SOAK_MINUTES=20 \
//!   cargo test --release -p lockstep-tests --test partition_soak -- --ignored --nocapture
//! ```
//!
//! Each cycle waits a random moment, cuts links (a host from every
//! coordinator or from the leader alone; the leader from its peers while
//! it still reaches its hosts, from one follower, from most hosts, or from
//! everything; a follower from everything), holds the cut for a random
//! while (shorter or longer than the report deadline and the election
//! timeout), sometimes kills a daemon while the cut holds, and heals; or
//! cuts and heals the same links several times in a row (a flapping link).
//! Some cycles are a crash with no cut: a host or the leader killed, or the
//! leader frozen (`docker pause`). The cycle passes when a leader is
//! Running again and commits past where the cycle began; it fails at once
//! on Stopped or Failed, and when a fault that left the leader a quorum
//! (every cut but those of the leader from both peers or from everything,
//! no coordinator killed) moved the raft term although the group was whole
//! when it began (every follower following the leader, caught up):
//! pre-vote must keep a node that lost the leader from forcing an
//! election. At the end every daemon must stop cleanly and
//! every host's sink must hold every committed tid exactly once, epochs
//! never going backwards (no deposed leader's commit after its
//! successor's), with the aggregates an independent computation from the
//! generator's seed gives. It then prints, per kind of fault, how long
//! the cluster took from whole again (healed, restarted, woken) to its
//! first new commit; a cycle slower than 3 s prints what the daemons
//! logged about leadership, recovery and lost hosts since it began.
//!
//! Knobs (environment): `LOCKSTEP_SOAK_CYCLES` (50), `LOCKSTEP_SOAK_MINUTES`
//! (10; no new cycle starts after that), `LOCKSTEP_SOAK_SEED` (printed at
//! the start; the same seed draws the same faults), `LOCKSTEP_SOAK_TLS=1`
//! (every connection on mutual TLS, as deploy/README.md sets it up: each
//! heal then opens new connections with a TLS handshake),
//! `LOCKSTEP_TEST_COORDINATOR_LOG` (a `RUST_LOG` filter for the
//! coordinators, e.g. `info,openraft=info` to follow elections). A failed
//! run keeps the data directories and every container's log and prints
//! where.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use lockstep_proto::v1::Status;
use lockstep_tests::docker::{containers_can_run, docker, DockerCluster, Wiring, HOSTS};
use lockstep_tests::{env_u64, host_id, status_at_with};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// How long one cycle may take, after the heal, to come back Running and
/// commit again.
const RECOVERY: Duration = Duration::from_secs(90);
/// Short, so that a cut host is declared lost within most cuts.
const REPORT_DEADLINE_MS: u64 = 1500;
const COORDINATORS: usize = 3;

#[derive(Debug, Clone)]
enum Cut {
    /// A host from every coordinator.
    IsolateHost(usize),
    /// A host from the leader alone: the followers still answer it, and
    /// send it to the leader it cannot reach.
    HostFromLeader(usize),
    /// The leader from both peers; it still reaches every host (and they
    /// it), but can no longer commit.
    LeaderFromPeers,
    /// The leader from one follower: the group keeps a quorum through the
    /// other, and the cut-off follower may start elections.
    LeaderFromFollower(usize),
    /// The leader from these hosts (a majority); it keeps its peers.
    LeaderFromHosts(Vec<usize>),
    /// The leader from everything.
    IsolateLeader,
    /// A follower from everything.
    IsolateFollower(usize),
}

impl Cut {
    fn draw(rng: &mut StdRng, host: usize, follower: usize) -> Cut {
        match rng.random_range(0..100) {
            0..15 => Cut::IsolateHost(host),
            15..30 => Cut::HostFromLeader(host),
            30..45 => Cut::LeaderFromPeers,
            45..55 => Cut::LeaderFromFollower(follower),
            55..65 => {
                let spared = rng.random_range(0..HOSTS);
                Cut::LeaderFromHosts((0..HOSTS).filter(|h| *h != spared).collect())
            }
            65..80 => Cut::IsolateLeader,
            _ => Cut::IsolateFollower(follower),
        }
    }

    /// Whether the leader keeps a quorum of the group (itself and a
    /// follower that hears it) through this cut: then no election may
    /// follow, since pre-vote keeps a node that lost the leader from
    /// raising the term while a majority still hears one.
    fn leader_keeps_quorum(&self) -> bool {
        !matches!(self, Cut::LeaderFromPeers | Cut::IsolateLeader)
    }

    fn name(&self) -> &'static str {
        match self {
            Cut::IsolateHost(_) => "IsolateHost",
            Cut::HostFromLeader(_) => "HostFromLeader",
            Cut::LeaderFromPeers => "LeaderFromPeers",
            Cut::LeaderFromFollower(_) => "LeaderFromFollower",
            Cut::LeaderFromHosts(_) => "LeaderFromHosts",
            Cut::IsolateLeader => "IsolateLeader",
            Cut::IsolateFollower(_) => "IsolateFollower",
        }
    }

    /// Cuts these links; `leader` is the coordinator that led last.
    fn apply(&self, c: &mut DockerCluster, leader: usize) {
        let lead = c.coordinators[leader].clone();
        match self {
            Cut::IsolateHost(h) => c.isolate(&host_id(*h)),
            Cut::HostFromLeader(h) => c.cut(&lead, &host_id(*h)),
            Cut::LeaderFromPeers => {
                for peer in c.coordinators.clone().iter().filter(|p| **p != lead) {
                    c.cut(&lead, peer);
                }
            }
            Cut::LeaderFromFollower(f) => {
                let f = c.coordinators[*f].clone();
                c.cut(&lead, &f)
            }
            Cut::LeaderFromHosts(hosts) => {
                for h in hosts {
                    c.cut(&lead, &host_id(*h));
                }
            }
            Cut::IsolateLeader => c.isolate(&lead),
            Cut::IsolateFollower(f) => {
                let f = c.coordinators[*f].clone();
                c.isolate(&f)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Fault {
    /// Links cut for this long, then healed; with a host or a coordinator
    /// (by index) killed and started again while the cut holds.
    Partition { cut: Cut, hold: Duration, kill: Option<Victim> },
    /// The same links cut and healed again and again, each time for the
    /// first of the pair and up again for the second: a flapping link,
    /// which may heal in the middle of an election or a recovery.
    Flap { cut: Cut, periods: Vec<(Duration, Duration)> },
    /// `docker kill` and `docker start`, with every link up.
    Kill(Victim),
    /// `docker pause` of the leader for this long: every timer of its
    /// peers and hosts runs out while it cannot notice.
    FreezeLeader(Duration),
}

#[derive(Debug, Clone, Copy)]
enum Victim {
    Host(usize),
    Coordinator(usize),
}

impl Victim {
    fn role(self, c: &DockerCluster) -> String {
        match self {
            Victim::Host(i) => host_id(i),
            Victim::Coordinator(i) => c.coordinators[i].clone(),
        }
    }
}

impl Fault {
    fn draw(rng: &mut StdRng, leader: usize) -> Fault {
        let host = rng.random_range(0..HOSTS);
        let follower = (leader + rng.random_range(1..COORDINATORS)) % COORDINATORS;
        // From well inside the report deadline and the election timeout
        // (a cut nobody should notice) to well past both.
        let hold = Duration::from_millis(rng.random_range(200..6000));
        let cut = match rng.random_range(0..100) {
            0..80 => Cut::draw(rng, host, follower),
            80..87 => return Fault::Kill(if rng.random_bool(0.6) { Victim::Host(host) } else { Victim::Coordinator(leader) }),
            87..93 => return Fault::FreezeLeader(Duration::from_millis(rng.random_range(300..4000))),
            _ => {
                let cut = Cut::draw(rng, host, follower);
                let periods = (0..rng.random_range(3..8))
                    .map(|_| (Duration::from_millis(rng.random_range(50..1500)), Duration::from_millis(rng.random_range(50..700))))
                    .collect();
                return Fault::Flap { cut, periods };
            }
        };
        let kill = match rng.random_range(0..10) {
            0 => Some(Victim::Host(rng.random_range(0..HOSTS))),
            1 => Some(Victim::Coordinator(rng.random_range(0..COORDINATORS))),
            _ => None,
        };
        Fault::Partition { cut, hold, kill }
    }

    /// Whether the pipeline must come back in a new epoch: only a killed
    /// host is sure to have been taken out of the pipeline. A cut may end
    /// before anyone notices it.
    fn needs_new_epoch(&self) -> bool {
        matches!(self, Fault::Kill(Victim::Host(_)))
    }

    /// Whether the group must come through this fault without an
    /// election: the leader kept a quorum, and no coordinator was killed
    /// (a follower killed while the other is cut off leaves the leader
    /// alone, and a restarted one may rightly grant a vote before it hears
    /// the leader again).
    fn keeps_the_leader(&self) -> bool {
        match self {
            Fault::Partition { cut, kill, .. } => cut.leader_keeps_quorum() && !matches!(kill, Some(Victim::Coordinator(_))),
            Fault::Flap { cut, .. } => cut.leader_keeps_quorum(),
            Fault::Kill(victim) => matches!(victim, Victim::Host(_)),
            Fault::FreezeLeader(_) => false,
        }
    }

    /// A name for the recovery summary.
    fn kind(&self) -> String {
        let cut = Cut::name;
        match self {
            Fault::Partition { cut: c, kill: None, .. } => cut(c).to_string(),
            Fault::Partition { cut: c, kill: Some(_), .. } => format!("{} + kill", cut(c)),
            Fault::Flap { cut: c, .. } => format!("Flap {}", cut(c)),
            Fault::Kill(Victim::Host(_)) => "Kill host".into(),
            Fault::Kill(Victim::Coordinator(_)) => "Kill leader".into(),
            Fault::FreezeLeader(_) => "FreezeLeader".into(),
        }
    }

    async fn inject(&self, c: &mut DockerCluster, leader: usize) {
        match self {
            Fault::Partition { cut, hold, kill } => {
                cut.apply(c, leader);
                eprintln!("soak:   cut {}", c.cut_links().join(", "));
                if let Some(victim) = kill {
                    tokio::time::sleep(*hold / 2).await;
                    kill_and_start(c, *victim);
                    tokio::time::sleep(*hold / 2).await;
                } else {
                    tokio::time::sleep(*hold).await;
                }
                c.heal();
            }
            Fault::Flap { cut, periods } => {
                for (down, up) in periods {
                    cut.apply(c, leader);
                    tokio::time::sleep(*down).await;
                    c.heal();
                    tokio::time::sleep(*up).await;
                }
            }
            Fault::Kill(victim) => kill_and_start(c, *victim),
            Fault::FreezeLeader(how_long) => {
                let name = c.name(&c.coordinators[leader]);
                c.docker(&["pause", &name]);
                tokio::time::sleep(*how_long).await;
                c.docker(&["unpause", &name]);
            }
        }
    }
}

/// SIGKILL of the victim's container and a start of the same container:
/// its data directory and its network links (cut or not) are kept.
fn kill_and_start(c: &DockerCluster, victim: Victim) {
    let name = c.name(&victim.role(c));
    c.docker(&["kill", "--signal", "KILL", &name]);
    // `docker kill` returns once the signal is sent; a start before the
    // container has stopped would be refused.
    c.docker(&["wait", &name]);
    c.docker(&["start", &name]);
}

/// A recovery slower than this prints the cycle's [`timeline`].
const SLOW: Duration = Duration::from_secs(3);

/// What the daemons logged since `since` that tells a recovery's story:
/// leadership, pipeline states, recovery paths and hosts lost (every
/// coordinator), and warnings (every host); a slow cycle can then be read
/// without a failed run's kept logs.
fn timeline(c: &DockerCluster, since: std::time::SystemTime) -> String {
    let since = format!("{:.3}", since.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64());
    let telling = ["leads", "host joined", "can no longer lead", "pipeline state", "recovery path", "host lost", "lost host", "elect"];
    let mut out = String::new();
    for role in c.coordinators.iter().cloned().chain((0..HOSTS).map(host_id)) {
        let is_host = role.starts_with("host-");
        let log = docker(&["logs", "--since", &since, &c.name(&role)]).unwrap_or_else(|e| e);
        for line in log.lines().filter(|l| if is_host { l.contains(" WARN ") } else { telling.iter().any(|t| l.contains(t)) }) {
            out.push_str(&format!("soak:   {role}: {}\n", line.chars().take(300).collect::<String>()));
        }
    }
    out
}

/// Whether every coordinator follows the leader (node `leader_id`) in
/// `term` and has applied `committed`: the leader reaches both followers.
/// A fault drawn right after the last one's heal may find a link still on
/// a dead connection (the peer rejoined the link with a new address) until
/// the leader dials it anew, and then an election is fair.
async fn group_whole(c: &DockerCluster, leader_id: u64, term: u64, committed: u64) -> Result<(), String> {
    for (addr, role) in c.addrs.iter().zip(&c.coordinators) {
        match status_at_with(addr, c.tls.as_ref()).await {
            Ok(s) if s.leader_id == leader_id && s.raft_term == term && s.last_committed_tid >= committed => {}
            Ok(s) => {
                return Err(format!(
                    "{role} follows node {} in term {} at tid {} (the leader: node {leader_id}, term {term}, tid {committed})",
                    s.leader_id, s.raft_term, s.last_committed_tid
                ))
            }
            Err(e) => return Err(format!("{role} does not answer: {e}")),
        }
    }
    Ok(())
}

/// The leader (not stale) once its status satisfies `pred` or shows Failed
/// or Stopped; its index and status.
async fn wait_leader(c: &DockerCluster, what: &str, pred: impl Fn(&Status) -> bool) -> (usize, Status) {
    let over = |s: &Status| s.pipeline_state == "Failed" || s.pipeline_state == "Stopped";
    c.wait_leader_for(what, RECOVERY, &[], |s| over(s) || pred(s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with --ignored --nocapture; LOCKSTEP_SOAK_CYCLES, _MINUTES, _SEED"]
async fn partitions_in_containers_always_recover_with_exactly_once_output() {
    if !containers_can_run("partitions_in_containers_always_recover_with_exactly_once_output") {
        return;
    }
    let tls = env_u64("LOCKSTEP_SOAK_TLS", 0) != 0;
    let mut c = DockerCluster::start_with(COORDINATORS, REPORT_DEADLINE_MS, tls, Wiring::Links).await;
    let outcome = AssertUnwindSafe(soak(&mut c)).catch_unwind().await;
    match outcome {
        Ok(committed) => {
            c.stop_all();
            c.check_sinks(committed);
        }
        Err(panic) => {
            // The containers go when `c` is dropped; their logs and data
            // directories stay.
            let kept = std::mem::replace(&mut c.dir, tempfile::tempdir().expect("tempdir")).keep();
            for role in c.coordinators.iter().cloned().chain((0..HOSTS).map(host_id)) {
                let _ = docker(&["stop", "--time", "5", &c.name(&role)]);
            }
            c.save_logs(&kept.join("logs"));
            eprintln!("soak: FAILED; data directories and container logs kept in {}", kept.display());
            std::panic::resume_unwind(panic)
        }
    }
}

/// Runs the cycles; returns the last committed tid.
async fn soak(c: &mut DockerCluster) -> u64 {
    let cycles = env_u64("LOCKSTEP_SOAK_CYCLES", 50);
    let budget = Duration::from_secs(60 * env_u64("LOCKSTEP_SOAK_MINUTES", 10));
    let seed = env_u64("LOCKSTEP_SOAK_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64);
    eprintln!(
        "soak: {COORDINATORS} coordinators and {HOSTS} hosts in containers, a network per link{}, seed {seed} \
         (LOCKSTEP_SOAK_SEED={seed} draws the same faults), up to {cycles} cycles or {budget:?}",
        if c.tls.is_some() { ", mutual TLS" } else { "" }
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let (mut leader, first) = wait_leader(c, "first commits", |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let (mut committed, mut epoch, mut term, mut leader_id) = (first.last_committed_tid, first.epoch, first.raft_term, first.node_id);
    // Cycles whose fault had to leave the leader alone, and how many of
    // them found the group whole, so that it was checked.
    let (mut must_keep, mut checked) = (0, 0);
    let mut done = 0;
    // Per kind of fault: from the moment the cluster was whole again to the
    // first new commit (what an operator waits after a partition heals).
    let mut recoveries: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    // Per kind of fault: the elections it caused (how far the raft term
    // moved).
    let mut elections: BTreeMap<String, u64> = BTreeMap::new();
    while done < cycles && started.elapsed() < budget {
        // Anywhere in a transaction (50 ms), a checkpoint or the steps
        // between.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        let fault = Fault::draw(&mut rng, leader);
        let not_whole = group_whole(c, leader_id, term, committed).await.err();
        let was_whole = not_whole.is_none();
        eprintln!(
            "soak: cycle {done}: {fault:?} at tid {committed}, epoch {epoch}, term {term}, leader {}{}",
            c.coordinators[leader],
            not_whole.map(|why| format!(" (not whole: {why})")).unwrap_or_default()
        );
        let cycle_began = std::time::SystemTime::now();
        fault.inject(c, leader).await;
        // Healed, restarted or woken: from here the cluster is whole again.
        let whole_again = Instant::now();
        let new_epoch = fault.needs_new_epoch();
        let what = format!(
            "cycle {done}: Running{} and committing past tid {committed}",
            if new_epoch { format!(" in an epoch after {epoch}") } else { String::new() }
        );
        let (at, s) = wait_leader(c, &what, |s| s.pipeline_state == "Running" && (!new_epoch || s.epoch > epoch) && s.last_committed_tid > committed).await;
        assert_eq!(s.pipeline_state, "Running", "cycle {done}: the pipeline must recover, never stop or fail: {}\n{s:#?}\n{}", s.failure, c.logs());
        must_keep += u64::from(fault.keeps_the_leader());
        if fault.keeps_the_leader() && was_whole {
            checked += 1;
            assert_eq!(
                (c.coordinators[at].as_str(), s.raft_term),
                (c.coordinators[leader].as_str(), term),
                "cycle {done}: {} left the leader its quorum, yet the group elected (leader, term); what the daemons said:\n{}",
                fault.kind(),
                timeline(c, cycle_began)
            );
        }
        *elections.entry(fault.kind()).or_default() += s.raft_term.saturating_sub(term);
        (leader, committed, epoch, term, leader_id) = (at, s.last_committed_tid, s.epoch, s.raft_term, s.node_id);
        let took = whole_again.elapsed();
        if took > SLOW {
            eprintln!("soak: cycle {done} took {took:?} from whole again to a commit; what the daemons said since it began:");
            eprint!("{}", timeline(c, cycle_began));
        }
        recoveries.entry(fault.kind()).or_default().push(took);
        done += 1;
    }
    let (_, s) = wait_leader(c, "a last commit", |s| s.pipeline_state == "Running" && s.last_committed_tid > committed).await;
    eprintln!("soak: {done} cycles in {:?}; tid {} committed in epoch {}", started.elapsed(), s.last_committed_tid, s.epoch);
    eprintln!(
        "soak: {must_keep} faults left the leader a quorum; {checked} of them began with the group whole and kept the \
         leader and the term (the others began with a follower not following or not caught up)"
    );
    eprintln!("soak: from whole again to a new commit, per fault (cycles, median, slowest; terms the group moved through):");
    for (kind, mut took) in recoveries {
        took.sort_unstable();
        let terms = elections.get(&kind).copied().unwrap_or(0);
        eprintln!("soak:   {kind:<28} {:>3}  {:>8.2?}  {:>8.2?}  {terms:>4}", took.len(), took[took.len() / 2], took[took.len() - 1]);
    }
    s.last_committed_tid
}
