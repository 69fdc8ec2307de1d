//! End-to-end: one coordinator and several host agents as real processes.

use std::os::unix::fs::OpenOptionsExt as _;
use std::time::Duration;

use lockstep_tests::*;

const LONG: Duration = Duration::from_secs(60);

fn running(s: &lockstep_proto::v1::Status) -> bool {
    s.pipeline_state == "Running"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_run_commits_every_tid_exactly_once_and_matches_the_generator() {
    let mut c = Cluster::start(ClusterOpts::default());
    let s = c.wait_for("10 commits", LONG, |s| running(s) && s.last_committed_tid >= 10).await;
    assert_eq!(s.hosts.len(), 3);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    // Every live commit is timed, and split at its proposal to the ledger
    // into the hosts' part and the ledger's, which add up to it (each part
    // is rounded down to whole µs).
    let (all, hosts, ledger) = (
        s.commit_latency.clone().unwrap_or_default(),
        s.commit_prepare_latency.clone().unwrap_or_default(),
        s.commit_ledger_latency.clone().unwrap_or_default(),
    );
    assert!(all.total >= 1, "{all:?}");
    assert_eq!((hosts.total, ledger.total), (all.total, all.total), "{s:#?}");
    let parts = hosts.sum_micros + ledger.sum_micros;
    assert!((parts..=parts + all.total).contains(&all.sum_micros), "{s:#?}");
    c.stop_cleanly_and_check_sinks().await;
}

/// A coordinator asked to stop while its hosts, a `WatchEvents` reader and
/// a health watcher are still connected ends their calls itself and exits
/// 0 promptly, rather than waiting for them to hang up and being SIGKILLed
/// at the end of an orchestrator's grace period: host sessions and the
/// event watch end UNAVAILABLE naming the shutdown, the health watch sees
/// NOT_SERVING and is closed once the drain's grace is over. The hosts
/// stay up, looking for a coordinator, and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_stops_on_sigterm_while_hosts_and_watchers_are_connected() {
    use lockstep_proto::v1 as pb;
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    // With the plaintext health-only listener too, which drains the same way.
    let health_port = free_port();
    let opts = ClusterOpts { coordinator_flags: vec!["--health-listen".into(), format!("127.0.0.1:{health_port}")], ..ClusterOpts::default() };
    let mut c = Cluster::start(opts);
    c.wait_for("3 commits", LONG, |s| running(s) && s.last_committed_tid >= 3).await;
    let mut admin = c.admin().await.expect("admin");
    let mut events = admin.watch_events(pb::WatchEventsRequest { without_commits: true }).await.expect("watch").into_inner();
    let health_at = |addr: String| async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
        HealthClient::new(channel)
    };
    let (mut health, mut health_only) = (health_at(c.addr.clone()).await, health_at(format!("127.0.0.1:{health_port}")).await);
    // The whole server ("", what Kubernetes' gRPC probes ask) and a service,
    // and the whole server on the health-only listener.
    let mut health_watches = Vec::new();
    for (service, only) in [("", false), ("lockstep.v1.Admin", false), ("", true)] {
        let client = if only { &mut health_only } else { &mut health };
        let mut watch = client.watch(HealthCheckRequest { service: service.into() }).await.expect("health watch").into_inner();
        let first = watch.message().await.expect("health watch ok").expect("a first status");
        assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
        health_watches.push((service, watch));
    }
    let committed = c.status().await.expect("status").last_committed_tid;
    c.coordinator.sigterm();
    // A liveness bound, not a speed assertion: Kubernetes' default grace
    // period is 30 s; before the fix this waited for the hosts forever.
    let exit = c.coordinator.exited(Duration::from_secs(25)).await;
    let log = c.coordinator.log();
    let exit = exit.unwrap_or_else(|| panic!("the coordinator did not stop within 25 s of SIGTERM\n{}", tail(&log, 30)));
    assert_eq!(exit.code(), Some(0), "the coordinator exits cleanly on SIGTERM\n{}", tail(&log, 30));
    let ended = loop {
        match tokio::time::timeout(LONG, events.message()).await.expect("the watch ends with the coordinator") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the watch ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{ended:?}");
    for (service, mut watch) in health_watches {
        let mut statuses = Vec::new();
        while let Ok(Some(m)) = watch.message().await {
            statuses.push(m.status());
        }
        assert_eq!(statuses, [ServingStatus::NotServing], "{service:?}: the health watch hears of the stop, then ends");
    }
    assert_eq!(log.matches("closing host stream: this coordinator is shutting down").count(), 3, "every host's stream is closed\n{}", tail(&log, 30));
    // A host agent's server drains the same way: a health watch on its
    // ingest API does not hold its stop either.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", c.ingest_ports[0]))
        .expect("uri")
        .connect()
        .await
        .expect("connect to host-0's ingest API");
    let mut host_watch = HealthClient::new(channel).watch(HealthCheckRequest::default()).await.expect("watch").into_inner();
    host_watch.message().await.expect("host health watch ok").expect("a first status");
    c.hosts[0].sigterm();
    let exit = c.hosts[0].exited(Duration::from_secs(25)).await;
    let exit = exit.unwrap_or_else(|| panic!("host-0 did not stop within 25 s of SIGTERM\n{}", tail(&c.hosts[0].log(), 30)));
    assert_eq!(exit.code(), Some(0), "host-0 exits cleanly on SIGTERM");
    let mut statuses = Vec::new();
    while let Ok(Some(m)) = host_watch.message().await {
        statuses.push(m.status());
    }
    assert_eq!(statuses, [ServingStatus::NotServing], "host-0's health watch hears of the stop, then ends");
    for h in &mut c.hosts[1..] {
        assert_eq!(h.terminate(), Some(0), "host agent exits cleanly on SIGTERM");
    }
    check_sinks(&c, committed);
}

