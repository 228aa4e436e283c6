//! Command-line types (clap only) and their conversion into `config`. Every command's flags
//! and their --help text are here, in one place, as clap derives them: the file's length is
//! the command line's.
// Doc comments here are the --help text, shown as written: no Markdown backticks.
#![expect(clippy::doc_markdown, reason = "doc comments are --help text, printed verbatim")]
use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::Targets,
    config::{
        Command, Outputs, TraceConfig, WatchConfig, parse_duration, parse_percent, parse_size,
    },
};

/// Find the call stacks that hold memory a native process never frees.
#[derive(Debug, Parser)]
#[command(name = "leak", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// More logging (-v: probe placement and attach details, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Attach to a running process and report its outstanding allocations.
    Attach(AttachArgs),
    /// Start a command with the probes attached before its main runs, trace it until it exits.
    Run(RunArgs),
    /// Watch processes' memory without probes (near-zero cost) and report the ones that grow
    /// like a leak; --escalate attaches the probes to them.
    Watch(WatchArgs),
    /// Node agent (a privileged Kubernetes daemon set): watches every process in a pod on
    /// this node, traces those that leak, and serves metrics and reports over HTTP.
    Agent(AgentArgs),
    /// Say whether this node can trace: kernel, privileges, uprobes, BPF features, and every
    /// program loaded through the verifier (not attached). Exits 0 only when tracing will
    /// work; -v adds each program's stack figures.
    Check,
}

