//! Plain, validated run configuration (no clap here: `cli` converts into these).
use std::{ffi::OsString, path::PathBuf, time::Duration};

/// Files written at the end of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Flame graph SVG.
    pub svg: Option<PathBuf>,
    /// JSON report.
    pub json: Option<PathBuf>,
    /// Folded stacks.
    pub folded: Option<PathBuf>,
    /// Differential flame graph SVG between the first and the last sample.
    pub svg_diff: Option<PathBuf>,
    /// Gzipped pprof profile.
    pub pprof: Option<PathBuf>,
    /// The HTML report.
    pub html: Option<PathBuf>,
}

impl Outputs {
    /// Every configured path.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.svg, &self.json, &self.folded, &self.svg_diff, &self.pprof, &self.html]
            .into_iter()
            .flatten()
    }

    /// Every configured path, to rename (one list with [`Self::paths`], so a new output
    /// cannot be forgotten in either).
    pub fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [
            &mut self.svg,
            &mut self.json,
            &mut self.folded,
            &mut self.svg_diff,
            &mut self.pprof,
            &mut self.html,
        ]
        .into_iter()
        .flatten()
    }
}

/// How to trace and report.
#[derive(Clone, Debug, PartialEq, Eq)]
#[expect(clippy::struct_excessive_bools, reason = "independent settings of the command line")]
pub struct TraceConfig {
    /// Time between interval reports.
    pub interval: Duration,
    /// Time between growth samples (at most `interval`).
    pub sample_interval: Duration,
    /// Stop after this long (None: until the target exits or a signal).
    pub duration: Option<Duration>,
    /// Sites shown in the text report.
    pub top: usize,
    /// Only allocations at least this old are reported.
    pub min_age: Duration,
    /// Output files.
    pub outputs: Outputs,
    /// Object that defines malloc, instead of finding it.
    pub lib: Option<PathBuf>,
    /// Capacity of the outstanding-allocation map.
    pub max_allocs: u32,
    /// Capacity of the stack map.
    pub max_stacks: u32,
    /// Per-event BPF logging.
    pub bpf_trace: bool,
    /// Attach programs that return at once (benchmarks: the probes' own cost).
    pub probe_floor: bool,
    /// Sample one allocation per this many bytes on average (None: record every one).
    pub sample_mean: Option<u64>,
    /// What a probe hit costs here, measured when the programs are loaded (not an option).
    pub probe_cost: Option<crate::analysis::model::ProbeCost>,
    /// Memory limit to project against, bytes (default: the cgroup's).
    pub limit: Option<u64>,
    /// `--fail-on-leak`: what fails the run (exit status [`LEAK_FOUND_EXIT`]).
    pub gate: Option<Gate>,
    /// `--min-growth`: growth below this many bytes is not growth (the trend's floor), and
    /// the gate ignores sites below it; `None`: [`DEFAULT_TRACE_MIN_GROWTH`].
    pub min_growth: Option<u64>,
    /// Print nothing while tracing but warnings, the gate's verdict and the files written
    /// (`--quiet`).
    pub quiet: bool,
    /// Reports go to stderr (`leak run`: the command's stdout is the command's).
    pub report_to_stderr: bool,
    /// `leak attach` and `leak run`: stop once the probes cost the target more than this
    /// share of a CPU, in basis points (estimated from the hit rate, see
    /// [`crate::trace::overhead::Budget`]).
    pub max_overhead: Option<u32>,
    /// How stacks are walked.
    pub unwind: Unwind,
    /// Capacity of the unwind-table rows.
    pub unwind_rows: u32,
    /// Directories searched for separate debug files before the system's.
    pub debug_dirs: Vec<PathBuf>,
    /// Patterns of allocator wrappers folded off the top of stacks, besides the built-in
    /// ones (`--fold`).
    pub fold: Vec<String>,
    /// What is traced (`--mode`).
    pub mode: Mode,
    /// Capacity of the growth profile's page map (`--max-pages`).
    pub max_pages: u32,
}

/// A growth profile's `--min-age` unless given: pages first touched less than this long ago
/// do not count yet, so a scratch buffer touched and released within it is never growth.
pub const GROWTH_MIN_AGE: Duration = Duration::from_secs(1);

/// What a trace records (`--mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every allocation and free, by uprobes on the allocator: exact bytes by the stack that
    /// allocated them; costs a trap per allocator call.
    #[default]
    Exact,
    /// Resident memory by the stack that first touched it, from page faults: costs follow
    /// the growth, not the calls.
    Growth,
}

impl Mode {
    /// Its name on the command line and in the JSON report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Growth => "growth",
        }
    }

    /// As a report states it.
    #[must_use]
    pub fn report(self) -> crate::analysis::report::Mode {
        match self {
            Self::Exact => crate::analysis::report::Mode::Exact,
            Self::Growth => crate::analysis::report::Mode::Growth,
        }
    }
}