/// A host agent told to stop while it is still opening its data directory
/// stops cleanly (exit 0) once it is open, instead of dying by the signal:
/// an orchestrator that restarts a pod, or a soak that restarts a host
/// just after a crash, may send SIGTERM at any moment of start-up. The
/// agent is held inside its open by a FIFO where its `epoch` file belongs
/// (reading it blocks until a writer comes), signalled there, then let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_told_to_stop_while_it_opens_its_data_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("host-0");
    std::fs::create_dir_all(&data).expect("data dir");
    let args = early_host_args(format!("http://127.0.0.1:{}", free_port()), &data);
    stopped_while_reading(dir.path(), &data.join("epoch"), args, b"0\n", "its epoch file").await;
}

/// SIGTERM even earlier: while the agent reads its TLS certificate, before
/// it listens for signals at all. The signal is held from the first line
/// of `main` and taken once the agent listens, so it still stops cleanly;
/// before, it died by the signal there, and as PID 1 in a container the
/// signal was dropped and the agent ran on until SIGKILL. The certificate
/// is a FIFO, so the read blocks until the test writes the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_agent_told_to_stop_before_it_listens_for_signals_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = lockstep_tests::certs::TestCa::new(dir.path(), "early").issue(dir.path(), "host-0");
    let fifo = dir.path().join("cert-fifo.pem");
    let mut args = early_host_args(format!("127.0.0.1:{}", free_port()), &dir.path().join("host-0"));
    args.extend(lockstep_tests::certs::TlsFiles { cert: fifo.clone(), ..files.clone() }.flags());
    let cert = std::fs::read(&files.cert).expect("cert");
    stopped_while_reading(dir.path(), &fifo, args, &cert, "its TLS certificate").await;
}

/// host-0's flags for the two tests above: no coordinator is listening at
/// `coordinator`, none is needed.
fn early_host_args(coordinator: String, data: &std::path::Path) -> Vec<String> {
    ["--host-id", "host-0", "--cluster-id", "e2e", "--ingest-listen", "127.0.0.1:0", "--coordinator"]
        .into_iter()
        .map(String::from)
        .chain([coordinator, "--data-dir".into(), data.display().to_string()])
        .collect()
}

