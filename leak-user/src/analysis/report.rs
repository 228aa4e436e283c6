//! Pure: the report model, the JSON contract (`build` makes one). Types and how people read
//! them; nothing here computes a judgement.
//!
//! JSON contract, version 1: later versions may add fields, never rename or remove them.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    analysis::model::{HookInfo, ProbeCost, ProbeHits, Text},
    analysis::trend::Verdict,
};

/// Report format version.
pub const REPORT_VERSION: u32 = 1;

/// A leak report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Report {
    /// Format version: 1 ([`REPORT_VERSION`]).
    pub version: u32,
    /// What was traced: `exact` (every allocation and free: each site's bytes are allocated
    /// and not freed) or `growth` (page faults: each site's bytes are memory made resident
    /// by the stack that first touched it, and still resident; see `resident_bytes`).
    #[serde(default)]
    pub mode: Mode,
    /// The traced process.
    pub target: TargetInfo,
    /// Seconds from attach to the final snapshot.
    pub duration_s: f64,
    /// Sums over all sites.
    pub totals: Totals,
    /// Allocation sites, most outstanding bytes first.
    pub sites: Vec<Site>,
    /// Events the probes could not record, by reason (the drop reasons below; every reason
    /// present, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Probe hits by hooked function: `<symbol>_enter`, and `<symbol>_exit` for the functions
    /// with a return probe (`free` has none).
    pub probe_hits: BTreeMap<String, u64>,
    /// Wall-clock window, Unix seconds.
    pub window: Window,
    /// Only allocations at least this old are counted.
    pub min_age_s: f64,
    /// The allocator object and where its probes sit.
    pub allocator: AllocatorInfo,
    /// Why the report was made: `duration`, `signal`, `target_exited`, `oom_kill` (the
    /// kernel's OOM killer killed the target: see `growth.summary`), `overhead_budget`
    /// (`--max-overhead` stopped the trace), or `interval` for a report printed while tracing
    /// continues.
    pub end_reason: EndReason,
    /// Outstanding bytes and allocations by age.
    pub age: AgeView,
    /// Growth over the window: the summary a person reads first.
    pub growth: Growth,
    /// The process's own memory over the window, when `/proc/PID/smaps_rollup` was readable.
    pub process: Option<ProcessView>,
    /// Set when allocations were sampled (`--sample`): bytes and counts are then estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<SamplingView>,
    /// What the probes cost the target, when the cost per hit could be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_time: Option<ProbeTime>,
    /// The kernel traced on and what its BPF features allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelView>,
    /// Where the symbols of each module in the stacks came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<ModuleSymbols>,
}

impl Report {
    /// The report's one verdict in words, with its evidence and where: `leak (confidence
    /// 99.9%) at parse_request <- handle_request`, `growing, not conclusive yet, at ...`,
    /// `no leak suspected`, `nothing traced (no probe fired)`. Every rendering states this.
    #[must_use]
    pub fn verdict_words(&self) -> String {
        let g = &self.growth;
        let first =
            |ids: &[String]| ids.first().and_then(|id| self.sites.iter().find(|s| &s.id == id));
        match g.verdict {
            Verdict::Leak => match first(&g.leak_sites) {
                Some(s) => {
                    format!("{} at {}", Verdict::Leak.describe(s.trend.confidence), s.name())
                }
                None => Verdict::Leak.describe(0.0),
            },
            Verdict::Growing => match first(&g.growing_sites) {
                Some(s) => format!("growing, not conclusive yet, at {}", s.name()),
                None => Verdict::Growing.describe(0.0),
            },
            _ if !self.probe_hits.values().any(|&h| h > 0) => {
                "nothing traced (no probe fired)".to_owned()
            }
            Verdict::Plateau => "no leak suspected (sites levelled off)".to_owned(),
            Verdict::Stable => "no leak suspected".to_owned(),
        }
    }

    /// The sites as people read them: leaks first, then growing, plateau and stable, most
    /// bytes first within each (the JSON keeps them by bytes).
    #[must_use]
    pub fn sites_by_verdict(&self) -> Vec<&Site> {
        let mut v: Vec<&Site> = self.sites.iter().collect();
        v.sort_by(|a, b| {
            a.trend
                .verdict
                .cmp(&b.trend.verdict)
                .then(b.outstanding_bytes.cmp(&a.outstanding_bytes))
        });
        v
    }
}

/// Why a report (a trace's or a watch's) was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// A report printed while tracing or watching goes on.
    Interval,
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal,
    /// The traced process exited (a trace's report).
    TargetExited,
    /// Every watched process exited (a watch's report).
    TargetsExited,
    /// The kernel's OOM killer killed the traced process.
    OomKill,
    /// The probes cost more than `--max-overhead`.
    OverheadBudget,
}

