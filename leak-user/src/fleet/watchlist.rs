//! Pure: the processes and containers a watch samples, and their judgements. A
//! [`WatchList`] takes each sample's observations (read by `watch`), keeps every series
//! bounded (exited processes at most [`MAX_EXITED_KEPT`]), names the OOM killer's victims
//! among the processes gone, and judges processes and containers alike ([`Trend`] of one
//! figure of their memory). No clock, no file: every input is passed in.
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
};

use crate::{
    analysis::growth::{SERIES_POINTS, seconds_to_limit, trend_view},
    analysis::history::{CgroupMemory, Kind, ProcessMemory, Sampled},
    analysis::report::TrendView,
    analysis::trend::{self, Params, Trend, Verdict, thin_indices},
    analysis::units::round_to,
    config::{Selection, Targets},
    fleet::{
        pods::PodRef,
        report::{
            ContainerSeries, WatchSeries, WatchedContainer, WatchedProcess, bytes_f64, per_hour,
        },
    },
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
    /// Where its memory cgroup is, and its OOM count then.
    pub dir: Option<CgroupDir>,
}

/// A container's memory cgroup, and how often it had called the OOM killer for its limit
/// when last read: a later read that counts more says the limit was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    /// Its directory.
    pub path: std::path::PathBuf,
    /// v2 `memory.events` `oom` (none on v1).
    pub limit_ooms: Option<u64>,
}

#[derive(Clone, Debug)]
struct WatchedCgroup {
    pod: PodRef,
    processes: usize,
    first_seen: f64,
    samples: Sampled<CgroupMemory>,
    oom_kills: Option<u64>,
    dir: Option<CgroupDir>,
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
    /// Its memory cgroup, as of that sample.
    pub dir: Option<CgroupDir>,
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
                        judge_series(&w.samples, |m| m.private, &self.params).verdict,
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
                let last = values.last().copied().unwrap_or_default();
                let keep = thin_indices(times.len(), SERIES_POINTS);
                let trend = judge_series(&w.samples, |m| m.anon, params);
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
        by_verdict(&mut out, |c| (&c.trend, c.pod.container_id.clone()));
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
        by_verdict(&mut out, |p| (&p.trend, p.pid));
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
            trend: trend_view(&judge_series(&w.samples, |m| m.private, params)),
            series: WatchSeries {
                t_s: keep.iter().map(|&i| millis(times[i])).collect(),
                rss_bytes: keep.iter().map(|&i| values[i].rss).collect(),
                anon_bytes: keep.iter().map(|&i| values[i].private).collect(),
            },
            pod: w.pod.clone(),
        }
    }
}

/// A series judged on one figure of its samples (a process's anonymous resident bytes, a
/// container's anonymous bytes): processes and containers are judged alike.
fn judge_series<M>(samples: &Sampled<M>, figure: impl Fn(&M) -> u64, params: &Params) -> Trend {
    let points: Vec<(f64, f64)> = samples
        .times()
        .iter()
        .zip(samples.values())
        .map(|(t, m)| (*t, bytes_f64(figure(m))))
        .collect();
    trend::classify(&points, params)
}

/// Orders judged processes or containers as people read them: leaks first, then growing,
/// plateau and stable; the fastest growth first within each, then by `key`'s id.
fn by_verdict<T, K: Ord>(items: &mut [T], key: impl Fn(&T) -> (&TrendView, K)) {
    items.sort_by(|a, b| {
        let ((ta, ia), (tb, ib)) = (key(a), key(b));
        ta.verdict
            .cmp(&tb.verdict)
            .then(tb.rate_bytes_per_s.total_cmp(&ta.rate_bytes_per_s))
            .then(ia.cmp(&ib))
    });
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
                let t = judge_series(&w.samples, |m| m.private, &low);
                (t.verdict == Verdict::Leak).then(|| (p.pid, w.comm.clone(), t.rate_per_hour()))
            })
            .collect();
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        out
    }
}

/// Seconds, rounded to the millisecond (as reported).
fn millis(s: f64) -> f64 {
    round_to(s, 3)
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

/// What `--min-growth` hid: processes that grew steadily, but by less than the floor.
#[must_use]
pub fn floor_note(hidden: &[(u32, String, f64)], floor: f64) -> Option<String> {
    let (pid, comm, rate) = hidden.first()?;
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a byte floor")]
    let floor = crate::analysis::units::human_bytes(floor as u64);
    let n = hidden.len();
    Some(format!(
        "{n} process{} grew steadily by less than --min-growth {floor} over the window, the \
         fastest pid {pid} ({comm}) at {}: lower it (e.g. --min-growth 64K) or watch longer \
         to judge {}",
        if n == 1 { "" } else { "es" },
        per_hour(*rate),
        if n == 1 { "it" } else { "them" }
    ))
}

#[cfg(test)]
mod tests;
