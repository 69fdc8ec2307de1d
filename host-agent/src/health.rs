//! The plaintext health-only listener of both daemons (`--health-listen`).
//!
//! Kubernetes' gRPC probes speak no TLS, so with mutual TLS on the main
//! listeners the kubelet cannot ask them. This listener answers
//! `grpc.health.v1.Health` (and reflection of that service alone, so that
//! grpcurl needs no .proto file) from the same reporter as the main
//! listener, and nothing else: a health answer gives a client nothing to
//! act on, so it needs no certificate.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::{info, warn};

/// Serves `reporter`'s statuses on `listener` until `stop` fires (or its
/// sender is dropped). `who` names the daemon in the logs.
pub fn spawn(
    who: String,
    listener: TcpListener,
    reporter: HealthReporter,
    stop: oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let addr: SocketAddr = listener.local_addr().map_err(|e| format!("health listener: {e}"))?;
    let reflection = || {
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let router = crate::drain::server()
        .add_service(HealthServer::new(HealthService::from_health_reporter(reporter)))
        .add_service(reflection().build_v1().map_err(|e| format!("health reflection: {e}"))?)
        .add_service(reflection().build_v1alpha().map_err(|e| format!("health reflection: {e}"))?);
    info!(who = %who, %addr, "plaintext health listener up (grpc.health.v1 and its reflection only)");
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    Ok(tokio::spawn(async move {
        let stopped = async {
            let _ = stop.await;
        };
        // A `Watch` held open here would otherwise hold the daemon's stop
        // for good (its NOT_SERVING update does not end the call).
        let served = crate::drain::serve_with_bounded_drain("the plaintext health listener", stopped, crate::drain::DRAIN_GRACE, |signal| {
            router.serve_with_incoming_shutdown(incoming, signal)
        })
        .await;
        if let Some(Err(e)) = served {
            warn!(who = %who, %addr, "the plaintext health listener failed: {e}; probes on it fail from now on");
        }
    }))
}