/// Makes `fifo` a FIFO, starts host-0 with `args` (which make it read
/// `fifo`, `what`, during start-up), waits until it has the FIFO open,
/// sends SIGTERM, then writes `content` to let the read finish; the agent
/// must then stop cleanly (exit 0), saying why.
async fn stopped_while_reading(dir: &std::path::Path, fifo: &std::path::Path, args: Vec<String>, content: &[u8], what: &str) {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo(3) reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo: {}", std::io::Error::last_os_error());
    let mut host = Proc::spawn("host-0", bin_dir().join("host-agent"), args, dir.join("host-0.log"));
    // A write-only open that does not wait succeeds only once a reader has
    // the FIFO open: then the agent is inside that read.
    let deadline = std::time::Instant::now() + LONG;
    let mut writer = loop {
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo) {
            Ok(w) => break w,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && std::time::Instant::now() < deadline => {
                assert!(host.is_running(), "host-0 exited before reading {what}\n{}", host.log());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("host-0 never opened {what} ({e})\n{}", host.log()),
        }
    };
    host.sigterm();
    std::io::Write::write_all(&mut writer, content).expect("writing the FIFO");
    drop(writer);
    let exit = host.exited(LONG).await.unwrap_or_else(|| panic!("host-0 did not stop after SIGTERM\n{}", host.log()));
    assert_eq!(exit.code(), Some(0), "host-0 stops cleanly, not by the signal ({exit:?})\n{}", host.log());
    let log = host.log();
    assert!(log.contains("SIGTERM received") && log.contains("host agent stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_cycles_always_return_to_running_with_exactly_once_output() {
    crash_cycles(ClusterOpts { commit_interval_ms: 20, ..ClusterOpts::default() }, 15, 5, 0).await;
}

/// `cycles` times: SIGKILL a pseudo-random host, or (every `everything`th
/// cycle) every host and the coordinator, while data flows; each cycle
/// must come back Running in a new epoch and commit more than `past` tids
/// beyond where it was, never Stopped or Failed; at the end every sink
/// holds every committed tid exactly once with the generator's aggregates.
async fn crash_cycles(opts: ClusterOpts, cycles: usize, everything: usize, past: u64) {
    let mut c = Cluster::start(opts);
    let first = c.wait_for("first commits", LONG, |s| running(s) && s.last_committed_tid >= 3).await;
    let (mut committed, mut epoch) = (first.last_committed_tid, first.epoch);
    // A fixed pseudo-random schedule keeps the test reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for cycle in 0..cycles {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if cycle % everything == everything - 1 {
            c.crash_everything();
        } else {
            let victim = (x % c.opts.hosts as u64) as usize;
            c.hosts[victim].kill();
            c.hosts[victim].start();
        }
        let s = c
            // A new epoch proves the crash was noticed and recovered from
            // (a commit alone could be one the victim prepared just before
            // it died).
            .wait_for(&format!("cycle {cycle}: Running in an epoch after {epoch}, committing past {committed}"), LONG, |s| {
                s.pipeline_state == "Failed"
                    || s.pipeline_state == "Stopped"
                    || (running(s) && s.epoch > epoch && s.last_committed_tid > committed + past)
            })
            .await;
        assert!(running(&s), "cycle {cycle}: the pipeline must recover, never stop or fail: {s:#?}\n{}", c.logs());
        committed = s.last_committed_tid;
        epoch = s.epoch;
    }
    for h in &mut c.hosts {
        h.terminate();
    }
    c.coordinator.terminate();
    check_sinks(&c, committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterministic_replay_is_caught_in_the_first_replayed_transaction() {
    let mut c = Cluster::start_with(ClusterOpts { hosts: 2, checkpoint_every_txns: 0, ..ClusterOpts::default() }, |i, args| {
        if i == 1 {
            args.push("--fault-nondeterministic-replay".into());
        }
    });
    c.wait_for("5 commits", LONG, |s| running(s) && s.last_committed_tid >= 5).await;
    c.hosts[1].kill();
    c.hosts[1].start();
    let s = c.wait_for("the divergence to fail the pipeline", LONG, |s| s.pipeline_state == "Failed").await;
    let f = c.admin().await.unwrap().explain_failure(lockstep_proto::v1::ExplainFailureRequest {}).await.unwrap().into_inner();
    assert!(f.failed, "{f:?}");
    assert_eq!(f.host_id, "host-1", "{f:?}");
    // No checkpoint was taken, so replay starts at tid 1; the first tid in
    // which host-1 ingested anything (its sink batch has rows) is where the
    // divergence must be caught.
    let first_with_input = c
        .sink(1)
        .iter()
        .find(|b| b["rows"].as_array().is_some_and(|r| !r.is_empty()))
        .and_then(|b| b["tid"].as_u64())
        .expect("host-1 emitted batches with rows before the crash");
    assert_eq!(f.tid, first_with_input, "caught in the first replayed transaction with input: {f:?}");
    assert!(f.step > 0, "names the step: {f:?}");
    assert!(!f.endpoint.is_empty(), "names the endpoint: {f:?}");
    assert!(!f.expected.is_empty() && !f.actual.is_empty() && f.expected != f.actual, "{f:?}");
    assert!(s.failure.contains("host host-1"), "status carries the diagnosis: {}", s.failure);
    assert!(c.coordinator.log().contains("PIPELINE FAILED"), "the coordinator log says so");
    // An operator's Stop changes nothing and keeps the diagnosis.
    let mut admin = c.admin().await.unwrap();
    let stop = admin.stop(lockstep_proto::v1::StopRequest::default()).await.unwrap().into_inner();
    assert!(stop.message.starts_with("the pipeline is already Failed"), "{stop:?}");
    let after = admin.explain_failure(lockstep_proto::v1::ExplainFailureRequest {}).await.unwrap().into_inner();
    assert_eq!(after, f, "the diagnosis stays after a Stop");
}

/// A failure in the open tid does not give the tid up: records pushed and
/// acknowledged in it are journaled, and the next recovery reopens the tid
/// and replays them. Host-1 comes back from a crash with a replay that
/// diverges in the open tid 1 (the test-only fault): the pipeline fails
/// naming tid 1. Resumed with the fault still there, it fails again in
/// tid 1, as loudly. Resumed once host-1 runs without it, tid 1 is
/// replayed, continues live and commits with every acknowledged record,
/// each counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tid_the_pipeline_failed_in_is_replayed_on_resume_and_keeps_its_acknowledged_pushes() {
    use lockstep_proto::v1::{ingest_client::IngestClient, ListTransactionsRequest, PushRequest, Record, ResumeRequest};
    const FAULT: &str = "--fault-nondeterministic-replay";
    // Tid 1 stays open until the hosts ingest 200 000 records: at least
    // 80 s of generator steps (4000 steps of 20 ms apart, ~50 records per
    // step of both hosts), or the test's own pushes below.
    let opts = ClusterOpts {
        hosts: 2,
        checkpoint_every_txns: 0,
        commit_interval_ms: 3_600_000,
        step_interval_ms: 20,
        coordinator_flags: ["--txn-steps-max", "1000000000", "--txn-records-max", "200000"].map(String::from).to_vec(),
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(opts);
    // A few steps of host-1 in tid 1, so its journal has generator records
    // for the fault to drop on replay.
    c.wait_for("host-1 to run steps in tid 1", LONG, |s| {
        running(s) && s.hosts.iter().any(|h| h.host_id == "host-1" && h.last_step >= 5)
    })
    .await;
    // Every acknowledged push: (host, tid, records, sum of values).
    let mut acked: Vec<(usize, u64, u64, i64)> = Vec::new();
    let ports = c.ingest_ports.clone();
    let push = |i: usize, round: i64, n: i64| {
        let port = ports[i];
        async move {
            let mut ingest = IngestClient::connect(format!("http://127.0.0.1:{port}")).await.expect("ingest");
            let records: Vec<Record> = (0..n).map(|k| Record { key: "pushed".into(), value: round * 100_000 + k }).collect();
            let sum = records.iter().map(|r| r.value).sum::<i64>();
            let ack = ingest.push(PushRequest { records }).await.expect("push acknowledged").into_inner();
            (i, ack.tid, n as u64, sum)
        }
    };
    for (i, round) in [(0, 1), (1, 2), (1, 3)] {
        let a = push(i, round, 5).await;
        assert_eq!(a.1, 1, "acknowledged in the open tid 1: {a:?}");
        acked.push(a);
    }
    c.hosts[1].kill();
    c.hosts[1].args.push(FAULT.into());
    c.hosts[1].start();
    let failed = c.wait_for("the divergence in tid 1 to fail the pipeline", LONG, |s| s.pipeline_state == "Failed").await;
    assert_eq!(failed.last_committed_tid, 0, "tid 1 was open when it failed");
    let mut admin = c.admin().await.unwrap();
    let f = admin.explain_failure(lockstep_proto::v1::ExplainFailureRequest {}).await.unwrap().into_inner();
    assert_eq!((f.host_id.as_str(), f.tid), ("host-1", 1), "{f:?}");
    let tid1 = |admin: &mut lockstep_proto::v1::admin_client::AdminClient<_>| {
        let mut admin = admin.clone();
        async move {
            let list = admin.list_transactions(ListTransactionsRequest { from_tid: 1, limit: 1 }).await.unwrap().into_inner();
            list.transactions.into_iter().next().expect("tid 1 is on record")
        }
    };
    let t = tid1(&mut admin).await;
    assert_eq!(t.state, "Failed", "{t:?}");

    // Not fixed (host-1 restarted with the same fault): Resume reopens tid
    // 1, and its replay fails it again.
    c.hosts[1].kill();
    c.hosts[1].start();
    admin.resume(ResumeRequest::default()).await.expect("resume");
    let again = c.wait_for("tid 1 to fail again", LONG, |s| s.epoch > failed.epoch && s.pipeline_state == "Failed").await;
    let f2 = admin.explain_failure(lockstep_proto::v1::ExplainFailureRequest {}).await.unwrap().into_inner();
    assert_eq!((f2.host_id.as_str(), f2.tid, again.last_committed_tid), ("host-1", 1, 0), "{f2:?}");
    assert!(c.coordinator.log().contains("are reopened"), "the coordinator log says tid 1 was reopened");

    // Fixed: host-1 runs without the fault. Resume replays tid 1, which
    // continues live.
    c.hosts[1].kill();
    c.hosts[1].args.retain(|a| a != FAULT);
    c.hosts[1].start();
    admin.resume(ResumeRequest::default()).await.expect("resume");
    let resumed = c.wait_for("the pipeline to run again", LONG, |s| s.epoch > again.epoch && running(s)).await;
    assert_eq!(resumed.last_committed_tid, 0, "{resumed:?}");
    let t = tid1(&mut admin).await;
    assert_eq!(t.state, "Begun", "tid 1 is open again: {t:?}");
    assert!(t.failure.contains("host host-1"), "its failure stays on record: {t:?}");
    // Pushes now land in tid 1 too, and bring it to its record limit (the
    // last of them may land in tid 2, with the generator's records).
    for round in 10..30 {
        let a = push(0, round, 10_000).await;
        assert!(a.1 == 1 || round > 10, "the first push after the resume lands in the reopened tid 1: {a:?}");
        acked.push(a);
    }
    let both_committed = |s: &lockstep_proto::v1::Status| s.hosts.iter().all(|h| h.last_committed_tid >= 1);
    c.wait_for("tid 1 to commit on both hosts", LONG, |s| running(s) && both_committed(s)).await;
    for h in &mut c.hosts {
        h.terminate();
    }
    // Each sink holds every record acknowledged in the tids it emitted,
    // once (a push in a tid left open at the end is in none).
    for i in 0..2 {
        let batches = c.sink(i);
        let tids = sink_tids(&batches);
        assert_eq!(tids.first(), Some(&1), "host-{i}'s sink starts at tid 1");
        let emitted = *tids.last().unwrap();
        let mine = acked.iter().filter(|(h, tid, ..)| *h == i && *tid <= emitted);
        let want = mine.fold((0, 0), |(n, s), (_, _, count, sum)| (n + count, s + sum));
        assert_eq!(sink_final_state(&batches).get("pushed"), Some(&want), "host-{i}: every acknowledged record counted exactly once");
    }
}

/// A frozen host (SIGSTOP) keeps its session until the report deadline,
/// and why the coordinator lost a host (`lastLost`) tells a host that
/// stopped from one that froze. Running, the deadline drops it (the
/// transport waits as long, where it used to drop it after ~3 s whatever
/// the deadline). With the pipeline stopped, no deadline runs, and the
/// transport's keepalive drops it for its silence, said as such. A host
/// that closes its own stream (SIGTERM) is "closed by the host".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_host_keeps_its_session_until_the_deadline_and_is_told_apart_from_one_that_stopped() {
    use lockstep_proto::v1::{ResumeRequest, Status, StopRequest};
    let mut c = Cluster::start(ClusterOpts { hosts: 2, report_deadline_ms: 6000, ..ClusterOpts::default() });
    let host = |s: &Status, name: &str| s.hosts.iter().find(|h| h.host_id == name).unwrap().clone();
    let all_back = |s: &Status| running(s) && s.hosts.iter().all(|h| h.connected);
    c.wait_for("running", LONG, |s| running(s) && s.last_committed_tid >= 2).await;

    c.hosts[1].pause(true);
    let s = c.wait_for("the frozen host-1 to be lost", LONG, |s| !host(s, "host-1").last_lost.is_empty()).await;
    c.hosts[1].pause(false);
    assert_eq!(host(&s, "host-1").last_lost, "no report or heartbeat for over 6000 ms");
    c.wait_for("running again", LONG, all_back).await;

    let mut admin = c.admin().await.unwrap();
    admin.stop(StopRequest::default()).await.expect("stop");
    c.wait_for("stopped", LONG, |s| s.pipeline_state == "Stopped").await;
    c.hosts[1].pause(true);
    let s = c.wait_for("the frozen host-1 to be dropped", LONG, |s| !host(s, "host-1").connected).await;
    c.hosts[1].pause(false);
    let why = host(&s, "host-1").last_lost;
    assert!(why.starts_with("connection dropped after") && why.contains("without a report or heartbeat from the host"), "{why}");
    admin.resume(ResumeRequest::default()).await.expect("resume");
    c.wait_for("running again", LONG, all_back).await;

    assert_eq!(c.hosts[0].terminate(), Some(0));
    let s = c.wait_for("the stopped host-0 to be lost", LONG, |s| !host(s, "host-0").connected).await;
    assert_eq!(host(&s, "host-0").last_lost, "stream closed by the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_records_are_acknowledged_once_durable_and_survive_a_crash_exactly_once() {
    use lockstep_proto::v1::{ingest_client::IngestClient, PushRequest, Record};
    let mut c = Cluster::start(ClusterOpts { hosts: 2, checkpoint_every_txns: 3, ..ClusterOpts::default() });
    c.wait_for("running", LONG, |s| running(s) && s.last_committed_tid >= 1).await;
    let mut ingest = IngestClient::connect(format!("http://127.0.0.1:{}", c.ingest_ports[0])).await.expect("ingest");
    let mut acked_tids = Vec::new();
    let (mut count, mut sum) = (0u64, 0i64);
    for round in 0..20i64 {
        let records: Vec<Record> = (0..5).map(|i| Record { key: "pushed".into(), value: round * 10 + i }).collect();
        count += records.len() as u64;
        sum += records.iter().map(|r| r.value).sum::<i64>();
        let ack = ingest.push(PushRequest { records }).await.expect("push acknowledged").into_inner();
        assert!(ack.tid > 0 && ack.step > 0, "{ack:?}");
        acked_tids.push(ack.tid);
        if round == 10 {
            // Crash the host mid-stream; later pushes go to the restarted one.
            c.hosts[0].kill();
            c.hosts[0].start();
            c.wait_for("recovered", LONG, running).await;
            ingest = IngestClient::connect(format!("http://127.0.0.1:{}", c.ingest_ports[0])).await.expect("ingest");
        }
    }
    // One request at the documented limits (10 000 records with 1 KiB keys,
    // ~10 MB) is taken whole, as any other.
    use lockstep_host_agent::reference::{PUSH_KEY_BYTES_MAX, PUSH_REQUEST_RECORDS_MAX};
    let key = "k".repeat(PUSH_KEY_BYTES_MAX);
    let records: Vec<Record> = (0..PUSH_REQUEST_RECORDS_MAX as i64).map(|value| Record { key: key.clone(), value }).collect();
    let ack = ingest.push(PushRequest { records }).await.expect("a request at the documented limits is accepted").into_inner();
    acked_tids.push(ack.tid);
    let last = *acked_tids.iter().max().unwrap();
    // Committed on host-0 itself, not only in the ledger: a host stopped
    // between the two emits the tid only when a restart replays it, and
    // the sink is read without one. Its Committed follows the hand-over
    // to the sink writer, which shutdown drains.
    let host0_committed = |s: &lockstep_proto::v1::Status| s.hosts.iter().any(|h| h.host_id == "host-0" && h.last_committed_tid >= last);
    c.wait_for("the pushes to commit on host-0", LONG, |s| running(s) && host0_committed(s)).await;
    for h in &mut c.hosts {
        h.terminate();
    }
    let batches = c.sink(0);
    sink_tids(&batches);
    let state = sink_final_state(&batches);
    assert_eq!(state.get("pushed"), Some(&(count, sum)), "every acknowledged record counted exactly once");
    let n = PUSH_REQUEST_RECORDS_MAX as i64;
    assert_eq!(state.get(&key), Some(&(n as u64, n * (n - 1) / 2)), "the large request counted exactly once");
    assert!(!sink_final_state(&c.sink(1)).contains_key("pushed"), "records stay on the host they were pushed to");
}

/// Replay window: hosts run committed tids ahead of their verification and
/// hold each tid's outputs until its own Commit. A host whose sink lost its
/// newest batches (as after a crash between the ledger's commit and the
/// sink write) gets exactly those batches back from the replay: the same
/// rows under the same tids, in order, once, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_released_through_the_replay_window_are_exactly_the_recorded_ones() {
    let mut c = Cluster::start(ClusterOpts { hosts: 2, checkpoint_every_txns: 0, commit_interval_ms: 20, ..ClusterOpts::default() });
    c.wait_for("25 commits", LONG, |s| running(s) && s.last_committed_tid >= 25).await;
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0));
    }
    let committed = c.status().await.expect("status").last_committed_tid;
    assert_eq!(c.coordinator.terminate(), Some(0));
    let recorded = c.sink(0);
    assert!(recorded.len() >= 20, "host-0 emitted its batches: {}", recorded.len());
    // Keep only host-0's first 3 batches: every later one must come back
    // from the replay of the tids the ledger committed.
    let sink_file = c.host_dir(0).join("sink").join("output.jsonl");
    let text = std::fs::read_to_string(&sink_file).expect("sink file");
    let kept: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&sink_file, kept).expect("cut the sink");

    c.coordinator.start();
    for h in &mut c.hosts {
        h.start();
    }
    let s = c.wait_for("replayed and running again", LONG, |s| running(s) && s.last_committed_tid > committed + 2).await;
    let replay = s.last_replay.as_ref().expect("the restart replayed");
    assert_eq!(replay.tids, committed, "every committed tid was replayed: {replay:?}");
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0));
    }
    let after = c.sink(0);
    let tids = sink_tids(&after);
    for batch in &recorded {
        let tid = batch["tid"].as_u64().expect("tid");
        let again = after.iter().find(|b| b["tid"].as_u64() == Some(tid)).unwrap_or_else(|| panic!("tid {tid} is back in the sink: {tids:?}"));
        assert_eq!(again["rows"], batch["rows"], "tid {tid}: the replay released exactly the rows first emitted");
    }
    let first_new = recorded.last().and_then(|b| b["tid"].as_u64()).expect("recorded batches");
    assert!(tids.iter().filter(|t| **t <= first_new).count() == recorded.len(), "no extra tid among the replayed ones: {tids:?}");
}

