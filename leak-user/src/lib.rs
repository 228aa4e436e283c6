//! leak: find the call stacks that hold memory a native process never frees.
//!
//! Design constraints:
//! - Pure logic (`aggregate`, `report`, `output::folded`, `output::table`, `placement`, the
//!   parsers in `procfs`) imports nothing from aya, tokio, blazesym or the clock, so it is
//!   unit-tested without root.
//! - Only `loader` and `source` touch aya; only `symbolize` touches blazesym; only
//!   `output::flamegraph` touches inferno; only `agent` runs the async loop.
//! - Bad input ends with one line saying what to do and exit code 2 ([`error::Error`]).
pub mod agent;
pub mod aggregate;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controller;
pub mod elf;
pub mod error;
pub mod growth;
pub mod history;
pub mod hooks;
pub mod http;
pub mod kube;
pub mod kubeapi;
pub mod loader;
pub mod model;
pub mod output;
pub mod placement;
pub mod pods;
pub mod preflight;
pub mod procfs;
pub mod report;
pub mod runner;
pub mod sampling;
pub mod serve;
pub mod source;
pub mod symbolize;
pub mod target;
pub mod tracee;
pub mod trend;
pub mod unwind;
pub mod watch;

use std::{ffi::OsString, num::NonZeroU32};

use log::{info, warn};

use crate::{
    agent::Session,
    config::{Command, TraceConfig},
    controller::Controller,
    error::Error,
    loader::{LoadOptions, Tracer},
    report::{AllocatorInfo, HookInfo, ProbeInfo},
    runner::FirstStop,
    target::AllocatorPlan,
};

/// Runs one `leak` command; returns the process exit code.
///
/// # Errors
/// See [`Error`]; [`Error::exit_code`] gives the code to exit with.
pub fn run(command: Command) -> Result<u8, Error> {
    raise_fd_limit();
    if let Command::Watch(cfg) = &command
        && cfg.targets == watch::Targets::Pods
    {
        // Before any thread starts: each thread has its own namespaces and inherits them.
        match procfs::enter_host_cgroup_namespace() {
            Ok(true) => info!("reading cgroups in the host's cgroup namespace"),
            Ok(false) => {}
            Err(e) => warn!(
                "cannot enter the host's cgroup namespace ({e}): pods' cgroup paths are read \
                 relative to ours; run with hostPID and CAP_SYS_ADMIN"
            ),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the runtime"))?;
    match command {
        Command::Attach { pid, trace } => attach(&rt, pid, trace),
        Command::Run { argv, trace, follow_forks } => run_command(&rt, &argv, trace, follow_forks),
        Command::Watch(cfg) => watch::run(&rt, &cfg),
        Command::Check => check::run(log::log_enabled!(log::Level::Info)),
    }
}

/// The symbolizer keeps every mapped file of the target open (see `symbolize`): a process
/// can map hundreds. Raise the soft limit on descriptors to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } == 0
        && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid in-pointer; failure leaves the old limit, which is fine.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) };
    }
}

fn nonzero(pid: u32) -> Result<NonZeroU32, Error> {
    NonZeroU32::new(pid).ok_or_else(|| Error::BadInput("pid 0 is not a process".into()))
}

fn preflight(trace: &TraceConfig) -> Result<(), Error> {
    preflight::check_privileges()?;
    preflight::check_kernel(&preflight::sysfs_root())?;
    preflight::check_outputs(&trace.outputs)
}

/// What a probe hit costs here, for the reports; a failure only loses that line.
/// `LEAK_MEASURE_PROBES=0` leaves it out (about 10 ms at start).
fn calibrate(tracer: &mut Tracer) -> Option<model::ProbeCost> {
    if std::env::var_os("LEAK_MEASURE_PROBES").is_some_and(|v| v == "0") {
        return None;
    }
    tracer.calibrate().map_err(|e| warn!("cannot measure the probes' cost: {e}")).ok()
}

fn load_options(pid: u32, trace: &TraceConfig) -> LoadOptions {
    LoadOptions {
        filter_tgid: pid,
        max_allocs: trace.max_allocs,
        trace: trace.bpf_trace,
        probe_floor: trace.probe_floor,
        sample_mean: trace.sample_mean.unwrap_or(0),
        unwind: trace.unwind.bpf(),
        unwind_rows: trace.unwind_rows,
        ..LoadOptions::default()
    }
}

pub(crate) fn allocator_info(plan: &AllocatorPlan) -> AllocatorInfo {
    AllocatorInfo {
        path: plan.malloc_object().path.clone(),
        probes: plan
            .hooks
            .iter()
            .flat_map(|h| {
                h.spec.kind.programs().iter().map(move |p| ProbeInfo {
                    function: h.spec.display.clone(),
                    object: plan.objects[h.object].path.clone(),
                    symbol: h.spec.symbol.clone(),
                    program: p.name().to_owned(),
                    function_offset: h.placement.offset,
                    emulated: h.placement.emulated,
                })
            })
            .collect(),
    }
}

