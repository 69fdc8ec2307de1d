//! A one-shot timer with sub-millisecond precision, for the driver's commit
//! deadlines.
//!
//! tokio's timer wheel works in whole milliseconds and rounds a deadline up
//! to the next one, so a 1 ms commit interval became anything from 1 to 2
//! ms. A Linux `timerfd` (an hrtimer) registered with tokio's reactor fires
//! within microseconds of the deadline instead. Where a timerfd cannot be
//! created or armed, the timer falls back to tokio's, deadlines then being
//! late by up to a millisecond, never early.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec};
use tokio::io::unix::AsyncFd;

pub struct DeadlineTimer {
    /// `None`: no timerfd here; tokio's timer is used.
    fd: Option<AsyncFd<OwnedFd>>,
    /// The deadline the timerfd is armed for (one re-arm per new deadline,
    /// not per wait: the driver waits again after every message).
    armed: Option<Instant>,
}

impl Default for DeadlineTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeadlineTimer {
    /// Must be called inside a tokio runtime (the timerfd joins its reactor).
    pub fn new() -> Self {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC).ok().and_then(|fd| {
            // SAFETY: the OwnedFd is an open timerfd that the AsyncFd owns
            // from here on; nothing else closes or replaces it.
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
        });
        DeadlineTimer { fd, armed: None }
    }

    /// Whether deadlines are kept to the microsecond (a timerfd is in use).
    pub fn is_precise(&self) -> bool {
        self.fd.is_some()
    }

    /// Completes at `at` (at once if it has passed). Cancel-safe: a future
    /// dropped before `at` leaves the timer armed, and the next wait for
    /// the same `at` goes on from there.
    pub async fn sleep_until(&mut self, at: Instant) {
        if let Err(e) = self.wait_timerfd(at).await {
            // Not expected of a timerfd that was made; if it happens, say so
            // once and keep deadlines (up to 1 ms late) on tokio's timer,
            // rather than fail the same way on every wait.
            tracing::warn!("commit deadline timer (timerfd) failed: {e}; using tokio's millisecond timer from now on");
            self.fd = None;
            self.armed = None;
        }
        if self.fd.is_none() {
            tokio::time::sleep_until(at.into()).await;
        }
    }

    /// `sleep_until` on the timerfd; `Ok` at once when there is none.
    async fn wait_timerfd(&mut self, at: Instant) -> std::io::Result<()> {
        let Some(fd) = &self.fd else { return Ok(()) };
        if self.armed != Some(at) {
            // A zero it_value disarms a timerfd: an overdue deadline is 1 ns away.
            let left = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
            let spec = Itimerspec {
                it_interval: Timespec { tv_sec: 0, tv_nsec: 0 },
                it_value: Timespec { tv_sec: left.as_secs() as _, tv_nsec: left.subsec_nanos() as _ },
            };
            // Re-arming also clears expirations of an earlier deadline.
            timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            self.armed = Some(at);
        }
        loop {
            let mut ready = fd.readable().await?;
            let mut expirations = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut expirations) {
                Ok(_) => {
                    self.armed = None;
                    return Ok(());
                }
                // Readiness left over from a deadline replaced since.
                Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test(flavor = "current_thread")]
    async fn fires_at_the_deadline_never_before_and_survives_a_replaced_one() {
        let mut t = DeadlineTimer::new();
        assert!(t.is_precise(), "timerfd is available on Linux");
        let start = Instant::now();
        let at = start + Duration::from_micros(1500);
        t.sleep_until(at).await;
        assert!(Instant::now() >= at);

        // Armed for a far deadline, then replaced by a near one before the
        // far one is waited out: the near one fires, and the far one's
        // arming leaves nothing behind.
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(t.sleep_until(far).now_or_never().is_none());
        let near = Instant::now() + Duration::from_micros(300);
        t.sleep_until(near).await;
        assert!(Instant::now() >= near);

        // An overdue deadline completes at once.
        t.sleep_until(start).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wait_cancelled_midway_resumes_on_the_same_deadline() {
        let mut t = DeadlineTimer::new();
        let at = Instant::now() + Duration::from_millis(20);
        // Polled once and dropped (it is pending unless the thread stalled
        // for 20 ms; either way the next wait must end at `at` or later).
        let _ = t.sleep_until(at).now_or_never();
        t.sleep_until(at).await;
        assert!(Instant::now() >= at);
    }
}