impl EndReason {
    /// The name the JSON contract writes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::Duration => "duration",
            Self::Signal => "signal",
            Self::TargetExited => "target_exited",
            Self::TargetsExited => "targets_exited",
            Self::OomKill => "oom_kill",
            Self::OverheadBudget => "overhead_budget",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compared with its JSON name, as a reader of the report would.
impl PartialEq<&str> for EndReason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Where a module's symbols came from: why its frames have `file:line` or only names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModuleSymbols {
    /// File name, as frames name the module.
    pub name: String,
    /// Its path as the process maps it.
    pub path: String,
    /// `debug_info` (its own DWARF), `build-id` or `debuglink` (a separate debug file),
    /// `symtab` or `dynsym` (names only), `none`.
    pub symbols: String,
    /// The separate debug file read, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
}

/// The kernel a trace ran on: which of leak's BPF objects it ran, and what that object does
/// differently (empty for the full one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KernelView {
    /// `uname -r`.
    pub release: String,
    /// `full` or `compat`.
    pub bpf_object: String,
    /// What the compatible object does differently, in words.
    pub degraded: Vec<String>,
    /// How the probes were attached: `perf_event` (one per probe), `uprobe_multi` (one link
    /// per program and file, 6.10+), `uprobe_session` (also: a sampled trace's entry skips the
    /// return of the calls it leaves out, 6.13+), `page_faults` (a growth profile's events).
    #[serde(default)]
    pub probes: String,
}

/// The time the target spent in the probes: hits times the cost of a hit measured at start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProbeTime {
    /// Entry probe hits.
    pub entry_hits: u64,
    /// Return probe hits.
    pub return_hits: u64,
    /// Measured cost of an entry hit (the trap and the program's start), ns.
    pub entry_ns: u64,
    /// Measured cost of a return hit, ns.
    pub return_ns: u64,
    /// Estimated seconds of the target's threads spent in probes: a floor, as the programs'
    /// work for each allocation comes on top.
    pub estimated_s: f64,
}

impl ProbeTime {
    /// From the hit counters and the measured cost of a hit.
    #[must_use]
    pub fn new(hooks: &[HookInfo], hits: &ProbeHits, cost: ProbeCost) -> Self {
        let entry_hits: u64 = (0..hooks.len()).map(|i| hits.get(i, false)).sum();
        let return_hits: u64 = hooks
            .iter()
            .enumerate()
            .filter(|(_, h)| h.has_exit)
            .map(|(i, _)| hits.get(i, true))
            .sum();
        #[expect(clippy::cast_precision_loss, reason = "seconds")]
        let ns =
            entry_hits as f64 * cost.entry_ns as f64 + return_hits as f64 * cost.return_ns as f64;
        Self {
            entry_hits,
            return_hits,
            entry_ns: cost.entry_ns,
            return_ns: cost.return_ns,
            // To the microsecond.
            estimated_s: (ns / 1e3).round() / 1e6,
        }
    }
}

/// How the allocations were sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SamplingView {
    /// One sample per this many bytes allocated, on average.
    pub mean_bytes: u64,
    /// Sampled allocations outstanding: what the estimates rest on.
    pub samples: u64,
}

/// Values by allocation age, in ranges that do not overlap: `under_1m` is 10 s to 1 min,
/// not everything younger than a minute.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct AgeBuckets {
    /// Younger than 10 s.
    pub under_10s: u64,
    /// 10 s to 1 min.
    pub under_1m: u64,
    /// 1 min to 10 min.
    pub under_10m: u64,
    /// 10 min and older.
    pub older: u64,
}

impl From<[u64; 4]> for AgeBuckets {
    fn from(v: [u64; 4]) -> Self {
        Self { under_10s: v[0], under_1m: v[1], under_10m: v[2], older: v[3] }
    }
}

impl AgeBuckets {
    /// The buckets, youngest first.
    #[must_use]
    pub fn values(&self) -> [u64; 4] {
        [self.under_10s, self.under_1m, self.under_10m, self.older]
    }
}

/// Outstanding memory by allocation age.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct AgeView {
    /// Bytes.
    pub bytes: AgeBuckets,
    /// Allocations.
    pub allocs: AgeBuckets,
}

/// A growth judgement (see `trend`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TrendView {
    /// `leak` (steady unbounded growth), `growing` (not enough evidence yet), `plateau` (grew,
    /// then levelled off: cache-like) or `stable`.
    pub verdict: Verdict,
    /// How sure, 0..1.
    pub confidence: f64,
    /// Robust (Theil-Sen) growth rate over the window, bytes per second.
    pub rate_bytes_per_s: f64,
    /// The same, bytes per hour.
    pub rate_bytes_per_h: f64,
    /// Growth rate over the last quarter of the window, bytes per second.
    pub recent_rate_bytes_per_s: f64,
    /// Last sample minus first (the first is the start, when nothing traced was outstanding).
    pub gained_bytes: i64,
    /// Samples judged.
    pub samples: usize,
}

