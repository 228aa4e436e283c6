//! `leak watch`: samples processes' memory only (`/proc/PID/statm`, no probes), judges each
//! one's growth, and with `--escalate` attaches the probes to a process judged leaking for a
//! while and writes its report. This is how a fleet is watched at near-zero cost.
//!
//! [`WatchList`] and the report model are pure; [`run`] is the loop, with the escalations
//! as `leak attach` child processes (each isolated, the watch keeps sampling meanwhile).
use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::{
    agent::{self, Sampler, Signals},
    clock,
    config::WatchConfig,
    error::Error,
    growth::{SERIES_POINTS, thin_indices, trend_view},
    history::{CgroupMemory, Kind, ProcessMemory, Sampled},
    output::{
        self,
        table::{human_bytes, signed_bytes},
    },
    pods::PodRef,
    procfs,
    report::{TrendView, Window},
    trend::{self, Params, Verdict},
};

/// Watch report format version.
pub const WATCH_REPORT_VERSION: u32 = 1;

/// One process's memory at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Process id.
    pub pid: u32,
    /// Start time (clock ticks after boot): with the pid, names the process.
    pub start_ticks: u64,
    /// `comm`.
    pub comm: String,
    /// Its memory.
    pub memory: ProcessMemory,
    /// Its Kubernetes pod and container, if it runs in one.
    pub pod: Option<PodRef>,
}

/// A container's memory at one instant (its memory cgroup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerObservation {
    /// Its pod and container (the container id is set).
    pub pod: PodRef,
    /// Its memory.
    pub memory: CgroupMemory,
    /// Watched processes in it.
    pub processes: usize,
}

#[derive(Clone, Debug)]
struct WatchedCgroup {
    pod: PodRef,
    processes: usize,
    first_seen: f64,
    samples: Sampled<CgroupMemory>,
}

#[derive(Clone, Debug)]
struct Watched {
    comm: String,
    pod: Option<PodRef>,
    /// Watch time of its first sample, seconds.
    first_seen: f64,
    samples: Sampled<ProcessMemory>,
    /// Not seen any more (kept only for processes named with `--pid`).
    exited: bool,
}

/// The processes watched and their samples. A process that is not observed any more has
/// exited: it is forgotten, or (processes named with `--pid`) kept for the report.
#[derive(Clone, Debug)]
pub struct WatchList {
    procs: BTreeMap<(u32, u64), Watched>,
    /// Containers by id.
    containers: BTreeMap<String, WatchedCgroup>,
    period: f64,
}

/// A watched container (its memory cgroup), as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchedContainer {
    /// Its pod and container.
    pub pod: PodRef,
    /// Watched processes in it at the last sample.
    pub processes: usize,
    /// Bytes charged to it, page cache included, at the last sample.
    pub memory_bytes: u64,
    /// Its anonymous bytes at the last sample.
    pub anon_bytes: u64,
    /// Seconds it has been watched.
    pub watched_s: f64,
    /// Trend of the anonymous bytes.
    pub trend: TrendView,
}

/// A watched process, as reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchedProcess {
    /// Process id.
    pub pid: u32,
    /// `comm`.
    pub comm: String,
    /// Start time, clock ticks after boot.
    pub start_time_ticks: u64,
    /// Resident bytes at the last sample.
    pub rss_bytes: u64,
    /// Anonymous resident bytes (resident minus file-backed and shared) at the last sample.
    pub anon_bytes: u64,
    /// Seconds it has been watched.
    pub watched_s: f64,
    /// It exited while watched (its last samples are from before).
    pub exited: bool,
    /// Trend of the anonymous resident bytes.
    pub trend: TrendView,
    /// Samples (at most [`SERIES_POINTS`], evenly spaced).
    pub series: WatchSeries,
    /// Its Kubernetes pod and container, if it runs in one (from its cgroup path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

/// A watched process's samples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchSeries {
    /// Seconds since it was first seen.
    pub t_s: Vec<f64>,
    /// Resident bytes.
    pub rss_bytes: Vec<u64>,
    /// Anonymous resident bytes.
    pub anon_bytes: Vec<u64>,
}

/// The probes attached to a flagged process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

/// What `leak watch` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// `duration`, `signal`, `targets_exited`, or `interval` for a report printed while
    /// watching continues.
    pub end_reason: String,
}

impl WatchList {
    /// An empty list, sampled every `period` seconds (see [`Sampled`]).
    #[must_use]
    pub fn new(period: f64) -> Self {
        Self { procs: BTreeMap::new(), containers: BTreeMap::new(), period }
    }

