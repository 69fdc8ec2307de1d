//! Cluster tests in real containers: the `lockstep:dev` image (built from
//! local files by `deploy/image/build.sh`, from the same debug binaries the
//! other end-to-end tests use), one coordinator (or a raft group of three,
//! `coordinator-1..3`) and three host agents as containers on a Docker
//! network this test creates, configured the way `deploy/compose` does it
//! (LOCKSTEP_* environment variables, the hosts reach the coordinators by
//! their DNS names).
//!
//! Only the coordinator's gRPC port is published, on 127.0.0.1; the test
//! polls `Admin/GetStatus` through it with bounded waits (no sleeps as
//! synchronisation). Each host's data directory is a bind-mounted temp dir,
//! so its sink is read directly. Every container and the network are removed
//! when the test ends, also when it panics ([`DockerCluster`]'s Drop).
//!
//! Most tests put every container on one network, as compose does; two
//! give every link a network of its own ([`Wiring::Links`]): one to cut the
//! leader off from its peers alone, one to cut a host off from the leader
//! alone with mutual TLS on every connection.
//!
//! Without a usable docker CLI and daemon the tests print a SKIPPED line and
//! pass. The Kubernetes manifests' offline validation lives here too.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;
use lockstep_tests::certs::{TestCa, TlsFiles};
use lockstep_tests::docker::{containers_can_run, docker, image, repo_root, running, DockerCluster, Wiring, CLUSTER, HOSTS, LONG};
use lockstep_tests::{
    check_sinks_of, free_port, host_id, read_sink, scrape_metrics, status_at_with, tail, wait_for_nodes, wait_for_status_with, wait_leader_at, ClusterOpts,
};

