//! The tracing session: tick, snapshot, aggregate, symbolize, report; end on duration, signal
//! or target exit; write the final outputs.
use std::{
    io::Write as _,
    os::fd::{FromRawFd as _, OwnedFd},
    time::Duration,
};

use hashbrown::HashMap;
use leak_common::STACK_ID_NONE;
use log::{debug, info, warn};
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
    model::Frame,
    output::{self, table::TableOptions},
    report::{self, AllocatorInfo, Report, ReportMeta, TargetInfo, Window},
    runner,
    source::AllocSource,
    symbolize::{ProcessSymbolizer, Symbolizer as _},
};

/// How often the target's memory map is re-read for symbolization.
const MAPS_REFRESH: Duration = Duration::from_secs(1);

/// Why tracing ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal,
    /// The target exited.
    TargetExited,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Duration => "duration",
            Self::Signal => "signal",
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
    start_unix: f64,
    symbolizer: ProcessSymbolizer,
    frames: HashMap<u64, Vec<Frame>>,
    prev: Option<Aggregate>,
}

impl Session {
    /// A session for `pid`, starting now.
    #[must_use]
    pub fn new(pid: u32, cfg: TraceConfig, allocator: AllocatorInfo) -> Self {
        let target = TargetInfo {
            pid,
            comm: crate::procfs::comm(pid).unwrap_or_default(),
            exe: crate::procfs::exe(pid).map(|p| p.display().to_string()).unwrap_or_default(),
        };
        Self {
            pid,
            cfg,
            target,
            allocator,
            start_unix: clock::now_unix(),
            symbolizer: ProcessSymbolizer::new(pid),
            frames: HashMap::new(),
            prev: None,
        }
    }

    /// Snapshot, aggregate, symbolize and build a report.
    fn collect(
        &mut self,
        source: &mut dyn AllocSource,
        end_reason: &str,
    ) -> Result<(Report, Aggregate), Error> {
        let snap = source.snapshot()?;
        let min_age_ns = u64::try_from(self.cfg.min_age.as_nanos()).unwrap_or(u64::MAX);
        let agg = Aggregate::from_allocations(&snap.allocations, snap.taken_ns, min_age_ns);
        self.resolve_stacks(source, &agg)?;
        let meta = ReportMeta {
            target: self.target.clone(),
            window: Window { start_unix_s: self.start_unix, end_unix_s: clock::now_unix() },
            now_ns: snap.taken_ns,
            min_age_s: self.cfg.min_age.as_secs_f64(),
            allocator: self.allocator.clone(),
            end_reason: end_reason.to_owned(),
        };
        let report = report::build(meta, &agg, &self.frames, &snap.drops, &snap.hits);
        Ok((report, agg))
    }

    /// Fetches and symbolizes stacks not seen before, in one batch.
    fn resolve_stacks(
        &mut self,
        source: &mut dyn AllocSource,
        agg: &Aggregate,
    ) -> Result<(), Error> {
        let mut new: Vec<(u64, Vec<u64>)> = Vec::new();
        for site in &agg.sites {
            if site.stack_id == STACK_ID_NONE || self.frames.contains_key(&site.stack_id) {
                continue;
            }
            match source.stack(site.stack_id)? {
                Some(ips) => new.push((site.stack_id, ips)),
                None => debug!("stack {:016x} not in the stack map", site.stack_id),
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let all: Vec<u64> = new.iter().flat_map(|(_, ips)| ips.iter().copied()).collect();
        let mut resolved = self.symbolizer.symbolize(&all).into_iter();
        for (id, ips) in new {
            let frames: Vec<Frame> = resolved.by_ref().take(ips.len()).flatten().collect();
            self.frames.insert(id, frames);
        }
        Ok(())
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

/// SIGINT and SIGTERM handlers. Installed before the probes are attached: a signal that
/// arrives from then on is held for the session loop, so it still ends with a report.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
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
        })
    }
}

/// Traces until `--duration`, a signal, or the target's exit; returns the final report (also
/// printed and written to the configured files).
///
/// `run_child` is the pid of a child started by `leak run`: a first SIGINT or SIGTERM then
/// goes to the child (SIGTERM is forwarded; SIGINT from a terminal reaches it directly) and
/// tracing continues until it exits; a second one stops tracing at once.
///
/// # Errors
/// Reading the maps or writing outputs failed.
pub async fn trace(
    tracer: &mut Tracer,
    session: &mut Session,
    signals: Signals,
    run_child: Option<u32>,
) -> Result<(Report, End), Error> {
    let pidfd = pidfd_open(session.pid);
    if pidfd.is_none() {
        warn!("pidfd_open failed: detecting the target's exit by polling");
    }
    let Signals { int: mut sigint, term: mut sigterm } = signals;
    let start = Instant::now();
    let mut report_tick = interval_at(start + session.cfg.interval, session.cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut maps_tick = interval(MAPS_REFRESH);
    maps_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = session.cfg.duration.map(|d| start + d);
    let until_deadline = async move {
        match deadline {
            Some(d) => sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until_deadline);
    let mut signalled = false;
    let pid = session.pid;
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
                if pidfd.is_none() && !crate::procfs::pid_exists(pid) {
                    break End::TargetExited;
                }
            }
            () = &mut until_deadline => break End::Duration,
            () = exited(pidfd.as_ref()) => break End::TargetExited,
            _ = sigint.recv() => {
                if run_child.is_some() && !signalled {
                    info!("SIGINT: waiting for the command to exit (again to stop now)");
                    signalled = true;
                } else {
                    break End::Signal;
                }
            }
            _ = sigterm.recv() => {
                if let Some(child) = run_child.filter(|_| !signalled) {
                    info!("SIGTERM: forwarded to {child}; waiting for it to exit (again to stop now)");
                    runner::kill(child, libc::SIGTERM);
                    signalled = true;
                } else {
                    break End::Signal;
                }
            }
        }
    };
    tracer.flush_logs();
    let (report, agg) = session.collect(tracer, end.as_str())?;
    let why = match end {
        End::Duration => "duration reached",
        End::Signal => "interrupted",
        End::TargetExited => "target exited",
    };
    let header = format!(
        "final report: pid {} ({}) {} ({:.1} s, {why})",
        session.pid,
        session.target.comm,
        Session::window_text(&report),
        report.duration_s
    );
    session.print(&report, &agg, &header);
    session.write_outputs(&report)?;
    Ok((report, end))
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

/// Resolves when the process behind `pidfd` has exited (a pidfd polls readable then).
async fn exited(pidfd: Option<&AsyncFd<OwnedFd>>) {
    match pidfd {
        Some(fd) => {
            if let Ok(mut guard) = fd.readable().await {
                // Level-triggered state: keep readiness so a later poll sees it too.
                guard.retain_ready();
            }
        }
        None => std::future::pending().await,
    }
}
