//! Bad input gets a clear error and loses nothing: foreign and corrupt
//! journals, unknown hosts, stale epochs.

use std::time::{Duration, Instant};

use lockstep_tests::*;

const LONG: Duration = Duration::from_secs(60);

/// Waits until `proc`'s log contains `needle` (bounded).
async fn wait_log(p: &Proc, needle: &str, c: &Cluster) {
    let deadline = Instant::now() + LONG;
    while !p.log().contains(needle) {
        if Instant::now() > deadline {
            panic!("{} never logged {needle:?}\n{}\n---- {} ----\n{}", p.name, c.logs(), p.name, tail(&p.log(), 40));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `bin args… --data-dir data` and returns its stderr, asserting that
/// it refused to start (a failure exit) and, unless `data` existed before,
/// wrote nothing there.
fn refused_at_startup(bin: &str, args: &[&str], data: &std::path::Path) -> String {
    let existed = data.exists();
    let out = std::process::Command::new(bin_dir().join(bin))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{bin} {args:?} must refuse to start: {err}");
    assert!(existed || !data.exists(), "{bin} {args:?} may write nothing, not even {}", data.display());
    err
}

/// A first report `Hello` of the current protocol, as a host would send it.
fn hello_report(
    host_id: &str,
    cluster_id: &str,
    journal_endpoints: Vec<String>,
    journal: Vec<lockstep_proto::v1::TidSummary>,
) -> lockstep_proto::v1::HostReport {
    use lockstep_proto::v1 as pb;
    pb::HostReport {
        seq: 1,
        report: Some(pb::host_report::Report::Hello(pb::Hello {
            protocol_version: lockstep_proto::PROTOCOL_VERSION,
            host_id: host_id.into(),
            cluster_id: cluster_id.into(),
            journal_endpoints,
            journal,
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_rejected_by_name_and_the_pipeline_keeps_running() {
    let c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("running", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 2).await;
    let intruder = Proc::spawn_host(&c, "intruder", "intruder", &c.opts.cluster_id);
    wait_log(&intruder, "unknown host id", &c).await;
    let before = c.status().await.unwrap().last_committed_tid;
    c.wait_for("more commits", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_of_another_cluster_is_refused_at_startup() {
    let mut c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 2).await;
    c.hosts[0].terminate();
    // The same volume started as a host of another cluster.
    let foreign = Proc::spawn_host(&c, "host-0", "foreign", "some-other-cluster");
    wait_log(&foreign, "e2e", &c).await;
    let log = foreign.log();
    assert!(log.contains("some-other-cluster") || log.contains("cluster"), "{log}");
}

/// A second host agent started on a data directory a running one uses (a
/// duplicated pod, a script run twice) is refused before it touches the
/// journal, naming the directory and the holder's pid; the first host and
/// the pipeline go on as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_agent_on_a_data_directory_in_use_is_refused() {
    let mut c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 2).await;
    let holder = c.hosts[0].pid().expect("host-0 runs");
    let mut second = Proc::spawn_host(&c, "host-0", "second", &c.opts.cluster_id);
    let exit = second.exited(LONG).await.unwrap_or_else(|| panic!("the second agent still runs\n{}", second.log()));
    assert!(!exit.success(), "refused with a failure exit: {exit:?}");
    let log = second.log();
    assert!(log.contains("in use by another process") && log.contains(&format!("pid {holder}")), "{log}");
    assert!(log.contains(&c.host_dir(0).join("journal").display().to_string()), "names the directory: {log}");
    let before = c.status().await.unwrap().last_committed_tid;
    let s = c.wait_for("more commits", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 2).await;
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    assert_eq!(c.hosts[0].terminate(), Some(0));
    let committed = c.status().await.unwrap().last_committed_tid;
    check_sinks(&c, committed);
}

/// A second host agent under a connected host's id but with its own data
/// directory (a copied manifest, a mistyped --host-id) is refused by the
/// coordinator while the first runs, naming the clash, and keeps retrying;
/// the pipeline goes on with the first in the same epoch. The two used to
/// replace each other's stream in turn, a recovery in a new epoch each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_agent_under_a_connected_hosts_id_is_refused_while_the_first_runs() {
    let mut c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    let s = c.wait_for("commits", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 2).await;
    let epoch = s.epoch;
    let other = c.dir.path().join("other-host-0");
    let args: Vec<String> = ["--host-id", "host-0", "--cluster-id", &c.opts.cluster_id, "--ingest-listen", "127.0.0.1:0"]
        .iter()
        .map(|a| a.to_string())
        .chain(["--coordinator".into(), format!("http://{}", c.addr), "--data-dir".into(), other.display().to_string()])
        .collect();
    let mut second = Proc::spawn("second", bin_dir().join("host-agent"), args, c.dir.path().join("second.log"));
    wait_log(&second, "two host agents run with --host-id host-0", &c).await;
    let before = c.status().await.unwrap().last_committed_tid;
    let s = c.wait_for("more commits", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 2).await;
    assert_eq!(s.epoch, epoch, "no recovery while the second agent knocks: {s:#?}\n{}", c.logs());
    assert!(second.is_running(), "the refused agent keeps retrying:\n{}", second.log());
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    second.kill();
    assert_eq!(c.hosts[0].terminate(), Some(0));
    let committed = c.status().await.unwrap().last_committed_tid;
    check_sinks(&c, committed);
}

/// A host whose disk refuses a journal write (a full disk, injected) exits
/// rather than run on a journal that may not hold what it acknowledged, and
/// the coordinator treats it as a lost host, naming the cause: the
/// pipeline waits, fail closed, and recovers by itself once the agent is
/// restarted (disk "freed"), replaying the open tid, so no tid is skipped
/// and the output stays exactly-once. Before, the host stayed up with a
/// journal that refused every write, the pipeline failed and recorded the
/// open tid as failed (its journaled input with it), and a Resume failed
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_journal_write_fails_exits_and_the_pipeline_recovers_once_it_is_restarted() {
    disk_write_fails_then_recovers("--fault-fail-journal-write-at-step", 40, "the journal refuses writes after one failed").await;
}

/// The same for a write of the host's output sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_sink_write_fails_exits_and_the_pipeline_recovers_once_it_is_restarted() {
    disk_write_fails_then_recovers("--fault-fail-sink-write-at-tid", 4, "to the sink failed").await;
}

async fn disk_write_fails_then_recovers(flag: &str, at: u64, says: &str) {
    let fault = [flag.to_string(), at.to_string()];
    let mut c = Cluster::start_with(ClusterOpts { hosts: 2, ..ClusterOpts::default() }, |i, args| {
        if i == 0 {
            args.extend(fault.iter().cloned());
        }
    });
    let exit = c.hosts[0].exited(LONG).await.unwrap_or_else(|| panic!("host-0 kept running\n{}", c.logs()));
    assert!(!exit.success(), "it exits with an error: {exit:?}");
    let log = c.hosts[0].log();
    assert!(log.contains(says) && log.contains("injected: no space left on device"), "{}", tail(&log, 20));
    assert!(log.contains("restart the agent: the coordinator recovers the pipeline once it is back"), "{}", tail(&log, 20));
    wait_log(&c.coordinator, "it cannot write to its disk", &c).await;
    let s = c.status().await.unwrap();
    assert_eq!(s.pipeline_state, "Joining", "waits for the host, fail closed, not Failed: {s:#?}");
    // What an operator sees: the host disconnected, and why.
    let host0 = s.hosts.iter().find(|h| h.host_id == "host-0").expect("host-0 listed");
    assert!(!host0.connected && host0.last_lost.contains("it cannot write to its disk") && host0.last_lost.contains("injected: no space left on device"), "{host0:#?}");
    assert!(s.hosts.iter().filter(|h| h.host_id != "host-0").all(|h| h.last_lost.is_empty()), "only the culprit: {s:#?}");
    let before = s.last_committed_tid;
    // The disk is "freed": the agent restarts without the fault.
    c.hosts[0].args.retain(|a| !fault.contains(a));
    c.hosts[0].start();
    c.wait_for("recovered", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 2).await;
    for h in c.hosts.iter_mut() {
        assert_eq!(h.terminate(), Some(0));
    }
    let committed = c.status().await.unwrap().last_committed_tid;
    check_sinks(&c, committed);
}

/// A host whose checkpoint files are damaged cannot be restored, and the
/// journal before the checkpoint is gone: the recovery fails loudly, naming
/// the host, the checkpoint file, and what to do about it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_fails_the_recovery_naming_host_file_and_what_to_do() {
    let mut c = Cluster::start(ClusterOpts { hosts: 2, checkpoint_every_txns: 3, ..ClusterOpts::default() });
    c.wait_for("a complete checkpoint", LONG, |s| s.pipeline_state == "Running" && s.newest_complete_checkpoint >= 3).await;
    c.hosts[0].kill();
    let dir = c.host_dir(0).join("checkpoints");
    let damaged: Vec<std::path::PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!damaged.is_empty(), "host-0 holds a checkpoint");
    for f in &damaged {
        std::fs::write(f, b"garbage{").unwrap();
    }
    c.hosts[0].start();
    let s = c.wait_for("the recovery to fail", LONG, |s| s.pipeline_state == "Failed").await;
    let names: Vec<String> = damaged.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(s.failure.contains("host host-0") && s.failure.contains("kind \"checkpoint\""), "{}", s.failure);
    assert!(names.iter().any(|n| s.failure.contains(n.as_str())), "names the file ({names:?}): {}", s.failure);
    assert!(s.failure.contains("restore the host's data volume from a backup"), "says what to do: {}", s.failure);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_middle_record_is_a_hard_error_naming_file_and_offset() {
    let mut c = Cluster::start(ClusterOpts { hosts: 2, checkpoint_every_txns: 0, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 5).await;
    c.hosts[1].kill();
    let journal_dir = c.host_dir(1).join("journal");
    let seg = std::fs::read_dir(&journal_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .min()
        .expect("a journal segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    // The middle of the records, not of the file: the active segment is
    // preallocated, and a flip among the zeros after its records is a torn
    // tail (cut with a warning), not a corrupt record.
    let records_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mid = records_end / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let committed = c.status().await.unwrap().last_committed_tid;
    c.hosts[1].start();
    wait_log(&c.hosts[1], "offset", &c).await;
    let log = c.hosts[1].log();
    assert!(log.contains(&seg.file_name().unwrap().to_string_lossy().to_string()), "names the file: {log}");
    assert!(!log.contains("truncating a torn tail"), "a corrupt record is no torn tail: {log}");
    // Nothing commits without the damaged host: fail closed.
    let s = c.status().await.unwrap();
    assert_ne!(s.pipeline_state, "Running");
    assert!(s.last_committed_tid <= committed + 1, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_lost_its_ledger_cannot_drive_hosts_that_saw_a_newer_epoch() {
    let mut c = Cluster::start(ClusterOpts { hosts: 2, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 3).await;
    c.coordinator.kill();
    std::fs::remove_dir_all(c.dir.path().join("coordinator")).unwrap();
    c.coordinator.start();
    wait_log(&c.coordinator, "has seen epoch", &c).await;
    let s = c.status().await.unwrap();
    assert_eq!(s.last_committed_tid, 0);
    assert_eq!(s.pipeline_state, "Joining", "{s:#?}");
}

fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .min()
        .expect("a journal segment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_of_an_unknown_format_version_is_refused_with_the_versions_named() {
    let mut c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 2).await;
    c.hosts[0].kill();
    let seg = first_segment(&c.host_dir(0));
    let mut bytes = std::fs::read(&seg).unwrap();
    let before = bytes.clone();
    bytes[8..12].copy_from_slice(&99u32.to_le_bytes()); // the header's format version
    std::fs::write(&seg, &bytes).unwrap();
    c.hosts[0].start();
    wait_log(&c.hosts[0], "format", &c).await;
    let log = c.hosts[0].log();
    assert!(log.contains("99"), "names the version found: {}", tail(&log, 5));
    // Nothing was repaired or skipped: the file is exactly as we left it.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    assert_ne!(bytes, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_reports_close_the_stream_with_a_clear_error_and_never_commit() {
    use lockstep_proto::v1::{self as pb, host_session_client::HostSessionClient};
    let c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 1).await;
    let mut client = HostSessionClient::connect(format!("http://{}", c.addr)).await.unwrap();
    // Not starting with Hello.
    let first = pb::HostReport { seq: 1, report: Some(pb::host_report::Report::Heartbeat(pb::Heartbeat {})) };
    let err = client.session(tokio_stream::iter(vec![first])).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("must be Hello"), "{}", err.message());
    // A Hello whose journal summary does not fit its endpoint table.
    let hello = hello_report(
        &host_id(0),
        &c.opts.cluster_id,
        vec!["generator".into(), "push".into()],
        vec![pb::TidSummary { tid: 4, counts: vec![1, 2], hashes: vec![3], ..Default::default() }],
    );
    let err = client.session(tokio_stream::iter(vec![hello])).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("Hello from host host-0: malformed journal summary (tid 4): its columns hold 2 counts and 1 hashes"),
        "{}",
        err.message()
    );
    // A Hello from a host that is not a member.
    let hello = hello_report("host-7", &c.opts.cluster_id, Vec::new(), Vec::new());
    let mut commands = client.session(tokio_stream::iter(vec![hello])).await.expect("stream opens").into_inner();
    let err = commands.message().await.expect_err("rejected");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("unknown host id \"host-7\""), "{}", err.message());
    let s = c.status().await.unwrap();
    assert_eq!(s.pipeline_state, "Running", "a stranger does not disturb the pipeline: {s:#?}");
}

/// A host whose journal holds many tids since its newest checkpoint (with
/// `--checkpoint-every-txns 0`, ~80 k tids is a minute or two at a 1 ms
/// commit interval) sends a Hello of several MiB; the coordinator must read
/// it, not refuse it for its size, or that host could never rejoin. (Sent
/// here as a stranger's Hello, so that reading it ends in the named
/// refusal of an unknown host rather than in a recovery.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_of_several_mib_is_read_not_refused_for_its_size() {
    use lockstep_proto::v1::{self as pb, host_session_client::HostSessionClient};
    use prost::Message;
    let c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 1).await;
    let journal: Vec<pb::TidSummary> = (1..=120_000u64)
        .map(|tid| pb::TidSummary {
            tid,
            first_step: tid,
            last_step: tid,
            steps: 1,
            committed: true,
            counts: vec![1, 1],
            hashes: vec![tid, !tid],
            ..Default::default()
        })
        .collect();
    let hello = hello_report("host-7", &c.opts.cluster_id, vec!["generator".into(), "push".into()], journal);
    let bytes = hello.encoded_len();
    assert!(bytes > 4 << 20, "the Hello is over tonic's default 4 MiB limit: {bytes} bytes");
    let mut client = HostSessionClient::connect(format!("http://{}", c.addr)).await.unwrap();
    let refused = match client.session(tokio_stream::iter(vec![hello])).await {
        Ok(commands) => commands.into_inner().message().await.expect_err("a stranger is refused"),
        Err(status) => status,
    };
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "read, then refused as a stranger: {refused:?}");
    assert!(refused.message().contains("unknown host id \"host-7\""), "{}", refused.message());
}

/// A malformed `ReplayedTids` report from a member host is refused whole:
/// the coordinator closes that stream naming the host, tid, step and the
/// problem, and commits nothing. (Our impersonating Hello offers an empty
/// journal, which fails the pipeline by invariant 6; after Resume the real
/// host recovers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_replayed_tids_report_is_refused_naming_host_tid_and_step() {
    use lockstep_proto::v1::{self as pb, host_session_client::HostSessionClient};
    let mut c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 2).await;
    // The real host-0 goes away, so that only our stream speaks for it.
    c.hosts[0].terminate();
    let before = c.status().await.unwrap().last_committed_tid;
    let hello = hello_report(&host_id(0), &c.opts.cluster_id, Vec::new(), Vec::new());
    let batch = pb::HostReport {
        seq: 2,
        report: Some(pb::host_report::Report::ReplayedTids(pb::ReplayedTids {
            endpoints: Vec::new(),
            tids: vec![pb::ReplayedTid {
                tid: 5,
                steps: [7u64, 9, 8].iter().flat_map(|s| s.to_le_bytes()).collect(),
                ..Default::default()
            }],
        })),
    };
    let mut client = HostSessionClient::connect(format!("http://{}", c.addr)).await.unwrap();
    // Kept open until the end: the coordinator reads our reports, decodes
    // the batch and ends the stream's reader with the error.
    let _commands = client.session(tokio_stream::iter(vec![hello, batch])).await.expect("stream opens").into_inner();
    wait_log(
        &c.coordinator,
        "malformed ReplayedTids from host host-0 for tid 5 (step 8): step numbers must strictly increase within a tid; step 8 follows step 9",
        &c,
    )
    .await;
    let s = c.status().await.unwrap();
    assert_eq!(s.last_committed_tid, before, "nothing commits without the host: {s:#?}");
    // The real host comes back and, once resumed, the pipeline recovers.
    c.hosts[0].start();
    c.admin().await.unwrap().resume(pb::ResumeRequest {}).await.expect("resume");
    c.wait_for("recovered", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 1).await;
}