    /// Records the processes observed at watch time `t` (see [`Kind`]): new ones start a
    /// series; missing ones have exited and are dropped, or marked exited with `keep_exited`.
    pub fn observe(&mut self, t: f64, seen: &[Observation], kind: Kind, keep_exited: bool) {
        let keys: HashSet<(u32, u64)> = seen.iter().map(|o| (o.pid, o.start_ticks)).collect();
        if keep_exited {
            for (k, w) in &mut self.procs {
                w.exited |= !keys.contains(k);
            }
        } else {
            self.procs.retain(|k, _| keys.contains(k));
        }
        for o in seen {
            let key = (o.pid, o.start_ticks);
            if let Some(w) = self.procs.get_mut(&key) {
                // Names from the API may come after the first sample.
                w.pod.clone_from(&o.pod);
                w.samples.push(t - w.first_seen, o.memory, kind);
                w.samples.compact();
            } else {
                self.procs.insert(
                    key,
                    Watched {
                        comm: o.comm.clone(),
                        pod: o.pod.clone(),
                        first_seen: t,
                        samples: Sampled::new(o.memory, self.period),
                        exited: false,
                    },
                );
            }
        }
    }

    /// Records the containers observed at watch time `t`: the ones not seen any more are
    /// gone (a restarted container has a new id).
    pub fn observe_containers(&mut self, t: f64, seen: &[ContainerObservation], kind: Kind) {
        let ids: HashSet<&str> =
            seen.iter().filter_map(|c| c.pod.container_id.as_deref()).collect();
        self.containers.retain(|id, _| ids.contains(id.as_str()));
        for c in seen {
            let Some(id) = &c.pod.container_id else { continue };
            if let Some(w) = self.containers.get_mut(id) {
                w.pod.clone_from(&c.pod);
                w.processes = c.processes;
                w.samples.push(t - w.first_seen, c.memory, kind);
                w.samples.compact();
            } else {
                self.containers.insert(
                    id.clone(),
                    WatchedCgroup {
                        pod: c.pod.clone(),
                        processes: c.processes,
                        first_seen: t,
                        samples: Sampled::new(c.memory, self.period),
                    },
                );
            }
        }
    }

    /// Judges every container on its anonymous bytes, ordered as [`Self::judge`].
    #[must_use]
    pub fn judge_containers(&self, params: &Params) -> Vec<WatchedContainer> {
        let mut out: Vec<WatchedContainer> = self
            .containers
            .values()
            .map(|w| {
                let times = w.samples.times();
                let values = w.samples.values();
                let points: Vec<(f64, f64)> =
                    times.iter().zip(values).map(|(t, m)| (*t, bytes_f64(m.anon))).collect();
                let last = values.last().copied().unwrap_or_default();
                WatchedContainer {
                    pod: w.pod.clone(),
                    processes: w.processes,
                    memory_bytes: last.usage,
                    anon_bytes: last.anon,
                    watched_s: times.last().copied().unwrap_or(0.0),
                    trend: trend_view(&trend::classify(&points, params)),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            rank(a.trend.verdict)
                .cmp(&rank(b.trend.verdict))
                .then(b.trend.rate_bytes_per_s.total_cmp(&a.trend.rate_bytes_per_s))
                .then(a.pod.container_id.cmp(&b.pod.container_id))
        });
        out
    }

    /// Processes watched (exited ones kept included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Processes watched that have not exited.
    #[must_use]
    pub fn running(&self) -> usize {
        self.procs.values().filter(|w| !w.exited).count()
    }

    /// Nothing is watched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Judges every process on its anonymous resident bytes: leaks first, then growing,
    /// plateau and stable; fastest growth first within each.
    #[must_use]
    pub fn judge(&self, params: &Params) -> Vec<WatchedProcess> {
        let mut out: Vec<WatchedProcess> = self
            .procs
            .iter()
            .map(|(&(pid, start), w)| {
                let times = w.samples.times();
                let values = w.samples.values();
                let points: Vec<(f64, f64)> =
                    times.iter().zip(values).map(|(t, m)| (*t, bytes_f64(m.private))).collect();
                let keep = thin_indices(times.len(), SERIES_POINTS);
                let last = values.last().copied().unwrap_or_default();
                WatchedProcess {
                    pid,
                    comm: w.comm.clone(),
                    start_time_ticks: start,
                    rss_bytes: last.rss,
                    anon_bytes: last.private,
                    watched_s: times.last().copied().unwrap_or(0.0),
                    exited: w.exited,
                    trend: trend_view(&trend::classify(&points, params)),
                    series: WatchSeries {
                        t_s: keep.iter().map(|&i| (times[i] * 1000.0).round() / 1000.0).collect(),
                        rss_bytes: keep.iter().map(|&i| values[i].rss).collect(),
                        anon_bytes: keep.iter().map(|&i| values[i].private).collect(),
                    },
                    pod: w.pod.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            rank(a.trend.verdict)
                .cmp(&rank(b.trend.verdict))
                .then(b.trend.rate_bytes_per_s.total_cmp(&a.trend.rate_bytes_per_s))
                .then(a.pid.cmp(&b.pid))
        });
        out
    }
}

/// `+3.5 GiB/h`.
fn per_hour(rate: f64) -> String {
    #[expect(clippy::cast_possible_truncation, reason = "saturating display value")]
    let r = rate as i64;
    format!("{}/h", signed_bytes(r))
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Leak => 0,
        Verdict::Growing => 1,
        Verdict::Plateau => 2,
        Verdict::Stable => 3,
    }
}

#[expect(clippy::cast_precision_loss, reason = "byte counts: exact below 2^53")]
fn bytes_f64(b: u64) -> f64 {
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
            "{:>8}  {:<16} {:>11} {:>12} {:>14}  VERDICT",
            "PID", "COMM", "ANON", "GAINED", "RATE"
        );
    }
    for p in shown {
        let _ = write!(
            s,
            "{:>8}  {:<16} {:>11} {:>12} {:>14}  {} ({:.0}%)",
            p.pid,
            p.comm,
            human_bytes(p.anon_bytes),
            signed_bytes(p.trend.gained_bytes),
            per_hour(p.trend.rate_bytes_per_h),
            p.trend.verdict.as_str(),
            p.trend.confidence * 100.0
        );
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
                "{:>11} {:>11} {:>12} {:>14}  {} ({:.0}%)  {}",
                human_bytes(c.memory_bytes),
                human_bytes(c.anon_bytes),
                signed_bytes(c.trend.gained_bytes),
                per_hour(c.trend.rate_bytes_per_h),
                c.trend.verdict.as_str(),
                c.trend.confidence * 100.0,
                pod_name(&c.pod)
            );
        }
    }
    s
}

