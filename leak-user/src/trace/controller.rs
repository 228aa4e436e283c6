//! `leak run`: drives the traced command (and, with `--follow-forks`, its children) through
//! ptrace stops, one session and one report per process.
//!
//! The stops, and what each one does:
//! - `exec` (the command's first one, and later ones): the old image's records are forgotten
//!   and its probes detached (exec replaced all its memory); a one-shot uprobe is put on the
//!   new program's ELF entry point, which stops it again once its libraries are mapped.
//! - that entry stop (`SIGSTOP` from the `entry_stop` BPF program): the allocator is planned
//!   from the process's maps, the probes attached, a session started.
//! - `fork`/`clone` (with `--follow-forks`): the parent is stopped exactly at the fork, so its
//!   records are copied to the child (which holds a copy of its memory); the child, stopped
//!   before its first instruction, gets its own probes. A thread needs nothing (the probes of
//!   its process cover it); a vfork child shares its parent's memory until it execs.
//! - exit: the process's final report; its records are forgotten. A process is known by pid
//!   and start time: a pid reused later is a new process with a new session and new files.
use std::{collections::HashMap, num::NonZeroU32, path::Path, time::Duration};

use log::{debug, info, warn};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at};

use crate::{
    analysis::report::{AllocatorInfo, EndReason},
    config::{LEAK_FOUND_EXIT, Mode, TraceConfig},
    error::Error,
    output, procfs,
    runtime::{Sampler, Signals, deadline},
    trace::gate::GateTally,
    trace::loader::{Links, Tracer},
    trace::overhead::Budget,
    trace::runner,
    trace::session::{self, Session},
    trace::source::AllocSource,
    trace::target,
    trace::tracee,
    trace::tracee::{Event, Stop},
};

/// How often the traced processes' memory maps are re-read for symbolization.
const MAPS_REFRESH: Duration = Duration::from_secs(1);

/// What the controller knows of a tracee.
enum Proc {
    /// Exec'd; waiting for its entry-point stop.
    AwaitEntry(Links),
    /// Probes attached, session running.
    Traced(Links),
    /// Forked; waiting for both the parent's fork stop and its own first stop.
    NewChild { fork_seen: bool, first_stop_seen: bool },
    /// A vfork child (shares its parent's memory until it execs) or a thread.
    Passive,
}

/// `leak run`'s state.
pub struct Controller<'a> {
    tracer: &'a mut Tracer,
    cfg: TraceConfig,
    follow_forks: bool,
    root: u32,
    root_code: Option<i32>,
    /// `--fail-on-leak` over every process's final report.
    gate: GateTally,
    root_attached: bool,
    procs: HashMap<u32, Proc>,
    sessions: HashMap<u32, Session>,
    /// Probes of processes that have exited: they cannot fire again (their memory is gone),
    /// and detaching them one by one would stall every tracee (see `Tracer::detach`).
    retired: Vec<Links>,
    /// Reports written per output name so far (a reused pid gets `-2`, `-3`...).
    names: HashMap<String, usize>,
    /// A growth profile: the root's page-fault events across its exec (they survive it, and
    /// closing them would end the copies its children inherited).
    fault_links: Option<Links>,
    /// Tells an OOM kill from another death.
    oom: crate::trace::oom::OomWatch,
}

impl<'a> Controller<'a> {
    /// A controller for `root`, which has just exec'd (stopped).
    #[must_use]
    pub fn new(tracer: &'a mut Tracer, cfg: TraceConfig, follow_forks: bool, root: u32) -> Self {
        Self {
            tracer,
            cfg,
            follow_forks,
            root,
            root_code: None,
            gate: GateTally::default(),
            root_attached: false,
            procs: HashMap::new(),
            sessions: HashMap::new(),
            retired: Vec::new(),
            names: HashMap::new(),
            fault_links: None,
            oom: crate::trace::oom::OomWatch::process(root),
        }
    }

