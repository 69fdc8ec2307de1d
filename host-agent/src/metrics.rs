//! The host agent's metrics, through the `metrics` facade: whatever
//! recorder the embedding process installs gets them (the `host-agent`
//! daemon serves them for Prometheus with `--metrics-listen`; `coordinator
//! dev` serves its in-process hosts' beside its own). Without a recorder
//! every handle does nothing.
//!
//! Every series carries the host id as label `host`, so that several
//! agents in one process (the dev cluster) stay apart. Handles are
//! resolved once per agent: a step costs two atomic adds.

use std::net::SocketAddr;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Bucket bounds of every `*_seconds` histogram, in seconds: 20 µs to 5 s
/// (a journal fdatasync and a live commit sit in the 100 µs - 1 ms range).
const LATENCY_BUCKETS: [f64; 17] =
    [20e-6, 50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0, 5.0];

/// The value of `--metrics-listen` (`LOCKSTEP_METRICS_LISTEN`) of both
/// daemons: an address to serve on, or none for `off` or an empty value
/// (what an environment variable blanked to switch it off gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl std::str::FromStr for MetricsListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" || s.is_empty() {
            return Ok(MetricsListen(None));
        }
        s.parse().map(|a| MetricsListen(Some(a))).map_err(|_| format!("{s:?} is neither host:port (e.g. 127.0.0.1:9464) nor `off`"))
    }
}

/// Serves `GET /metrics` in the Prometheus text format on `addr` (plain
/// HTTP, from the current tokio runtime) and makes it this process's
/// metrics recorder, with the agent's series described. The coordinator
/// uses it too (its `dev` cluster runs agents in-process). Fails if `addr`
/// cannot be bound or a recorder is already installed; the error names
/// the address and the flag.
pub fn install_prometheus(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| format!("serving metrics on {addr}: {e} (is another process using it? pick another with --metrics-listen)"))?;
    describe();
    Ok(())
}

/// Help texts of every series below, for the recorder to print.
pub fn describe() {
    describe_gauge!("lockstep_agent_session_up", "1 while the agent has a session the coordinator welcomed, else 0");
    describe_counter!("lockstep_agent_sessions_total", "Coordinator streams opened (Hello sent)");
    describe_counter!(
        "lockstep_tls_handshakes_refused_total",
        "TLS handshakes this process refused, by listener (coordinator, ingest): plaintext clients, certificates of another CA, none at all, timeouts"
    );
    describe_gauge!("lockstep_agent_epoch", "The highest coordinator epoch this host accepted (persisted)");
    describe_counter!("lockstep_agent_steps_total", "Engine steps run, by mode (live, or replayed from the journal)");
    describe_counter!("lockstep_agent_records_total", "Input records the engine ingested, by mode");
    describe_histogram!(
        "lockstep_agent_journal_append_seconds",
        Unit::Seconds,
        "A live step's journal append until durable (one direct write, or write + fdatasync; group-committed)"
    );
    describe_counter!("lockstep_agent_tids_committed_total", "Tids this host committed (outputs released or already in the sink)");
    describe_gauge!("lockstep_agent_last_committed_tid", "The newest tid this host committed");
    describe_counter!("lockstep_agent_checkpoints_total", "Checkpoints this host wrote");
    describe_counter!("lockstep_agent_restores_total", "Restores of a checkpoint (each recovery with a replay starts with one)");
}

/// One agent's handles.
pub(crate) struct AgentMetrics {
    pub session_up: Gauge,
    pub sessions: Counter,
    pub epoch: Gauge,
    live_steps: Counter,
    replayed_steps: Counter,
    live_records: Counter,
    replayed_records: Counter,
    pub journal_append: Histogram,
    pub tids_committed: Counter,
    pub last_committed_tid: Gauge,
    pub checkpoints: Counter,
    pub restores: Counter,
}

impl AgentMetrics {
    pub fn new(host: &str) -> Self {
        let h = || host.to_string();
        AgentMetrics {
            session_up: gauge!("lockstep_agent_session_up", "host" => h()),
            sessions: counter!("lockstep_agent_sessions_total", "host" => h()),
            epoch: gauge!("lockstep_agent_epoch", "host" => h()),
            live_steps: counter!("lockstep_agent_steps_total", "host" => h(), "mode" => "live"),
            replayed_steps: counter!("lockstep_agent_steps_total", "host" => h(), "mode" => "replay"),
            live_records: counter!("lockstep_agent_records_total", "host" => h(), "mode" => "live"),
            replayed_records: counter!("lockstep_agent_records_total", "host" => h(), "mode" => "replay"),
            journal_append: histogram!("lockstep_agent_journal_append_seconds", "host" => h()),
            tids_committed: counter!("lockstep_agent_tids_committed_total", "host" => h()),
            last_committed_tid: gauge!("lockstep_agent_last_committed_tid", "host" => h()),
            checkpoints: counter!("lockstep_agent_checkpoints_total", "host" => h()),
            restores: counter!("lockstep_agent_restores_total", "host" => h()),
        }
    }

    /// One engine step and the records it ingested.
    pub fn step(&self, replayed: bool, records: u64) {
        let (steps, recs) = if replayed { (&self.replayed_steps, &self.replayed_records) } else { (&self.live_steps, &self.live_records) };
        steps.increment(1);
        recs.increment(records);
    }
}

#[cfg(test)]
mod tests {
    use super::MetricsListen;

    #[test]
    fn metrics_listen_takes_an_address_off_or_nothing_and_refuses_the_rest() {
        assert_eq!("127.0.0.1:9464".parse::<MetricsListen>(), Ok(MetricsListen(Some("127.0.0.1:9464".parse().unwrap()))));
        assert_eq!("off".parse::<MetricsListen>(), Ok(MetricsListen(None)));
        assert_eq!("".parse::<MetricsListen>(), Ok(MetricsListen(None)));
        for bad in ["9464", "localhost", "0.0.0.0:99999", "OFF"] {
            let e = bad.parse::<MetricsListen>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("off"), "{bad}: {e}");
        }
    }
}