/// `leak agent`.
#[derive(Debug, Args)]
// A flag given twice takes its last value: the command line's comes after the config file's.
#[command(args_override_self = true)]
pub struct AgentArgs {
    /// Read settings from this TOML file first: its keys are these long options without the
    /// dashes (`max-traced = 2`, `namespace = ["shop", "billing"]`). Options on the command
    /// line override its single values and add to its lists.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve /metrics, /healthz and /api/v1/reports on: `ADDR:PORT`,
    /// `HOST:PORT` (e.g. `localhost:9464`) or `:PORT` (every interface).
    #[arg(long, default_value = "0.0.0.0:9464", value_parser = parse_listen, value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// TLS and basic authentication for the API, in the Prometheus exporters' web
    /// configuration format (`tls_server_config`, `basic_auth_users` with bcrypt hashes).
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Also accept `Authorization: Bearer` with the token in this file (in-cluster scrapers).
    /// With this or --web-config's users, every endpoint but /healthz needs credentials.
    #[arg(long, value_name = "FILE")]
    pub bearer_token_file: Option<PathBuf>,
    /// Watch every process of the host, in a pod or not (a VM whose services are systemd
    /// units, a developer's machine). Default: the processes in Kubernetes pods.
    #[arg(long, conflicts_with_all = ["pids", "in_pods"])]
    pub all: bool,
    /// Watch these processes (repeat), in a pod or not.
    #[arg(long = "pid", value_name = "PID", conflicts_with = "in_pods", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Watch the processes in Kubernetes pods on this node (the default, unless --all, --pid
    /// or --process without --pods is given).
    #[arg(long = "pods")]
    pub in_pods: bool,
    /// Time between memory samples (10s: a node's hundreds of processes, for months).
    #[arg(long, default_value = "10s", value_parser = parse_interval, value_name = "DURATION")]
    pub sample_interval: Duration,
    /// Time between the summaries printed to its log (5m: a daemon's log, read rarely).
    #[arg(long, default_value = "5m", value_parser = parse_interval)]
    pub interval: Duration,
    /// Growth below this is not growth (1M: resident memory moves in pages, allocator
    /// arenas and thread stacks).
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "BYTES")]
    pub min_growth: u64,
    /// How long the probes stay on a process judged leaking.
    #[arg(long, visible_alias = "escalate", default_value = "2m", value_parser = parse_trace_for, value_name = "DURATION")]
    pub trace_for: Duration,
    /// Never attach probes: judge processes from their memory samples alone and serve what
    /// that finds (no BPF, no start-up check). For nodes that forbid BPF, and for running
    /// the image where BPF is not there at all (an emulated architecture).
    #[arg(long, conflicts_with = "trace_for")]
    pub no_trace: bool,
    /// What a process judged leaking gets: `growth` (a growth profile from page faults: its
    /// cost follows the growth, whatever the allocation rate) or `exact` (every allocation,
    /// by probes on the allocator: exact bytes, at a trap per allocator call).
    #[arg(long, value_enum, default_value = "growth")]
    pub escalate_mode: crate::config::Mode,
    /// Processes traced at once, at most.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_traced: u64,
    /// A trace stops once its probes cost the traced process more than this share of a CPU.
    #[arg(long, visible_alias = "overhead-budget", default_value = "5%", value_parser = parse_percent, value_name = "PERCENT")]
    pub max_overhead: u32,
    /// With growth escalations: keep a growth profile on every process of a container whose
    /// working set passed this share of its memory limit (70%: the first step of the alert
    /// rules), so that an OOM kill finds its answer ready.
    #[arg(long, default_value = "70%", value_parser = parse_percent, value_name = "PERCENT")]
    pub profile_above: u32,
    /// Where the reports are kept.
    #[arg(long, default_value = "/var/lib/leak", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Finished reports kept (files and metrics); older ones are deleted, so that a node
    /// where leaking processes come and go for months keeps a bounded disk and /metrics.
    #[arg(long, default_value_t = crate::config::DEFAULT_KEEP_REPORTS, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_reports: u64,
    /// Stop after this long (default: until SIGTERM or SIGINT).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Watch only pods in these namespaces (repeat; shell patterns such as `shop-*`). Names
    /// come from the Kubernetes API: without it, a process matches no such pattern.
    #[arg(long = "namespace", value_name = "PATTERN")]
    pub namespaces: Vec<String>,
    /// Watch only pods with these names (repeat; patterns).
    #[arg(long = "pod", value_name = "PATTERN")]
    pub pods: Vec<String>,
    /// Watch only containers with these names (repeat; patterns).
    #[arg(long = "container", value_name = "PATTERN")]
    pub containers: Vec<String>,
    /// Watch only processes with these names (`comm`, or the command line's program name;
    /// repeat; patterns). Without --pods, processes outside pods are watched too.
    #[arg(long = "process", value_name = "PATTERN")]
    pub processes: Vec<String>,
    /// Where the host's cgroup file systems are mounted: each container's memory statistics
    /// are read there.
    #[arg(long, default_value = "/sys/fs/cgroup", value_name = "DIR")]
    pub cgroup_root: PathBuf,
    /// Never watch pods in these namespaces (repeat; patterns).
    #[arg(long = "exclude-namespace", value_name = "PATTERN", default_values_t = ["kube-system".to_owned()])]
    pub exclude_namespaces: Vec<String>,
}

/// `leak watch`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["pids", "all", "pods"])))]
pub struct WatchArgs {
    /// A process to watch (repeat for several).
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Watch every process of the host.
    #[arg(long, conflicts_with = "pids")]
    pub all: bool,
    /// Watch every process in a Kubernetes pod on this node (found by its cgroup path; the
    /// report names its pod UID and container id).
    #[arg(long, conflicts_with_all = ["pids", "all"])]
    pub pods: bool,
    /// Time between reports.
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Time between memory samples.
    #[arg(long, default_value = "1s", value_parser = parse_interval, value_name = "DURATION")]
    pub sample_interval: Duration,
    /// Stop after this long (default: until Ctrl-C, or until the given processes exit).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Growth below this is not growth (1M: resident memory moves in pages, allocator
    /// arenas and thread stacks). The report says what it left unjudged.
    #[arg(long, default_value = "1M", value_parser = parse_size, value_name = "BYTES")]
    pub min_growth: u64,
    /// Attach the probes to each process judged leaking, for this long, and write its report
    /// (leak-COMM-PID.json, .html, .svg and .pb.gz in --out-dir). Needs root.
    #[arg(long, visible_alias = "escalate", value_parser = parse_trace_for, value_name = "DURATION")]
    pub trace_for: Option<Duration>,
    /// What --trace-for attaches: `growth` (a growth profile from page faults: its cost
    /// follows the growth, whatever the allocation rate) or `exact` (every allocation, by
    /// probes on the allocator: exact bytes, at a trap per allocator call).
    #[arg(long, value_enum, default_value = "growth")]
    pub escalate_mode: crate::config::Mode,
    /// Each trace stops once its probes cost the traced process more than this share of a
    /// CPU (default: no limit).
    #[arg(long, visible_alias = "overhead-budget", value_parser = parse_percent, value_name = "PERCENT", requires = "trace_for")]
    pub max_overhead: Option<u32>,
    /// With --trace-for in growth mode: keep a growth profile on every process of a
    /// container whose working set passed this share of its memory limit, so that an OOM
    /// kill finds its answer ready.
    #[arg(long, default_value = "70%", value_parser = parse_percent, value_name = "PERCENT")]
    pub profile_above: u32,
    /// Where --trace-for writes its reports.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub out_dir: PathBuf,
    /// Write the watch report (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the watch page (HTML: a chart per growing process and container, links to
    /// each trace's page) to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Processes (and containers) shown in the text report and charted on the --html page.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub top: u64,
    /// Where the cgroup file systems are mounted: the memory statistics of the containers of
    /// watched processes are read there.
    #[arg(long, default_value = "/sys/fs/cgroup", value_name = "DIR")]
    pub cgroup_root: PathBuf,
}