    /// Whether the command's probes were attached (it has run code of its own).
    #[must_use]
    pub fn root_attached(&self) -> bool {
        self.root_attached
    }

    /// Handles the root's first exec stop; errors here are fatal (the caller kills the root).
    ///
    /// # Errors
    /// The entry probe could not be placed.
    pub fn start(&mut self) -> Result<(), Error> {
        tracee::set_options(self.root, self.follow_forks)
            .map_err(Error::io("setting ptrace options"))?;
        self.on_exec(self.root)
    }

    /// Runs until the command (and followed children) exit, `--duration`, or a second
    /// signal. Returns the exit code for `leak run`.
    ///
    /// # Errors
    /// Reading the maps or writing reports failed.
    pub async fn run(&mut self, signals: &mut Signals) -> Result<u8, Error> {
        let start = Instant::now();
        let mut report_tick = interval_at(start + self.cfg.interval, self.cfg.interval);
        report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut maps_tick = interval(MAPS_REFRESH);
        maps_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sampler = Sampler::new(start, self.cfg.sample_period());
        let mut budget = self.cfg.max_overhead.map(|m| Budget::new(m, self.cfg.probe_cost));
        let until_deadline = deadline(start, self.cfg.duration);
        tokio::pin!(until_deadline);
        let mut signalled = false;
        // The second signal's number, for the exit status (128 + N) as a shell gives it.
        let mut stop_signal = libc::SIGINT;
        // Events may have queued before the SIGCHLD stream was first polled.
        self.drain()?;
        let end = loop {
            if self.done() {
                break EndReason::TargetExited;
            }
            tokio::select! {
                signal = signals.next() => {
                    let Some(sig) = signal else {
                        self.drain()?;
                        continue;
                    };
                    if signalled {
                        stop_signal = sig;
                        break EndReason::Signal;
                    }
                    // SIGINT from a terminal reached the command already (same process
                    // group); SIGTERM sent to leak alone is passed on.
                    if sig == libc::SIGTERM {
                        runner::kill(self.root, libc::SIGTERM);
                    }
                    info!("signal {sig}: waiting for the command to exit (again to stop now)");
                    signalled = true;
                }
                _ = report_tick.tick() => {
                    // The final report is due about now: it would print the same again.
                    if self.cfg.quiet
                        || crate::runtime::ends_soon(start, self.cfg.duration, self.cfg.interval)
                    {
                        continue;
                    }
                    let snap = self.tracer.snapshot()?;
                    for pid in self.session_pids() {
                        if let Some(s) = self.sessions.get_mut(&pid) {
                            s.report_interval(&snap, &mut *self.tracer)?;
                        }
                    }
                }
                () = sampler.tick() => {
                    let started = Instant::now();
                    let data = session::SampleData::read(&mut *self.tracer, &self.cfg)?;
                    for s in self.sessions.values_mut() {
                        s.sample(&data);
                    }
                    self.oom.refresh();
                    sampler.spent(started);
                    if let Some(b) = &mut budget
                        && let Some(why) = b.exceeded(start.elapsed().as_secs_f64(), data.hits().0.iter().sum())
                    {
                        warn!("stopped tracing: {why}; the command goes on untraced");
                        break EndReason::OverheadBudget;
                    }
                }
                _ = maps_tick.tick() => {
                    for s in self.sessions.values_mut() {
                        s.refresh_maps();
                        // Libraries loaded since: their unwind tables.
                        self.tracer.load_unwind_tables(s.pid());
                    }
                    self.tracer.flush_logs();
                }
                () = &mut until_deadline => break EndReason::Duration,
            }
        };
        self.tracer.flush_logs();
        // Final reports of the processes still running. Usually none (the command exited and
        // had its report): then no snapshot, which at a million records takes 0.4 s.
        if !self.sessions.is_empty() {
            let snap = self.tracer.snapshot()?;
            for pid in self.session_pids() {
                if let Some(mut s) = self.sessions.remove(&pid) {
                    let report = s.finish(&snap, &mut *self.tracer, end)?;
                    self.gate.judge(&report, &self.cfg);
                }
            }
        }
        self.detach_all();
        let status = match end {
            EndReason::Signal => code(128 + stop_signal),
            // (The loop ends with neither of the last two.)
            EndReason::TargetExited
            | EndReason::OomKill
            | EndReason::TargetsExited
            | EndReason::Interval => code(self.root_code.unwrap_or(1)),
            EndReason::Duration | EndReason::OverheadBudget => {
                eprintln!("leak: tracing ended; waiting for pid {} to exit", self.root);
                self.serve_until_exit(signals).await?
            }
        };
        if let Some(line) = self.gate.summary(&self.cfg) {
            eprintln!("{line}");
        }
        // The command's own failure comes first; a leak fails a run that otherwise passed.
        Ok(if status == 0 && self.gate.failed() { LEAK_FOUND_EXIT } else { status })
    }