/// Two members of a coordinator group at one address would be one process
/// answering for both (and sending raft messages to itself): refused at
/// startup, naming both, before anything is written.
#[test]
fn a_group_listing_one_address_twice_is_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let addr = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={addr},2={addr},3=127.0.0.1:{}", free_port());
    let err = refused_at_startup("coordinator", &["serve", "--node-id", "1", "--listen", &addr, "--peers", &peers], &data);
    assert!(err.contains(&format!("--peers gives nodes 1 and 2 the same address {addr}")), "{err}");
}

/// A `--data-dir` that is a file is refused by both daemons at startup,
/// naming it, and the file is left as it was.
#[test]
fn a_data_dir_that_is_a_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"keep me").expect("write");
    let coordinator = format!("127.0.0.1:{}", free_port());
    let daemons: [(&str, Vec<&str>); 2] = [
        ("coordinator", vec!["serve", "--listen", &coordinator]),
        ("host-agent", vec!["--host-id", "host-0", "--coordinator", "http://127.0.0.1:1"]),
    ];
    for (bin, args) in daemons {
        let err = refused_at_startup(bin, &args, &file);
        assert!(err.contains(&format!("--data-dir {} is a file, not a directory", file.display())), "{bin}: {err}");
        assert_eq!(std::fs::read(&file).expect("read"), b"keep me", "{bin} must leave the file alone");
    }
}

