//! `leak watch`: samples processes' memory only (`/proc/PID/statm`, no probes), judges each
//! one's growth, and with `--escalate` attaches the probes to a process judged leaking for a
//! while and writes its report. This is how a fleet is watched at near-zero cost.
//!
//! [`WatchList`] is pure; [`run`] is the loop. The report model is `fleet::report`, the
//! escalations `fleet::escalate`.
use std::{
    collections::{BTreeMap, HashSet},
    io::Write as _,
    sync::Arc,
    time::Duration,
};

use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::{
    analysis::growth::{SERIES_POINTS, seconds_to_limit, trend_view},
    analysis::history::{CgroupMemory, Kind, ProcessMemory, Sampled},
    analysis::report::{EndReason, Window},
    analysis::trend::thin_indices,
    analysis::trend::{self, Params, Verdict},
    config::{Selection, Targets, WatchConfig},
    error::Error,
    fleet::{
        escalate::Escalator,
        pods::PodRef,
        report::{
            ContainerSeries, WATCH_REPORT_VERSION, WatchReport, WatchSeries, WatchedContainer,
            WatchedProcess, bytes_f64, render,
        },
    },
    output, procfs,
    runtime::{self, Sampler, Signals, deadline},
};

/// One process's memory at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Process id.
    pub pid: u32,
    /// Start time (clock ticks after boot): with the pid, names the process.
    pub start_ticks: u64,
    /// `comm`.
    pub comm: String,
    /// Its command line (empty when unreadable), read once per process and shared: each
    /// sample's observation of it costs a reference count, not a copy.
    pub cmdline: Arc<str>,
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
    /// Its OOM kills so far (`oom_kill` of `memory.events` or `memory.oom_control`).
    pub oom_kills: Option<u64>,
    /// Where its memory cgroup is, and the times it called the OOM killer for its limit so
    /// far (v2).
    pub dir: Option<(std::path::PathBuf, Option<u64>)>,
}

#[derive(Clone, Debug)]
struct WatchedCgroup {
    pod: PodRef,
    processes: usize,
    first_seen: f64,
    samples: Sampled<CgroupMemory>,
    oom_kills: Option<u64>,
    dir: Option<(std::path::PathBuf, Option<u64>)>,
}

#[derive(Clone, Debug)]
struct Watched {
    comm: String,
    cmdline: Arc<str>,
    pod: Option<PodRef>,
    /// Watch time of its first sample, seconds.
    first_seen: f64,
    samples: Sampled<ProcessMemory>,
    /// Not seen any more (kept only for processes named with `--pid`).
    exited: bool,
    /// Killed by the OOM killer: when (watch time, seconds) and how it was told.
    oom: Option<(f64, &'static str)>,
    /// Its container's memory limit and working set at its last sample (the container may
    /// be gone first), and where the container's cgroup is with its OOM count then.
    limit: Option<ContainerLimit>,
}

/// A container's memory limit at a sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerLimit {
    /// The limit, bytes.
    pub limit: u64,
    /// Its working set.
    pub working_set: u64,
    /// Its memory cgroup's directory, and the times it had called the OOM killer for its
    /// limit (v2 `memory.events` `oom`).
    pub dir: Option<(std::path::PathBuf, Option<u64>)>,
}

/// A watched process the OOM killer killed, as last watched.
#[derive(Clone, Debug, PartialEq)]
pub struct Killed {
    /// The process, judged, with its chart up to the kill.
    pub process: WatchedProcess,
    /// When, watch time (seconds).
    pub at: f64,
    /// How it was told: `tracepoint` or `cgroup_counter`.
    pub seen_by: &'static str,
    /// Its container's memory limit, when it had one, as of the last sample.
    pub limit: Option<ContainerLimit>,
    /// The other watched processes of its container killed with it (a container whose
    /// `memory.oom.group` is set, as the kubelet sets it on cgroup v2, loses all of them to
    /// one kill): their pids.
    pub also_killed: Vec<u32>,
}

/// The processes watched and their samples. A process that is not observed any more has
/// exited: it is forgotten, unless it was leaking or growing when it exited (what grew is
/// news however it ended), or it was named with `--pid`; then it stays for the report.
#[derive(Clone, Debug)]
pub struct WatchList {
    procs: BTreeMap<(u32, u64), Watched>,
    /// Containers by id.
    containers: BTreeMap<String, WatchedCgroup>,
    period: f64,
    /// How exited processes are judged, to keep the ones that grew.
    params: Params,
    /// Exited processes kept, oldest exit first (at most [`MAX_EXITED_KEPT`]).
    exited: std::collections::VecDeque<(u32, u64)>,
    /// Whether a container's rising `oom_kill` count names its vanished process the victim
    /// (only where the victims are not named by the kernel's event).
    count_kills: bool,
    /// Kills counted in each container (by id) and not yet given a victim.
    cgroup_kills: BTreeMap<String, u64>,
    /// Processes killed and gone, not yet taken (see [`Self::take_killed`]).
    killed: Vec<(u32, u64)>,
}

/// Exited processes a watch of a whole host keeps, at most: months of processes coming and
/// going must leave its memory bounded.
pub const MAX_EXITED_KEPT: usize = 64;

impl WatchList {
    /// An empty list, sampled every `period` seconds (see [`Sampled`]).
    #[must_use]
    pub fn new(period: f64) -> Self {
        Self {
            procs: BTreeMap::new(),
            containers: BTreeMap::new(),
            period,
            params: Params::default(),
            exited: std::collections::VecDeque::new(),
            count_kills: false,
            cgroup_kills: BTreeMap::new(),
            killed: Vec::new(),
        }
    }

    /// Tells OOM victims by their containers' `oom_kill` counts (where the kernel's event
    /// cannot be read): a process that vanishes from a container whose count rose, the
    /// largest first, is taken for a victim.
    #[must_use]
    pub fn counting_kills(mut self, on: bool) -> Self {
        self.count_kills = on;
        self
    }

    /// Marks the running process `pid` killed by the OOM killer at watch time `at` (told
    /// `seen_by`); false if no such process is watched.
    pub fn mark_oom_killed(&mut self, pid: u32, at: f64, seen_by: &'static str) -> bool {
        let victim = self.procs.iter_mut().find(|((p, _), w)| *p == pid && !w.exited);
        if let Some((_, w)) = victim {
            w.oom.get_or_insert((at, seen_by));
            return true;
        }
        false
    }

