//! The daemons' stop request: SIGTERM (what an orchestrator sends) or
//! SIGINT (Ctrl-C), for both daemons.
//!
//! Listening starts when [`stop_requested`] is called, not when its future
//! is first polled. Until a process listens, either signal's default action
//! kills it: a daemon told to stop while it was still opening its data
//! directory died by the signal (exit status 143) instead of stopping
//! cleanly once open, and a supervisor counts that as a crash. So each
//! daemon calls it first thing, before opening anything.
//!
//! Before that, from the first line of `main`, [`hold`] blocks both
//! signals, so one that arrives while the process parses its flags, reads
//! its TLS files or builds its runtime stays pending and is delivered once
//! [`stop_requested`] listens. That matters most in a container, where the
//! daemon is PID 1: there a signal with no handler is not fatal but
//! dropped, and a pod told to stop in its first milliseconds (longer with
//! a cold page cache) ran on until the orchestrator's SIGKILL: the
//! container test's `docker stop` right after `docker start` waited out
//! its 30 s grace.
//!
//! At the other end, [`exit_now`] keeps a stopped daemon from lingering.

use std::future::Future;

/// Blocks SIGTERM and SIGINT in the calling thread (and every thread it
/// starts afterwards): call it first thing in `main`, before any other
/// thread exists. [`stop_requested`] unblocks them in its thread.
pub fn hold() -> std::io::Result<()> {
    set_mask(libc::SIG_BLOCK)
}

/// Undoes [`hold`] in the calling thread without listening: for a run
/// that stops by the signals' default action (`--replay-alone`). One held
/// since start takes that action now.
pub fn release() -> std::io::Result<()> {
    set_mask(libc::SIG_UNBLOCK)
}

fn set_mask(how: libc::c_int) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigaddset fill a sigset_t we own; pthread_sigmask
    // reads it and takes no other pointer (the old mask is not asked for).
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Starts listening for SIGTERM and SIGINT now, and unblocks them in the
/// calling thread (see [`hold`]: one held since start is delivered now);
/// the future resolves with the name of the first of them to arrive, at
/// once if one already has. Must be called inside a tokio runtime
/// (`Runtime::enter` or `block_on`), which delivers the signals, from a
/// thread that lives as long as the process (the main thread): threads
/// started while the signals were held keep them blocked, so the kernel
/// hands them to this one.
pub fn stop_requested() -> std::io::Result<impl Future<Output = &'static str> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    set_mask(libc::SIG_UNBLOCK)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT (Ctrl-C)",
        }
    })
}

/// How long a stopped daemon waits for its runtime's leftover blocking
/// work before it exits anyway.
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Shuts `runtime` down once the daemon's own stop has finished (everything
/// it must write is written by then), without waiting for blocking work
/// nothing awaits any more. That work is a name lookup: dialing a peer or a
/// coordinator resolves its name on the runtime's blocking pool, and when
/// the name is gone and DNS cannot be reached (the peer's container
/// stopped, a partition) the lookup blocks for the resolver's whole
/// timeout (10 s in the container tests' internal networks, more with
/// Kubernetes' search domains). Dropping the runtime waits for it: both
/// daemons logged "stopped" and then took 10 s to exit.
pub fn exit_now(runtime: tokio::runtime::Runtime) {
    runtime.shutdown_timeout(EXIT_GRACE);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocking pool may hold work nothing awaits (a name lookup that
    /// waits out the resolver's timeout); `exit_now` returns anyway, where
    /// dropping the runtime waits for it (here: forever).
    #[test]
    fn exit_now_does_not_wait_for_blocking_work() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel();
        runtime.spawn_blocking(move || {
            started.send(()).unwrap();
            let _ = blocked.recv();
        });
        running.recv().unwrap();
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            exit_now(runtime);
            done.send(()).unwrap();
        });
        // A liveness bound, not a speed assertion: without the grace the
        // call never returns.
        let returned = exited.recv_timeout(std::time::Duration::from_secs(60));
        drop(release);
        assert!(returned.is_ok(), "exit_now waited for the blocked work");
    }

    /// One signal test at a time. Tokio hands a signal to every listener of
    /// it in the process, so while one test waited for the SIGINT it sent,
    /// the other's SIGTERM reached it too and was the one it reported
    /// (seen once in CI).
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A signal that arrives after the call and before the first poll is
    /// not lost (and does not kill the process): the future reports it.
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_kept() {
        let _alone = ONE_AT_A_TIME.lock().await;
        let stop = stop_requested().expect("listening for signals");
        // SAFETY: kill(2) on our own pid takes no pointers.
        let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
        assert_eq!(stop.await, "SIGTERM");
    }

    /// A signal sent while held stays pending (it neither kills the process
    /// nor is dropped) and is the one `stop_requested` reports. Sent to
    /// this thread only: the other test threads do not hold it.
    #[tokio::test]
    async fn a_held_signal_is_delivered_once_listening() {
        let _alone = ONE_AT_A_TIME.lock().await;
        hold().expect("holding the signals");
        // SAFETY: pthread_kill on this very thread takes no pointers.
        let sent = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGINT) };
        assert_eq!(sent, 0, "pthread_kill: {}", std::io::Error::from_raw_os_error(sent));
        let stop = stop_requested().expect("listening for signals");
        assert_eq!(stop.await, "SIGINT (Ctrl-C)");
    }
}