/// How allocation stacks are walked (`--unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Unwind {
    /// Frame pointers only: the cheapest; code built without them loses its callers.
    Fp,
    /// Unwind tables (`.eh_frame`) only: a frame without one ends the stack.
    Dwarf,
    /// Unwind tables, and frame pointers for code without tables.
    #[default]
    Auto,
}

impl Unwind {
    /// Its name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp => "fp",
            Self::Dwarf => "dwarf",
            Self::Auto => "auto",
        }
    }

    /// The BPF global's value (`leak_common::UNWIND_*`).
    #[must_use]
    pub fn bpf(self) -> u32 {
        match self {
            Self::Fp => leak_common::UNWIND_FP,
            Self::Dwarf => leak_common::UNWIND_DWARF,
            Self::Auto => leak_common::UNWIND_AUTO,
        }
    }
}

/// What `--fail-on-leak` fails a run on. The growth rule is the default; an inconclusive
/// run fails too unless allowed, so that a short test cannot pass unjudged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// A site judged a leak by its growth fails the run.
    pub growth: bool,
    /// Blocks still allocated when the process exits fail the run (`LeakSanitizer`'s rule).
    pub exit: bool,
    /// A run whose growth could not be judged (too few samples, growth without a verdict,
    /// no probe fired, or for the exit rule a process that had not exited) passes, with a
    /// warning, instead of failing.
    pub allow_inconclusive: bool,
}

impl Default for Gate {
    fn default() -> Self {
        Self { growth: true, exit: false, allow_inconclusive: false }
    }
}

/// The trace's growth floor by default: its bytes are exact, so 4 KiB of growth is growth
/// (a watch's floor is higher: resident memory moves in pages and allocator arenas).
pub const DEFAULT_TRACE_MIN_GROWTH: u64 = 4096;

/// The watch's and the agent's growth floor by default (`--min-growth`): resident memory
/// moves in pages, allocator arenas and thread stacks, so less than this is not a leak.
pub const DEFAULT_WATCH_MIN_GROWTH: u64 = 1 << 20;

/// Exit status of a run that `--fail-on-leak` fails, when the command itself succeeded (23,
/// as `LeakSanitizer`).
pub const LEAK_FOUND_EXIT: u8 = 23;

/// Finished escalation reports the agent keeps by default (`--keep-reports`).
pub const DEFAULT_KEEP_REPORTS: u64 = 100;

impl TraceConfig {
    /// The growth sampling period: never longer than the report interval.
    #[must_use]
    pub fn sample_period(&self) -> Duration {
        self.sample_interval.min(self.interval)
    }

    /// The growth floor, bytes (`--min-growth`, else [`DEFAULT_TRACE_MIN_GROWTH`]).
    #[must_use]
    pub fn growth_floor(&self) -> u64 {
        self.min_growth.unwrap_or(DEFAULT_TRACE_MIN_GROWTH)
    }

    /// Whether growth samples need every record rather than the kernel's per-site totals: to
    /// leave out young allocations (`--min-age`), or to weigh sampled ones (`--sample`).
    #[must_use]
    pub fn samples_need_records(&self) -> bool {
        !self.min_age.is_zero() || self.sample_mean.is_some() || self.mode == Mode::Growth
    }
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            sample_interval: Duration::from_secs(1),
            duration: None,
            top: 10,
            min_age: Duration::ZERO,
            outputs: Outputs::default(),
            lib: None,
            max_allocs: leak_common::DEFAULT_MAX_ALLOCS,
            max_stacks: leak_common::DEFAULT_MAX_STACKS,
            bpf_trace: false,
            probe_floor: false,
            sample_mean: None,
            probe_cost: None,
            limit: None,
            gate: None,
            min_growth: None,
            quiet: false,
            report_to_stderr: false,
            max_overhead: None,
            unwind: Unwind::Auto,
            unwind_rows: leak_common::DEFAULT_UNWIND_ROWS,
            debug_dirs: Vec::new(),
            fold: Vec::new(),
            mode: Mode::Exact,
            max_pages: leak_common::DEFAULT_MAX_PAGES,
        }
    }
}

