//! The watch report: the model `leak watch` and the node agent publish (JSON, and the
//! agent's HTTP API, `serve`) and its text rendering. Pure.
use serde::{Deserialize, Serialize};

use crate::{
    analysis::{
        report::{EndReason, TrendView, Window},
        trend::Verdict,
        units::{human_bytes, signed_bytes},
    },
    fleet::pods::PodRef,
};

/// Watch report format version.
pub const WATCH_REPORT_VERSION: u32 = 1;

/// A watched container (its memory cgroup), as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchedContainer {
    /// Its pod and container.
    pub pod: PodRef,
    /// Watched processes in it at the last sample.
    pub processes: usize,
    /// Bytes charged to it, page cache included, at the last sample.
    pub memory_bytes: u64,
    /// Its anonymous bytes at the last sample.
    pub anon_bytes: u64,
    /// Its working set (charged less the inactive page cache) at the last sample.
    #[serde(default)]
    pub working_set_bytes: u64,
    /// Its memory limit, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// Seconds until its working set reaches the limit at the anonymous memory's growth
    /// rate, when that grows (a leak, or growing) and there is a limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_to_limit: Option<f64>,
    /// Seconds it has been watched.
    pub watched_s: f64,
    /// When it was first seen, seconds after the watch started.
    #[serde(default)]
    pub first_seen_s: f64,
    /// Trend of the anonymous bytes.
    pub trend: TrendView,
    /// Samples (at most 64, evenly spaced).
    #[serde(default, skip_serializing_if = "ContainerSeries::is_empty")]
    pub series: ContainerSeries,
}

/// A watched container's samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ContainerSeries {
    /// Seconds since it was first seen.
    pub t_s: Vec<f64>,
    /// Bytes charged to it, page cache included.
    pub memory_bytes: Vec<u64>,
    /// Anonymous bytes.
    pub anon_bytes: Vec<u64>,
}

impl ContainerSeries {
    /// No samples (reports from before the series were kept).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.t_s.is_empty()
    }
}

/// A watched process, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchedProcess {
    /// Process id.
    pub pid: u32,
    /// `comm`.
    pub comm: String,
    /// Its command line (arguments joined by spaces, at most 256 characters): names it
    /// where `comm` does not (three `python3`s).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    /// Start time, clock ticks after boot.
    pub start_time_ticks: u64,
    /// Resident bytes at the last sample.
    pub rss_bytes: u64,
    /// Anonymous resident bytes (resident minus file-backed and shared) at the last sample.
    pub anon_bytes: u64,
    /// Seconds it has been watched.
    pub watched_s: f64,
    /// When it was first seen, seconds after the watch started.
    #[serde(default)]
    pub first_seen_s: f64,
    /// It exited while watched (its last samples are from before).
    pub exited: bool,
    /// Trend of the anonymous resident bytes.
    pub trend: TrendView,
    /// Samples (at most 64, evenly spaced).
    pub series: WatchSeries,
    /// Its Kubernetes pod and container, if it runs in one (from its cgroup path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// A watched process's samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchSeries {
    /// Seconds since it was first seen.
    pub t_s: Vec<f64>,
    /// Resident bytes.
    pub rss_bytes: Vec<u64>,
    /// Anonymous resident bytes.
    pub anon_bytes: Vec<u64>,
}

/// The probes attached to a flagged process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Escalation {
    /// Process id.
    pub pid: u32,
    /// `comm`.
    pub comm: String,
    /// When the probes were attached, Unix seconds.
    pub start_unix_s: f64,
    /// Its JSON report.
    pub json: String,
    /// Its flame graph.
    pub svg: String,
    /// Its pprof profile.
    #[serde(default)]
    pub pprof: String,
    /// Its pod, if it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Exit status of the `leak attach` that traced it (None: still running, or killed).
    pub exit_code: Option<i32>,
    /// Why it was traced: `leak` or `growing` (its verdict), or `near_limit` (its
    /// container's working set passed `--profile-above` of its limit).
    #[serde(default = "leak_reason")]
    pub reason: String,
    /// The process's start time (clock ticks after boot): with the pid, names the process.
    #[serde(default)]
    pub start_time_ticks: u64,
}

fn leak_reason() -> String {
    "leak".to_owned()
}

