//! Prometheus metrics of a coordinator node (`--metrics-listen`): the
//! numbers an operator graphs and alerts on, beside what `Admin/GetStatus`
//! answers one query at a time.
//!
//! The pipeline's gauges and counters follow the core's notices (the same
//! stream `Admin/WatchEvents` and the log are made of), commit latencies are
//! recorded where the driver times them, and leadership where the
//! supervisor sees it change. The handles are resolved once per driver, so
//! a commit costs a few atomic adds; without `--metrics-listen` no recorder
//! is installed and every handle does nothing.
//!
//! Only the leader drives the pipeline, so only the leader's pipeline
//! series are live: a follower shows `lockstep_leader 0` and its pipeline
//! series at 0 (or none, if it never led).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram, Unit};

use crate::core::{Core, Notice, Phase, RecoveryPath};
use crate::raft::progress::MemberProgress;

/// Every value of the `state` label of `lockstep_pipeline_state`, as
/// `Phase::name` spells them.
pub const PIPELINE_STATES: [&str; 6] = ["Joining", "Restoring", "Replaying", "Running", "Failed", "Stopped"];

/// Serves `/metrics` in the Prometheus text format on `addr`, from the
/// current tokio runtime, and makes it this process's metrics recorder
/// (the host agent's installer, which describes the agents' series too:
/// `dev` runs agents in this process). Fails if `addr` cannot be bound or
/// a recorder is already installed.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    lockstep_host_agent::metrics::install_prometheus(addr)?;
    describe();
    Ok(())
}

fn describe() {
    describe_gauge!("lockstep_leader", "1 while this node leads the coordinator group and drives the pipeline, else 0");
    describe_gauge!(
        "lockstep_raft_term",
        "The coordinator group's raft term as this node last saw it (rises with every election, and only then)"
    );
    describe_gauge!(
        "lockstep_raft_member_behind_entries",
        "Leader only: log entries the member (label node) does not hold yet; 0 on the other nodes"
    );
    describe_gauge!(
        "lockstep_raft_member_last_answer_age_seconds",
        "Leader only: seconds since the leader sent the newest request the member (label node) answered, +Inf if it answered none; 0 on the other nodes"
    );
    describe_gauge!("lockstep_pipeline_state", "1 for the pipeline's current state (label state), 0 for the others");
    describe_gauge!("lockstep_epoch", "The pipeline's epoch (fencing token; rises with every recovery and leader)");
    describe_gauge!("lockstep_last_committed_tid", "The newest tid the ledger holds as committed");
    describe_gauge!("lockstep_newest_complete_checkpoint_tid", "The newest checkpoint complete on every host");
    describe_gauge!("lockstep_hosts_connected", "Hosts with an accepted session");
    describe_gauge!(
        "lockstep_replay_tids_remaining",
        "Committed tids of the replay in progress that not every host has replayed and committed yet; 0 when no replay runs"
    );
    describe_gauge!("lockstep_host_connected", "1 while the host (label host) has an accepted session");
    describe_counter!("lockstep_tids_committed_total", "Tids committed on every host, by mode (live or replay)");
    describe_counter!("lockstep_records_committed_total", "Input records in the committed tids, by mode (live or replay)");
    describe_counter!("lockstep_checkpoints_completed_total", "Checkpoints recorded complete on every host");
    describe_counter!("lockstep_recoveries_total", "Recoveries started, by path (continue: no replay; replay)");
    describe_counter!("lockstep_hosts_lost_total", "Host sessions lost (disconnect or missed report deadline), by host");
    describe_counter!("lockstep_pipeline_failures_total", "Times the pipeline stopped in Failed (see Admin/ExplainFailure)");
    describe_histogram!("lockstep_commit_latency_seconds", Unit::Seconds, "Live tids: first Prepare sent to first Commit sent");
    describe_histogram!(
        "lockstep_commit_prepare_latency_seconds",
        Unit::Seconds,
        "Live tids: Prepare sent to every host's Prepared in (the hosts' part of the commit latency)"
    );
    describe_histogram!(
        "lockstep_commit_ledger_latency_seconds",
        Unit::Seconds,
        "Live tids: commit proposed to the ledger to Commit sent (the ledger's part of the commit latency)"
    );
    describe_histogram!("lockstep_replay_duration_seconds", Unit::Seconds, "Replays: every host restored to the last replayed tid committed");
}

