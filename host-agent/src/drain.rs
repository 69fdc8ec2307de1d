//! A daemon's gRPC server stop, with a bound on how long it drains.
//!
//! tonic's graceful shutdown waits for every open call to end. A call a
//! client keeps open (a `grpc.health.v1.Health/Watch`, a reflection stream,
//! a client that never reads) would hold a stopping daemon until its
//! orchestrator's SIGKILL at the end of the grace period. So once the stop
//! began, the calls still open get `grace` to end; then the server future
//! is dropped, which closes them, and the daemon goes on stopping. Both
//! daemons (the coordinator and the host agent) serve through this.
//!
//! While they run, [`server`] keeps dead clients from piling up the same
//! way: a client that vanished without closing its connection is dropped
//! after a few seconds of unanswered pings.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tracing::warn;

/// How long a stopping daemon's server waits for open calls to end.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How often a daemon's server pings each client connection, and how long
/// it waits for the answer before it drops the connection.
pub const CLIENT_PING: Duration = Duration::from_secs(1);
pub const CLIENT_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// The server builder both daemons' gRPC listeners start from: HTTP/2 pings
/// on every accepted connection. A client that vanished without a FIN (its
/// node lost power, a partition moved its address, a pod was deleted
/// mid-call) otherwise stays open on the server until TCP gives up, hours
/// later, and a call it left half-sent (a raft AppendEntries cut off
/// mid-body) holds the next stop for the whole drain grace. The clients
/// already ping the servers the same way.
pub fn server() -> tonic::transport::Server {
    server_with_ping_timeout(CLIENT_PING_TIMEOUT)
}

/// [`server`] with another wait for a ping's answer (at least
/// `CLIENT_PING_TIMEOUT`): the coordinator waits as long as its report
/// deadline, so that a host frozen for less than the deadline keeps its
/// session, as `--report-deadline-ms` promises.
pub fn server_with_ping_timeout(timeout: Duration) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(CLIENT_PING))
        .http2_keepalive_timeout(Some(timeout.max(CLIENT_PING_TIMEOUT)))
}

/// The shutdown signal `serve` hands to tonic.
pub type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs the server that `serve` builds around the signal it is given, which
/// resolves with `shutdown`. Returns the server's result, or `None` if
/// calls were still open `grace` after the stop began and the server was
/// dropped (logged, naming `what`).
pub async fn serve_with_bounded_drain<S: Future>(
    what: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    serve: impl FnOnce(ShutdownSignal) -> S,
) -> Option<S::Output> {
    let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
    let signal: ShutdownSignal = Box::pin(async move {
        shutdown.await;
        let _ = began_tx.send(());
    });
    let server = serve(signal);
    tokio::pin!(server);
    let overdue = async {
        if began_rx.await.is_err() {
            // The signal was dropped unfired: only the server's own end counts.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        r = &mut server => Some(r),
        _ = overdue => {
            warn!(
                grace_ms = grace.as_millis() as u64,
                "{what}: calls still open {grace:?} after the stop began (a client watching health or holding a stream); closing them"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose calls never end is dropped `grace` after the stop;
    /// one that ends on the signal returns its result.
    #[tokio::test(start_paused = true)]
    async fn an_open_call_holds_the_stop_for_the_grace_only() {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let stuck = serve_with_bounded_drain("test", async { let _ = stop_rx.await; }, Duration::from_secs(5), |signal| async move {
            signal.await;
            std::future::pending::<u8>().await
        });
        let started = tokio::time::Instant::now();
        let _ = stop_tx.send(());
        assert_eq!(stuck.await, None);
        assert!(started.elapsed() >= Duration::from_secs(5), "dropped only after the grace (virtual time)");

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let clean = serve_with_bounded_drain("test", async { let _ = stop_rx.await; }, Duration::from_secs(5), |signal| async move {
            signal.await;
            7u8
        });
        let _ = stop_tx.send(());
        assert_eq!(clean.await, Some(7));
    }
}
