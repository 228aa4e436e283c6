//! What a long-running command needs of the process and the clock, kept out of both the
//! pure analysis and the subsystems that use it (the tracing session and the fleet
//! watcher): the signals that end a run, its deadline, the pacing of growth samples, and
//! wall-clock time for report headers.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use crate::error::Error;

/// Now, Unix seconds.
#[must_use]
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// `HH:MM:SS` in local time.
#[must_use]
pub fn local_hms(unix_s: f64) -> String {
    #[expect(clippy::cast_possible_truncation, reason = "seconds since 1970 fit in time_t")]
    let t = unix_s.floor() as libc::time_t;
    // SAFETY: zeroed tm is a valid out-value; localtime_r is the thread-safe variant.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    if unsafe { libc::localtime_r(&raw const t, &raw mut tm) }.is_null() {
        return "??:??:??".to_owned();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// SIGINT, SIGTERM and SIGCHLD handlers. Installed before the probes are attached (and before
/// `leak run` starts its command): a signal that arrives from then on is held for the session
/// loop, so it still ends with a report.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    chld: tokio::signal::unix::Signal,
}

impl Signals {
    /// The next SIGINT or SIGTERM.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        }
    }

    /// The next SIGINT or SIGTERM (its number), or SIGCHLD (`None`: a traced child stopped or
    /// exited; several may be folded into one).
    pub async fn next(&mut self) -> Option<i32> {
        tokio::select! {
            _ = self.chld.recv() => None,
            _ = self.int.recv() => Some(libc::SIGINT),
            _ = self.term.recv() => Some(libc::SIGTERM),
        }
    }

    /// Installs the handlers; must run inside the tokio runtime's context.
    ///
    /// # Errors
    /// The handlers could not be installed.
    pub fn install() -> Result<Self, Error> {
        Ok(Self {
            int: signal(SignalKind::interrupt())
                .map_err(Error::io("installing a SIGINT handler"))?,
            term: signal(SignalKind::terminate())
                .map_err(Error::io("installing a SIGTERM handler"))?,
            chld: signal(SignalKind::child()).map_err(Error::io("installing a SIGCHLD handler"))?,
        })
    }
}

/// Paces the growth samples: one per period, but at most a tenth of the time goes into
/// taking them (a snapshot of millions of allocations takes a while).
pub struct Sampler {
    tick: tokio::time::Interval,
    next_allowed: Instant,
}

impl Sampler {
    /// Ticks every `period` after `start`.
    #[must_use]
    pub fn new(start: Instant, period: Duration) -> Self {
        let mut tick = interval_at(start + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { tick, next_allowed: start }
    }

    /// The next sample is due (cancel-safe).
    pub async fn tick(&mut self) {
        loop {
            self.tick.tick().await;
            if Instant::now() >= self.next_allowed {
                return;
            }
        }
    }

    /// A sample begun at `started` is done: the next waits nine times as long as it took.
    pub fn spent(&mut self, started: Instant) {
        let now = Instant::now();
        self.next_allowed = now + (now - started) * 9;
    }
}

/// Whether a run that started at `start` and lasts `duration` ends within half an `interval`:
/// an interval report then would only repeat the final one.
#[must_use]
pub fn ends_soon(start: Instant, duration: Option<Duration>, interval: Duration) -> bool {
    duration.is_some_and(|d| start + d <= Instant::now() + interval / 2)
}

/// Resolves at `start + duration`, or never.
pub async fn deadline(start: Instant, duration: Option<Duration>) {
    match duration {
        Some(d) => sleep_until(start + d).await,
        None => std::future::pending().await,
    }
}