/// The commit pipeline (`--pipeline-depth`): hosts run the next tid while
/// the previous one's commit is recorded; every committed tid still reaches
/// every sink exactly once, in order, with the generator's aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_live_run_commits_every_tid_exactly_once_and_matches_the_generator() {
    let mut c = Cluster::start(ClusterOpts { pipeline_depth: 4, commit_interval_ms: 5, step_interval_ms: 1, ..ClusterOpts::default() });
    c.wait_for("30 commits", LONG, |s| running(s) && s.last_committed_tid >= 30).await;
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0), "host agent exits cleanly on SIGTERM");
    }
    let committed = c.status().await.expect("status").last_committed_tid;
    assert_eq!(c.coordinator.terminate(), Some(0));
    check_sinks(&c, committed);
}

/// Crashes with a pipeline leave several tids begun and uncommitted in the
/// ledger (prepared ones awaiting their commit, the open one, ones begun
/// ahead): recovery replays and commits them, and output stays
/// exactly-once. The coordinator runs a two-thread runtime here (its raft
/// log appends on the blocking pool), the other tests its default one
/// thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_crash_cycles_recover_every_begun_tid_with_exactly_once_output() {
    let opts = ClusterOpts {
        pipeline_depth: 4,
        commit_interval_ms: 5,
        step_interval_ms: 1,
        coordinator_flags: vec!["--worker-threads".into(), "2".into()],
        ..ClusterOpts::default()
    };
    crash_cycles(opts, 6, 2, 4).await;
}

