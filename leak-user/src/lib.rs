//! leak: find the call stacks that hold memory a native process never frees.
//!
//! The data's way, and where each stage lives (ARCHITECTURE.md tells it at length):
//! probes in the kernel (`leak-ebpf`) -> [`trace`] (load, attach, snapshot the maps,
//! symbolize) -> [`analysis`] (aggregate, history, trend, verdict, report model) ->
//! [`output`] (text, JSON, folded, flame graphs, pprof, Prometheus). For fleets, [`fleet`]
//! watches processes' memory, escalates the growing ones to a trace, and serves the results.
//!
//! Dependencies point one way: `fleet -> trace -> output -> analysis`, and the files at this
//! level (`cli`, `config`, `error`, `procfs`, `runtime`) are shared by the folders below
//! them; `analysis` imports nothing but itself (the `layers` test checks it all).
//! Bad input ends with one line saying what to do and exit code 2 ([`error::Error`]).
pub mod analysis;
pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod output;
pub mod procfs;
pub mod runtime;
pub mod trace;

use std::{ffi::OsString, num::NonZeroU32};

use log::{info, warn};

use crate::{
    config::{Command, TraceConfig},
    error::Error,
    trace::controller::Controller,
    trace::loader::{LoadOptions, Tracer},
    trace::runner::FirstStop,
    trace::session::{self, Session},
};

/// Runs one `leak` command; returns the process exit code.
///
/// # Errors
/// See [`Error`]; [`Error::exit_code`] gives the code to exit with.
pub fn run(command: Command) -> Result<u8, Error> {
    raise_fd_limit();
    if let Command::Watch(cfg) = &command
        && cfg.targets == config::Targets::Pods
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
        Command::Watch(cfg) => fleet::watch::run(&rt, &cfg),
        Command::Check => trace::check::run(log::log_enabled!(log::Level::Info)),
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
    check_mode(trace)?;
    trace::preflight::check_privileges()?;
    trace::preflight::check_kernel(&trace::preflight::sysfs_root())?;
    trace::preflight::check_outputs(&trace.outputs)
}

/// Options that mean nothing to a growth profile, refused with what to do instead.
fn check_mode(trace: &TraceConfig) -> Result<(), Error> {
    if trace.mode != config::Mode::Growth {
        return Ok(());
    }
    if trace.sample_mean.is_some() {
        return Err(Error::BadInput(
            "--sample samples allocator calls, which a growth profile does not trace (its \
             cost already follows the growth): drop --sample, or use --mode exact"
                .into(),
        ));
    }
    if trace.gate.is_some_and(|g| g.exit) {
        return Err(Error::BadInput(
            "--fail-on-leak=exit judges the blocks left allocated at exit, which only the exact \
             trace knows: use --fail-on-leak (the growth rule), or --mode exact"
                .into(),
        ));
    }
    Ok(())
}

/// What a probe hit costs here, for the reports; a failure only loses that line.
/// `LEAK_MEASURE_PROBES=0` leaves it out (about 10 ms at start).
fn calibrate(tracer: &mut Tracer) -> Option<analysis::model::ProbeCost> {
    if std::env::var_os("LEAK_MEASURE_PROBES").is_some_and(|v| v == "0") {
        return None;
    }
    tracer
        .calibrate()
        .map_err(|e| {
            let e = Error::from(e);
            // Refused: attaching the allocator's probes will be too, with the advice.
            if e.exit_code() == error::EXIT_BAD_INPUT {
                log::debug!("cannot measure the probes' cost: {}", e.message());
            } else {
                warn!("cannot measure the probes' cost: {}", e.message());
            }
        })
        .ok()
}

fn load_options(pid: u32, trace: &TraceConfig) -> LoadOptions {
    LoadOptions {
        filter_tgid: pid,
        max_stacks: trace.max_stacks,
        trace: trace.bpf_trace,
        probe_floor: trace.probe_floor,
        sample_mean: trace.sample_mean.unwrap_or(0),
        unwind: trace.unwind.bpf(),
        unwind_rows: trace.unwind_rows,
        growth: trace.mode == config::Mode::Growth,
        max_pages: trace.max_pages,
        // A growth profile uses none of the allocation table, which is preallocated.
        max_allocs: if trace.mode == config::Mode::Growth { 64 } else { trace.max_allocs },
        ..LoadOptions::default()
    }
}