/// `pod NS/NAME container NAME`, or with enough of each id to find it in
/// `kubectl get pods -A -o wide` / `crictl ps` when the API gave no names.
fn pod_name(pod: &PodRef) -> String {
    let pod_part = match (&pod.namespace, &pod.name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => format!("pod {}", pod.pod_uid),
    };
    match (&pod.container_name, &pod.container_id) {
        (Some(name), _) => format!("{pod_part} container {name}"),
        (None, Some(c)) => format!("{pod_part} container {}", &c[..12.min(c.len())]),
        (None, None) => pod_part,
    }
}

// ---------------------------------------------------------------------------------------------
// The loop.

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

/// Pod names from the Kubernetes API, refreshed in the background (see [`Names::start`]).
#[derive(Clone, Default)]
struct Names(Arc<std::sync::Mutex<hashbrown::HashMap<String, crate::kube::PodMeta>>>);

impl Names {
    /// How often the pod list is fetched again.
    const REFRESH: Duration = Duration::from_secs(15);

    /// Starts fetching this node's pods every [`Self::REFRESH`], when running in a cluster.
    fn start() -> Self {
        let names = Self::default();
        let Some(api) = crate::kubeapi::ApiConfig::in_cluster() else {
            log::info!("not in a Kubernetes cluster: pods are named by UID");
            return names;
        };
        let shared = names.clone();
        std::thread::spawn(move || {
            let mut failing = false;
            loop {
                match crate::kubeapi::fetch_pods(&api) {
                    Ok(pods) => {
                        if failing {
                            log::warn!("the Kubernetes API answers again");
                        }
                        failing = false;
                        *shared.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pods;
                    }
                    Err(e) if !failing => {
                        log::warn!(
                            "the Kubernetes API is not reachable ({e}): pods are named by UID"
                        );
                        failing = true;
                    }
                    Err(e) => log::debug!("Kubernetes API: {e}"),
                }
                std::thread::sleep(Self::REFRESH);
            }
        });
        names
    }
}