    /// After tracing ended: keep resuming the tracees' stops (they would hang otherwise)
    /// until the command exits.
    async fn serve_until_exit(&mut self, signals: &mut Signals) -> Result<u8, Error> {
        let mut signalled = false;
        loop {
            while let Some(event) = poll()? {
                match event {
                    Event::Stopped(pid, Stop::Signal(sig)) if sig != libc::SIGSTOP => {
                        let _ = tracee::cont(pid, sig);
                    }
                    Event::Stopped(pid, _) => {
                        let _ = tracee::cont(pid, 0);
                    }
                    Event::Exited(pid, c) if pid == self.root => return Ok(code(c)),
                    Event::Exited(..) => {}
                }
            }
            if let Some(sig) = signals.next().await {
                if signalled {
                    return Ok(code(128 + sig));
                }
                if sig == libc::SIGTERM {
                    runner::kill(self.root, libc::SIGTERM);
                }
                signalled = true;
            }
        }
    }

    fn session_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.sessions.keys().copied().collect();
        pids.sort_unstable();
        pids
    }

    /// The command has exited, and so has every followed process.
    fn done(&self) -> bool {
        self.root_code.is_some()
            && !self.procs.values().any(|p| matches!(p, Proc::Traced(_) | Proc::AwaitEntry(_)))
    }

    /// Handles every event the kernel has for us now.
    fn drain(&mut self) -> Result<(), Error> {
        while let Some(event) = poll()? {
            debug!("{event:?}");
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Stopped(pid, Stop::Exec) => self.on_exec(pid)?,
            Event::Stopped(pid, Stop::Fork | Stop::Clone) => {
                if let Ok(child) = tracee::new_child(pid) {
                    self.on_fork(pid, child)?;
                }
                let _ = tracee::cont(pid, 0);
            }
            Event::Stopped(pid, Stop::Vfork) => {
                if let Ok(child) = tracee::new_child(pid) {
                    self.on_passive_child(child);
                }
                let _ = tracee::cont(pid, 0);
            }
            Event::Stopped(pid, Stop::Signal(libc::SIGSTOP)) => self.on_sigstop(pid)?,
            Event::Stopped(pid, Stop::Signal(sig)) => {
                let _ = tracee::cont(pid, sig);
            }
            Event::Exited(pid, c) => self.on_exit(pid, c)?,
        }
        Ok(())
    }

    /// Stopped right after an exec: forget the old image, stop again at the new entry point.
    fn on_exec(&mut self, pid: u32) -> Result<(), Error> {
        // Now, not later: probes of the old image on a file the new one maps too (libc)
        // would fire next to the new image's own, counting every call twice.
        match self.procs.remove(&pid) {
            Some(Proc::Traced(links)) if self.cfg.mode == Mode::Growth && pid == self.root => {
                self.fault_links = Some(links);
            }
            Some(Proc::Traced(links) | Proc::AwaitEntry(links)) => self.tracer.detach(links),
            _ => {}
        }
        // The old image's memory is gone: no report for it.
        self.sessions.remove(&pid);
        let purged = self.tracer.purge(pid)?;
        debug!("pid {pid} exec'd: {purged} records of the old image forgotten");
        let exe = format!("/proc/{pid}/exe");
        let offset = runner::entry_offset(Path::new(&exe))?;
        let links = self.tracer.attach_entry_stop(Path::new(&exe), offset, nonzero(pid)?)?;
        self.procs.insert(pid, Proc::AwaitEntry(links));
        let _ = tracee::cont(pid, 0);
        Ok(())
    }

    /// A SIGSTOP: a process at its entry point, a new tracee's first stop, or a real one.
    fn on_sigstop(&mut self, pid: u32) -> Result<(), Error> {
        match self.procs.get_mut(&pid) {
            Some(Proc::AwaitEntry(_)) => {
                let Some(Proc::AwaitEntry(entry)) = self.procs.remove(&pid) else { return Ok(()) };
                self.tracer.detach(entry);
                self.start_session(pid)?;
            }
            Some(Proc::NewChild { fork_seen, first_stop_seen }) => {
                *first_stop_seen = true;
                if *fork_seen {
                    self.procs.remove(&pid);
                    self.start_session(pid)?;
                }
            }
            Some(Proc::Passive) => {
                let _ = tracee::cont(pid, 0);
            }
            Some(Proc::Traced(_)) => {
                // A real SIGSTOP: deliver it.
                let _ = tracee::cont(pid, libc::SIGSTOP);
            }
            None => {
                // A new tracee stopped before its parent's fork stop reached us.
                self.procs.insert(pid, Proc::NewChild { fork_seen: false, first_stop_seen: true });
            }
        }
        Ok(())
    }

    /// The parent is stopped at the fork: copy its records to the child, which holds a copy
    /// of its memory. A thread (a clone sharing the thread group) needs nothing.
    fn on_fork(&mut self, parent: u32, child: u32) -> Result<(), Error> {
        if procfs::tgid(child).is_some_and(|t| t != child) {
            self.on_passive_child(child);
            return Ok(());
        }
        if matches!(self.procs.get(&parent), Some(Proc::Traced(_))) {
            let copied = self.tracer.copy_process(parent, child)?;
            debug!("pid {child} forked from {parent}: {copied} records copied");
        }
        let first_stop_seen =
            matches!(self.procs.get(&child), Some(Proc::NewChild { first_stop_seen: true, .. }));
        if first_stop_seen {
            self.procs.remove(&child);
            self.start_session(child)?;
        } else {
            self.procs.insert(child, Proc::NewChild { fork_seen: true, first_stop_seen: false });
        }
        Ok(())
    }

    /// A vfork child or a thread: resume it at its first stop.
    fn on_passive_child(&mut self, child: u32) {
        if matches!(self.procs.get(&child), Some(Proc::NewChild { first_stop_seen: true, .. })) {
            let _ = tracee::cont(child, 0);
        }
        self.procs.insert(child, Proc::Passive);
    }

    /// Plans and attaches the probes of stopped process `pid`, starts its session, resumes it.
    fn start_session(&mut self, pid: u32) -> Result<(), Error> {
        if self.cfg.mode == Mode::Growth {
            return self.start_profile(pid);
        }
        let plan = match target::plan_for_pid(pid, self.cfg.lib.as_deref()) {
            Ok(plan) => plan,
            Err(e) if pid != self.root => {
                // A child we cannot trace (e.g. it exec'd a stripped static binary): say so,
                // let it run; the gate cannot judge it.
                warn!("pid {pid}: not traced: {e}");
                self.gate.untraced(pid, &e.to_string(), &self.cfg);
                self.procs.insert(pid, Proc::Passive);
                let _ = tracee::cont(pid, 0);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.tracer.load_unwind_tables(pid);
        let links = self.tracer.attach_allocator(&plan, nonzero(pid)?)?;
        eprintln!("attached to PID {pid} ({} probes)", links.len());
        let cfg = self.cfg_for(pid);
        let session = Session::new(pid, cfg, plan.allocator_info(), plan.hook_infos());
        self.sessions.insert(pid, session);
        self.procs.insert(pid, Proc::Traced(links));
        if pid == self.root {
            self.root_attached = true;
        }
        let _ = tracee::cont(pid, 0);
        Ok(())
    }

    /// [`Self::start_session`] of a growth profile: the root's page-fault events, which the
    /// processes it starts inherit (so a child needs none of its own: its faults count under
    /// its own pid, and the filter lets them through only with `--follow-forks`).
    fn start_profile(&mut self, pid: u32) -> Result<(), Error> {
        let links = if pid == self.root {
            // The new image's tables at an exec (the events go on), or the first.
            self.tracer.load_unwind_tables(pid);
            let links = match self.fault_links.take() {
                Some(links) => links,
                None => self.tracer.attach_faults(nonzero(pid)?)?,
            };
            eprintln!("attached to PID {pid} (a growth profile: page faults)");
            self.root_attached = true;
            links
        } else {
            self.tracer.load_unwind_tables(pid);
            Links::default()
        };
        let allocator = target::plan_for_pid(pid, self.cfg.lib.as_deref())
            .map(|p| AllocatorInfo { probes: Vec::new(), ..p.allocator_info() })
            .unwrap_or_default();
        let cfg = self.cfg_for(pid);
        let session = Session::new(pid, cfg, allocator, session::growth_hooks());
        self.sessions.insert(pid, session);
        self.procs.insert(pid, Proc::Traced(links));
        let _ = tracee::cont(pid, 0);
        Ok(())
    }

    /// The root writes to the configured files; other processes to `<name>-<pid>.<ext>`
    /// (`-<pid>-2` and so on for a pid reused during the run).
    fn cfg_for(&mut self, pid: u32) -> TraceConfig {
        let mut cfg = self.cfg.clone();
        if pid == self.root {
            return cfg;
        }
        let nth = {
            let n = self.names.entry(pid.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        for p in cfg.outputs.paths_mut() {
            *p = output::for_process(p, pid, nth);
        }
        cfg
    }

    fn on_exit(&mut self, pid: u32, exit_code: i32) -> Result<(), Error> {
        if pid == self.root {
            self.root_code = Some(exit_code);
        }
        if let Some(Proc::Traced(links) | Proc::AwaitEntry(links)) = self.procs.remove(&pid) {
            self.retired.push(links);
            if let Some(mut s) = self.sessions.remove(&pid) {
                // Every OOM victim dies of SIGKILL; only then is the OOM killer asked.
                let end = if exit_code == 128 + libc::SIGKILL && self.oom.killed(pid) {
                    EndReason::OomKill
                } else {
                    EndReason::TargetExited
                };
                let snap = self.tracer.snapshot()?;
                let report = s.finish(&snap, &mut *self.tracer, end)?;
                self.gate.judge(&report, &self.cfg);
            }
            // Its records would only take room from the processes still traced; with none
            // left, the maps go with the tracer (deleting a million records one by one took
            // 1.6 s here).
            if !self.procs.is_empty() {
                self.tracer.purge(pid)?;
            }
        }
        Ok(())
    }

    /// Detaching the remaining probes is left to `Tracer::release_in_background`, at exit.
    fn detach_all(&mut self) {
        self.procs.clear();
    }
}

/// Next tracee event; no tracees left is no event.
fn poll() -> Result<Option<Event>, Error> {
    match tracee::poll() {
        Ok(e) => Ok(e),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => Ok(None),
        Err(e) => Err(Error::io("waiting for the traced processes")(e)),
    }
}

fn nonzero(pid: u32) -> Result<NonZeroU32, Error> {
    NonZeroU32::new(pid).ok_or_else(|| Error::BadInput("pid 0 is not a process".into()))
}

fn code(c: i32) -> u8 {
    u8::try_from(c).unwrap_or(1)
}