/// `leak attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Process to trace.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: u32,
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// `leak run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub trace: TraceArgs,
    /// Trace the processes the command forks too, each with its own report (files named
    /// NAME-PID.EXT). --fail-on-leak implies it: a test run through a shell, make, ctest
    /// or pytest allocates in the processes it starts.
    #[arg(long)]
    pub follow_forks: bool,
    /// The command to run and its arguments (after `--`, or after leak's own options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// Options shared by `attach` and `run`.
#[derive(Debug, Args)]
#[expect(clippy::struct_excessive_bools, reason = "command-line flags")]
pub struct TraceArgs {
    /// Time between reports.
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    /// Time between growth samples (at most --interval); a verdict needs six. Default: 1s
    /// for attach, 250ms for run (its commands are often short tests).
    #[arg(long, value_parser = parse_interval, value_name = "DURATION")]
    pub sample_interval: Option<Duration>,
    /// Stop tracing after this long (default: until the target exits or Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Sites shown in the text report.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub top: u64,
    /// Only report allocations at least this old (e.g. 30s). A growth profile's pages: 1s
    /// unless given, so that a buffer touched and released within a second is not growth.
    #[arg(long, value_parser = parse_duration)]
    pub min_age: Option<Duration>,
    /// Write a flame graph of the bytes each stack gained over the window to this SVG file
    /// (with a single sample: its outstanding bytes).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Write a differential flame graph between the first and the last sample to this SVG
    /// file (red: grew, blue: shrank).
    #[arg(long, value_name = "FILE")]
    pub svg_diff: Option<PathBuf>,
    /// Write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write folded stacks (flamegraph.pl / inferno input) to this file.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<PathBuf>,
    /// Write a gzipped pprof profile (bytes and objects in use per stack) to this file, for
    /// `go tool pprof`, Pyroscope, Parca or Grafana.
    #[arg(long, value_name = "FILE")]
    pub pprof: Option<PathBuf>,
    /// Write the HTML report to this file: one self-contained page with the memory charts,
    /// a chart per top site and both flame graphs, to open offline or attach to a ticket.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Object that defines malloc (default: found from the process's memory map).
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,
    /// Sample allocations instead of recording each: one per BYTES allocated on average
    /// (byte-based Poisson sampling, as jemalloc and tcmalloc do; default 512K). Reported
    /// bytes and counts are then unbiased estimates.
    #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "512K", value_parser = parse_sample_mean)]
    pub sample: Option<u64>,
    /// How stacks are walked: `fp` (frame pointers), `dwarf` (unwind tables from
    /// `.eh_frame`: callers through code built without frame pointers, such as Debian's
    /// libc), or `auto` (tables, and frame pointers where there are none).
    #[arg(long, value_enum, default_value = "auto")]
    pub unwind: crate::config::Unwind,
    /// Capacity of the unwind-table rows in the kernel (12 bytes each); an object whose
    /// table does not fit keeps frame pointers only.
    #[arg(long, default_value_t = leak_common::DEFAULT_UNWIND_ROWS, value_parser = clap::value_parser!(u32).range(1..))]
    pub unwind_rows: u32,
    /// Also look for separate debug files here (as `DIR/.build-id/xx/yyyy.debug`, or by a
    /// debug link's name), before /usr/lib/debug; repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,
    /// Fold functions matching this pattern (shell-style; repeatable) off the top of stacks as
    /// allocator wrappers, so that their callers are the sites: a project's own `my_alloc`.
    /// Common ones are built in (zmalloc, xmalloc, g_malloc, PyMem_Malloc, ngx_palloc, ...).
    #[arg(long, value_name = "PATTERN")]
    pub fold: Vec<String>,
    /// What to trace: `exact` (every allocation and free, by probes on the allocator: exact
    /// bytes by allocating stack; each allocator call pays a trap) or `growth` (memory made
    /// resident, by the stack that first touched it, from page faults: its cost follows the
    /// growth, not the calls; for busy production processes).
    #[arg(long, value_enum, default_value = "exact")]
    pub mode: crate::config::Mode,
    /// Capacity of a growth profile's page map (pages made resident during the profile; a
    /// huge page takes one); pages beyond it are counted as drops (`page_map_full`).
    #[arg(long, default_value_t = leak_common::DEFAULT_MAX_PAGES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pages: u32,
    /// Capacity of the outstanding-allocation map; allocations beyond it are counted as drops.
    #[arg(long, default_value_t = leak_common::DEFAULT_MAX_ALLOCS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocs: u32,
    /// Capacity of the stack map (distinct call stacks); allocations at a stack beyond it are
    /// counted as drops (`stack_map_full`).
    #[arg(long, default_value_t = leak_common::DEFAULT_MAX_STACKS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: u32,
    /// Memory limit to project the growth against, e.g. 512M (default: the cgroup's limit).
    #[arg(long, value_parser = parse_size, value_name = "BYTES")]
    pub limit: Option<u64>,
    /// Exit with status 23 (LeakSanitizer's) when a process fails a rule: `growth` (the
    /// default: a site judged a leak), `exit` (blocks still allocated when the process exits,
    /// LeakSanitizer's rule), or both (`growth,exit`). A run too short or too empty to judge
    /// fails too, unless --allow-inconclusive. A memory regression test for CI.
    #[arg(long, value_enum, value_name = "RULE", num_args = 0..=1, require_equals = true, value_delimiter = ',', default_missing_value = "growth")]
    pub fail_on_leak: Option<Vec<GateRule>>,
    /// With --fail-on-leak: a run whose growth could not be judged passes, with a warning.
    #[arg(long, requires = "fail_on_leak")]
    pub allow_inconclusive: bool,
    /// Growth below this over the window is not growth (default 4K: traced bytes are exact);
    /// --fail-on-leak ignores sites below it.
    #[arg(long, visible_alias = "threshold", value_parser = parse_size, value_name = "BYTES")]
    pub min_growth: Option<u64>,
    /// Stop tracing (and report) once the probes cost the target more than this share of a
    /// CPU, estimated from their hit rate: e.g. 5%.
    #[arg(long, visible_alias = "overhead-budget", value_parser = parse_percent, value_name = "PERCENT")]
    pub max_overhead: Option<u32>,
    /// Print no report while tracing, and the final one as its summary line only (warnings,
    /// the gate's verdict and the files written are still printed).
    #[arg(short, long)]
    pub quiet: bool,
    /// Log every allocation event from BPF (debugging; very slow).
    #[arg(long, hide = true)]
    pub bpf_trace: bool,
    /// Attach empty programs at the same points (benchmarks: the probes' own cost; the
    /// report stays empty).
    #[arg(long, hide = true)]
    pub probe_floor: bool,
}