/// How to watch (`leak watch`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// The processes.
    pub targets: Targets,
    /// Time between reports.
    pub interval: Duration,
    /// Time between memory samples.
    pub sample_interval: Duration,
    /// Stop after this long (None: until a signal, or the given processes exit).
    pub duration: Option<Duration>,
    /// Growth below this many bytes is not growth.
    pub min_growth: u64,
    /// Attach the probes to a process judged leaking, for this long.
    pub escalate: Option<Duration>,
    /// What an escalation traces (`--escalate-mode`): a growth profile unless asked.
    pub escalate_mode: Mode,
    /// Where the escalations' reports go.
    pub out_dir: PathBuf,
    /// The watch report.
    pub json: Option<PathBuf>,
    /// The watch page.
    pub html: Option<PathBuf>,
    /// Processes (and containers) shown in the text report and charted on the --html page.
    pub top: usize,
    /// Escalations running at once, at most.
    pub max_traced: usize,
    /// Finished escalations kept (their files and metrics); older ones are deleted.
    pub keep_reports: usize,
    /// Each trace stops once its probes cost more than this share of a CPU (basis points).
    pub max_overhead: Option<u32>,
    /// Where the cgroup file systems are mounted (containers' memory statistics).
    pub cgroup_root: PathBuf,
    /// A growth escalation is kept on the processes of a container whose working set
    /// passed this share of its limit (basis points).
    pub profile_above: u32,
    /// The node agent's part (`leak agent`), or none for `leak watch`.
    pub agent: Option<AgentConfig>,
}

/// What the node agent adds to a watch (`leak agent`): the API it serves, and which pods'
/// processes it watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// Serve metrics and reports over HTTP here.
    pub listen: std::net::SocketAddr,
    /// The API's TLS and users (`--web-config`).
    pub web_config: Option<PathBuf>,
    /// The API's bearer token (`--bearer-token-file`).
    pub bearer_token_file: Option<PathBuf>,
    /// Which pods' processes are watched.
    pub selection: Selection,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Trace a running process.
    Attach {
        /// Its pid.
        pid: u32,
        /// Options.
        trace: TraceConfig,
    },
    /// Start a command and trace it from its first instruction.
    Run {
        /// Program and arguments.
        argv: Vec<OsString>,
        /// Options.
        trace: TraceConfig,
        /// Trace the children it forks too, each reported on its own.
        follow_forks: bool,
    },
    /// Watch processes' memory without probes.
    Watch(WatchConfig),
    /// Say whether this node can trace (`leak check`).
    Check,
}

/// Parses `500ms`, `5s`, `2m`, `1h`, `1.5s` or a bare number of seconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 5s, 2m, 1h"))?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!("invalid duration unit {other:?} in {s:?}: use ms, s, m or h"));
        }
    };
    let secs = value * scale;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a share of one CPU, `2%` or `0.5` (percent), in basis points (hundredths of a
/// percent: 2% is 200).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let value: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("invalid share {s:?}: use e.g. 2% or 0.5%"))?;
    if !(0.01..=100.0).contains(&value) {
        return Err(format!("{s:?}: use a share from 0.01% to 100%"));
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "1..=10000")]
    let bp = (value * 100.0).round() as u32;
    Ok(bp)
}

/// Parses `4096`, `64K`, `512M`, `1.5G`, `2GiB`, `1T` (binary units; `B`, `iB` optional).
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 =
        num.parse().map_err(|_| format!("invalid size {s:?}: use e.g. 4096, 64K, 512M, 2G"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.strip_suffix("IB").or_else(|| unit.strip_suffix('B')).unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size unit in {s:?}: use K, M, G or T")),
    };
    let bytes = value * 2f64.powi(shift);
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("invalid size {s:?}"));
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "range checked")]
    Ok(bytes.round() as u64)
}

/// What is watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Targets {
    /// Every process of the host (but `leak` itself and its escalations).
    All,
    /// Every process in a Kubernetes pod (found by its cgroup path).
    Pods,
    /// These processes.
    Pids(Vec<u32>),
}

/// Which processes the agent watches: each non-empty list must match (shell-style `*` and
/// `?` patterns); excluded namespaces never are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Namespaces to watch (empty: all).
    pub namespaces: Vec<String>,
    /// Pod names to watch (empty: all).
    pub pods: Vec<String>,
    /// Container names to watch (empty: all).
    pub containers: Vec<String>,
    /// Process names (`comm`) to watch (empty: all).
    pub processes: Vec<String>,
    /// Namespaces never watched.
    pub exclude_namespaces: Vec<String>,
}

impl Default for Selection {
    /// Everything but `kube-system`.
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            pods: Vec::new(),
            containers: Vec::new(),
            processes: Vec::new(),
            exclude_namespaces: vec!["kube-system".to_owned()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_cpu_in_basis_points() {
        assert_eq!(parse_percent("5%"), Ok(500));
        assert_eq!(parse_percent("0.5 %"), Ok(50));
        assert_eq!(parse_percent("2"), Ok(200));
        assert_eq!(parse_percent("100%"), Ok(10_000));
        for bad in ["0%", "101%", "-1%", "five", "0.001%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_hours(1)));
        assert!(parse_duration("5x").unwrap_err().contains("unit"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("1X").unwrap_err().contains("unit"));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999T").is_err());
    }
}