/// A watched process the kernel's OOM killer killed, and what is known of why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OomKillReport {
    /// Names it in this agent's API (`/api/v1/oom_kills/{id}`): `oom-COMM-PID-UNIXTIME`.
    pub id: String,
    /// When the kill was seen, Unix seconds (within a sample of it).
    pub at_unix_s: f64,
    /// How the victim was told: `tracepoint` (named by the kernel's `oom:mark_victim`
    /// event) or `cgroup_counter` (its container's `oom_kill` count rose as it died).
    pub seen_by: String,
    /// The process as last watched: its memory, trend and chart up to the kill, and pod.
    pub process: WatchedProcess,
    /// Its container's memory limit, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
    /// Its container's working set at the last sample before the kill, or its limit when
    /// its cgroup counted a kill for its limit: the limit is said reached when this is
    /// within 10% of it (else the node ran out of memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    /// The other watched processes of its container killed with it (one kill took them
    /// all: `memory.oom.group`, which the kubelet sets on cgroup v2): their pids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_killed: Vec<u32>,
    /// The trace or growth profile that was on when it was killed: its report, written at
    /// the kill (`end_reason: "oom_kill"`), is the post-mortem. None: it was watched but
    /// not profiled (this record and its chart are all there is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Escalation>,
    /// The post-mortem's top growing stack (its first frames), once it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_site: Option<String>,
    /// Its share of the growth, 0 to 1 (with `top_held`, of the bytes held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_share: Option<f64>,
    /// Nothing grew over the profile's window (it started moments before the kill):
    /// `top_site` is the stack that held most instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub top_held: bool,
    /// What a person reads first: bytes gained, over what time, at what rate, the limit
    /// reached, and what grew.
    pub triage: String,
    /// Earlier kills of the same workload (container, or program outside pods) this agent
    /// saw, oldest first: their ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<String>,
    /// The crash loop in words, when there were earlier kills: `3rd OOM kill in 2h0m, each
    /// time 90% of the growth from parse_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<String>,
    /// Whether the Kubernetes Event was posted (None: not in a cluster, or not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_posted: Option<bool>,
}

/// What `leak watch` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchReport {
    /// Format version ([`WATCH_REPORT_VERSION`]).
    pub version: u32,
    /// Wall-clock window.
    pub window: Window,
    /// Seconds watched.
    pub duration_s: f64,
    /// Processes watched at the last sample.
    pub processes_watched: usize,
    /// The processes that are not stable (with `--pid`: every one), leaks first, fastest
    /// first.
    pub processes: Vec<WatchedProcess>,
    /// The containers of the watched processes (memory cgroup statistics), ordered as the
    /// processes; without `--pid`, the ones that are not stable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<WatchedContainer>,
    /// Processes the probes were attached to.
    pub escalations: Vec<Escalation>,
    /// Processes judged leaks whose turn to be traced had not come when the watch ended.
    pub not_escalated: Vec<u32>,
    /// Watched processes the kernel's OOM killer killed, oldest first (the latest 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oom_kills: Vec<OomKillReport>,
    /// `duration`, `signal`, `targets_exited`, or `interval` for a report printed while
    /// watching continues.
    pub end_reason: EndReason,
    /// What the reader should know to trust it: why nothing is watched, what `--min-growth`
    /// left unjudged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// `+3.5 GiB/h`.
pub(crate) fn per_hour(rate: f64) -> String {
    #[expect(clippy::cast_possible_truncation, reason = "saturating display value")]
    let r = rate as i64;
    format!("{}/h", signed_bytes(r))
}

#[expect(clippy::cast_precision_loss, reason = "byte counts: exact below 2^53")]
pub(crate) fn bytes_f64(b: u64) -> f64 {
    b as f64
}