fn parse_sample_mean(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 || n > leak_common::MAX_SAMPLE_MEAN {
        return Err(format!("--sample {s:?}: use a mean between 1 byte and 1T"));
    }
    Ok(n)
}

/// A `--fail-on-leak` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GateRule {
    /// A site judged a leak by its growth.
    Growth,
    /// Blocks still allocated when the process exits (LeakSanitizer's rule).
    Exit,
}

fn parse_trace_for(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short a trace to judge anything: use at least 1s"));
    }
    Ok(d)
}

/// `ADDR:PORT`, `HOST:PORT` (the first address it resolves to), `:PORT` (every interface).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let t = s.trim();
    if let Ok(a) = t.parse() {
        return Ok(a);
    }
    let with_host = match t.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => t.to_owned(),
    };
    let bad = |why: String| format!("--listen {s:?}: {why}: use ADDR:PORT, HOST:PORT or :PORT");
    let (host, port) = with_host.rsplit_once(':').ok_or_else(|| bad("no port".into()))?;
    let port: u16 = port.parse().map_err(|_| bad(format!("{port:?} is not a port")))?;
    (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad(format!("{host} has no address")))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("interval {s:?} is too short: use at least 100ms"));
    }
    Ok(d)
}

impl TraceArgs {
    /// The settings, with `sample_interval` when the option was not given.
    fn config(self, sample_interval: Duration) -> TraceConfig {
        TraceConfig {
            sample_interval: self.sample_interval.unwrap_or(sample_interval),
            ..TraceConfig::from(self)
        }
    }
}