/// Reads the memory of the targets now, and of the containers they run in (each
/// container's memory cgroup once, under `cgroup_root`).
fn observe(
    targets: &Targets,
    skip: &HashSet<u32>,
    names: &Names,
    selection: Option<&crate::kube::Selection>,
    cgroup_root: &std::path::Path,
) -> (Vec<Observation>, Vec<ContainerObservation>) {
    // Held for this pass (the refresher waits at most that long), not copied.
    let api_pods = names.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pids = match targets {
        Targets::All | Targets::Pods => procfs::all_pids(),
        Targets::Pids(p) => p.clone(),
    };
    // Container id -> (pod, memory cgroup, processes).
    let mut containers: BTreeMap<String, (PodRef, crate::pods::MemoryCgroup, usize)> =
        BTreeMap::new();
    let processes = pids
        .into_iter()
        .filter(|p| !skip.contains(p))
        .filter_map(|pid| {
            let cgroups = procfs::cgroup_text(pid).unwrap_or_default();
            let mut pod = crate::pods::pod_of(&cgroups);
            if *targets == Targets::Pods && pod.is_none() {
                return None;
            }
            if let Some(p) = &mut pod {
                p.name_from(&api_pods);
            }
            let comm = procfs::comm(pid).unwrap_or_default();
            if let Some(sel) = selection {
                let id = crate::kube::Identity {
                    comm: &comm,
                    namespace: pod.as_ref().and_then(|p| p.namespace.as_deref()),
                    pod: pod.as_ref().and_then(|p| p.name.as_deref()),
                    container: pod.as_ref().and_then(|p| p.container_name.as_deref()),
                };
                if !sel.selects(&id) {
                    return None;
                }
            }
            let memory = procfs::statm_memory(pid)?;
            // Kernel threads have no memory of their own.
            if memory.rss == 0 {
                return None;
            }
            // The memory cgroup must be the container's own: on a hybrid host whose v1
            // memory hierarchy does not mirror the kubelet's, it is someone else's.
            if let Some((p, id)) = pod.as_ref().and_then(|p| Some((p, p.container_id.clone()?)))
                && let Some(cg) = crate::pods::memory_cgroup_of(&cgroups)
                && crate::pods::pod_of_path(cg.path()).and_then(|m| m.container_id).as_ref()
                    == Some(&id)
            {
                containers.entry(id).or_insert_with(|| (p.clone(), cg, 0)).2 += 1;
            }
            Some(Observation { pid, start_ticks: procfs::start_time(pid)?, comm, memory, pod })
        })
        .collect();
    let containers = containers
        .into_values()
        .filter_map(|(pod, cg, processes)| {
            let (_, memory) = procfs::cgroup_memory(cgroup_root, &cg)?;
            Some(ContainerObservation { pod, memory, processes })
        })
        .collect();
    (processes, containers)
}

/// Runs `leak attach` on flagged processes, at most `max` at a time.
struct Escalator {
    duration: Duration,
    out_dir: PathBuf,
    max: usize,
    max_overhead: Option<u32>,
    queue: VecDeque<(u32, u64, String, Option<PodRef>)>,
    /// The running `leak attach` children, with their index in `done`.
    running: Vec<(Child, usize)>,
    seen: HashSet<(u32, u64)>,
    done: Vec<Escalation>,
}

impl Escalator {
    fn new(duration: Duration, out_dir: PathBuf, max: usize, max_overhead: Option<u32>) -> Self {
        Self {
            duration,
            out_dir,
            max: max.max(1),
            max_overhead,
            queue: VecDeque::new(),
            running: Vec::new(),
            seen: HashSet::new(),
            done: Vec::new(),
        }
    }

    /// Queues the processes judged leaks (each once).
    fn flag(&mut self, judged: &[WatchedProcess]) {
        for p in judged.iter().filter(|p| p.trend.verdict == Verdict::Leak) {
            if self.seen.insert((p.pid, p.start_time_ticks)) {
                eprintln!(
                    "leak: pid {} ({}) leaks {}: attaching the probes for {:.1} s",
                    p.pid,
                    p.comm,
                    per_hour(p.trend.rate_bytes_per_h),
                    self.duration.as_secs_f64()
                );
                self.queue.push_back((p.pid, p.start_time_ticks, p.comm.clone(), p.pod.clone()));
            }
        }
    }