impl Default for TrendView {
    fn default() -> Self {
        Self {
            verdict: Verdict::Stable,
            confidence: 0.0,
            rate_bytes_per_s: 0.0,
            rate_bytes_per_h: 0.0,
            recent_rate_bytes_per_s: 0.0,
            gained_bytes: 0,
            samples: 0,
        }
    }
}

/// A site's samples (at most [`crate::analysis::growth::SERIES_POINTS`], evenly spaced).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteSeries {
    /// Seconds since the start.
    pub t_s: Vec<f64>,
    /// Outstanding bytes.
    pub bytes: Vec<u64>,
    /// Outstanding allocations.
    pub allocs: Vec<u64>,
}

/// The process's memory samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessSeries {
    /// Seconds since the start.
    pub t_s: Vec<f64>,
    /// Resident set size.
    pub rss_bytes: Vec<u64>,
    /// Private resident bytes.
    pub private_bytes: Vec<u64>,
}

/// Growth of the traced total over the window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Growth {
    /// One line: how much, how fast, which sites, the verdict, time to the limit.
    pub summary: String,
    /// The report's one verdict: its most severe site's (`leak` if a site is judged a leak,
    /// else `growing`, `plateau` or `stable`). Every rendering states this one.
    #[serde(default)]
    pub verdict: Verdict,
    /// Where what the report rests on falls short, each a statement true of this report:
    /// no probe fired, the process's memory grew less than the traced sites, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<String>,
    /// The traced total's trend.
    pub trend: TrendView,
    /// Fewest sites whose growth makes up most (90%) of the growth, at most 5.
    pub top_sites: usize,
    /// Their share of the growth, 0..1.
    pub top_share: f64,
    /// Ids of the sites judged leaks, fastest first.
    pub leak_sites: Vec<String>,
    /// Ids of the sites growing without enough evidence yet, fastest first.
    pub growing_sites: Vec<String>,
    /// The memory limit and when it is reached at the current rate.
    pub limit: Option<LimitView>,
    /// Traced total over time.
    pub series: SiteSeries,
}

/// A memory limit and the projection against it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LimitView {
    /// The limit, bytes.
    pub bytes: u64,
    /// Where it comes from: `cgroup` (memory.max of the process's cgroup) or `option`
    /// (`--limit`, compared with the process's RSS).
    pub source: String,
    /// What counts against it now, bytes.
    pub usage_bytes: u64,
    /// Seconds until usage reaches the limit at the traced growth rate (None: not growing).
    pub time_to_limit_s: Option<f64>,
}

/// The process's own memory (`/proc/PID/smaps_rollup`), sampled alongside.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessView {
    /// Resident set size at the last sample.
    pub rss_bytes: u64,
    /// Private resident bytes at the last sample.
    pub private_bytes: u64,
    /// RSS change over the window.
    pub rss_gained_bytes: i64,
    /// Private bytes change over the window.
    pub private_gained_bytes: i64,
    /// Traced outstanding bytes change over the same samples.
    pub traced_gained_bytes: i64,
    /// The traced growth over the private growth (null: private memory did not grow). Above
    /// 1 when the allocator handed out memory it already held.
    pub traced_share: Option<f64>,
    /// Trend of the private bytes.
    pub trend: TrendView,
    /// Samples.
    pub series: ProcessSeries,
}

/// The traced process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TargetInfo {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Executable path.
    pub exe: String,
    /// Start time, in clock ticks after boot (`/proc/PID/stat`): with the pid, it names the
    /// process (a pid can be reused once its process has exited).
    pub start_time_ticks: u64,
}

/// What a report's trace recorded.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every allocation and free, by probes on the allocator.
    #[default]
    Exact,
    /// Memory made resident, by page faults (a growth profile).
    Growth,
}

/// What a growth profile measures and what it cannot see: a caveat of every growth report.
pub const GROWTH_CAVEAT: &str = "a growth profile: bytes are memory made resident, by the \
     stack that first touched it (often the code that filled a block, not the one that \
     allocated it); a leak whose blocks the allocator carves from memory already resident \
     shows only once the heap grows";

/// Totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Totals {
    /// Bytes allocated and not freed.
    pub outstanding_bytes: u64,
    /// Allocations not freed.
    pub outstanding_allocs: u64,
}