/// The host set is fixed when a cluster is created: a restarted
/// coordinator whose `--hosts` differs says so, naming both lists, and goes
/// on with the ledger's hosts (it does not wait for a host the flag adds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_hosts_flag_is_warned_about_and_the_ledgers_hosts_are_used() {
    let mut c = Cluster::start(ClusterOpts { hosts: 2, ..ClusterOpts::default() });
    c.wait_for("commits", LONG, |s| s.last_committed_tid >= 2).await;
    assert_eq!(c.coordinator.terminate(), Some(0), "{}", c.logs());
    let flag = c.coordinator.args.iter().position(|a| a == "--hosts").expect("--hosts in the coordinator's flags") + 1;
    c.coordinator.args[flag] = "host-0,host-1,host-9".into();
    c.coordinator.start();
    let before = c.wait_for("the restarted coordinator running", LONG, |s| s.pipeline_state == "Running").await.last_committed_tid;
    wait_log(&c.coordinator, "--hosts differs from the hosts this cluster was created with", &c).await;
    let log = c.coordinator.log();
    assert!(log.contains(r#"ledger_hosts=["host-0", "host-1"]"#) && log.contains("host-9"), "{}", tail(&log, 20));
    let s = c.wait_for("commits with the ledger's two hosts", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > before + 2).await;
    assert_eq!(s.hosts.len(), 2, "{s:#?}");
}

/// A `--hosts` list with a duplicate, an empty entry or a host id that is
/// no pod name, and a host agent's `--host-id` likewise, are refused at
/// startup, naming the problem, before anything is written. The
/// coordinator used to take them as given and wait for a host that can
/// never connect. An empty --cluster-id is refused by both too.
#[test]
fn bad_host_and_cluster_ids_are_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port());
    for (hosts, says) in [
        ("host-0,host-0", "lists host-0 twice"),
        ("host-0,,host-1", "the host id is empty"),
        ("", "lists no host"),
        ("host-0,../x", "must start with a letter or digit"),
    ] {
        let data = dir.path().join("coordinator");
        let err = refused_at_startup("coordinator", &["serve", "--listen", &addr, "--hosts", hosts], &data);
        assert!(err.contains("--hosts") && err.contains(says), "--hosts {hosts:?}: {err}");
    }
    let args = ["--host-id", "a/b", "--coordinator", "http://127.0.0.1:1"];
    let err = refused_at_startup("host-agent", &args, &dir.path().join("host"));
    assert!(err.contains("--host-id") && err.contains("contains '/'"), "{err}");
    // An empty cluster id likewise (the ledger would look new on every
    // start).
    let runs: [(&str, Vec<&str>); 2] = [
        ("coordinator", vec!["serve", "--listen", &addr, "--cluster-id", ""]),
        ("host-agent", vec!["--host-id", "host-0", "--cluster-id", " ", "--coordinator", "http://127.0.0.1:1"]),
    ];
    for (bin, args) in runs {
        let data = dir.path().join(format!("{bin}-empty-cluster"));
        let err = refused_at_startup(bin, &args, &data);
        assert!(err.contains("--cluster-id is empty"), "{bin}: {err}");
    }
}