/// The default time between growth samples of `leak attach`.
pub const ATTACH_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The default time between growth samples of `leak run`: its commands are often tests of a
/// few seconds, which need six samples for a verdict.
pub const RUN_SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

impl From<TraceArgs> for TraceConfig {
    fn from(a: TraceArgs) -> Self {
        Self {
            interval: a.interval,
            sample_interval: a.sample_interval.unwrap_or(ATTACH_SAMPLE_INTERVAL),
            duration: a.duration,
            top: usize::try_from(a.top).unwrap_or(usize::MAX),
            min_age: a.min_age.unwrap_or(match a.mode {
                crate::config::Mode::Exact => Duration::ZERO,
                crate::config::Mode::Growth => crate::config::GROWTH_MIN_AGE,
            }),
            outputs: Outputs {
                svg: a.svg,
                json: a.json,
                folded: a.folded,
                svg_diff: a.svg_diff,
                pprof: a.pprof,
                html: a.html,
            },
            lib: a.lib,
            max_allocs: a.max_allocs,
            max_stacks: a.max_stacks,
            bpf_trace: a.bpf_trace,
            probe_floor: a.probe_floor,
            sample_mean: a.sample,
            probe_cost: None,
            limit: a.limit,
            gate: a.fail_on_leak.map(|rules| crate::config::Gate {
                growth: rules.contains(&GateRule::Growth),
                exit: rules.contains(&GateRule::Exit),
                allow_inconclusive: a.allow_inconclusive,
            }),
            min_growth: a.min_growth,
            quiet: a.quiet,
            report_to_stderr: false,
            max_overhead: a.max_overhead,
            unwind: a.unwind,
            unwind_rows: a.unwind_rows,
            debug_dirs: a.debug_dirs,
            fold: a.fold,
            mode: a.mode,
            max_pages: a.max_pages,
        }
    }
}

