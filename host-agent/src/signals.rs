//! The daemons' stop request: SIGTERM (what an orchestrator sends) or
//! SIGINT (Ctrl-C), for both daemons.
//!
//! Listening starts when [`stop_requested`] is called, not when its future
//! is first polled. Until a process listens, either signal's default action
//! kills it: a daemon told to stop while it was still opening its data
//! directory died by the signal (exit status 143) instead of stopping
//! cleanly once open, and a supervisor counts that as a crash. So each
//! daemon calls it first thing, before opening anything.

use std::future::Future;

/// Starts listening for SIGTERM and SIGINT now; the future resolves with
/// the name of the first of them to arrive, at once if one already has.
/// Must be called inside a tokio runtime (`Runtime::enter` or
/// `block_on`), which delivers the signals.
pub fn stop_requested() -> std::io::Result<impl Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT (Ctrl-C)",
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signal that arrives after the call and before the first poll is
    /// not lost (and does not kill the process): the future reports it.
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_kept() {
        let stop = stop_requested().expect("listening for signals");
        // SAFETY: kill(2) on our own pid takes no pointers.
        let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        assert_eq!(stop.await, "SIGTERM");
    }
}