fn install_signals(rt: &tokio::runtime::Runtime) -> Result<runtime::Signals, Error> {
    let _guard = rt.enter();
    runtime::Signals::install()
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
    if trace.mode == config::Mode::Growth {
        return profile(rt, pid, trace);
    }
    let plan = trace::target::plan_for_pid(pid, trace.lib.as_deref())?;
    let mut signals = install_signals(rt)?;
    let mut tracer = Tracer::load(load_options(pid, &trace))?;
    let trace = TraceConfig { probe_cost: calibrate(&mut tracer), ..trace };
    tracer.load_unwind_tables(pid);
    let links = tracer.attach_allocator(&plan, nonzero(pid)?)?;
    for h in plan.unarmed(pid) {
        warn!("probe on {} is not armed in pid {pid}", h.spec.symbol);
    }
    let trace_cfg = trace.clone();
    // Before saying "attached": the session reads the target's maps and opens its files
    // for symbolization, which a target that exits right after its allocations would take
    // along.
    let mut session = Session::new(pid, trace, plan.allocator_info(), plan.hook_infos());
    eprintln!("attached to PID {pid} ({} probes)", links.len());
    let report = rt.block_on(trace::attach::trace(&mut tracer, &mut session, &mut signals))?;
    // A breakpoint the kernel took out while our probes were attached (not seen, but a
    // trace once saw malloc's entries without a single return): say which.
    if procfs::is_running(pid) {
        for h in plan.unarmed(pid) {
            warn!("probe on {} was not armed in pid {pid} at the end of the trace", h.spec.symbol);
        }
    }
    tracer.release_in_background();
    Ok(gate_exit(&report, &trace_cfg))
}

/// `leak attach`'s exit status: `--fail-on-leak`'s verdict on the final report, said on stderr.
fn gate_exit(report: &analysis::report::Report, cfg: &TraceConfig) -> u8 {
    let mut gate = trace::gate::GateTally::default();
    let failed = gate.judge(report, cfg);
    if let Some(line) = gate.summary(cfg) {
        eprintln!("{line}");
    }
    if failed { config::LEAK_FOUND_EXIT } else { 0 }
}

/// `leak attach --mode growth`: a growth profile of process `pid` (page faults; no allocator
/// probes, so a program with any allocator, or a static one, can be profiled).
fn profile(rt: &tokio::runtime::Runtime, pid: u32, trace: TraceConfig) -> Result<u8, Error> {
    let allocator = trace::target::plan_for_pid(pid, trace.lib.as_deref())
        .map(|p| analysis::report::AllocatorInfo { probes: Vec::new(), ..p.allocator_info() })
        .unwrap_or_default();
    let mut signals = install_signals(rt)?;
    let mut tracer = Tracer::load(load_options(pid, &trace))?;
    tracer.load_unwind_tables(pid);
    let links = tracer.attach_faults(nonzero(pid)?)?;
    let trace_cfg = trace.clone();
    let mut session = Session::new(pid, trace, allocator, session::growth_hooks());
    eprintln!("attached to PID {pid} (a growth profile: page faults of {} threads)", links.len());
    let report = rt.block_on(trace::attach::trace(&mut tracer, &mut session, &mut signals))?;
    tracer.release_in_background();
    Ok(gate_exit(&report, &trace_cfg))
}

/// Options of `leak run` that make no sense to a command, so after it they are a mistake: the
/// command would get them and the run would pass unchecked.
const RUN_ONLY_OPTIONS: [&str; 3] = ["--fail-on-leak", "--follow-forks", "--allow-inconclusive"];

/// Refuses a command line whose command got one of leak's own options (`leak run -- ./test
/// --fail-on-leak`): said before anything runs.
fn check_command_options(argv: &[OsString]) -> Result<(), Error> {
    let program = argv.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    // leak tracing leak is the one command that takes them.
    if std::path::Path::new(&program).file_name().is_some_and(|n| n == "leak") {
        return Ok(());
    }
    for arg in argv.iter().skip(1) {
        let arg = arg.to_string_lossy();
        let name = arg.split('=').next().unwrap_or("");
        if RUN_ONLY_OPTIONS.contains(&name) {
            return Err(Error::BadInput(format!(
                "{name} comes after the command, so it goes to {program}, not to leak: put leak's \
                 options before the command (leak run {name} -- {program} ...)"
            )));
        }
    }
    Ok(())
}