/// The README's first command, `coordinator dev`: a whole local cluster in
/// one process commits, stops cleanly on Ctrl-C (SIGINT, exit 0), and a
/// rerun on the same data recovers (restore, replay) and goes on, each
/// host's output exactly once. Checkpoints come every 2 tids, so the first
/// run deletes older ones; the rerun must not warn about their files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_cluster_commits_stops_on_ctrl_c_and_recovers_on_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("lockstep-data");
    let args: Vec<String> = ["dev", "--listen", &addr, "--metrics-listen", "off", "--checkpoint-every-txns", "2", "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .chain([data.display().to_string()])
        .collect();
    let mut dev = Proc::spawn("dev", bin_dir().join("coordinator"), args, dir.path().join("dev.log"));
    let interrupt = |p: &Proc| {
        let pid = p.pid().expect("dev runs") as libc::pid_t;
        // SAFETY: kill(2) takes no pointers.
        unsafe { libc::kill(pid, libc::SIGINT) };
    };
    let first = wait_for_status(&addr, "commits and a second checkpoint", LONG, |s| running(s) && s.newest_complete_checkpoint >= 4, || dev.log()).await;
    assert_eq!(first.hosts.len(), 2, "{first:#?}");
    interrupt(&dev);
    let exit = dev.exited(LONG).await.unwrap_or_else(|| panic!("dev kept running after Ctrl-C\n{}", dev.log()));
    assert!(exit.success(), "Ctrl-C is a clean stop: {exit:?}\n{}", dev.log());
    let stopped_at = read_sink(&data.join("host-0")).len() as u64;
    assert!(stopped_at >= 3, "the sinks hold what committed");

    dev.start();
    let again = wait_for_status(&addr, "commits after the rerun", LONG, |s| running(s) && s.last_committed_tid > stopped_at + 2, || dev.log()).await;
    assert!(again.epoch > first.epoch, "a new epoch: {again:#?}");
    // Checkpoints older than the newest complete one were deleted on
    // purpose; their journal records outlive them, and that is no warning.
    let log = dev.log();
    assert!(log.contains("recovering: restore checkpoint"), "{}", tail(&log, 30));
    assert!(!log.contains("but its file is gone"), "{}", tail(&log, 30));
    interrupt(&dev);
    let exit = dev.exited(LONG).await.unwrap_or_else(|| panic!("dev kept running after Ctrl-C\n{}", dev.log()));
    assert!(exit.success(), "{exit:?}\n{}", dev.log());
    for host in ["host-0", "host-1"] {
        let tids = sink_tids(&read_sink(&data.join(host)));
        assert_eq!(tids, (1..=tids.len() as u64).collect::<Vec<_>>(), "{host}: every tid once, in order");
        assert!(tids.len() as u64 > stopped_at, "{host} went on after the rerun");
    }
}