/// Sets `lockstep_leader`.
pub fn set_leader(leading: bool) {
    gauge!("lockstep_leader").set(if leading { 1.0 } else { 0.0 });
}

/// Sets `lockstep_raft_term`.
pub fn set_raft_term(term: u64) {
    gauge!("lockstep_raft_term").set(term as f64);
}

/// `lockstep_raft_member_behind_entries` and
/// `lockstep_raft_member_last_answer_age_seconds`, one series per member
/// other than the leader, set from the leader's view of the group
/// (`Ledger::progress`). A node that does not lead (any more) shows 0 in
/// every series it set, like the pipeline's series, so that an alert over
/// all nodes sees only the leader's numbers.
#[derive(Default)]
pub struct MemberGauges {
    shown: BTreeSet<u64>,
}

impl MemberGauges {
    /// `progress`: `None` when node `me` does not lead.
    pub fn update(&mut self, me: u64, progress: Option<&[MemberProgress]>) {
        let mut now = BTreeSet::new();
        for p in progress.unwrap_or_default().iter().filter(|p| p.node_id != me) {
            let node = p.node_id.to_string();
            gauge!("lockstep_raft_member_behind_entries", "node" => node.clone()).set(p.behind as f64);
            let age = p.silent_for.map_or(f64::INFINITY, |d| d.as_secs_f64());
            gauge!("lockstep_raft_member_last_answer_age_seconds", "node" => node).set(age);
            now.insert(p.node_id);
        }
        for gone in self.shown.difference(&now) {
            gauge!("lockstep_raft_member_behind_entries", "node" => gone.to_string()).set(0.0);
            gauge!("lockstep_raft_member_last_answer_age_seconds", "node" => gone.to_string()).set(0.0);
        }
        // Zeroed series stay listed: zeroing them again costs nothing.
        self.shown.extend(now);
    }
}

/// Drivers started in this process: a driver that ends after the next one
/// started (a leadership change) leaves the newer one's gauges alone.
static DRIVERS: AtomicU64 = AtomicU64::new(0);

/// The metrics one driver (one leadership term) keeps current. Dropped
/// with the driver: the pipeline's gauges then read 0 on this node.
pub struct DriverMetrics {
    generation: u64,
    state: Vec<Gauge>,
    epoch: Gauge,
    last_committed_tid: Gauge,
    newest_checkpoint: Gauge,
    hosts_connected: Gauge,
    replay_remaining: Gauge,
    /// `lockstep_host_connected` of every member host (fixed for a core).
    host_connected: Vec<(String, Gauge)>,
    tids_live: Counter,
    tids_replayed: Counter,
    records_live: Counter,
    records_replayed: Counter,
    checkpoints: Counter,
    failures: Counter,
    commit_latency: Histogram,
    prepare_latency: Histogram,
    ledger_latency: Histogram,
    replay_duration: Histogram,
}

impl DriverMetrics {
    /// Handles for a driver starting over `core`.
    pub fn new(core: &Core) -> Self {
        let m = DriverMetrics {
            generation: DRIVERS.fetch_add(1, Ordering::SeqCst) + 1,
            state: PIPELINE_STATES.iter().map(|s| gauge!("lockstep_pipeline_state", "state" => *s)).collect(),
            epoch: gauge!("lockstep_epoch"),
            last_committed_tid: gauge!("lockstep_last_committed_tid"),
            newest_checkpoint: gauge!("lockstep_newest_complete_checkpoint_tid"),
            hosts_connected: gauge!("lockstep_hosts_connected"),
            replay_remaining: gauge!("lockstep_replay_tids_remaining"),
            // Every member host has a series from the start: an alert on a
            // host's absence needs it to exist before the host first joins.
            host_connected: core.hosts().keys().map(|h| (h.clone(), gauge!("lockstep_host_connected", "host" => h.clone()))).collect(),
            tids_live: counter!("lockstep_tids_committed_total", "mode" => "live"),
            tids_replayed: counter!("lockstep_tids_committed_total", "mode" => "replay"),
            records_live: counter!("lockstep_records_committed_total", "mode" => "live"),
            records_replayed: counter!("lockstep_records_committed_total", "mode" => "replay"),
            checkpoints: counter!("lockstep_checkpoints_completed_total"),
            failures: counter!("lockstep_pipeline_failures_total"),
            commit_latency: histogram!("lockstep_commit_latency_seconds"),
            prepare_latency: histogram!("lockstep_commit_prepare_latency_seconds"),
            ledger_latency: histogram!("lockstep_commit_ledger_latency_seconds"),
            replay_duration: histogram!("lockstep_replay_duration_seconds"),
        };
        m.refresh(core);
        m
    }