/// (a) commits; (b) `docker kill` of a host container and `docker start` of
/// the same container: the pipeline recovers (new epoch, replay), returns to
/// Running, commits past where it was, and every sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_commit_and_recover_from_a_killed_host() {
    if !containers_can_run("containers_commit_and_recover_from_a_killed_host") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start(3000).await;
    let s = c.wait_for("3 commits in containers", LONG, |s| running(s) && s.last_committed_tid >= 3).await;
    assert_eq!(s.hosts.len(), HOSTS);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    assert_eq!(s.cluster_id, CLUSTER);
    // The image serves both daemons' metrics, reached on the test network.
    let (coordinator, host) = (format!("{}:9464", c.container_ip("coordinator")), format!("{}:9465", c.container_ip(&host_id(0))));
    let (m, h) = tokio::task::spawn_blocking(move || (scrape_metrics(&coordinator), scrape_metrics(&host))).await.expect("scrape");
    assert_eq!(m.get("lockstep_leader"), Some(&1.0), "{m:#?}");
    assert_eq!(m.get(r#"lockstep_pipeline_state{state="Running"}"#), Some(&1.0), "{m:#?}");
    assert_eq!(m.get("lockstep_hosts_connected"), Some(&(HOSTS as f64)), "{m:#?}");
    assert_eq!(h.get(r#"lockstep_agent_session_up{host="host-0"}"#), Some(&1.0), "{h:#?}");

    let victim = host_id(1);
    c.docker(&["kill", "--signal", "KILL", &c.name(&victim)]);
    let lost = c
        .wait_for("the coordinator to notice the killed host", LONG, |s| {
            s.hosts.iter().any(|h| h.host_id == victim && !h.connected)
        })
        .await;
    let (committed, epoch) = (lost.last_committed_tid, lost.epoch);
    c.docker(&["start", &c.name(&victim)]);
    let s = c
        .wait_for(&format!("Running again, in a new epoch, past tid {committed}"), LONG, |s| {
            s.pipeline_state == "Failed" || (running(s) && s.epoch > epoch && s.last_committed_tid > committed)
        })
        .await;
    assert!(running(&s), "the pipeline must recover, not fail: {s:#?}\n{}", c.logs());
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");

    let committed = c.status().await.expect("status").last_committed_tid;
    c.stop_all();
    c.check_sinks(committed);
    eprintln!("containers: kill/restart test took {} ms", started.elapsed().as_millis());
}

/// (c) A host cut off the network (`docker network disconnect`): its report
/// deadline fires at the coordinator, nothing commits while it is cut off
/// (fail closed), and after `docker network connect` the pipeline recovers
/// and commits again, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_partitioned_host_fails_closed_and_recovers() {
    if !containers_can_run("containers_partitioned_host_fails_closed_and_recovers") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start(1000).await;
    c.wait_for("3 commits in containers", LONG, |s| running(s) && s.last_committed_tid >= 3).await;

    let victim = host_id(2);
    let ip_before = c.container_ip(&victim);
    c.docker(&["network", "disconnect", &c.network, &c.name(&victim)]);
    let cut_at = c.status().await.expect("status").last_committed_tid;
    // The coordinator hears nothing more from the host: after the report
    // deadline it drops it and leaves Running.
    let noticed = c
        .wait_for("the report deadline to fire for the cut-off host", Duration::from_millis(c.report_deadline_ms * 10), |s| {
            !running(s) && s.hosts.iter().any(|h| h.host_id == victim && !h.connected)
        })
        .await;
    let held = noticed.last_committed_tid;
    // A Prepared already delivered before the cut may still commit; nothing later.
    assert!(held <= cut_at + 1, "committed {held} after the cut at {cut_at}");
    let coordinator_log = c.log("coordinator");
    let why = format!("no report or heartbeat for over {} ms", c.report_deadline_ms);
    assert!(coordinator_log.contains(&why), "coordinator log must say the deadline fired ({why:?})\n{}", c.logs());

    // Observe the partition for twice the deadline: no commit, not Running.
    let until = Instant::now() + Duration::from_millis(2 * c.report_deadline_ms);
    let mut polls = 0;
    while Instant::now() < until {
        let s = c.status().await.expect("status during the partition");
        assert_eq!(s.last_committed_tid, held, "a tid committed while a host was cut off: {s:#?}");
        assert!(!running(&s), "Running while a host is cut off: {s:#?}");
        polls += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(polls >= 5, "too few status polls during the partition ({polls})");

    c.docker(&["network", "connect", &c.network, &c.name(&victim)]);
    let reconnected = Instant::now();
    let ip_after = c.container_ip(&victim);
    let s = c
        .wait_for(&format!("Running again after the partition, past tid {held} (host ip {ip_before} -> {ip_after})"), LONG, |s| {
            s.pipeline_state == "Failed" || (running(s) && s.last_committed_tid > held)
        })
        .await;
    assert!(running(&s), "the pipeline must recover, not fail: {s:#?}\n{}", c.logs());
    assert!(s.epoch > noticed.epoch, "recovery runs in a new epoch: {s:#?}");
    eprintln!(
        "containers: deadline fired, {polls} polls saw no commit at tid {held}; committing again {} ms after reconnecting",
        reconnected.elapsed().as_millis()
    );

    let committed = c.status().await.expect("status").last_committed_tid;
    c.stop_all();
    c.check_sinks(committed);
    eprintln!("containers: partition test took {} ms", started.elapsed().as_millis());
}

/// (d) A replicated coordinator (3 containers, as deploy/compose runs it):
/// the leader's container is cut off the network; the other two elect a
/// leader, the hosts find it and the pipeline continues from their kept
/// state (no replay); reconnected, the old leader rejoins as a follower,
/// and every sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_replicated_coordinator_survives_a_partitioned_leader() {
    if !containers_can_run("containers_replicated_coordinator_survives_a_partitioned_leader") {
        return;
    }
    let started = Instant::now();
    let c = DockerCluster::start_group(3, 3000).await;
    let (old, s) = c.wait_leader("a leader committing in containers", &[], |s| running(s) && s.last_committed_tid >= 3).await;
    let (epoch, committed) = (s.epoch, s.last_committed_tid);

    c.docker(&["network", "disconnect", &c.network, &c.name(&c.coordinators[old])]);
    let (new, s) = c
        .wait_leader(&format!("a new leader past tid {committed} with node {} cut off", old + 1), &[old], |s| {
            running(s) && s.epoch > epoch && s.last_committed_tid > committed + 2
        })
        .await;
    assert_ne!(new, old);
    let r = s.last_recovery.clone().unwrap_or_default();
    assert_eq!(r.path, "continue", "the hosts kept their state, so no replay: {}\n{}", r.why, c.logs());
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");

    // With its DNS alias again: peers and hosts reach it by name.
    c.docker(&["network", "connect", "--alias", &c.coordinators[old], &c.network, &c.name(&c.coordinators[old])]);
    // Docker re-publishes the port of a reconnected container elsewhere.
    let port = c.published_port(&c.coordinators[old]);
    let rejoined = wait_for_status_with(&format!("127.0.0.1:{port}"), None, "the old leader back as a follower", LONG, |f| {
        !f.is_leader && f.stale && f.leader_id != 0 && f.epoch >= s.epoch
    }, || c.logs())
    .await;
    let (_, s) = c
        .wait_leader("commits after the old leader rejoined", &[old], |x| running(x) && x.last_committed_tid > s.last_committed_tid + 2)
        .await;
    assert!(rejoined.last_committed_tid <= s.last_committed_tid);
    let old_log = c.log(&c.coordinators[old]);
    assert!(
        old_log.contains("this node no longer leads"),
        "the cut-off leader must say it stopped driving the pipeline\n{}",
        tail(&old_log, 80)
    );

    c.stop_all();
    c.check_sinks(s.last_committed_tid);
    eprintln!("containers: partitioned-leader test took {} ms", started.elapsed().as_millis());
}

/// (f) Partial partitions, with a network per link. First a follower is
/// cut off from every other daemon for several election timeouts and
/// healed: the leader keeps committing with the other follower, and the
/// follower, which could win no pre-vote while cut off, comes back at the
/// term it left with and follows; the leader never changes and the
/// pipeline keeps its epoch (without pre-vote its raised term would depose
/// a healthy leader on the heal). Then the leader loses
/// both its peers but still reaches every host. It cannot commit (its
/// ledger writes find no quorum), so it must give the hosts up; the other
/// two elect a leader, and the hosts, still able to dial the old one, must
/// end up with the new one and commit there, never in the old leader's
/// epoch after the new one's. Healed, the old leader follows, and every
/// sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_leader_cut_off_from_its_peers_but_not_its_hosts() {
    if !containers_can_run("containers_leader_cut_off_from_its_peers_but_not_its_hosts") {
        return;
    }
    let started = Instant::now();
    let mut c = DockerCluster::start_with(3, 1500, false, Wiring::Links).await;
    let (old, s) = c.wait_leader("a leader committing, one network per link", &[], |s| running(s) && s.last_committed_tid >= 3).await;
    let (epoch, committed, term) = (s.epoch, s.last_committed_tid, s.raft_term);
    let leader = c.coordinators[old].clone();

    let f = (0..c.coordinators.len()).find(|i| *i != old).expect("a follower");
    let follower = c.coordinators[f].clone();
    c.isolate(&follower);
    // Cut off until the leader has heard nothing from it for 3 s: long
    // enough for the follower's election timer (300-600 ms) to fire
    // several times. The leader's ListNodes says so (`progress`).
    let silent = |ms: u64| {
        move |nodes: &[pb::Node]| {
            nodes.iter().any(|n| n.node_id == f as u64 + 1 && n.progress.as_ref().is_some_and(|p| p.last_answer_ms_ago.is_some_and(|a| a >= ms)))
        }
    };
    wait_for_nodes(&c.addrs[old], &format!("{follower} silent for 3 s"), LONG, silent(3000), || c.logs()).await;
    let (during, s) = c
        .wait_leader(&format!("commits past tid {committed} with {follower} cut off"), &[f], |s| {
            running(s) && s.last_committed_tid > committed + 2
        })
        .await;
    assert_eq!((during, s.epoch), (old, epoch), "the leader changed while only a follower was cut off: {s:#?}");
    assert_eq!(c.heal(), 2 + HOSTS);
    let leader_id = s.node_id;
    let caught_up = s.last_committed_tid;
    let back = wait_for_status_with(&c.addrs[f], None, &format!("{follower} back in the group, at tid {caught_up} or later"), LONG, |x| {
        x.leader_id != 0 && x.last_committed_tid >= caught_up
    }, || c.logs())
    .await;
    let (after, s) = c
        .wait_leader(&format!("commits past tid {caught_up} after the heal"), &[], |s| running(s) && s.last_committed_tid > caught_up + 2)
        .await;
    assert_eq!(
        (after, s.epoch),
        (old, epoch),
        "a healed follower deposed the leader (pre-vote should have kept its term): {s:#?}\n{}",
        tail(&c.log(&follower), 60)
    );
    assert_eq!(back.leader_id, leader_id, "{follower} came back following another leader: {back:#?}");
    let answering = |nodes: &[pb::Node]| {
        nodes.iter().any(|n| n.node_id == f as u64 + 1 && n.progress.as_ref().is_some_and(|p| p.last_answer_ms_ago.is_some_and(|a| a < 1000)))
    };
    wait_for_nodes(&c.addrs[old], &format!("{follower} answering the leader again"), LONG, answering, || c.logs()).await;
    assert_eq!((s.raft_term, back.raft_term), (term, term), "an election happened, or {follower} raised its term while cut off");
    let committed = s.last_committed_tid;
    for peer in c.coordinators.clone().iter().filter(|p| **p != leader) {
        c.cut(&leader, peer);
    }
    let (new, s) = c
        .wait_leader(&format!("a new leader past tid {committed}, with {leader} cut off from its peers only"), &[old], |s| {
            running(s) && s.epoch > epoch && s.last_committed_tid > committed + 2
        })
        .await;
    assert_ne!(new, old);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    // The old leader, still reachable by the test and the hosts, drives
    // nothing: it stopped driving when its ledger write found no quorum
    // (which sent the hosts to the new leader), and says so, although raft
    // may still count it leader of its old term.
    let o = status_at_with(&c.addrs[old], None).await.expect("the cut-off leader answers the test");
    assert!(!o.is_leader && o.stale && o.hosts.is_empty(), "the cut-off leader still says it leads: {o:#?}");
    let old_log = c.log(&leader);
    assert!(old_log.contains("this node no longer leads"), "the cut-off leader must say it stopped driving\n{}", tail(&old_log, 80));

    assert_eq!(c.heal(), 2);
    let rejoined = wait_for_status_with(&c.addrs[old], None, "the old leader back as a follower", LONG, |f| {
        !f.is_leader && f.leader_id != 0 && f.epoch >= s.epoch
    }, || c.logs())
    .await;
    let (_, s) = c
        .wait_leader("commits after the old leader rejoined", &[], |x| running(x) && x.last_committed_tid > s.last_committed_tid + 2)
        .await;
    assert!(rejoined.last_committed_tid <= s.last_committed_tid);
    c.stop_all();
    c.check_sinks(s.last_committed_tid);
    eprintln!("containers: leader-cut-from-peers test took {} ms", started.elapsed().as_millis());
}

/// (e) The replicated coordinator in containers with mutual TLS on every
/// connection, set up as deploy/README.md describes (one certificate naming
/// the members' DNS aliases, mounted read-only, the three LOCKSTEP_TLS_*
/// variables, bare host:port for the hosts), a network per link: it elects
/// and commits; a host cut off from the leader is lost and, once the link
/// heals, reconnects through a new TLS handshake; a killed leader's
/// successor takes over over TLS (raft between the members, the hosts'
/// redirects), the old one rejoins, and every sink is exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_replicated_coordinator_over_mutual_tls() {
    if !containers_can_run("containers_replicated_coordinator_over_mutual_tls") {
        return;
    }
    let started = Instant::now();
    let mut c = DockerCluster::start_with(3, 3000, true, Wiring::Links).await;
    let (old, s) = c.wait_leader("a leader committing over TLS", &[], |s| running(s) && s.last_committed_tid >= 3).await;
    let plaintext = status_at_with(&c.addrs[old], None).await;
    assert!(plaintext.is_err(), "the leader answered plaintext: {plaintext:?}");
    let leader = c.coordinators[old].clone();
    let leader_log = c.log(&leader);
    assert!(leader_log.contains("mutual TLS: certificate /etc/lockstep/tls/node.pem"), "{}", tail(&leader_log, 40));

    // A host cut off from the leader (its other links stay up) misses its
    // report deadline; after the heal its next session is a new connection,
    // so a new handshake, and the pipeline runs with every host again.
    let host = host_id(1);
    let epoch = s.epoch;
    c.cut(&leader, &host);
    let (_, lost) = c
        .wait_leader(&format!("{host} lost by {leader}"), &[], |s| !running(s) && s.hosts.iter().any(|h| h.host_id == host && !h.connected))
        .await;
    assert_eq!(c.heal(), 1);
    let (_, back) = c
        .wait_leader(&format!("{host} back over TLS after the heal"), &[], |s| {
            running(s) && s.epoch > epoch && s.hosts.iter().all(|h| h.connected) && s.last_committed_tid > lost.last_committed_tid + 2
        })
        .await;

    c.docker(&["kill", &c.name(&leader)]);
    let committed = back.last_committed_tid;
    let (new, s) = c
        .wait_leader(&format!("a new leader past tid {committed}"), &[old], |s| running(s) && s.last_committed_tid > committed + 2)
        .await;
    assert_ne!(new, old);
    assert!(s.hosts.iter().all(|h| h.connected), "{s:#?}");
    c.docker(&["start", &c.name(&leader)]);
    let (_, s) = c.wait_leader("commits with the old leader back", &[old], |x| running(x) && x.last_committed_tid > s.last_committed_tid + 2).await;
    c.stop_all();
    c.check_sinks(s.last_committed_tid);
    eprintln!("containers: mutual TLS test took {} ms", started.elapsed().as_millis());
}