pub(crate) fn hook_infos(plan: &AllocatorPlan) -> Vec<HookInfo> {
    plan.hooks
        .iter()
        .map(|h| HookInfo {
            symbol: h.spec.symbol.clone(),
            display: h.spec.display.clone(),
            has_exit: h.spec.kind.has_exit(),
        })
        .collect()
}

fn install_signals(rt: &tokio::runtime::Runtime) -> Result<agent::Signals, Error> {
    let _guard = rt.enter();
    agent::Signals::install()
}

fn attach(rt: &tokio::runtime::Runtime, pid: u32, trace: TraceConfig) -> Result<u8, Error> {
    if !procfs::pid_exists(pid) {
        return Err(Error::BadInput(format!("no such process: {pid}: check the pid (ps -e)")));
    }
    // A thread id means its process: the probes filter on the thread group id.
    let pid = match procfs::tgid(pid) {
        Some(tgid) if tgid != pid => {
            info!("{pid} is a thread of process {tgid}: tracing the process");
            tgid
        }
        _ => pid,
    };
    preflight(&trace)?;
    let plan = target::plan_for_pid(pid, trace.lib.as_deref())?;
    let mut signals = install_signals(rt)?;
    let mut tracer = Tracer::load(load_options(pid, &trace))?;
    let trace = TraceConfig { probe_cost: calibrate(&mut tracer), ..trace };
    let links = tracer.attach_allocator(&plan, nonzero(pid)?)?;
    for h in plan.unarmed(pid) {
        warn!("probe on {} is not armed in pid {pid}", h.spec.symbol);
    }
    let trace_cfg = trace.clone();
    // Before saying "attached": the session reads the target's maps and opens its files
    // for symbolization, which a target that exits right after its allocations would take
    // along.
    let mut session = Session::new(pid, trace, allocator_info(&plan), hook_infos(&plan));
    eprintln!("attached to PID {pid} ({} probes)", links.len());
    let (report, _) = rt.block_on(agent::trace(&mut tracer, &mut session, &mut signals))?;
    // A breakpoint the kernel took out while our probes were attached (not seen, but a
    // trace once saw malloc's entries without a single return): say which.
    if procfs::is_running(pid) {
        for h in plan.unarmed(pid) {
            warn!("probe on {} was not armed in pid {pid} at the end of the trace", h.spec.symbol);
        }
    }
    tracer.release_in_background();
    Ok(if agent::fails(&report, &trace_cfg) { config::LEAK_FOUND_EXIT } else { 0 })
}

fn run_command(
    rt: &tokio::runtime::Runtime,
    argv: &[OsString],
    trace: TraceConfig,
    follow_forks: bool,
) -> Result<u8, Error> {
    let program = runner::resolve_program(
        argv.first().ok_or_else(|| Error::BadInput("no command given".into()))?,
    )?;
    preflight(&trace)?;
    // Before the command starts: its stops arrive as SIGCHLD.
    let mut signals = install_signals(rt)?;
    let child = runner::spawn_traced(&program, argv)?;
    let pid = child.pid;
    match child.wait_exec()? {
        FirstStop::Exec => {}
        FirstStop::ExecFailed(errno) => {
            return Err(Error::BadInput(format!(
                "cannot run {}: {}",
                program.display(),
                std::io::Error::from_raw_os_error(errno)
            )));
        }
        FirstStop::Exited(code) => {
            eprintln!(
                "leak: {} exited with code {code} before it could be traced",
                program.display()
            );
            return Ok(u8::try_from(code).unwrap_or(1));
        }
    }
    let kill_child = |e: Error| {
        runner::kill(pid, libc::SIGKILL);
        let _ = runner::waitpid(pid, 0);
        e
    };
    // Following children: the probes are scoped to each process; no single tgid to filter.
    let filter = if follow_forks { 0 } else { pid };
    let mut tracer =
        Tracer::load(load_options(filter, &trace)).map_err(|e| kill_child(e.into()))?;
    let trace = TraceConfig { probe_cost: calibrate(&mut tracer), ..trace };
    let mut ctl = Controller::new(&mut tracer, trace, follow_forks, pid);
    ctl.start().map_err(kill_child)?;
    let result = match rt.block_on(ctl.run(&mut signals)) {
        Ok(code) => Ok(code),
        // Before its probes were attached the command has not run a single instruction of
        // its own: do not leave it running untraced.
        Err(e) if !ctl.root_attached() => Err(kill_child(e)),
        Err(e) => Err(e),
    };
    tracer.release_in_background();
    result
}
