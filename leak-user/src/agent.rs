//! The tracing session: tick, snapshot, aggregate, symbolize, report; end on duration, signal
//! or target exit; write the final outputs.
use std::{
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

use hashbrown::{HashMap, HashSet};
use leak_common::STACK_ID_NONE;
use log::{debug, warn};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval, interval_at, sleep_until},
};

use crate::{
    aggregate::{Aggregate, signed_diff},
    clock,
    config::TraceConfig,
    error::Error,
    loader::Tracer,
    model::{Allocation, Frame, Snapshot},
    output::{self, table::TableOptions},
    report::{self, AllocatorInfo, HookInfo, Report, ReportMeta, TargetInfo, Window},
    source::AllocSource,
    symbolize::{ProcessSymbolizer, Symbolizer as _},
};

/// How often the target's memory map is re-read for symbolization.
const MAPS_REFRESH: Duration = Duration::from_secs(1);
/// How often the target's liveness is polled where pidfds are unavailable.
const EXIT_POLL: Duration = Duration::from_millis(250);

/// Why tracing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM (the number).
    Signal(i32),
    /// The target exited.
    TargetExited,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::Signal(_) => "signal",
            Self::TargetExited => "target_exited",
        }
    }
}

/// State carried across the ticks of one traced process.
pub struct Session {
    pid: u32,
    cfg: TraceConfig,
    target: TargetInfo,
    allocator: AllocatorInfo,
    hooks: Vec<HookInfo>,
    start_unix: f64,
    symbolizer: ProcessSymbolizer,
    /// Raw frames by stack id (stacks never change once recorded).
    raw_stacks: HashMap<u64, Vec<u64>>,
    /// Symbolized frames by stack id.
    frames: HashMap<u64, Vec<Frame>>,
    /// Stacks with frames outside every known mapping: symbolized again next time.
    incomplete: HashSet<u64>,
    prev: Option<Aggregate>,
}

impl Session {
    /// A session for `pid`, starting now.
    #[must_use]
    pub fn new(pid: u32, cfg: TraceConfig, allocator: AllocatorInfo, hooks: Vec<HookInfo>) -> Self {
        let target = TargetInfo {
            pid,
            comm: crate::procfs::comm(pid).unwrap_or_default(),
            exe: crate::procfs::exe(pid).map(|p| p.display().to_string()).unwrap_or_default(),
            start_time_ticks: crate::procfs::start_time(pid).unwrap_or(0),
        };
        Self {
            pid,
            cfg,
            target,
            allocator,
            hooks,
            start_unix: clock::now_unix(),
            symbolizer: ProcessSymbolizer::new(pid),
            raw_stacks: HashMap::new(),
            frames: HashMap::new(),
            incomplete: HashSet::new(),
            prev: None,
        }
    }

    /// The traced process.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Re-reads the process's memory map for symbolization.
    pub fn refresh_maps(&mut self) {
        self.symbolizer.refresh();
    }

    /// Snapshot, aggregate, symbolize and build a report.
    fn collect(
        &mut self,
        source: &mut dyn AllocSource,
        end_reason: &str,
    ) -> Result<(Report, Aggregate), Error> {
        let snap = source.snapshot()?;
        self.collect_from(&snap, source, end_reason)
    }

    /// Aggregates this process's share of `snap`, symbolizes and builds a report.
    fn collect_from(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
        end_reason: &str,
    ) -> Result<(Report, Aggregate), Error> {
        let min_age_ns = u64::try_from(self.cfg.min_age.as_nanos()).unwrap_or(u64::MAX);
        let mine: Vec<Allocation> =
            snap.allocations.iter().filter(|a| a.tgid == self.pid).copied().collect();
        let agg = Aggregate::from_allocations(&mine, snap.taken_ns, min_age_ns);
        self.resolve_stacks(source, &agg)?;
        let meta = ReportMeta {
            target: self.target.clone(),
            window: Window { start_unix_s: self.start_unix, end_unix_s: clock::now_unix() },
            now_ns: snap.taken_ns,
            min_age_s: self.cfg.min_age.as_secs_f64(),
            allocator: self.allocator.clone(),
            end_reason: end_reason.to_owned(),
            hooks: self.hooks.clone(),
        };
        let report = report::build(meta, &agg, &self.frames, &snap.drops, &snap.hits);
        Ok((report, agg))
    }

    /// Fetches and symbolizes stacks not seen before (and those with frames that did not
    /// resolve last time), in one batch.
    fn resolve_stacks(
        &mut self,
        source: &mut dyn AllocSource,
        agg: &Aggregate,
    ) -> Result<(), Error> {
        let mut todo: Vec<u64> = Vec::new();
        for site in &agg.sites {
            let id = site.stack_id;
            if id == STACK_ID_NONE
                || (self.frames.contains_key(&id) && !self.incomplete.contains(&id))
            {
                continue;
            }
            if !self.raw_stacks.contains_key(&id) {
                let Some(ips) = source.stack(id)? else {
                    debug!("stack {id:016x} not in the stack map");
                    continue;
                };
                self.raw_stacks.insert(id, ips);
            }
            todo.push(id);
        }
        if todo.is_empty() {
            return Ok(());
        }
        let all: Vec<u64> =
            todo.iter().flat_map(|id| self.raw_stacks[id].iter().copied()).collect();
        let mut resolved = self.symbolizer.symbolize(&all).into_iter();
        for id in todo {
            let n = self.raw_stacks[&id].len();
            let frames: Vec<Frame> = resolved.by_ref().take(n).flatten().collect();
            if frames.iter().all(|f| f.module.is_some()) {
                self.incomplete.remove(&id);
            } else {
                self.incomplete.insert(id);
            }
            self.frames.insert(id, frames);
        }
        Ok(())
    }