    /// The processes killed by the OOM killer that have gone since the last call, judged
    /// under `params` as they were last watched: one kill a container (its largest process,
    /// the others in `also_killed`), one a process outside containers.
    pub fn take_killed(&mut self, params: &Params) -> Vec<Killed> {
        let keys = std::mem::take(&mut self.killed);
        let mut out: Vec<Killed> = Vec::new();
        // Largest first (`observe` leaves them so): the first of a container is its victim.
        for k in keys {
            let Some(w) = self.procs.get(&k) else { continue };
            let Some((at, seen_by)) = w.oom else { continue };
            let container = w.pod.as_ref().and_then(|p| p.container_id.as_deref());
            let first = out.iter_mut().find(|o| {
                container.is_some()
                    && o.process.pod.as_ref().and_then(|p| p.container_id.as_deref()) == container
            });
            if let Some(first) = first {
                first.also_killed.push(k.0);
                continue;
            }
            let process = Self::judge_one(k, w, params);
            let limit = w.limit.clone();
            out.push(Killed { process, at, seen_by, limit, also_killed: Vec::new() });
        }
        out
    }

    /// Judges exited processes with `params` (the watch's).
    #[must_use]
    pub fn judging(mut self, params: Params) -> Self {
        self.params = params;
        self
    }