    /// Notices finished escalations and starts the next ones.
    fn poll(&mut self) -> Result<(), Error> {
        let mut still = Vec::with_capacity(self.running.len());
        for (mut child, i) in self.running.drain(..) {
            match child.try_wait().map_err(Error::io("waiting for leak attach"))? {
                Some(status) => {
                    let e = &mut self.done[i];
                    e.exit_code = status.code();
                    if status.success() {
                        eprintln!("leak: wrote {}, {} and {}", e.json, e.svg, e.pprof);
                    } else {
                        eprintln!("leak: tracing pid {} failed ({status})", e.pid);
                    }
                }
                None => still.push((child, i)),
            }
        }
        self.running = still;
        while self.running.len() < self.max {
            let Some((pid, start, comm, pod)) = self.queue.pop_front() else { break };
            // Gone, or a new process under the same pid: nothing to trace.
            if procfs::start_time(pid) != Some(start) {
                continue;
            }
            self.start(pid, &comm, pod)?;
        }
        Ok(())
    }

    fn start(&mut self, pid: u32, comm: &str, pod: Option<PodRef>) -> Result<(), Error> {
        let name = format!("leak-{}-{pid}", sanitize(comm));
        let json = self.out_dir.join(format!("{name}.json"));
        let svg = self.out_dir.join(format!("{name}.svg"));
        let pprof = self.out_dir.join(format!("{name}.pb.gz"));
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        // About 20 samples whatever the duration: enough for a verdict. Only the final
        // report is printed (the interval is longer than the run).
        let sample = (self.duration / 20).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let exe = std::env::current_exe().map_err(Error::io("finding the leak executable"))?;
        let child = Command::new(exe)
            .args(["attach", "--pid", &pid.to_string(), "--duration", &ms(self.duration)])
            .args(["--interval", &ms(self.duration * 2), "--sample-interval", &ms(sample)])
            .arg("--json")
            .arg(&json)
            .arg("--svg")
            .arg(&svg)
            .arg("--pprof")
            .arg(&pprof)
            .args(self.max_overhead.map(|bp| format!("--max-overhead={}%", f64::from(bp) / 100.0)))
            .stdin(Stdio::null())
            .spawn()
            .map_err(Error::io("starting leak attach"))?;
        self.done.push(Escalation {
            pid,
            comm: comm.to_owned(),
            start_unix_s: clock::now_unix(),
            json: json.display().to_string(),
            svg: svg.display().to_string(),
            pprof: pprof.display().to_string(),
            pod,
            exit_code: None,
        });
        self.running.push((child, self.done.len() - 1));
        Ok(())
    }

    /// Pids of the running escalations (not to be watched themselves).
    fn children(&self) -> impl Iterator<Item = u32> + '_ {
        self.running.iter().map(|(c, _)| c.id())
    }

    /// Ends the escalations: the queued ones are not started (returned), the running one is
    /// told to stop now (SIGINT: `leak attach` writes its report) and waited for; a second
    /// signal, or no exit within [`STOP_GRACE`], kills it.
    async fn finish(&mut self, signals: &mut Signals) -> Result<Vec<u32>, Error> {
        let pending: Vec<u32> = self.queue.drain(..).map(|q| q.0).collect();
        for pid in &pending {
            eprintln!("leak: pid {pid} not traced: the watch ended first");
        }
        for (child, _) in &self.running {
            signal_child(child, libc::SIGINT);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            self.poll()?;
            if self.running.is_empty() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if Instant::now() > deadline {
                        self.running.iter().for_each(|(c, _)| signal_child(c, libc::SIGKILL));
                    }
                }
                _ = signals.recv() => {
                    self.running.iter().for_each(|(c, _)| signal_child(c, libc::SIGKILL));
                }
            }
        }
        Ok(pending)
    }
}

/// How long a stopped escalation may take to write its report.
const STOP_GRACE: Duration = Duration::from_secs(30);