/// The text table of a watch report: the `top` processes that are not stable.
#[must_use]
pub fn render(report: &WatchReport, header: &str, top: usize) -> String {
    use std::fmt::Write as _;
    let count = |v: Verdict| report.processes.iter().filter(|p| p.trend.verdict == v).count();
    let mut s = format!(
        "== {header}: {} process{} watched; {} leaking, {} growing, {} plateau ==\n",
        report.processes_watched,
        if report.processes_watched == 1 { "" } else { "es" },
        count(Verdict::Leak),
        count(Verdict::Growing),
        count(Verdict::Plateau),
    );
    let shown: Vec<&WatchedProcess> =
        report.processes.iter().filter(|p| p.trend.verdict != Verdict::Stable).take(top).collect();
    if shown.is_empty() {
        s.push_str("no process's memory is growing\n");
    } else {
        let _ = writeln!(
            s,
            "{:>8}  {:<COMMAND_WIDTH$} {:>11} {:>12} {:>14}  VERDICT",
            "PID", "COMMAND", "ANON", "GAINED", "RATE"
        );
    }
    for p in shown {
        let _ = write!(
            s,
            "{:>8}  {:<COMMAND_WIDTH$} {:>11} {:>12} {:>14}  {}",
            p.pid,
            command(p),
            human_bytes(p.anon_bytes),
            signed_bytes(p.trend.gained_bytes),
            per_hour(p.trend.rate_bytes_per_h),
            p.trend.verdict.describe(p.trend.confidence),
        );
        if p.exited {
            s.push_str(" (exited)");
        }
        if let Some(pod) = &p.pod {
            s.push_str("  ");
            s.push_str(&pod_name(pod));
        }
        s.push('\n');
    }
    let containers: Vec<&WatchedContainer> =
        report.containers.iter().filter(|c| c.trend.verdict != Verdict::Stable).take(top).collect();
    if !containers.is_empty() {
        let _ = writeln!(
            s,
            "containers (memory cgroup):\n{:>11} {:>11} {:>12} {:>14}  VERDICT",
            "MEMORY", "ANON", "GAINED", "RATE"
        );
        for c in containers {
            let _ = writeln!(
                s,
                "{:>11} {:>11} {:>12} {:>14}  {}  {}",
                human_bytes(c.memory_bytes),
                human_bytes(c.anon_bytes),
                signed_bytes(c.trend.gained_bytes),
                per_hour(c.trend.rate_bytes_per_h),
                c.trend.verdict.describe(c.trend.confidence),
                pod_name(&c.pod)
            );
        }
    }
    if !report.oom_kills.is_empty() {
        s.push_str("OOM kills:\n");
    }
    for k in &report.oom_kills {
        let p = &k.process;
        let _ = write!(s, "  pid {} ({})", p.pid, p.comm);
        if let Some(pod) = &p.pod {
            let _ = write!(s, " {}", pod_name(pod));
        }
        let _ = writeln!(s, ": {}", k.triage);
        if let Some(r) = &k.repeated {
            let _ = writeln!(s, "    {r}");
        }
        if let Some(e) = k.profile.as_ref().filter(|e| e.exit_code == Some(0)) {
            let _ = writeln!(s, "    post-mortem: {}", e.json);
        }
    }
    for n in &report.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

/// Characters of a process's command line the text table shows.
const COMMAND_WIDTH: usize = 28;

/// A process as the table names it: its command line (the program by its file name), cut to
/// [`COMMAND_WIDTH`], else its `comm`.
fn command(p: &WatchedProcess) -> String {
    let full = if p.cmdline.is_empty() {
        p.comm.clone()
    } else {
        crate::procfs::short_command(&p.cmdline)
    };
    if full.chars().count() <= COMMAND_WIDTH {
        return full;
    }
    let cut: String = full.chars().take(COMMAND_WIDTH - 3).collect();
    format!("{cut}...")
}

/// `pod NS/NAME container NAME (Deployment NAME)`, or with enough of each id to find it in
/// `kubectl get pods -A -o wide` / `crictl ps` when the API gave no names.
pub(crate) fn pod_name(pod: &PodRef) -> String {
    let pod_part = match (&pod.namespace, &pod.name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => format!("pod {}", pod.pod_uid),
    };
    let named = match (&pod.container_name, &pod.container_id) {
        (Some(name), _) => format!("{pod_part} container {name}"),
        (None, Some(c)) => format!("{pod_part} container {}", &c[..12.min(c.len())]),
        (None, None) => pod_part,
    };
    match (&pod.workload_kind, &pod.workload) {
        (Some(kind), Some(name)) if kind != "Pod" => format!("{named} ({kind} {name})"),
        _ => named,
    }
}