/// A metrics address another process holds is refused at startup, naming
/// it, before any data is touched: a daemon that silently served no
/// metrics would look to Prometheus like a dead one.
#[test]
fn a_metrics_address_already_in_use_is_refused_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let metrics = taken.local_addr().expect("addr").to_string();
    let coordinator = format!("127.0.0.1:{}", free_port());
    let daemons: [(&str, Vec<&str>, &str); 2] = [
        ("coordinator", vec!["serve", "--listen", &coordinator], "--metrics-listen"),
        ("host-agent", vec!["--host-id", "host-0", "--coordinator", "http://127.0.0.1:1"], "host agent host-0"),
    ];
    for (bin, args, named) in daemons {
        let data = dir.path().join(bin);
        let args: Vec<&str> = args.iter().copied().chain(["--metrics-listen", metrics.as_str()]).collect();
        let err = refused_at_startup(bin, &args, &data);
        assert!(err.contains(&format!("serving metrics on {metrics}")) && err.contains(named), "{bin}: {err}");
    }
}

/// A coordinator whose ledger cannot be written (a full disk, injected)
/// does not linger: its raft core stops, and the daemon exits non-zero
/// naming the cause and the data directory. Nothing is lost: restarted on
/// the same data with the disk "freed", it recovers and the hosts' output
/// stays exactly-once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_ledger_cannot_be_written_exits_naming_it_and_recovers_on_restart() {
    let fault = ["--fault-fail-log-appends-after".to_string(), "40".to_string()];
    let opts = ClusterOpts { hosts: 2, coordinator_flags: fault.to_vec(), ..ClusterOpts::default() };
    let mut c = Cluster::start(opts);
    let status = c.coordinator.exited(LONG).await.unwrap_or_else(|| panic!("the coordinator kept running\n{}", c.logs()));
    assert!(!status.success(), "it must exit with an error: {status:?}");
    let log = c.coordinator.log();
    let data = c.dir.path().join("coordinator");
    for needle in ["the ledger's raft core stopped", "No space left on device", &data.display().to_string()] {
        assert!(log.contains(needle), "the coordinator's last words must name {needle:?}\n{}", tail(&log, 30));
    }

    c.coordinator.args.retain(|a| !fault.contains(a));
    c.coordinator.start();
    let s = c.wait_for("Running again after the restart", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let committed = s.last_committed_tid;
    c.wait_for("commits past the restart", LONG, |s| s.last_committed_tid > committed + 3).await;
    for h in &mut c.hosts {
        h.terminate();
    }
    let last = c.status().await.expect("status").last_committed_tid;
    for i in 0..2 {
        let tids = sink_tids(&c.sink(i));
        assert!(tids.iter().all(|t| *t <= last), "host {i} emitted a tid the ledger never committed: {tids:?}");
        assert!(tids.len() as u64 >= committed, "host {i} emitted {} tids, the ledger committed {committed}", tids.len());
    }
}