    /// Records the processes observed at watch time `t` (see [`Kind`]): new ones start a
    /// series; missing ones have exited: kept, marked exited, with `keep_exited` (processes
    /// named by pid) or when they were leaking or growing; else dropped.
    pub fn observe(&mut self, t: f64, seen: &[Observation], kind: Kind, keep_exited: bool) {
        let keys: HashSet<(u32, u64)> = seen.iter().map(|o| (o.pid, o.start_ticks)).collect();
        let mut gone: Vec<(u32, u64)> = self
            .procs
            .iter()
            .filter(|(k, w)| !w.exited && !keys.contains(k))
            .map(|(k, _)| *k)
            .collect();
        // The OOM killer takes the largest process (by its badness: resident memory first).
        gone.sort_by_key(|k| {
            std::cmp::Reverse(
                self.procs.get(k).and_then(|w| w.samples.values().last().map(|m| m.rss)),
            )
        });
        for k in gone {
            if let Some(w) = self.procs.get_mut(&k)
                && w.oom.is_none()
                && let Some(id) = w.pod.as_ref().and_then(|p| p.container_id.as_ref())
                && let Some(n) = self.cgroup_kills.get_mut(id)
                && *n > 0
            {
                *n -= 1;
                w.oom = Some((t, "cgroup_counter"));
            }
            let killed = self.procs.get(&k).is_some_and(|w| w.oom.is_some());
            if killed {
                self.killed.push(k);
            }
            let grew = killed
                || self.procs.get(&k).is_some_and(|w| {
                    matches!(
                        judge_series(&w.samples, &self.params).verdict,
                        Verdict::Leak | Verdict::Growing
                    )
                });
            if keep_exited {
                if let Some(w) = self.procs.get_mut(&k) {
                    w.exited = true;
                }
            } else if grew {
                if let Some(w) = self.procs.get_mut(&k) {
                    w.exited = true;
                }
                self.exited.push_back(k);
                if self.exited.len() > MAX_EXITED_KEPT
                    && let Some(old) = self.exited.pop_front()
                {
                    self.procs.remove(&old);
                }
            } else {
                self.procs.remove(&k);
            }
        }
        // A count is news in the sample it rose in only: a kill of a process not watched
        // must not be taken later for another's exit.
        self.cgroup_kills.clear();
        for o in seen {
            let key = (o.pid, o.start_ticks);
            let limit = o
                .pod
                .as_ref()
                .and_then(|p| self.containers.get(p.container_id.as_deref()?))
                .and_then(|c| {
                    let m = c.samples.values().last()?;
                    Some(ContainerLimit {
                        limit: m.limit?,
                        working_set: m.working_set,
                        dir: c.dir.clone(),
                    })
                });
            if let Some(w) = self.procs.get_mut(&key) {
                w.limit = limit;
                // Names from the API may come after the first sample.
                w.pod.clone_from(&o.pod);
                w.samples.push(t - w.first_seen, o.memory, kind);
                w.samples.compact();
            } else {
                self.procs.insert(
                    key,
                    Watched {
                        comm: o.comm.clone(),
                        cmdline: o.cmdline.clone(),
                        pod: o.pod.clone(),
                        first_seen: t,
                        samples: Sampled::new(o.memory, self.period),
                        exited: false,
                        oom: None,
                        limit,
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
        self.cgroup_kills.retain(|id, n| *n > 0 && ids.contains(id.as_str()));
        for c in seen {
            let Some(id) = &c.pod.container_id else { continue };
            if let Some(w) = self.containers.get_mut(id) {
                if self.count_kills
                    && let (Some(before), Some(now)) = (w.oom_kills, c.oom_kills)
                    && now > before
                {
                    *self.cgroup_kills.entry(id.clone()).or_default() += now - before;
                }
                w.oom_kills = c.oom_kills.or(w.oom_kills);
                w.dir.clone_from(&c.dir);
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
                        oom_kills: c.oom_kills,
                        dir: c.dir.clone(),
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
                let keep = thin_indices(times.len(), SERIES_POINTS);
                let trend = trend::classify(&points, params);
                WatchedContainer {
                    pod: w.pod.clone(),
                    processes: w.processes,
                    memory_bytes: last.usage,
                    anon_bytes: last.anon,
                    working_set_bytes: last.working_set,
                    limit_bytes: last.limit,
                    seconds_to_limit: last.limit.and_then(|limit| {
                        seconds_to_limit(limit, last.working_set, trend.verdict, trend.rate_per_s)
                    }),
                    watched_s: times.last().copied().unwrap_or(0.0),
                    first_seen_s: millis(w.first_seen),
                    trend: trend_view(&trend),
                    series: ContainerSeries {
                        t_s: keep.iter().map(|&i| millis(times[i])).collect(),
                        memory_bytes: keep.iter().map(|&i| values[i].usage).collect(),
                        anon_bytes: keep.iter().map(|&i| values[i].anon).collect(),
                    },
                }
            })
            .collect();
        out.sort_by(|a, b| {
            a.trend
                .verdict
                .cmp(&b.trend.verdict)
                .then(b.trend.rate_bytes_per_s.total_cmp(&a.trend.rate_bytes_per_s))
                .then(a.pod.container_id.cmp(&b.pod.container_id))
        });
        out
    }

    /// Whether a running watched process is not among `seen`.
    #[must_use]
    pub fn vanished(&self, seen: &[Observation]) -> bool {
        let keys: HashSet<(u32, u64)> = seen.iter().map(|o| (o.pid, o.start_ticks)).collect();
        self.procs.iter().any(|(k, w)| !w.exited && !keys.contains(k))
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
        let mut out: Vec<WatchedProcess> =
            self.procs.iter().map(|(&k, w)| Self::judge_one(k, w, params)).collect();
        out.sort_by(|a, b| {
            a.trend
                .verdict
                .cmp(&b.trend.verdict)
                .then(b.trend.rate_bytes_per_s.total_cmp(&a.trend.rate_bytes_per_s))
                .then(a.pid.cmp(&b.pid))
        });
        out
    }
}

impl WatchList {
    /// Process `(pid, start)`, watched as `w`, judged under `params`.
    fn judge_one((pid, start): (u32, u64), w: &Watched, params: &Params) -> WatchedProcess {
        let times = w.samples.times();
        let values = w.samples.values();
        let keep = thin_indices(times.len(), SERIES_POINTS);
        let last = values.last().copied().unwrap_or_default();
        WatchedProcess {
            pid,
            comm: w.comm.clone(),
            cmdline: w.cmdline.to_string(),
            start_time_ticks: start,
            rss_bytes: last.rss,
            anon_bytes: last.private,
            watched_s: times.last().copied().unwrap_or(0.0),
            first_seen_s: millis(w.first_seen),
            exited: w.exited,
            trend: trend_view(&judge_series(&w.samples, params)),
            series: WatchSeries {
                t_s: keep.iter().map(|&i| millis(times[i])).collect(),
                rss_bytes: keep.iter().map(|&i| values[i].rss).collect(),
                anon_bytes: keep.iter().map(|&i| values[i].private).collect(),
            },
            pod: w.pod.clone(),
        }
    }
}

/// A process's anonymous resident bytes, judged.
fn judge_series(samples: &Sampled<ProcessMemory>, params: &Params) -> trend::Trend {
    let points: Vec<(f64, f64)> = samples
        .times()
        .iter()
        .zip(samples.values())
        .map(|(t, m)| (*t, bytes_f64(m.private)))
        .collect();
    trend::classify(&points, params)
}

/// The growth floor below which the watch looks for steady growth it would otherwise not
/// judge (`--min-growth`'s hint): a few pages.
const HINT_FLOOR: f64 = 64.0 * 1024.0;

impl WatchList {
    /// Of `judged` (this list's processes, judged under `params`), the stable ones that a
    /// lower floor ([`HINT_FLOOR`]) judges a leak: growth `--min-growth` hides. `(pid, comm,
    /// rate per hour)`, fastest first.
    #[must_use]
    pub fn below_floor(
        &self,
        judged: &[WatchedProcess],
        params: &Params,
    ) -> Vec<(u32, String, f64)> {
        if params.min_growth_bytes <= HINT_FLOOR {
            return Vec::new();
        }
        let low = Params { min_growth_bytes: HINT_FLOOR, ..*params };
        let mut out: Vec<(u32, String, f64)> = judged
            .iter()
            .filter(|p| p.trend.verdict == Verdict::Stable)
            .filter_map(|p| {
                let w = self.procs.get(&(p.pid, p.start_time_ticks))?;
                let t = judge_series(&w.samples, &low);
                (t.verdict == Verdict::Leak).then(|| (p.pid, w.comm.clone(), t.rate_per_hour()))
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }
}

/// Seconds, rounded to the millisecond (as reported).
fn millis(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// The loop.

/// Pod names from the Kubernetes API, refreshed in the background (see [`Names::start`]).
#[derive(Clone, Default)]
struct Names(Arc<std::sync::Mutex<hashbrown::HashMap<String, crate::fleet::kube::PodMeta>>>);

impl Names {
    /// How often the pod list is fetched again.
    const REFRESH: Duration = Duration::from_secs(15);

    /// Starts fetching this node's pods every [`Self::REFRESH`], when running in a cluster.
    fn start() -> Self {
        let names = Self::default();
        let Some(api) = crate::fleet::kubeapi::ApiConfig::in_cluster() else {
            log::info!("not in a Kubernetes cluster: pods are named by UID");
            return names;
        };
        let shared = names.clone();
        std::thread::spawn(move || {
            let mut failing = false;
            let mut owners = crate::fleet::kube::Owners::default();
            loop {
                match crate::fleet::kubeapi::fetch_pods(&api, &mut owners) {
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

/// What one pass over the processes found, to say why nothing is watched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Candidate processes (kernel threads and ourselves left out).
    pub candidates: usize,
    /// Of them, those running in a Kubernetes pod.
    pub in_pods: usize,
    /// Those selected and watched.
    pub watched: usize,
    /// Processes watched before that have exited and are kept for the report (a leak's,
    /// an OOM kill's).
    pub exited: usize,
}

/// Why a watch watches nothing, when it does, in words that say what to do.
#[must_use]
pub fn why_nothing(targets: &Targets, selection: Option<&Selection>, seen: Seen) -> Option<String> {
    if seen.watched > 0 {
        return None;
    }
    if seen.exited > 0 && !matches!(targets, Targets::Pids(_)) {
        return Some(format!(
            "no selected process runs now: the {} watched before exited (kept in this report)",
            seen.exited
        ));
    }
    let filtered = selection.is_some_and(|s| {
        !(s.namespaces.is_empty()
            && s.pods.is_empty()
            && s.containers.is_empty()
            && s.processes.is_empty())
    });
    Some(match targets {
        Targets::Pods if seen.in_pods == 0 => "no process of this host runs in a Kubernetes pod \
            (none is in a kubelet's cgroup): pass --all, --pid or --process to watch processes \
            outside pods"
            .to_owned(),
        Targets::Pods => format!(
            "{} processes run in pods, and none is selected (--namespace, --pod, --container, \
             --process, --exclude-namespace)",
            seen.in_pods
        ),
        Targets::All if filtered => format!(
            "none of the {} processes matches --process (or the other selections)",
            seen.candidates
        ),
        Targets::All => "no process to watch".to_owned(),
        Targets::Pids(_) => "the processes named with --pid have exited".to_owned(),
    })
}

/// Command lines read so far, by process (pid and start time): read once per process, as
/// reading one takes the process's memory-map lock.
type Cmdlines = std::cell::RefCell<hashbrown::HashMap<(u32, u64), Arc<str>>>;

/// Reads the memory of the targets now, and of the containers they run in (each
/// container's memory cgroup once, under `cgroup_root`).
fn observe(
    targets: &Targets,
    skip: &HashSet<u32>,
    names: &Names,
    selection: Option<&Selection>,
    cgroup_root: &std::path::Path,
    cmdlines: &Cmdlines,
) -> (Vec<Observation>, Vec<ContainerObservation>, Seen) {
    // Held for this pass (the refresher waits at most that long), not copied.
    let api_pods = names.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pids = match targets {
        Targets::All | Targets::Pods => procfs::all_pids(),
        Targets::Pids(p) => p.clone(),
    };
    let mut cmdlines = cmdlines.borrow_mut();
    let mut seen = Seen::default();
    let mut alive: HashSet<(u32, u64)> = HashSet::new();
    // Container id -> (pod, memory cgroup, processes).
    let mut containers: BTreeMap<String, (PodRef, crate::fleet::pods::MemoryCgroup, usize)> =
        BTreeMap::new();
    let processes = pids
        .into_iter()
        .filter(|p| !skip.contains(p))
        .filter_map(|pid| {
            let memory = procfs::statm_memory(pid)?;
            // Kernel threads have no memory of their own.
            if memory.rss == 0 {
                return None;
            }
            let start_ticks = procfs::start_time(pid)?;
            seen.candidates += 1;
            let cgroups = procfs::cgroup_text(pid).unwrap_or_default();
            let mut pod = crate::fleet::pods::pod_of(&cgroups);
            seen.in_pods += usize::from(pod.is_some());
            if *targets == Targets::Pods && pod.is_none() {
                return None;
            }
            if let Some(p) = &mut pod {
                p.name_from(&api_pods);
            }
            let comm = procfs::comm(pid).unwrap_or_default();
            alive.insert((pid, start_ticks));
            let cmdline = cmdlines
                .entry((pid, start_ticks))
                .or_insert_with(|| procfs::cmdline(pid).unwrap_or_default().into())
                .clone();
            if let Some(sel) = selection {
                let program = procfs::program_of(&cmdline);
                let id = crate::fleet::kube::Identity {
                    comm: &comm,
                    program: (!program.is_empty()).then_some(program),
                    namespace: pod.as_ref().and_then(|p| p.namespace.as_deref()),
                    pod: pod.as_ref().and_then(|p| p.name.as_deref()),
                    container: pod.as_ref().and_then(|p| p.container_name.as_deref()),
                };
                if !sel.selects(&id) {
                    return None;
                }
            }
            seen.watched += 1;
            // The memory cgroup must be the container's own: on a hybrid host whose v1
            // memory hierarchy does not mirror the kubelet's, it is someone else's.
            if let Some((p, id)) = pod.as_ref().and_then(|p| Some((p, p.container_id.clone()?)))
                && let Some(cg) = crate::fleet::pods::memory_cgroup_of(&cgroups)
                && crate::fleet::pods::pod_of_path(cg.path()).and_then(|m| m.container_id).as_ref()
                    == Some(&id)
            {
                containers.entry(id).or_insert_with(|| (p.clone(), cg, 0)).2 += 1;
            }
            Some(Observation { pid, start_ticks, comm, cmdline, memory, pod })
        })
        .collect();
    // Processes gone since: their command lines too.
    cmdlines.retain(|k, _| alive.contains(k));
    let containers = containers
        .into_values()
        .filter_map(|(pod, cg, processes)| {
            let (dir, memory) = crate::fleet::pods::cgroup_memory(cgroup_root, &cg)?;
            let (oom_kills, events) = crate::fleet::pods::cgroup_oom_counts(&dir);
            Some(ContainerObservation {
                pod,
                memory,
                processes,
                oom_kills,
                dir: Some((dir, events)),
            })
        })
        .collect();
    (processes, containers, seen)
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
            if procfs::is_kernel_thread(pid) {
                return Err(Error::BadInput(format!(
                    "process {pid} ({}) is a kernel thread: it has no memory of its own to \
                     watch; name a user process",
                    procfs::comm(pid).unwrap_or_default()
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
        crate::trace::preflight::check_privileges()?;
        crate::trace::preflight::check_kernel(&crate::trace::preflight::sysfs_root())?;
        output::check_writable(&cfg.out_dir.join(".leak-watch-check")).map_err(|e| {
            Error::BadInput(format!("cannot write to {}: {e}", cfg.out_dir.display()))
        })?;
    }
    for p in [&cfg.json, &cfg.html].into_iter().flatten() {
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

/// The agent's start-up check, printed to its log (the container's): its capabilities (one
/// line naming any that it lacks), then `leak check`'s findings; fails if it cannot trace.
fn agent_start_check() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let (features, _) = crate::trace::loader::kernel();
    let degraded =
        crate::trace::preflight::agent_capabilities(&status, charges_memlock(&features.release))
            .map_err(Error::BadInput)?;
    for line in degraded {
        eprintln!("leak: warning: {line}");
    }
    let outcome = crate::trace::check::check(false);
    eprint!("{}", outcome.text);
    if !outcome.ok {
        return Err(Error::BadInput(
            "this node cannot trace (see `leak check` above): the agent stops".into(),
        ));
    }
    Ok(())
}

/// Whether kernel `release` charges BPF maps to `RLIMIT_MEMLOCK` (before 5.11, when the
/// memory cgroup took over) and the limit is not lifted yet.
fn charges_memlock(release: &str) -> bool {
    let mut parts = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct we pass.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) } == 0
        && lim.rlim_cur == libc::RLIM_INFINITY;
    version < (5, 11) && !unlimited
}

/// The escalations `cfg` asks for, if any.
fn escalator_for(cfg: &WatchConfig) -> Option<Escalator> {
    cfg.escalate.map(|d| {
        Escalator::new(d, cfg.out_dir.clone(), cfg.max_traced, cfg.max_overhead)
            .keeping(cfg.keep_reports)
            .tracing(cfg.escalate_mode)
    })
}

async fn watch(cfg: &WatchConfig, signals: &mut Signals) -> Result<WatchReport, Error> {
    let start = Instant::now();
    let start_unix = runtime::now_unix();
    let params = Params { min_growth_bytes: bytes_f64(cfg.min_growth), ..Params::default() };
    let mut list = WatchList::new(cfg.sample_interval.as_secs_f64()).judging(params);
    let mut escalator = escalator_for(cfg);
    // `leak agent`: metrics and reports over HTTP, from the state published after each
    // sample (every process, stable ones included).
    let published = Arc::new(crate::fleet::serve::Published::default());
    let names = if cfg.listen.is_some() { Names::start() } else { Names::default() };
    let server = match cfg.listen {
        Some(addr) => Some(serve(addr, &published, cfg).await?),
        None => None,
    };
    let mut kills = Kills::start(server.as_ref().map(|(_, base)| base.as_str()));
    list = list.counting_kills(kills.victims.is_none());
    // Not ourselves, nor the escalations we run.
    let skip = |e: &Option<Escalator>| -> HashSet<u32> {
        std::iter::once(std::process::id()).chain(e.iter().flat_map(Escalator::children)).collect()
    };
    let mut sampler = Sampler::new(start, cfg.sample_interval);
    let mut report_tick = interval_at(start + cfg.interval, cfg.interval);
    report_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let until_deadline = deadline(start, cfg.duration);
    tokio::pin!(until_deadline);
    let explicit = matches!(cfg.targets, Targets::Pids(_));
    let cmdlines = Cmdlines::default();
    let look = |escalator: &Option<Escalator>| {
        observe(
            &cfg.targets,
            &skip(escalator),
            &names,
            cfg.selection.as_ref(),
            &cfg.cgroup_root,
            &cmdlines,
        )
    };
    // The containers first: their OOM counts name the victims among the processes gone.
    let record = |list: &mut WatchList,
                  kills: &Kills,
                  seen: &(Vec<Observation>, Vec<ContainerObservation>, Seen),
                  kind| {
        let t = start.elapsed().as_secs_f64();
        list.observe_containers(t, &seen.1, kind);
        kills.mark(list, &seen.0, start_unix);
        list.observe(t, &seen.0, kind, explicit);
        Seen { exited: list.len() - list.running(), ..seen.2 }
    };
    let nothing = |seen: Seen| why_nothing(&cfg.targets, cfg.selection.as_ref(), seen);
    let mut seen_now = record(&mut list, &kills, &look(&escalator), Kind::Tick);
    // Said at once, where an agent's log shows it; the report and page say it too.
    if let Some(why) = nothing(seen_now) {
        log::warn!("watching nothing: {why}");
    }
    let end = loop {
        tokio::select! {
            () = sampler.tick() => {
                let began = Instant::now();
                seen_now = record(&mut list, &kills, &look(&escalator), Kind::Tick);
                kills.record(&mut list, &params, escalator.as_ref(), start_unix);
                let serving = server.is_some().then_some(&*published);
                after_sample(
                    &list,
                    &params,
                    (&mut escalator, &kills.ledger),
                    serving,
                    (start_unix, f64::from(cfg.profile_above) / 10_000.0),
                    nothing(seen_now),
                )?;
                sampler.spent(began);
                if explicit && list.running() == 0 {
                    break EndReason::TargetsExited;
                }
            }
            _ = report_tick.tick() => {
                let tracked = Tracked { escalator: escalator.as_ref(), kills: &kills.ledger };
                let report = build(&list, &params, start_unix, explicit, tracked, EndReason::Interval, nothing(seen_now));
                let header = format!(
                    "watch {} +{:.1}s",
                    runtime::local_hms(report.window.end_unix_s),
                    report.duration_s
                );
                print(&render(&report, &header, cfg.top));
            }
            () = &mut until_deadline => break EndReason::Duration,
            _ = signals.recv() => break EndReason::Signal,
        }
    };
    if end != EndReason::TargetsExited {
        seen_now = record(&mut list, &kills, &look(&escalator), Kind::Last);
    }
    let not_escalated = match &mut escalator {
        Some(e) => e.finish(signals).await?,
        None => Vec::new(),
    };
    // The kills of the last sample, and the post-mortems written meanwhile.
    kills.record(&mut list, &params, escalator.as_ref(), start_unix);
    if let Some((server, _)) = server {
        server.abort();
    }
    let tracked = Tracked { escalator: escalator.as_ref(), kills: &kills.ledger };
    let mut report = build(&list, &params, start_unix, explicit, tracked, end, nothing(seen_now));
    report.not_escalated = not_escalated;
    conclude(cfg, &report, end)?;
    Ok(report)
}

/// The final report: printed, and written where `cfg` says.
fn conclude(cfg: &WatchConfig, report: &WatchReport, end: EndReason) -> Result<(), Error> {
    let header = format!(
        "watch ended {} ({:.1} s, {end})",
        runtime::local_hms(report.window.end_unix_s),
        report.duration_s
    );
    print(&render(report, &header, cfg.top));
    write_outputs(cfg, report)
}

/// After a sample: the escalations' turn, and (the agent) the state published for the API,
/// every process, stable ones included. Judged once for both uses (a Theil-Sen fit per
/// process).
fn after_sample(
    list: &WatchList,
    params: &Params,
    (escalator, kills): (&mut Option<Escalator>, &crate::fleet::oom::OomKills),
    published: Option<&crate::fleet::serve::Published>,
    (start_unix, profile_above): (f64, f64),
    nothing: Option<String>,
) -> Result<(), Error> {
    if escalator.is_none() && published.is_none() {
        return Ok(());
    }
    let judged = list.judge(params);
    let containers = list.judge_containers(params);
    if let Some(e) = escalator {
        // Containers whose working set passed --profile-above of their limit.
        let near: HashSet<&str> = containers
            .iter()
            .filter(|c| {
                c.limit_bytes
                    .is_some_and(|l| bytes_f64(c.working_set_bytes) >= profile_above * bytes_f64(l))
            })
            .filter_map(|c| c.pod.container_id.as_deref())
            .collect();
        e.flag(&judged, &near);
        e.poll()?;
    }
    if let Some(published) = published {
        let notes = nothing.into_iter().collect();
        let tracked = Tracked { escalator: escalator.as_ref(), kills };
        let at =
            report_of(list, (judged, containers), start_unix, tracked, EndReason::Interval, notes);
        published.publish(at);
        published.publish_kills(kills);
    }
    Ok(())
}

/// A kill's id, and whether its Event was posted.
type Posted = (String, bool);

/// The OOM killer's victims among the watched processes: told by the kernel's event where
/// it can be read, else by their containers' counters; recorded with their profiles, and
/// (the agent, in a cluster) told to the pod as a Kubernetes Event.
struct Kills {
    victims: Option<crate::trace::oom::Victims>,
    ledger: crate::fleet::oom::OomKills,
    /// Where Events go: the API, this node's name, and the address reports are served at.
    events: Option<(crate::fleet::kubeapi::ApiConfig, String, String)>,
    posted: (std::sync::mpsc::Sender<Posted>, std::sync::mpsc::Receiver<Posted>),
}

impl Kills {
    /// Reads the victims if it can. The agent (serving its reports at `base`) posts Events
    /// about the kills when it runs in a cluster.
    fn start(base: Option<&str>) -> Self {
        let events = base.and_then(|base| {
            let api = crate::fleet::kubeapi::ApiConfig::in_cluster()?;
            let node = api.node.clone().unwrap_or_default();
            Some((api, node, base.to_owned()))
        });
        let victims = match crate::trace::oom::Victims::open() {
            Ok(v) => Some(v),
            Err(why) => {
                log::info!("OOM kills are told by the containers' counters ({why})");
                None
            }
        };
        Self {
            victims,
            ledger: crate::fleet::oom::OomKills::default(),
            events,
            posted: std::sync::mpsc::channel(),
        }
    }

    /// Before `seen` is recorded in `list`: the victims read so far marked, all of them if a
    /// watched process vanished (the kernel's event comes before the death it causes).
    fn mark(&self, list: &mut WatchList, seen: &[Observation], start_unix: f64) {
        let Some(v) = &self.victims else { return };
        if list.vanished(seen) && !v.sync() {
            log::debug!("the OOM killer's events did not come back in time");
        }
        for k in v.take() {
            if list.mark_oom_killed(k.pid, k.at_unix_s - start_unix, "tracepoint") {
                log::debug!("pid {} was OOM-killed", k.pid);
            }
        }
    }

    /// After a sample: the victims gone since, recorded; the post-mortems written since,
    /// read; the Events due, posted.
    fn record(
        &mut self,
        list: &mut WatchList,
        params: &Params,
        escalator: Option<&Escalator>,
        start_unix: f64,
    ) {
        for mut k in list.take_killed(params) {
            // The last sample may be seconds before the kill: its cgroup says whether the kill
            // was for its limit (while it is there: the runtime removes it soon after).
            if let Some(l) = &mut k.limit
                && let Some((dir, events)) = &l.dir
                && procfs::cgroup_limit_reached(dir, l.limit, *events)
            {
                l.working_set = l.limit;
            }
            let p = &k.process;
            let profile = escalator.and_then(|e| e.latest_of(p.pid, p.start_time_ticks)).cloned();
            let (pid, comm, at) = (p.pid, p.comm.clone(), start_unix + k.at);
            self.ledger.record(k, at, profile);
            if let Some(r) = self.ledger.reports().last() {
                eprintln!("leak: pid {pid} ({comm}): {}", r.triage);
            }
        }
        if let Some(e) = escalator {
            self.ledger.refresh(e.done());
        }
        while let Ok((id, ok)) = self.posted.1.try_recv() {
            self.ledger.posted(&id, ok, runtime::now_unix());
        }
        let Some((api, node, base)) = &self.events else { return };
        let url = |id: &str| format!("{base}/api/v1/reports/{id}/report.html");
        for event in self.ledger.events_due(runtime::now_unix(), &url) {
            let at = self
                .ledger
                .reports()
                .iter()
                .find(|r| r.id == event.kill)
                .map_or(0.0, |r| r.at_unix_s);
            let body = crate::fleet::kube::oom_event_body(&event, node, at);
            let (api, tx) = (api.clone(), self.posted.0.clone());
            std::thread::spawn(move || {
                let sent = crate::fleet::kubeapi::post_event(&api, &event.namespace, &body);
                if let Err(e) = &sent {
                    log::warn!(
                        "cannot post the Event on pod {}/{} ({e}): RBAC needs create on events",
                        event.namespace,
                        event.pod
                    );
                }
                let _ = tx.send((event.kill, sent.is_ok()));
            });
        }
    }
}

/// Writes the watch report (`--json`) and page (`--html`), each atomically.
fn write_outputs(cfg: &WatchConfig, report: &WatchReport) -> Result<(), Error> {
    if let Some(p) = &cfg.json {
        let mut text = serde_json::to_vec_pretty(report).unwrap_or_default();
        text.push(b'\n');
        output::write_atomic(p, &text).map_err(Error::io(format!("writing {}", p.display())))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &cfg.html {
        let page = crate::fleet::page::render(&crate::fleet::page::WatchPage {
            title: "leak watch",
            report,
            clock: &runtime::local_hms,
            top: cfg.top,
            link: &|e| trace_href(p, e),
        });
        output::write_atomic(p, page.as_bytes())
            .map_err(Error::io(format!("writing {}", p.display())))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The link from the watch page at `page` to a finished trace's page, if it was written:
/// its file name when both are in one directory, else its absolute `file://` URL.
fn trace_href(page: &std::path::Path, e: &crate::fleet::report::Escalation) -> Option<String> {
    use std::os::unix::ffi::OsStrExt as _;
    let html = std::path::PathBuf::from(crate::fleet::escalate::html_of(&e.json));
    let target = html.canonicalize().ok()?;
    let dir = page.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(".".as_ref());
    let here = dir.canonicalize().ok();
    Some(match (here, target.parent(), target.file_name()) {
        (Some(h), Some(t), Some(name)) if h == t => crate::fleet::page::url_path(name.as_bytes()),
        _ => format!("file://{}", crate::fleet::page::url_path(target.as_os_str().as_bytes())),
    })
}

/// Serves `published` over HTTP on `addr` in the background, with the TLS and credentials
/// `cfg` configures; and the address its reports are at as a pod's readers reach them
/// (`https://IP:PORT`: its pod's IP from the downward API, else the address it listens on).
async fn serve(
    addr: std::net::SocketAddr,
    published: &Arc<crate::fleet::serve::Published>,
    cfg: &WatchConfig,
) -> Result<(tokio::task::JoinHandle<std::io::Result<()>>, String), Error> {
    let web = crate::fleet::web::WebConfig::load(
        cfg.web_config.as_deref(),
        cfg.bearer_token_file.as_deref(),
    )
    .map_err(Error::BadInput)?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::BadInput(format!("cannot listen on {addr}: {e}: choose another --listen"))
    })?;
    let bound = listener.local_addr().map_err(Error::io("reading the bound address"))?;
    // Once the input is known good (a bad one gets its one line alone).
    if cfg.escalate.is_some() {
        agent_start_check()?;
    }
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.access.is_open() { "" } else { " (credentials required)" };
    eprintln!("leak: serving {scheme}://{bound}/metrics and /api/v1/reports{auth}");
    let handler = crate::fleet::serve::handler(Arc::clone(published));
    let host = std::env::var("POD_IP")
        .ok()
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| bound.ip().to_string());
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let base = format!("{scheme}://{host}:{}", bound.port());
    Ok((tokio::spawn(crate::fleet::http::serve(listener, handler, web)), base))
}

fn build(
    list: &WatchList,
    params: &Params,
    start_unix: f64,
    explicit: bool,
    tracked: Tracked<'_>,
    end_reason: EndReason,
    nothing: Option<String>,
) -> WatchReport {
    let mut processes = list.judge(params);
    let mut notes: Vec<String> = nothing.into_iter().collect();
    notes.extend(floor_note(&list.below_floor(&processes, params), params.min_growth_bytes));
    let mut containers = list.judge_containers(params);
    if !explicit {
        processes.retain(|p| p.trend.verdict != Verdict::Stable);
        containers.retain(|c| c.trend.verdict != Verdict::Stable);
    }
    report_of(list, (processes, containers), start_unix, tracked, end_reason, notes)
}

/// What `--min-growth` hid: processes that grew steadily, but by less than the floor.
fn floor_note(hidden: &[(u32, String, f64)], floor: f64) -> Option<String> {
    let (pid, comm, rate) = hidden.first()?;
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a byte floor")]
    let floor = crate::analysis::units::human_bytes(floor as u64);
    let n = hidden.len();
    Some(format!(
        "{n} process{} grew steadily by less than --min-growth {floor} over the window, the \
         fastest pid {pid} ({comm}) at {}: lower it (e.g. --min-growth 64K) or watch longer \
         to judge {}",
        if n == 1 { "" } else { "es" },
        crate::fleet::report::per_hour(*rate),
        if n == 1 { "it" } else { "them" }
    ))
}

/// What the watch keeps besides its list: the escalations, and the OOM kills.
#[derive(Clone, Copy)]
struct Tracked<'a> {
    escalator: Option<&'a Escalator>,
    kills: &'a crate::fleet::oom::OomKills,
}

/// The report of `list` with its processes and containers already judged.
fn report_of(
    list: &WatchList,
    (processes, containers): (Vec<WatchedProcess>, Vec<WatchedContainer>),
    start_unix: f64,
    tracked: Tracked<'_>,
    end_reason: EndReason,
    notes: Vec<String>,
) -> WatchReport {
    let end_unix = runtime::now_unix();
    WatchReport {
        version: WATCH_REPORT_VERSION,
        window: Window { start_unix_s: start_unix, end_unix_s: end_unix },
        duration_s: ((end_unix - start_unix) * 1000.0).round() / 1000.0,
        processes_watched: list.len(),
        processes,
        containers,
        escalations: tracked.escalator.map(|e| e.done().to_vec()).unwrap_or_default(),
        not_escalated: Vec::new(),
        oom_kills: tracked.kills.reports(),
        end_reason,
        notes,
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
            cmdline: "".into(),
            memory: ProcessMemory { rss: private + (1 << 20), private },
            pod: None,
        }
    }

    #[test]
    fn judges_each_process_keeps_exited_leakers_and_forgets_the_rest() {
        const MB: u64 = 1 << 20;
        let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
        let mut list = WatchList::new(1.0).judging(params);
        for t in 0..30u64 {
            let mut seen = vec![
                // Leaks 1 MiB per second.
                obs(10, 1, 8 * MB + t * MB),
                // Flat.
                obs(20, 1, 50 * MB),
                // A cache: fills over 5 s, then holds.
                obs(30, 1, 4 * MB + t.min(5) * 4 * MB),
            ];
            // Leaks 2 MiB/s and exits after 10 s; its pid comes back as a new process at
            // 20 s.
            if t < 10 {
                seen.push(obs(40, 1, MB + 2 * t * MB));
            } else if t >= 20 {
                seen.push(obs(40, 2, MB));
            }
            // Flat, and exits after 10 s: forgotten.
            if t < 10 {
                seen.push(obs(50, 1, 9 * MB));
            }
            list.observe(t as f64, &seen, if t == 29 { Kind::Last } else { Kind::Tick }, false);
        }
        let judged = list.judge(&params);
        let verdicts: Vec<(u32, u64, Verdict, bool)> =
            judged.iter().map(|p| (p.pid, p.start_time_ticks, p.trend.verdict, p.exited)).collect();
        assert_eq!(
            verdicts,
            [
                // The exited leaker first (it leaked faster), kept with its series.
                (40, 1, Verdict::Leak, true),
                (10, 1, Verdict::Leak, false),
                (30, 1, Verdict::Plateau, false),
                (20, 1, Verdict::Stable, false),
                (40, 2, Verdict::Stable, false),
            ]
        );
        let leak = &judged[1];
        assert!((leak.trend.rate_bytes_per_s - MB as f64).abs() < 1.0);
        assert_eq!(leak.anon_bytes, 37 * MB);
        assert_eq!(leak.rss_bytes, 38 * MB);
        assert_eq!(leak.series.t_s.len(), 30);
        assert_eq!(judged[0].anon_bytes, 19 * MB, "up to its exit");
        // The new process under pid 40 is watched from when it appeared.
        assert!((judged[4].watched_s - 9.0).abs() < 1e-9);
        assert_eq!((list.len(), list.running()), (5, 4));
    }

    #[test]
    fn exited_leakers_kept_are_bounded() {
        const MB: u64 = 1 << 20;
        let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
        let mut list = WatchList::new(1.0).judging(params);
        // 100 processes, each leaking for 8 s then exiting, one after the other.
        let mut t = 0.0;
        for pid in 1..=100u32 {
            for i in 0..8u64 {
                list.observe(t, &[obs(pid, 1, (1 + i) * MB)], Kind::Tick, false);
                t += 1.0;
            }
        }
        list.observe(t, &[], Kind::Tick, false);
        assert_eq!(list.len(), MAX_EXITED_KEPT, "the latest ones");
        let pids: Vec<u32> = list.judge(&params).iter().map(|p| p.pid).collect();
        assert!(pids.iter().all(|&p| p > 100 - 64), "{pids:?}");
    }

    #[test]
    fn growth_below_the_floor_is_said_not_hidden() {
        const MB: u64 = 1 << 20;
        let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
        let mut list = WatchList::new(1.0).judging(params);
        // 37 MiB/h is 10.5 KiB/s: 310 KiB in a 30 s watch, under the 1 MiB floor.
        for t in 0..30u64 {
            let seen = [obs(10, 1, 8 * MB + t * 10_777), obs(20, 1, 50 * MB)];
            list.observe(t as f64, &seen, Kind::Tick, false);
        }
        let judged = list.judge(&params);
        assert_eq!(judged[0].trend.verdict, Verdict::Stable);
        let hidden = list.below_floor(&judged, &params);
        assert_eq!(hidden.len(), 1, "{hidden:?}");
        assert_eq!((hidden[0].0, hidden[0].1.as_str()), (10, "p10"));
        let note = floor_note(&hidden, params.min_growth_bytes).unwrap();
        assert!(
            note.starts_with("1 process grew steadily by less than --min-growth 1.0 MiB over the window, the fastest pid 10 (p10) at +37.0 MiB/h: lower it"),
            "{note}"
        );
        // A floor at the hint's own: nothing more to say.
        assert!(
            list.below_floor(&judged, &Params { min_growth_bytes: 4096.0, ..params }).is_empty()
        );
    }

    #[test]
    fn a_watch_of_nothing_says_why() {
        let seen = |candidates, in_pods, watched| Seen { candidates, in_pods, watched, exited: 0 };
        let no_pods = why_nothing(&Targets::Pods, None, seen(120, 0, 0)).unwrap();
        assert!(
            no_pods.starts_with("no process of this host runs in a Kubernetes pod"),
            "{no_pods}"
        );
        assert!(
            no_pods.ends_with("pass --all, --pid or --process to watch processes outside pods")
        );
        let sel = Selection { namespaces: vec!["shop".into()], ..Selection::default() };
        let unselected = why_nothing(&Targets::Pods, Some(&sel), seen(120, 7, 0)).unwrap();
        assert!(
            unselected.starts_with("7 processes run in pods, and none is selected"),
            "{unselected}"
        );
        let by_name = Selection { processes: vec!["nginx".into()], ..Selection::default() };
        let none = why_nothing(&Targets::All, Some(&by_name), seen(120, 0, 0)).unwrap();
        assert_eq!(none, "none of the 120 processes matches --process (or the other selections)");
        assert_eq!(why_nothing(&Targets::Pods, None, seen(120, 7, 7)), None);
        // The pods' processes watched so far have exited (killed): said so, not "no pod".
        let gone = why_nothing(&Targets::Pods, None, Seen { exited: 2, ..seen(120, 0, 0) });
        assert_eq!(
            gone.as_deref(),
            Some("no selected process runs now: the 2 watched before exited (kept in this report)")
        );
    }

    #[test]
    fn oom_victims_are_kept_with_their_chart_and_told_by_event_or_counter() {
        const MB: u64 = 1 << 20;
        let in_container = |pid, private, id: char| Observation {
            pod: Some(PodRef::unnamed(
                "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
                Some(id.to_string().repeat(64)),
                None,
                crate::fleet::pods::QosClass::Burstable,
            )),
            ..obs(pid, 1, private)
        };
        let cgroup = |id: char, kills| ContainerObservation {
            pod: in_container(0, 0, id).pod.unwrap(),
            memory: CgroupMemory { usage: 0, anon: 0, working_set: 0, limit: Some(64 * MB) },
            processes: 1,
            oom_kills: Some(kills),
            dir: None,
        };
        let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
        // Told by the kernel's event: a stable process (forgotten at exit otherwise) killed.
        let mut list = WatchList::new(1.0).judging(params);
        for t in 0..5u64 {
            list.observe(t as f64, &[obs(10, 1, 8 * MB), obs(11, 1, 8 * MB)], Kind::Tick, false);
        }
        assert!(list.mark_oom_killed(10, 4.5, "tracepoint"));
        assert!(!list.mark_oom_killed(99, 4.5, "tracepoint"), "not watched");
        assert!(list.vanished(&[obs(11, 1, 8 * MB)]));
        list.observe(5.0, &[obs(11, 1, 8 * MB)], Kind::Tick, false);
        let killed = list.take_killed(&params);
        assert_eq!(killed.len(), 1);
        assert_eq!(
            (killed[0].process.pid, killed[0].at, killed[0].seen_by),
            (10, 4.5, "tracepoint")
        );
        assert!(killed[0].process.exited && killed[0].process.series.t_s.len() == 5);
        assert!(list.take_killed(&params).is_empty(), "once");
        // Told by counters: of the two processes gone from container a, whose count rose by
        // one, the larger; b's count did not rise, so its process merely exited.
        let mut list = WatchList::new(1.0).judging(params).counting_kills(true);
        for t in 0..5u64 {
            let kills = u64::from(t == 4);
            list.observe_containers(t as f64, &[cgroup('a', kills), cgroup('b', 0)], Kind::Tick);
            let seen = if t < 4 {
                vec![
                    in_container(20, 30 * MB, 'a'),
                    in_container(21, 2 * MB, 'a'),
                    in_container(22, 9 * MB, 'b'),
                ]
            } else {
                Vec::new()
            };
            list.observe(t as f64, &seen, Kind::Tick, false);
        }
        let killed = list.take_killed(&params);
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert_eq!((killed[0].process.pid, killed[0].seen_by), (20, "cgroup_counter"));
        let limit = killed[0].limit.as_ref().map(|l| (l.limit, l.working_set));
        assert_eq!(limit, Some((64 * MB, 0)), "its container's, though it is gone");
        // A count that rose with no watched process gone (the victim was not watched) is not
        // taken later for another process's exit.
        let mut list = WatchList::new(1.0).judging(params).counting_kills(true);
        for t in 0..6u64 {
            let kills = u64::from(t >= 2);
            list.observe_containers(t as f64, &[cgroup('a', kills)], Kind::Tick);
            let seen = if t < 4 { vec![in_container(30, 9 * MB, 'a')] } else { Vec::new() };
            list.observe(t as f64, &seen, Kind::Tick, false);
        }
        assert!(list.take_killed(&params).is_empty());
        // A group kill (memory.oom.group): one kill, the largest its victim.
        let mut list = WatchList::new(1.0).judging(params);
        let both = [in_container(40, 30 * MB, 'a'), in_container(41, 2 * MB, 'a')];
        for t in 0..3u64 {
            list.observe(t as f64, &both, Kind::Tick, false);
        }
        assert!(list.mark_oom_killed(41, 2.5, "tracepoint"));
        assert!(list.mark_oom_killed(40, 2.5, "tracepoint"));
        list.observe(3.0, &[], Kind::Tick, false);
        let killed = list.take_killed(&params);
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert_eq!((killed[0].process.pid, killed[0].also_killed.as_slice()), (40, &[41][..]));
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
            pod: PodRef::unnamed(
                "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
                Some(id.to_string().repeat(64)),
                Some("containerd".into()),
                crate::fleet::pods::QosClass::Burstable,
            ),
            // A limit of 200 MiB; the page cache is all active.
            memory: CgroupMemory {
                usage: anon + 100 * MB,
                anon,
                working_set: anon + 100 * MB,
                limit: Some(200 * MB),
            },
            processes: 2,
            oom_kills: Some(0),
            dir: None,
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
        // At 1 MiB/s, the 61 MiB left under the limit last 61 s; the flat one is not projected.
        assert_eq!(
            (judged[0].limit_bytes, judged[0].working_set_bytes),
            (Some(200 * MB), 139 * MB)
        );
        assert_eq!(judged[0].seconds_to_limit, Some(61.0));
        assert_eq!(judged[1].seconds_to_limit, None);
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
            oom_kills: Vec::new(),
            end_reason: EndReason::Duration,
            notes: Vec::new(),
        };
        let text = render(&report, "watch", 10);
        assert!(
            text.contains("no process's memory is growing\ncontainers (memory cgroup):\n"),
            "{text}"
        );
        assert!(
            text.contains("  139.0 MiB    39.0 MiB    +29.0 MiB     +3.5 GiB/h  leak (confidence 99.9%)  pod 8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b container aaaaaaaaaaaa\n"),
            "{text}"
        );
        assert!(!text.contains("bbbbbbbbbbbb"), "{text}");
    }

    #[test]
    fn renders_the_growing_processes() {
        let mut list = WatchList::new(1.0);
        for t in 0..20u64 {
            // Three python3s: named by what they run; one exits while leaking.
            let named = |pid, private, cmdline: &str| Observation {
                comm: "python3".into(),
                cmdline: cmdline.into(),
                ..obs(pid, 1, private)
            };
            let mut seen = vec![
                obs(10, 1, (8 + t) << 20),
                obs(20, 1, 1 << 20),
                named(30, (8 + 2 * t) << 20, "/usr/bin/python3 ingest.py --queue orders"),
                named(31, 1 << 20, "/usr/bin/python3 web.py"),
            ];
            if t < 12 {
                seen.push(named(32, (8 + 3 * t) << 20, "python3 -m batch"));
            }
            list.observe(t as f64, &seen, Kind::Tick, false);
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
            oom_kills: Vec::new(),
            end_reason: EndReason::Duration,
            notes: Vec::new(),
        };
        let text = render(&report, "watch", 10);
        assert!(
            text.starts_with("== watch: 2 processes watched; 3 leaking, 0 growing, 0 plateau ==\n"),
            "{text}"
        );
        assert!(
            text.contains("\n      10  p10                             27.0 MiB    +19.0 MiB     +3.5 GiB/h  leak (confidence 99.9%)\n"),
            "{text}"
        );
        assert!(
            text.contains("\n      30  python3 ingest.py --queue...    46.0 MiB    +38.0 MiB     +7.0 GiB/h  leak (confidence 99.9%)\n"),
            "{text}"
        );
        assert!(
            text.contains("\n      32  python3 -m batch                41.0 MiB    +33.0 MiB    +10.5 GiB/h  leak (confidence 99.9%) (exited)\n"),
            "{text}"
        );
        assert!(!text.contains("p20") && !text.contains("web.py"), "{text}");
    }
}