fn signal_child(child: &Child, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall on our own, not yet reaped child.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Escalator {
    /// On an error path: do not leave a tracer running, nor a zombie.
    fn drop(&mut self) {
        for (child, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn sanitize(comm: &str) -> String {
    comm.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// `leak watch`.
///
/// # Errors
/// Bad input (no such process, escalation without privileges, unwritable outputs), or
/// writing the report failed.
pub fn run(rt: &tokio::runtime::Runtime, cfg: &WatchConfig) -> Result<u8, Error> {
    if let Targets::Pids(pids) = &cfg.targets {
        for &pid in pids {
            if !procfs::pid_exists(pid) {
                return Err(Error::BadInput(format!(
                    "no such process: {pid}: check the pid (ps -e)"
                )));
            }
        }
    }
    if cfg.listen.is_some() {
        // The agent keeps its reports in a directory of its own, made on first start.
        std::fs::create_dir_all(&cfg.out_dir).map_err(|e| {
            Error::BadInput(format!("cannot create {}: {e}", cfg.out_dir.display()))
        })?;
    }
    if cfg.escalate.is_some() {
        crate::preflight::check_privileges()?;
        crate::preflight::check_kernel(&crate::preflight::sysfs_root())?;
        output::check_writable(&cfg.out_dir.join(".leak-watch-check")).map_err(|e| {
            Error::BadInput(format!("cannot write to {}: {e}", cfg.out_dir.display()))
        })?;
    }
    if let Some(p) = &cfg.json {
        output::check_writable(p)
            .map_err(|e| Error::BadInput(format!("cannot write {}: {e}", p.display())))?;
    }
    let mut signals = {
        let _guard = rt.enter();
        Signals::install()?
    };
    rt.block_on(watch(cfg, &mut signals))?;
    Ok(0)
}

async fn watch(cfg: &WatchConfig, signals: &mut Signals) -> Result<WatchReport, Error> {
    let start = Instant::now();
    let start_unix = clock::now_unix();
    let params = Params { min_growth_bytes: bytes_f64(cfg.min_growth), ..Params::default() };
    let mut list = WatchList::new(cfg.sample_interval.as_secs_f64());
    let mut escalator = cfg
        .escalate
        .map(|d| Escalator::new(d, cfg.out_dir.clone(), cfg.max_traced, cfg.max_overhead));
    // `leak agent`: metrics and reports over HTTP, from the state published after each
    // sample (every process, stable ones included).
    let published = Arc::new(crate::serve::Published::default());
    let names = if cfg.listen.is_some() { Names::start() } else { Names::default() };
    let server = match cfg.listen {
        Some(addr) => Some(serve(addr, &published).await?),
        None => None,
    };
    // Not ourselves, nor the escalations we run.
    let skip = |e: &Option<Escalator>| -> HashSet<u32> {
        std::iter::once(std::process::id()).chain(e.iter().flat_map(Escalator::children)).collect()
    };
    let mut sampler = Sampler::new(start, cfg.sample_interval);
    let mut report_tick = interval_at(start + cfg.interval, cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let until_deadline = agent::deadline(start, cfg.duration);
    tokio::pin!(until_deadline);
    let explicit = matches!(cfg.targets, Targets::Pids(_));
    let look = |escalator: &Option<Escalator>| {
        observe(&cfg.targets, &skip(escalator), &names, cfg.selection.as_ref(), &cfg.cgroup_root)
    };
    let record =
        |list: &mut WatchList, seen: &(Vec<Observation>, Vec<ContainerObservation>), kind| {
            let t = start.elapsed().as_secs_f64();
            list.observe(t, &seen.0, kind, explicit);
            list.observe_containers(t, &seen.1, kind);
        };
    record(&mut list, &look(&escalator), Kind::Tick);
    let end = loop {
        tokio::select! {
            () = sampler.tick() => {
                let began = Instant::now();
                record(&mut list, &look(&escalator), Kind::Tick);
                if escalator.is_some() || server.is_some() {
                    // Judged once per sample (a Theil-Sen fit per process) for both uses.
                    let judged = list.judge(&params);
                    if let Some(e) = &mut escalator {
                        e.flag(&judged);
                        e.poll()?;
                    }
                    if server.is_some() {
                        // Every process, stable ones included.
                        let containers = list.judge_containers(&params);
                        let at = report_of(
                            &list,
                            (judged, containers),
                            start_unix,
                            escalator.as_ref(),
                            "interval",
                        );
                        published.publish(at);
                    }
                }
                sampler.spent(began);
                if explicit && list.running() == 0 {
                    break "targets_exited";
                }
            }
            _ = report_tick.tick() => {
                let report = build(&list, &params, start_unix, explicit, escalator.as_ref(), "interval");
                let header = format!(
                    "watch {} +{:.1}s",
                    clock::local_hms(report.window.end_unix_s),
                    report.duration_s
                );
                print(&render(&report, &header, cfg.top));
            }
            () = &mut until_deadline => break "duration",
            _ = signals.recv() => break "signal",
        }
    };
    if end != "targets_exited" {
        record(&mut list, &look(&escalator), Kind::Last);
    }
    let not_escalated = match &mut escalator {
        Some(e) => e.finish(signals).await?,
        None => Vec::new(),
    };
    if let Some(server) = server {
        server.abort();
    }
    let mut report = build(&list, &params, start_unix, explicit, escalator.as_ref(), end);
    report.not_escalated = not_escalated;
    let header = format!(
        "watch ended {} ({:.1} s, {end})",
        clock::local_hms(report.window.end_unix_s),
        report.duration_s
    );
    print(&render(&report, &header, cfg.top));
    if let Some(p) = &cfg.json {
        let mut text = serde_json::to_vec_pretty(&report).unwrap_or_default();
        text.push(b'\n');
        output::write_atomic(p, &text).map_err(Error::io(format!("writing {}", p.display())))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(report)
}

/// Serves `published` over HTTP on `addr` in the background.
async fn serve(
    addr: std::net::SocketAddr,
    published: &Arc<crate::serve::Published>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::BadInput(format!("cannot listen on {addr}: {e}: choose another --listen"))
    })?;
    let bound = listener.local_addr().map_err(Error::io("reading the bound address"))?;
    eprintln!("leak: serving http://{bound}/metrics and /api/v1/reports");
    let handler = crate::serve::handler(Arc::clone(published));
    Ok(tokio::spawn(crate::http::serve(listener, handler)))
}

fn build(
    list: &WatchList,
    params: &Params,
    start_unix: f64,
    explicit: bool,
    escalator: Option<&Escalator>,
    end_reason: &str,
) -> WatchReport {
    let mut processes = list.judge(params);
    let mut containers = list.judge_containers(params);
    if !explicit {
        processes.retain(|p| p.trend.verdict != Verdict::Stable);
        containers.retain(|c| c.trend.verdict != Verdict::Stable);
    }
    report_of(list, (processes, containers), start_unix, escalator, end_reason)
}

/// The report of `list` with its processes and containers already judged.
fn report_of(
    list: &WatchList,
    (processes, containers): (Vec<WatchedProcess>, Vec<WatchedContainer>),
    start_unix: f64,
    escalator: Option<&Escalator>,
    end_reason: &str,
) -> WatchReport {
    let end_unix = clock::now_unix();
    WatchReport {
        version: WATCH_REPORT_VERSION,
        window: Window { start_unix_s: start_unix, end_unix_s: end_unix },
        duration_s: ((end_unix - start_unix) * 1000.0).round() / 1000.0,
        processes_watched: list.len(),
        processes,
        containers,
        escalations: escalator.map(|e| e.done.clone()).unwrap_or_default(),
        not_escalated: Vec::new(),
        end_reason: end_reason.to_owned(),
    }
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[cfg(test)]
#[expect(clippy::cast_precision_loss, reason = "small test values")]
mod tests {
    use super::*;

    fn obs(pid: u32, start: u64, private: u64) -> Observation {
        Observation {
            pid,
            start_ticks: start,
            comm: format!("p{pid}"),
            memory: ProcessMemory { rss: private + (1 << 20), private },
            pod: None,
        }
    }

    #[test]
    fn judges_each_process_and_forgets_the_exited() {
        const MB: u64 = 1 << 20;
        let mut list = WatchList::new(1.0);
        for t in 0..30u64 {
            let mut seen = vec![
                // Leaks 1 MiB per second.
                obs(10, 1, 8 * MB + t * MB),
                // Flat.
                obs(20, 1, 50 * MB),
                // A cache: fills over 5 s, then holds.
                obs(30, 1, 4 * MB + t.min(5) * 4 * MB),
            ];
            // Exits after 10 s; its pid comes back as a new process at 20 s.
            if t < 10 {
                seen.push(obs(40, 1, MB + t * MB));
            } else if t >= 20 {
                seen.push(obs(40, 2, MB));
            }
            list.observe(t as f64, &seen, if t == 29 { Kind::Last } else { Kind::Tick }, false);
        }
        let judged = list.judge(&Params { min_growth_bytes: MB as f64, ..Params::default() });
        let verdicts: Vec<(u32, u64, Verdict)> =
            judged.iter().map(|p| (p.pid, p.start_time_ticks, p.trend.verdict)).collect();
        assert_eq!(
            verdicts,
            [
                (10, 1, Verdict::Leak),
                (30, 1, Verdict::Plateau),
                (20, 1, Verdict::Stable),
                (40, 2, Verdict::Stable),
            ]
        );
        let leak = &judged[0];
        assert!((leak.trend.rate_bytes_per_s - MB as f64).abs() < 1.0);
        assert_eq!(leak.anon_bytes, 37 * MB);
        assert_eq!(leak.rss_bytes, 38 * MB);
        assert_eq!(leak.series.t_s.len(), 30);
        // The new process under pid 40 is watched from when it appeared.
        assert!((judged[3].watched_s - 9.0).abs() < 1e-9);
        assert_eq!(list.len(), 4);
    }

    #[test]
    fn processes_named_by_pid_are_kept_when_they_exit() {
        let mut list = WatchList::new(1.0);
        for t in 0..10u64 {
            let seen: Vec<Observation> =
                if t < 8 { vec![obs(10, 1, (8 + t) << 20)] } else { Vec::new() };
            list.observe(t as f64, &seen, Kind::Tick, true);
        }
        assert_eq!((list.len(), list.running()), (1, 0));
        let judged =
            list.judge(&Params { min_growth_bytes: f64::from(1u32 << 20), ..Params::default() });
        assert!(judged[0].exited);
        assert_eq!(judged[0].trend.verdict, Verdict::Leak, "its series up to the exit");
        assert_eq!(judged[0].anon_bytes, 15 << 20);
    }

    #[test]
    fn judges_each_container_on_its_cgroup_and_forgets_the_gone() {
        const MB: u64 = 1 << 20;
        let container = |id: char, anon: u64| ContainerObservation {
            pod: PodRef {
                pod_uid: "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
                container_id: Some(id.to_string().repeat(64)),
                runtime: Some("containerd".into()),
                qos: crate::pods::QosClass::Burstable,
                name: None,
                namespace: None,
                container_name: None,
            },
            memory: CgroupMemory { usage: anon + 100 * MB, anon },
            processes: 2,
        };
        let mut list = WatchList::new(1.0);
        for t in 0..30u64 {
            // a leaks 1 MiB/s; b is flat; c is gone (restarted: a new id) after 10 s.
            let mut seen = vec![container('a', 10 * MB + t * MB), container('b', 50 * MB)];
            if t < 10 {
                seen.push(container('c', MB));
            }
            list.observe_containers(t as f64, &seen, Kind::Tick);
        }
        let judged =
            list.judge_containers(&Params { min_growth_bytes: MB as f64, ..Params::default() });
        let got: Vec<(char, Verdict)> = judged
            .iter()
            .map(|c| {
                (c.pod.container_id.as_ref().unwrap().chars().next().unwrap(), c.trend.verdict)
            })
            .collect();
        assert_eq!(got, [('a', Verdict::Leak), ('b', Verdict::Stable)]);
        assert!((judged[0].trend.rate_bytes_per_s - MB as f64).abs() < 1.0);
        assert_eq!((judged[0].anon_bytes, judged[0].memory_bytes), (39 * MB, 139 * MB));
        assert_eq!(judged[0].processes, 2);
        // Rendered under the processes, with the container's id.
        let report = WatchReport {
            version: 1,
            window: Window { start_unix_s: 0.0, end_unix_s: 29.0 },
            duration_s: 29.0,
            processes_watched: 0,
            processes: Vec::new(),
            containers: judged,
            escalations: Vec::new(),
            not_escalated: Vec::new(),
            end_reason: "duration".into(),
        };
        let text = render(&report, "watch", 10);
        assert!(
            text.contains("no process's memory is growing\ncontainers (memory cgroup):\n"),
            "{text}"
        );
        assert!(
            text.contains("  139.0 MiB    39.0 MiB    +29.0 MiB     +3.5 GiB/h  leak (100%)  pod 8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b container aaaaaaaaaaaa\n"),
            "{text}"
        );
        assert!(!text.contains("bbbbbbbbbbbb"), "{text}");
    }

    #[test]
    fn renders_the_growing_processes() {
        let mut list = WatchList::new(1.0);
        for t in 0..20u64 {
            list.observe(
                t as f64,
                &[obs(10, 1, (8 + t) << 20), obs(20, 1, 1 << 20)],
                Kind::Tick,
                false,
            );
        }
        let params = Params { min_growth_bytes: f64::from(1u32 << 20), ..Params::default() };
        let report = WatchReport {
            version: 1,
            window: Window { start_unix_s: 0.0, end_unix_s: 19.0 },
            duration_s: 19.0,
            processes_watched: 2,
            processes: list.judge(&params),
            containers: Vec::new(),
            escalations: Vec::new(),
            not_escalated: Vec::new(),
            end_reason: "duration".into(),
        };
        let text = render(&report, "watch", 10);
        assert!(
            text.starts_with("== watch: 2 processes watched; 1 leaking, 0 growing, 0 plateau ==\n"),
            "{text}"
        );
        assert!(
            text.contains("\n      10  p10                 27.0 MiB    +19.0 MiB     +3.5 GiB/h  leak (100%)\n"),
            "{text}"
        );
        assert!(!text.contains("p20"), "{text}");
    }
}
