//! The `host-agent` binary on its own, with no coordinator: `--help`, start
//! up, retry connecting, serve health / reflection / Ingest, refuse to
//! acknowledge a push that no durable step carries, and exit cleanly on
//! SIGTERM. (Tests with the real coordinator live in the workspace `tests/`.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_host-agent");
/// Longest a condition in these tests is waited for.
const WAIT_MS_MAX: u64 = 15_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data_dir: &Path, ingest_port: u16, log: &Path) -> Agent {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(["--host-id", "h0", "--coordinator", &format!("http://127.0.0.1:{},http://127.0.0.1:{}", free_port(), free_port())])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--ingest-listen", &format!("127.0.0.1:{ingest_port}")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn host-agent");
    Agent { child }
}

#[test]
fn help_lists_every_flag_with_its_env_var() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--host-id", "LOCKSTEP_HOST_ID"),
        ("--cluster-id", "LOCKSTEP_CLUSTER_ID"),
        ("--coordinator", "LOCKSTEP_COORDINATOR"),
        ("--data-dir", "LOCKSTEP_DATA_DIR"),
        ("--ingest-listen", "LOCKSTEP_INGEST_LISTEN"),
        ("--generator-seed", "LOCKSTEP_GENERATOR_SEED"),
        ("--generator-batch-max", "LOCKSTEP_GENERATOR_BATCH_MAX"),
        ("--step-interval-ms", "LOCKSTEP_STEP_INTERVAL_MS"),
        ("--log-format", "LOCKSTEP_LOG_FORMAT"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} missing from --help:\n{help}");
    }
    assert!(!help.contains("fault-nondeterministic"), "the fault flag is hidden");
    let out = Command::new(BIN).output().unwrap();
    assert!(!out.status.success(), "--host-id is required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_retries_serves_and_stops_cleanly_without_a_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("h0");
    let log = dir.path().join("h0.log");
    let port = free_port();
    let mut agent = spawn(&data, port, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    wait_for("two failed connection rounds", || read_log().matches("cannot reach a coordinator").count() >= 2);
    // Each round's warning names both coordinators, in its text and in a
    // field of its own.
    let round = read_log().lines().find(|l| l.contains("cannot reach a coordinator")).unwrap_or_default().to_string();
    assert!(round.contains("2 of 2 failed this round"), "{round}");
    let field = round.split_whitespace().find(|w| w.starts_with("coordinators=")).unwrap_or_else(|| panic!("no coordinators field: {round}"));
    assert_eq!(field.matches("127.0.0.1:").count(), 2, "{round}");
    assert!(data.join("journal").is_dir() && data.join("sink").join("output.jsonl").is_file());

    let url = format!("http://127.0.0.1:{port}");
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.expect("ingest port is up");

    // Health.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(resp.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Reflection, the v1alpha flavour old grpcurl speaks.
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) };
    let mut stream = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["lockstep.v1.Ingest", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // A push is acknowledged only once a durable step carries it; with no
    // coordinator there is no transaction, so it must not be acknowledged.
    let mut ingest = lockstep_proto::v1::ingest_client::IngestClient::new(channel);
    let mut req = tonic::Request::new(lockstep_proto::v1::PushRequest {
        records: vec![lockstep_proto::v1::Record { key: "k".into(), value: 1 }],
    });
    req.set_timeout(Duration::from_millis(300));
    let err = ingest.push(req).await.expect_err("no transaction, no acknowledgement");
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err:?}");
    let empty = ingest.push(lockstep_proto::v1::PushRequest { records: vec![] }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    // SIGTERM: clean exit.
    let pid = agent.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "host-agent did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}; log:\n{}", read_log());
    assert!(read_log().contains("host agent stopped"));
}

#[test]
fn a_journal_of_another_cluster_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("h0");
    let log = dir.path().join("first.log");
    let mut first = spawn(&data, free_port(), &log);
    wait_for("the first start", || std::fs::read_to_string(&log).unwrap_or_default().contains("cannot reach"));
    let _ = first.child.kill();
    let _ = first.child.wait();

    let out = Command::new(BIN)
        .args(["--host-id", "h0", "--cluster-id", "another-cluster", "--coordinator", "http://127.0.0.1:1"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "must refuse a journal of another cluster");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lockstep-dev") && stderr.contains("another-cluster"), "error names both clusters:\n{stderr}");
}
