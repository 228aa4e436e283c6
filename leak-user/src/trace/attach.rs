//! `leak attach`: one running process traced until `--duration`, a signal, its exit (the
//! OOM killer's, told apart) or `--max-overhead`. The loop ticks; the [`Session`] does the
//! rest (samples, reports, the final report handed to `output`). `leak run`'s loop, over
//! the processes of a command, is the controller's.
use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

use log::warn;
use tokio::{
    io::unix::AsyncFd,
    time::{Instant, MissedTickBehavior, interval, interval_at},
};

use crate::{
    analysis::report::{EndReason, Report},
    error::Error,
    runtime::{self, Sampler, Signals, deadline},
    trace::loader::Tracer,
    trace::oom::OomWatch,
    trace::overhead::Budget,
    trace::session::{SampleData, Session},
    trace::source::AllocSource as _,
};

/// How often the target's memory map is re-read for symbolization.
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// How often the target's liveness is polled where pidfds are unavailable.
const EXIT_POLL: Duration = Duration::from_millis(250);

/// `leak attach`: traces until `--duration`, a signal, or the target's exit; returns the
/// final report (also printed and written to the configured files).
///
/// # Errors
/// Reading the maps or writing outputs failed.
pub async fn trace(
    tracer: &mut Tracer,
    session: &mut Session,
    signals: &mut Signals,
) -> Result<Report, Error> {
    let (pid, cfg) = (session.pid(), session.config().clone());
    let exit = ExitWatch::new(pid);
    let mut oom = OomWatch::process(pid);
    let start = Instant::now();
    let mut report_tick = interval_at(start + cfg.interval, cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut maps_tick = interval(MAPS_REFRESH);
    maps_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = Sampler::new(start, cfg.sample_period());
    let mut budget = cfg.max_overhead.map(|m| Budget::new(m, cfg.probe_cost));
    let until_deadline = deadline(start, cfg.duration);
    tokio::pin!(until_deadline);
    let end = loop {
        tokio::select! {
            _ = report_tick.tick() => {
                // The final report is due about now: it would print the same again.
                if !runtime::ends_soon(start, cfg.duration, cfg.interval) {
                    let snap = tracer.snapshot()?;
                    session.report_interval(&snap, tracer)?;
                }
            }
            () = sampler.tick() => {
                let started = Instant::now();
                let data = SampleData::read(tracer, &cfg)?;
                session.sample(&data);
                oom.refresh();
                sampler.spent(started);
                if let Some(b) = &mut budget
                    && let Some(why) = b.exceeded(start.elapsed().as_secs_f64(), data.hits().0.iter().sum())
                {
                    warn!("stopped tracing pid {pid}: {why}");
                    break EndReason::OverheadBudget;
                }
            }
            _ = maps_tick.tick() => {
                session.refresh_maps();
                // Libraries loaded since: their unwind tables.
                tracer.load_unwind_tables(pid);
                tracer.flush_logs();
            }
            () = &mut until_deadline => break EndReason::Duration,
            () = exit.exited() => {
                break if oom.killed(pid) { EndReason::OomKill } else { EndReason::TargetExited };
            }
            _ = signals.recv() => break EndReason::Signal,
        }
    };
    tracer.flush_logs();
    let snap = tracer.snapshot()?;
    session.finish(&snap, tracer, end)
}

/// Notices a process's exit: its pidfd turns readable, or (where `pidfd_open` is refused,
/// e.g. by an old seccomp profile) polling sees it gone or a zombie.
struct ExitWatch {
    pid: u32,
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl ExitWatch {
    fn new(pid: u32) -> Self {
        let pidfd = pidfd_open(pid);
        if pidfd.is_none() {
            warn!("pidfd_open failed: noticing the exit of {pid} by polling");
        }
        Self { pid, pidfd }
    }

    async fn exited(&self) {
        match &self.pidfd {
            Some(fd) => {
                if let Ok(mut guard) = fd.readable().await {
                    // Level-triggered state: keep readiness so a later poll sees it too.
                    guard.retain_ready();
                }
            }
            None => {
                // A child of ours stays a zombie until reaped: that counts as exited.
                while crate::procfs::is_running(self.pid) {
                    tokio::time::sleep(EXIT_POLL).await;
                }
            }
        }
    }
}

fn pidfd_open(pid: u32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: plain syscall; the result is a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: pidfd_open returned a descriptor we now own.
    let owned = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).ok()?) };
    // SAFETY: `owned` is a valid descriptor that the AsyncFd owns and nothing else closes.
    unsafe { AsyncFd::register(owned) }.ok()
}
