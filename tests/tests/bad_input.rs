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
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let committed = c.status().await.unwrap().last_committed_tid;
    c.hosts[1].start();
    wait_log(&c.hosts[1], "offset", &c).await;
    let log = c.hosts[1].log();
    assert!(log.contains(&seg.file_name().unwrap().to_string_lossy().to_string()), "names the file: {log}");
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