/// In `coordinator dev` a host agent that fails (here its disk refuses a
/// journal write, injected) is started again, as an orchestrator would
/// start it, and the coordinator recovers it: the cluster goes on, stops
/// cleanly, and every tid is in each sink once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_cluster_restarts_a_failed_host_agent_and_recovers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("lockstep-data");
    let args: Vec<String> = ["dev", "--listen", &addr, "--metrics-listen", "off", "--fault-fail-journal-write-at-step", "40", "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .chain([data.display().to_string()])
        .collect();
    let mut dev = Proc::spawn("dev", bin_dir().join("coordinator"), args, dir.path().join("dev.log"));
    let deadline = std::time::Instant::now() + LONG;
    while !dev.log().contains("the dev cluster starts it again") {
        assert!(std::time::Instant::now() < deadline, "host-0 was never restarted\n{}", dev.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = dev.log();
    assert!(log.contains("injected: no space left on device") && log.contains("it cannot write to its disk"), "{}", tail(&log, 30));
    let before = status_at(&addr).await.map(|s| s.last_committed_tid).unwrap_or(0);
    let s = wait_for_status(&addr, "recovered", LONG, |s| running(s) && s.last_committed_tid > before + 3, || dev.log()).await;
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    // SAFETY: kill(2) takes no pointers.
    unsafe { libc::kill(dev.pid().expect("dev runs") as libc::pid_t, libc::SIGINT) };
    let exit = dev.exited(LONG).await.unwrap_or_else(|| panic!("dev kept running after Ctrl-C\n{}", dev.log()));
    assert!(exit.success(), "a restarted host ends the run cleanly: {exit:?}\n{}", dev.log());
    for host in ["host-0", "host-1"] {
        let tids = sink_tids(&read_sink(&data.join(host)));
        assert!(tids.len() as u64 > before, "{host}: {tids:?}");
        assert_eq!(tids, (1..=tids.len() as u64).collect::<Vec<_>>(), "{host}: every tid once, in order");
    }
}