    /// Prints an interval report from `snap`.
    ///
    /// # Errors
    /// Reading stacks failed.
    pub fn report_interval(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
    ) -> Result<(), Error> {
        let (report, agg) = self.collect_from(snap, source, "interval")?;
        let header = self.header(&report);
        self.print(&report, &agg, &header);
        Ok(())
    }

    /// The final report: printed and written to the configured files.
    ///
    /// # Errors
    /// Reading stacks or writing a file failed.
    pub fn finish(
        &mut self,
        snap: &Snapshot,
        source: &mut dyn AllocSource,
        end: End,
    ) -> Result<Report, Error> {
        let (report, agg) = self.collect_from(snap, source, end.as_str())?;
        let why = match end {
            End::Duration => "duration reached",
            End::Signal(_) => "interrupted",
            End::TargetExited => "target exited",
        };
        let header = format!(
            "final report: pid {} ({}) {} ({:.1} s, {why})",
            self.pid,
            self.target.comm,
            Self::window_text(&report),
            report.duration_s
        );
        self.print(&report, &agg, &header);
        self.write_outputs(&report)?;
        Ok(report)
    }

    fn print(&mut self, report: &Report, agg: &Aggregate, header: &str) {
        let deltas: Option<HashMap<String, i64>> = self.prev.as_ref().map(|prev| {
            agg.deltas_since(prev).into_iter().map(|(id, d)| (format!("{id:016x}"), d)).collect()
        });
        let total_delta = self.prev.as_ref().map(|p| signed_diff(agg.total_bytes, p.total_bytes));
        let text = output::table::render(
            report,
            &TableOptions { header, top: self.cfg.top, deltas: deltas.as_ref(), total_delta },
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
        self.prev = Some(agg.clone());
    }

    fn header(&self, report: &Report) -> String {
        format!(
            "pid {} ({}) {} +{:.1}s",
            self.pid,
            self.target.comm,
            clock::local_hms(report.window.end_unix_s),
            report.duration_s
        )
    }

    fn window_text(report: &Report) -> String {
        format!(
            "{}-{}",
            clock::local_hms(report.window.start_unix_s),
            clock::local_hms(report.window.end_unix_s)
        )
    }

    /// Writes the configured output files, each atomically.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn write_outputs(&self, report: &Report) -> Result<(), Error> {
        let outputs = &self.cfg.outputs;
        let folded = output::folded::fold(report);
        if let Some(p) = &outputs.json {
            output::write_atomic(p, &output::json::render(report))
                .map_err(Error::io(format!("writing {}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &outputs.folded {
            let mut text = folded.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            output::write_atomic(p, text.as_bytes())
                .map_err(Error::io(format!("writing {}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &outputs.svg {
            let title = format!(
                "Outstanding bytes by allocation stack: pid {} ({}), {}",
                self.pid,
                self.target.comm,
                Self::window_text(report)
            );
            let subtitle = format!(
                "{} ({} bytes) in {} allocations not freed; each tower's top frame called the allocator",
                output::table::human_bytes(report.totals.outstanding_bytes),
                report.totals.outstanding_bytes,
                report.totals.outstanding_allocs
            );
            let svg = output::flamegraph::render(&folded, &title, &subtitle)
                .map_err(Error::io("rendering the flame graph"))?;
            output::write_atomic(p, &svg).map_err(Error::io(format!("writing {}", p.display())))?;
            eprintln!("wrote {}", p.display());
        }
        Ok(())
    }
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

/// `leak attach`: traces until `--duration`, a signal, or the target's exit; returns the
/// final report (also printed and written to the configured files).
///
/// # Errors
/// Reading the maps or writing outputs failed.
pub async fn trace(
    tracer: &mut Tracer,
    session: &mut Session,
    signals: &mut Signals,
) -> Result<(Report, End), Error> {
    let exit = ExitWatch::new(session.pid);
    let start = Instant::now();
    let mut report_tick = interval_at(start + session.cfg.interval, session.cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut maps_tick = interval(MAPS_REFRESH);
    maps_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let until_deadline = deadline(start, session.cfg.duration);
    tokio::pin!(until_deadline);
    let end = loop {
        tokio::select! {
            _ = report_tick.tick() => {
                let (report, agg) = session.collect(tracer, "interval")?;
                let header = session.header(&report);
                session.print(&report, &agg, &header);
            }
            _ = maps_tick.tick() => {
                session.symbolizer.refresh();
                tracer.flush_logs();
            }
            () = &mut until_deadline => break End::Duration,
            () = exit.exited() => break End::TargetExited,
            sig = signals.recv() => break End::Signal(sig),
        }
    };
    tracer.flush_logs();
    let snap = tracer.snapshot()?;
    let report = session.finish(&snap, tracer, end)?;
    Ok((report, end))
}

/// Resolves at `start + duration`, or never.
pub async fn deadline(start: Instant, duration: Option<Duration>) {
    match duration {
        Some(d) => sleep_until(start + d).await,
        None => std::future::pending().await,
    }
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