impl From<CliCommand> for Command {
    fn from(c: CliCommand) -> Self {
        match c {
            CliCommand::Attach(a) => {
                Self::Attach { pid: a.pid, trace: a.trace.config(ATTACH_SAMPLE_INTERVAL) }
            }
            CliCommand::Run(r) => {
                let trace = TraceConfig {
                    // The command's stdout stays the command's.
                    report_to_stderr: true,
                    ..r.trace.config(RUN_SAMPLE_INTERVAL)
                };
                // A gate that traced only a wrapper (a shell, make, ctest) would pass leaks.
                let follow_forks = r.follow_forks || trace.gate.is_some();
                Self::Run { argv: r.command, trace, follow_forks }
            }
            CliCommand::Watch(w) => Self::Watch(WatchConfig {
                targets: if w.all {
                    Targets::All
                } else if w.pods {
                    Targets::Pods
                } else {
                    Targets::Pids(w.pids)
                },
                interval: w.interval,
                sample_interval: w.sample_interval,
                duration: w.duration,
                min_growth: w.min_growth,
                escalate: w.trace_for,
                escalate_mode: w.escalate_mode,
                out_dir: w.out_dir,
                json: w.json,
                html: w.html,
                top: usize::try_from(w.top).unwrap_or(usize::MAX),
                max_traced: 1,
                keep_reports: usize::try_from(crate::config::DEFAULT_KEEP_REPORTS).unwrap_or(1),
                max_overhead: w.max_overhead,
                cgroup_root: w.cgroup_root,
                profile_above: w.profile_above,
                agent: None,
            }),
            CliCommand::Check => Self::Check,
            CliCommand::Agent(a) => Self::Watch(WatchConfig {
                // Pods by default; plain processes when asked for by pid, by name or all.
                targets: if a.all {
                    Targets::All
                } else if !a.pids.is_empty() {
                    Targets::Pids(a.pids)
                } else if !a.processes.is_empty() && !a.in_pods {
                    Targets::All
                } else {
                    Targets::Pods
                },
                interval: a.interval,
                sample_interval: a.sample_interval,
                duration: a.duration,
                min_growth: a.min_growth,
                escalate: (!a.no_trace).then_some(a.trace_for),
                escalate_mode: a.escalate_mode,
                out_dir: a.out_dir,
                json: None,
                html: None,
                top: 10,
                max_traced: usize::try_from(a.max_traced).unwrap_or(1),
                keep_reports: usize::try_from(a.keep_reports).unwrap_or(usize::MAX),
                max_overhead: Some(a.max_overhead),
                cgroup_root: a.cgroup_root,
                profile_above: a.profile_above,
                agent: Some(crate::config::AgentConfig {
                    listen: a.listen,
                    web_config: a.web_config,
                    bearer_token_file: a.bearer_token_file,
                    selection: crate::config::Selection {
                        namespaces: a.namespaces,
                        pods: a.pods,
                        containers: a.containers,
                        processes: a.processes,
                        exclude_namespaces: a.exclude_namespaces,
                    },
                }),
            }),
        }
    }
}

/// The command line with `leak agent --config FILE` expanded: the file's settings become
/// flags placed right after `agent`, before the command line's own (see [`AgentArgs::config`]).
///
/// # Errors
/// The file cannot be read, is not TOML, or holds a value no flag takes.
pub fn expand_config(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(agent) = args.iter().skip(1).position(|a| a == "agent").map(|i| i + 1) else {
        return Ok(args);
    };
    let mut path = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut it = args.into_iter().enumerate();
    while let Some((i, a)) = it.next() {
        if i > agent && a == "--config" {
            path = Some(it.next().ok_or("--config needs a file")?.1);
        } else if let Some(p) =
            (i > agent).then(|| a.to_str()).flatten().and_then(|s| s.strip_prefix("--config="))
        {
            path = Some(OsString::from(p));
        } else {
            rest.push(a);
        }
    }
    let Some(path) = path else { return Ok(rest) };
    let shown = PathBuf::from(&path).display().to_string();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let flags = config_flags(&text).map_err(|e| format!("{shown}: {e}"))?;
    let own = rest.split_off(agent + 1);
    rest.extend(flags.into_iter().map(OsString::from));
    rest.extend(own);
    Ok(rest)
}

/// The flags a TOML config file stands for: `key = value` is `--key=value`, a list repeats the
/// flag, `true` is the bare flag.
///
/// # Errors
/// Not TOML, or a value of a kind no flag takes (a table, a date, a nested list).
pub fn config_flags(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut flags = Vec::new();
    for (key, value) in table {
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            _ => None,
        };
        match &value {
            toml::Value::Boolean(true) => flags.push(format!("--{key}")),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    let v = scalar(item).ok_or_else(|| format!("{key}: a list of plain values"))?;
                    flags.push(format!("--{key}={v}"));
                }
            }
            v => {
                let v = scalar(v).ok_or_else(|| format!("{key}: not a value an option takes"))?;
                flags.push(format!("--{key}={v}"));
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests;