    /// Gauges read off the core: its state, its hosts' sessions, epoch and
    /// ledger.
    fn refresh(&self, core: &Core) {
        let now = core.phase().name();
        for (gauge, state) in self.state.iter().zip(PIPELINE_STATES) {
            gauge.set(if state == now { 1.0 } else { 0.0 });
        }
        let mut connected = 0;
        for (host, gauge) in &self.host_connected {
            let up = core.hosts().get(host).is_some_and(|slot| slot.conn.is_some());
            connected += usize::from(up);
            gauge.set(if up { 1.0 } else { 0.0 });
        }
        self.hosts_connected.set(connected as f64);
        self.set_replay_remaining(core);
        let ledger = core.ledger();
        self.epoch.set(ledger.epoch as f64);
        self.last_committed_tid.set(ledger.last_committed as f64);
        self.newest_checkpoint.set(ledger.newest_checkpoint() as f64);
    }

    /// Follows one core notice; `core` has already handled the event.
    pub fn on_notice(&self, n: &Notice, core: &Core) {
        match n {
            Notice::Committed { replayed, records, .. } => {
                // The tid first, then the count: a scrape never sees more
                // commits counted than the newest tid allows.
                self.last_committed_tid.set(core.ledger().last_committed as f64);
                let (tids, recs) = if *replayed { (&self.tids_replayed, &self.records_replayed) } else { (&self.tids_live, &self.records_live) };
                tids.increment(1);
                recs.increment(*records);
                if *replayed {
                    self.set_replay_remaining(core);
                }
                return;
            }
            Notice::HostLost { host, .. } => counter!("lockstep_hosts_lost_total", "host" => host.clone()).increment(1),
            Notice::CheckpointComplete { .. } => self.checkpoints.increment(1),
            Notice::Recovery(r) => {
                let path = match r.path {
                    RecoveryPath::Continue => "continue",
                    RecoveryPath::Replay => "replay",
                };
                counter!("lockstep_recoveries_total", "path" => path).increment(1);
            }
            Notice::Failed(_) => self.failures.increment(1),
            Notice::PipelineState { .. } | Notice::Recovering { .. } | Notice::HostJoined { .. } => {}
        }
        self.refresh(core);
    }

    /// `lockstep_replay_tids_remaining`: the replay queue's committed tids
    /// not every host has passed.
    fn set_replay_remaining(&self, core: &Core) {
        let remaining = match core.phase() {
            Phase::Replaying { queue, .. } => queue.len(),
            _ => 0,
        };
        self.replay_remaining.set(remaining as f64);
    }

    /// A live tid's commit latency and, when known, its two parts (µs).
    pub fn commit_timed(&self, whole_us: u64, parts_us: Option<(u64, u64)>) {
        self.commit_latency.record(whole_us as f64 * 1e-6);
        if let Some((prepare, ledger)) = parts_us {
            self.prepare_latency.record(prepare as f64 * 1e-6);
            self.ledger_latency.record(ledger as f64 * 1e-6);
        }
    }

    /// A replay finished: every host restored to its last tid committed.
    /// A recovery with nothing to replay is not one.
    pub fn replay_done(&self, tids: u64, micros: u64) {
        if tids > 0 {
            self.replay_duration.record(micros as f64 * 1e-6);
        }
    }
}

impl Drop for DriverMetrics {
    fn drop(&mut self) {
        if DRIVERS.load(Ordering::SeqCst) != self.generation {
            return;
        }
        for gauge in &self.state {
            gauge.set(0.0);
        }
        for (_, gauge) in &self.host_connected {
            gauge.set(0.0);
        }
        self.hosts_connected.set(0.0);
    }
}