/// deploy/compose as its README runs it: `docker-compose -f … -p … up -d`
/// of the shipped file (and, with TLS, the shipped `tls.yml` override), the
/// published ports moved to free ones through the file's own variables.
/// Drop is `down -v`: containers, network and volumes go.
struct Compose {
    project: String,
    files: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// Where the test reaches each coordinator (the published ports).
    addrs: Vec<String>,
    tls: Option<TlsFiles>,
    dir: tempfile::TempDir,
}

impl Compose {
    fn up(tls: bool) -> Compose {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let project = format!("lockstep-cp-{}-{nanos:08x}", std::process::id());
        let compose = repo_root().join("deploy/compose");
        let mut c = Compose {
            project,
            files: vec![compose.join("docker-compose.yml")],
            env: vec![("LOCKSTEP_IMAGE".into(), image().into())],
            addrs: Vec::new(),
            tls: None,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for n in 1..=3 {
            let port = free_port();
            c.env.push((format!("LOCKSTEP_PORT_{n}"), port.to_string()));
            c.env.push((format!("LOCKSTEP_METRICS_PORT_{n}"), free_port().to_string()));
            c.addrs.push(format!("127.0.0.1:{port}"));
        }
        if tls {
            // As deploy/README.md's recipe makes them: one certificate naming
            // the services, in a directory of its own, readable by the
            // image's user (uid 10001).
            let made = c.dir.path().join("made");
            let files = c.dir.path().join("tls");
            for d in [&made, &files] {
                std::fs::create_dir_all(d).expect("tls dir");
            }
            let ca = TestCa::new(&made, "compose");
            let node = ca.issue_naming(&made, "node", &["coordinator-1", "coordinator-2", "coordinator-3"]);
            let mounted = TlsFiles { cert: files.join("tls.crt"), key: files.join("tls.key"), ca: files.join("ca.crt"), server_name: None };
            node.copy_to(&mounted);
            use std::os::unix::fs::PermissionsExt as _;
            for (p, mode) in [(&files, 0o755), (&mounted.key, 0o644), (&mounted.cert, 0o644), (&mounted.ca, 0o644)] {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            }
            c.files.push(compose.join("tls.yml"));
            c.env.push(("LOCKSTEP_TLS_DIR".into(), files.display().to_string()));
            c.tls = Some(node);
        }
        c.run(&["up", "-d"]).unwrap_or_else(|e| panic!("{e}"));
        c
    }

    /// `docker-compose -f … -p project args…` (or `docker compose …`) with
    /// the test's variables.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let Some((program, first)) = compose_command() else {
            return Err("neither docker-compose nor the docker compose plugin runs here".into());
        };
        let mut cmd = Command::new(program);
        cmd.args(first);
        for f in &self.files {
            cmd.arg("-f").arg(f);
        }
        cmd.args(["-p", &self.project]).args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = cmd.output().map_err(|e| format!("docker-compose {}: {e}", args.join(" ")))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("docker-compose {} failed ({}): {text}", args.join(" "), out.status))
        }
    }

    fn container(&self, service: &str) -> String {
        let id = self.run(&["ps", "-q", service]).unwrap_or_else(|e| panic!("{e}"));
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn logs(&self) -> String {
        tail(&self.run(&["logs", "--no-color"]).unwrap_or_else(|e| e), 200)
    }

    async fn wait_leader(&self, what: &str, pred: impl Fn(&pb::Status) -> bool) -> (usize, pb::Status) {
        wait_leader_at(&self.addrs, self.tls.as_ref(), what, LONG, |_| true, pred, || self.logs()).await
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["down", "-v", "--remove-orphans"]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// How Compose runs here: the standalone `docker-compose` (v1, as Debian
/// ships it), else the `docker compose` plugin (v2, as Docker's own
/// packages ship it); both take the same file and commands.
fn compose_command() -> Option<(&'static str, &'static [&'static str])> {
    static FOUND: std::sync::OnceLock<Option<(&str, &[&str])>> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        let candidates: [(&str, &[&str]); 2] = [("docker-compose", &[]), ("docker", &["compose"])];
        candidates.into_iter().find(|(program, first)| {
            Command::new(program).args(*first).arg("version").output().is_ok_and(|o| o.status.success())
        })
    })
}

/// Whether Compose runs here; prints SKIPPED when not.
fn compose_can_run(test: &str) -> bool {
    if !containers_can_run(test) {
        return false;
    }
    if compose_command().is_none() {
        println!("SKIPPED: {test}: neither docker-compose nor the docker compose plugin here");
        return false;
    }
    true
}

/// The shipped compose file runs what it promises: a group of three that
/// elects, commits, and recovers a host killed and started again (new
/// epoch); every daemon stops cleanly on `docker-compose stop`; and every
/// sink (read out of its volume) is exactly once, with the generator's
/// aggregates. With `tls`, through the shipped `tls.yml` override.
async fn compose_cluster_commits_and_recovers(tls: bool) {
    let c = Compose::up(tls);
    let (_, s) = c.wait_leader("a leader committing under compose", |s| running(s) && s.last_committed_tid >= 3).await;
    assert_eq!(s.hosts.len(), HOSTS, "{s:#?}");
    if tls {
        let plaintext = status_at_with(&c.addrs[0], None).await;
        assert!(plaintext.is_err(), "a coordinator answered plaintext under tls.yml: {plaintext:?}");
    }
    let host = c.container("host-1");
    docker(&["kill", "--signal", "KILL", &host]).unwrap_or_else(|e| panic!("{e}"));
    let (epoch, committed) = (s.epoch, s.last_committed_tid);
    c.run(&["start", "host-1"]).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let (_, s) = c
        .wait_leader(&format!("Running again in an epoch after {epoch}, past tid {committed}"), |s| {
            running(s) && s.epoch > epoch && s.last_committed_tid > committed
        })
        .await;

    c.run(&["stop"]).unwrap_or_else(|e| panic!("{e}"));
    for service in ["coordinator-1", "coordinator-2", "coordinator-3", "host-0", "host-1", "host-2"] {
        let code = docker(&["inspect", "--format", "{{.State.ExitCode}}", &c.container(service)]).expect("inspect");
        assert_eq!(code, "0", "{service} must exit cleanly on `docker-compose stop`\n{}", c.logs());
    }
    let opts = ClusterOpts { hosts: HOSTS, generator_seed: 42, ..ClusterOpts::default() };
    let sinks = c.dir.path().join("sinks");
    check_sinks_of(
        &opts,
        |i| {
            let to = sinks.join(host_id(i));
            std::fs::create_dir_all(to.join("sink")).expect("sink dir");
            let from = format!("{}:/data/sink/output.jsonl", c.container(&host_id(i)));
            docker(&["cp", &from, &to.join("sink").display().to_string()]).unwrap_or_else(|e| panic!("{e}"));
            read_sink(&to)
        },
        s.last_committed_tid,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_runs_a_group_that_commits_and_recovers() {
    if compose_can_run("compose_file_runs_a_group_that_commits_and_recovers") {
        compose_cluster_commits_and_recovers(false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_file_with_the_tls_override_runs_over_mutual_tls() {
    if compose_can_run("compose_file_with_the_tls_override_runs_over_mutual_tls") {
        compose_cluster_commits_and_recovers(true).await;
    }
}

/// The image runs both daemons (their `--help`): the loader and libraries
/// the build script copied are complete.
#[test]
fn image_runs_both_daemons() {
    if !containers_can_run("image_runs_both_daemons") {
        return;
    }
    let image = image();
    let coordinator = docker(&["run", "--rm", image, "coordinator", "serve", "--help"]).expect("coordinator --help in the image");
    assert!(coordinator.contains("LOCKSTEP_LISTEN"), "{coordinator}");
    let host = docker(&["run", "--rm", image, "host-agent", "--help"]).expect("host-agent --help in the image");
    assert!(host.contains("LOCKSTEP_HOST_ID"), "{host}");
}

/// The Kubernetes manifests in deploy/k8s pass offline schema validation
/// (kubernetes-validate, strict) and agree with each other
/// (deploy/k8s/validate.sh). Skipped when kubernetes-validate is missing.
#[test]
fn k8s_manifests_validate_offline() {
    let out = Command::new("bash").arg(repo_root().join("deploy/k8s/validate.sh")).output().expect("running deploy/k8s/validate.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.code() == Some(3) {
        println!("SKIPPED: k8s_manifests_validate_offline: {}", text.trim());
        return;
    }
    assert!(out.status.success(), "deploy/k8s/validate.sh failed:\n{text}");
}