/// One allocation site: a distinct call stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Site {
    /// Stable id of the stack (hex).
    pub id: String,
    /// Bytes allocated here and not freed.
    pub outstanding_bytes: u64,
    /// Allocations made here and not freed.
    pub outstanding_allocs: u64,
    /// A growth profile (`mode: growth`): the bytes made resident by this stack's first touch
    /// and resident still (a huge page counts 2 MiB). `outstanding_bytes` then holds the
    /// same figure and `outstanding_allocs` the pages, so that every consumer of a site's
    /// bytes reads the profile's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    /// The allocator function called (`malloc`, `calloc`, `realloc`).
    pub allocator_fn: Option<String>,
    /// The allocator wrapper the site's code called, folded off the top of the stack
    /// (`zmalloc`, `xmalloc`, a `--fold` pattern's), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapper: Option<String>,
    /// Age in seconds of the oldest outstanding allocation.
    pub oldest_age_s: f64,
    /// Frames, innermost first: frame 0 is the caller of the allocator function.
    pub stack: Vec<StackFrame>,
    /// How complete the stack is: `complete` (it reaches the program's or its thread's
    /// start), or why it stops short; absent when unknown (a frame-pointer walk that did not
    /// reach a start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_end: Option<crate::analysis::model::StackEnd>,
    /// Outstanding bytes by allocation age.
    pub age_bytes: AgeBuckets,
    /// Growth of this site over the window.
    pub trend: TrendView,
    /// Outstanding bytes and allocations over the window.
    pub series: SiteSeries,
}

impl Site {
    /// `parse_request <- handle_conn`: the two innermost frames.
    #[must_use]
    pub fn name(&self) -> String {
        if self.stack.is_empty() {
            return format!("[no stack] {}", self.id);
        }
        self.stack.iter().take(2).map(StackFrame::name).collect::<Vec<_>>().join(" <- ")
    }
}

/// One frame of a site's stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StackFrame {
    /// Function (demangled), if known.
    pub function: Option<Text>,
    /// Module file name, if known.
    pub module: Option<Text>,
    /// Source file, if debug info is present.
    pub file: Option<Text>,
    /// Source line, if debug info is present.
    pub line: Option<u32>,
    /// Return address, hex.
    pub address: String,
}

/// Wall-clock window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Window {
    /// Start (attach), Unix seconds.
    pub start_unix_s: f64,
    /// End (last snapshot), Unix seconds.
    pub end_unix_s: f64,
}

/// Allocator object and probe placement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct AllocatorInfo {
    /// Path as the target sees it.
    pub path: String,
    /// One entry per attached program.
    pub probes: Vec<ProbeInfo>,
}

/// One attached program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProbeInfo {
    /// The hooked function (`malloc`, `operator new`, ...).
    pub function: String,
    /// The object (as the target sees it) the function is in.
    pub object: String,
    /// The symbol it was found under.
    pub symbol: String,
    /// BPF program name.
    pub program: String,
    /// Offset into the function.
    pub function_offset: u64,
    /// Whether the kernel emulates the probed instruction (no single-step).
    pub emulated: bool,
}

impl StackFrame {
    /// Display name: function, else `[module]`, else `[unknown]`.
    #[must_use]
    pub fn name(&self) -> String {
        match (&self.function, &self.module) {
            (Some(f), _) => f.to_string(),
            // Pseudo mappings such as `[vdso]` are bracketed already.
            (None, Some(m)) if m.starts_with('[') => m.to_string(),
            (None, Some(m)) => format!("[{m}]"),
            (None, None) => "[unknown]".to_owned(),
        }
    }

    /// `file:line` with the file's base name, if known.
    #[must_use]
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        let base = file.rsplit('/').next().unwrap_or(file);
        Some(match self.line {
            Some(l) => format!("{base}:{l}"),
            None => base.to_owned(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::model::HookInfo;

    #[test]
    fn probe_time_is_hits_times_the_measured_cost() {
        let hook = |symbol: &str, has_exit| HookInfo {
            symbol: symbol.to_owned(),
            display: symbol.to_owned(),
            has_exit,
        };
        let hooks = [hook("malloc", true), hook("free", false)];
        let mut hits = ProbeHits::default();
        let at = |cookie: u32, exit| leak_common::hit_index(cookie, exit) as usize;
        hits.0[at(0, false)] = 1000;
        hits.0[at(0, true)] = 990;
        hits.0[at(1, false)] = 500;
        // A return counter of a hook without a return probe is not counted.
        hits.0[at(1, true)] = 7;
        let t = ProbeTime::new(&hooks, &hits, ProbeCost { entry_ns: 1000, return_ns: 2000 });
        assert_eq!((t.entry_hits, t.return_hits), (1500, 990));
        assert!((t.estimated_s - 0.003_48).abs() < 1e-9, "{t:?}");
    }
}