fn run_command(
    rt: &tokio::runtime::Runtime,
    argv: &[OsString],
    trace: TraceConfig,
    follow_forks: bool,
) -> Result<u8, Error> {
    check_command_options(argv)?;
    let program = trace::runner::resolve_program(
        argv.first().ok_or_else(|| Error::BadInput("no command given".into()))?,
    )?;
    preflight(&trace)?;
    // Before the command starts: its stops arrive as SIGCHLD.
    let mut signals = install_signals(rt)?;
    let child = trace::runner::spawn_traced(&program, argv)?;
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
        trace::runner::kill(pid, libc::SIGKILL);
        let _ = trace::runner::waitpid(pid, 0);
        e
    };
    // Following children: the probes are scoped to each process; no single tgid to filter.
    let filter = if follow_forks { 0 } else { pid };
    let mut tracer =
        Tracer::load(load_options(filter, &trace)).map_err(|e| kill_child(e.into()))?;
    let probe_cost = if trace.mode == config::Mode::Growth { None } else { calibrate(&mut tracer) };
    let trace = TraceConfig { probe_cost, ..trace };
    let mut ctl = Controller::new(&mut tracer, trace, follow_forks, pid);
    ctl.start().map_err(kill_child)?;
    let result = match rt.block_on(ctl.run(&mut signals)) {
        Ok(code) => Ok(code),
        // Before its probes were attached the command has not run a single instruction of
        // its own: do not leave it running untraced.
        Err(e) if !ctl.root_attached() => Err(kill_child(e)),
        Err(e) => Err(e),
    };
    // Its tracefs instance removed first: the helper that releases the probes would inherit
    // the instance's open pipe and keep it busy.
    drop(ctl);
    tracer.release_in_background();
    result
}

/// The JSON reports' reference in `docs/`: the schemas and the field tables are generated from
/// the report types, so every field is documented and the documentation cannot drift.
/// `LEAK_UPDATE_DOCS=1 cargo test -p leak-user --lib json_reference` writes them anew.
#[cfg(test)]
mod json_reference {
    use std::{fmt::Write as _, path::Path};

    use crate::{analysis::report::Report, fleet::report::WatchReport, output::schema};

    /// docs/json.md.
    fn reference(report: &serde_json::Value, watch: &serde_json::Value) -> String {
        let mut md = String::from(
            "# The JSON reports, field by field\n\n\
             Generated from the report types (`leak-user/src/analysis/report.rs`, \
             `leak-user/src/fleet/report.rs`) by the unit test `json_reference`, with the JSON \
             Schemas beside this file (`report.schema.json`, `watch.schema.json`): a field \
             added to the types without a line here fails the tests. Format version 1: later \
             versions add fields and never rename or repurpose one; an \"(optional)\" field is \
             null or left out when it has no value.\n\n",
        );
        md.push_str(&schema::fields_markdown(
            "The trace report (`--json`, the agent's `/api/v1/reports/{id}`)",
            report,
        ));
        md.push_str(
            "### Drop reasons\n\nThe keys of `drops`: every event the probes could not \
             record, counted (every key present, zero or not).\n\n| key | meaning |\n|---|---|\n",
        );
        for r in leak_common::DropReason::ALL {
            let _ = writeln!(md, "| `{}` | {} |", r.name(), r.meaning());
        }
        md.push('\n');
        md.push_str(&schema::fields_markdown(
            "The watch report (`leak watch --json`, the agent's state)",
            watch,
        ));
        md
    }