/// A push to a host that no pipeline drives (its coordinator cannot be
/// reached) is not left hanging: after `--push-wait-secs` the client hears
/// that no live transaction took the records and that they were withdrawn,
/// not ingested. Before, a client without a deadline of its own waited for
/// as long as the coordinator stayed away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_host_no_pipeline_drives_is_refused_after_the_wait_not_left_hanging() {
    use lockstep_proto::v1::{ingest_client::IngestClient, PushRequest, Record};
    let dir = tempfile::tempdir().unwrap();
    let ingest_port = free_port();
    // Nobody listens on this port: the host keeps trying to connect.
    let coordinator = format!("http://127.0.0.1:{}", free_port());
    let args: Vec<String> = ["--host-id", "host-0", "--cluster-id", "lonely", "--push-wait-secs", "1", "--coordinator", &coordinator]
        .iter()
        .map(|a| a.to_string())
        .chain(["--ingest-listen".into(), format!("127.0.0.1:{ingest_port}"), "--data-dir".into(), dir.path().join("h0").display().to_string()])
        .collect();
    let host = Proc::spawn("host-0", bin_dir().join("host-agent"), args, dir.path().join("host-0.log"));
    let deadline = Instant::now() + LONG;
    let mut ingest = loop {
        match IngestClient::connect(format!("http://127.0.0.1:{ingest_port}")).await {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("the ingest API never listened: {e}\n{}", host.log()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let records = vec![Record { key: "k".into(), value: 1 }];
    let err = ingest.push(PushRequest { records }).await.expect_err("no pipeline, no acknowledgement");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("host host-0: no live transaction took these records within 1s; they were withdrawn, not ingested"),
        "{err:?}"
    );
}

/// Opens a TCP connection to `addr`, says the HTTP/2 preface and an empty
/// SETTINGS frame, and then never answers anything (as a client whose node
/// vanished would not): reads and discards until the server closes the
/// connection. Returns how many bytes the server sent, or panics if it is
/// still open after `LONG`.
async fn server_drops_a_silent_client(addr: &str) -> usize {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The client preface, then SETTINGS: length 0, type 4, no flags, stream 0.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("preface");
    let mut got = 0;
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(LONG, read_all)
        .await
        .unwrap_or_else(|_| panic!("{addr} still holds a connection whose client stopped answering, {LONG:?} later"));
    got
}

/// A client that vanished without closing its connection (a node lost, a
/// partition that moved its address) is dropped by both daemons' servers
/// once it stops answering their pings, rather than held until TCP gives
/// up hours later, with any call it left half-sent holding the next stop.
/// Before, both servers sent no pings and kept such a connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_dropped_by_both_daemons() {
    let c = Cluster::start(ClusterOpts { hosts: 1, ..ClusterOpts::default() });
    c.wait_for("Running", LONG, |s| s.pipeline_state == "Running").await;
    let coordinator = server_drops_a_silent_client(&c.addr).await;
    let ingest = server_drops_a_silent_client(&format!("127.0.0.1:{}", c.ingest_ports[0])).await;
    // Its SETTINGS and at least one PING (9-byte headers, 8-byte payload).
    assert!(coordinator > 9 + 17 && ingest > 9 + 17, "sent {coordinator} and {ingest} bytes");
    // The daemons carry on serving everyone else.
    let committed = c.status().await.expect("status").last_committed_tid;
    c.wait_for("commits after the silent clients", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid > committed).await;
}