    #[test]
    fn json_reference_is_generated_from_the_types() {
        let report = schema::schema_of::<Report>();
        let watch = schema::schema_of::<WatchReport>();
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap() + "\n";
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let files = [
            ("report.schema.json", pretty(&report)),
            ("watch.schema.json", pretty(&watch)),
            ("json.md", reference(&report, &watch)),
        ];
        let update = std::env::var_os("LEAK_UPDATE_DOCS").is_some();
        for (name, text) in files {
            let path = docs.join(name);
            if update {
                std::fs::write(&path, &text).unwrap();
            } else {
                let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    on_disk == text,
                    "docs/{name} is not what the report types say: run \
                     LEAK_UPDATE_DOCS=1 cargo test -p leak-user --lib json_reference"
                );
            }
        }
        // Every field of the report has a meaning: no empty cell in the reference.
        let md = reference(&report, &watch);
        let empty: Vec<&str> = md.lines().filter(|l| l.ends_with("|  |")).collect();
        assert!(empty.is_empty(), "fields without a doc comment: {empty:#?}");
    }
}

/// The layering of the crate, checked in its sources: what each folder and top-level file may
/// import from the crate, and the outside crates the pure analysis must not touch.
#[cfg(test)]
mod layers {
    use std::{collections::BTreeSet, fs, path::Path};

    /// What each place may import (`crate::X`): a folder, or a top-level file.
    fn allowed(place: &str) -> Option<&'static [&'static str]> {
        Some(match place {
            "analysis" => &["analysis"],
            "output" => &["analysis", "output"],
            "trace" => &["analysis", "output", "trace", "config", "error", "procfs", "runtime"],
            "fleet" => {
                &["analysis", "output", "trace", "fleet", "config", "error", "procfs", "runtime"]
            }
            "config" => &["analysis", "config"],
            "procfs" => &["analysis", "procfs"],
            "runtime" => &["error", "runtime"],
            // The error a command ends with names the trace's errors (the exit code depends on
            // them): the one file at the top that looks down into a folder.
            "error" => &["error", "trace"],
            // The command line and the dispatch sit above everything.
            "cli" | "lib" | "main" => return None,
            other => panic!("{other}: a new place in src/ needs a rule in `layers`"),
        })
    }

    /// Outside crates a place must not use.
    fn forbidden(place: &str) -> &'static [&'static str] {
        match place {
            "analysis" => &["aya", "tokio", "blazesym", "inferno", "SystemTime", "Instant::now"],
            "output" => &["aya", "tokio", "blazesym"],
            _ => &[],
        }
    }

    /// The source without comments (prose may name anything).
    fn code(text: &str) -> String {
        text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// The crate's modules a source refers to: `crate::X...` paths, and the items of
    /// `use crate::{X::..., Y, ...}`.
    fn imports(code: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(body) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut item = String::new();
                let mut items = Vec::new();
                for c in body.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 1 => break,
                        '}' => depth -= 1,
                        ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                        _ => {}
                    }
                    if depth >= 1 && c != ',' {
                        item.push(c);
                    }
                }
                items.push(item);
                for i in items {
                    let head: String =
                        i.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !head.is_empty() && head != "self" {
                        out.insert(head);
                    }
                }
            } else {
                let head: String =
                    rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                out.insert(head);
            }
        }
        out
    }

    /// Every source file under `dir`, with the place it belongs to.
    fn sources(dir: &Path, place: Option<&str>, out: &mut Vec<(String, std::path::PathBuf)>) {
        for e in fs::read_dir(dir).expect("src").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                sources(&p, Some(place.unwrap_or(&name)), out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                out.push((place.unwrap_or(stem).to_owned(), p));
            }
        }
    }

    #[test]
    fn nothing_imports_upward() {
        let mut files = Vec::new();
        sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut files);
        assert!(files.len() > 40, "{files:?}");
        let mut wrong = Vec::new();
        for (place, path) in &files {
            let text = code(&fs::read_to_string(path).expect("source"));
            if let Some(allowed) = allowed(place) {
                for m in imports(&text) {
                    if !allowed.contains(&m.as_str()) {
                        wrong.push(format!("{}: imports crate::{m}", path.display()));
                    }
                }
            }
            for f in forbidden(place) {
                if text.contains(f) {
                    wrong.push(format!("{}: uses {f}", path.display()));
                }
            }
        }
        assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
    }

    #[test]
    fn imports_are_read_from_use_lists_and_paths() {
        let text = "use crate::{\n    analysis::{model, report::Report},\n    output,\n};\n\
                    fn f() { crate::trace::loader::kernel(); }";
        let got: Vec<String> = imports(text).into_iter().collect();
        assert_eq!(got, ["analysis", "output", "trace"]);
    }
}
