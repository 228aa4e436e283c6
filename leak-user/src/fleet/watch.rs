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
    analysis::growth::{SERIES_POINTS, seconds_to_limit, thin_indices, trend_view},
    analysis::history::{CgroupMemory, Kind, ProcessMemory, Sampled},
    analysis::report::Window,
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
                    first_seen_s: millis(w.first_seen),
                    exited: w.exited,
                    trend: trend_view(&trend::classify(&points, params)),
                    series: WatchSeries {
                        t_s: keep.iter().map(|&i| millis(times[i])).collect(),
                        rss_bytes: keep.iter().map(|&i| values[i].rss).collect(),
                        anon_bytes: keep.iter().map(|&i| values[i].private).collect(),
                    },
                    pod: w.pod.clone(),
                }
            })
            .collect();
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

/// Reads the memory of the targets now, and of the containers they run in (each
/// container's memory cgroup once, under `cgroup_root`).
fn observe(
    targets: &Targets,
    skip: &HashSet<u32>,
    names: &Names,
    selection: Option<&Selection>,
    cgroup_root: &std::path::Path,
) -> (Vec<Observation>, Vec<ContainerObservation>) {
    // Held for this pass (the refresher waits at most that long), not copied.
    let api_pods = names.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let pids = match targets {
        Targets::All | Targets::Pods => procfs::all_pids(),
        Targets::Pids(p) => p.clone(),
    };
    // Container id -> (pod, memory cgroup, processes).
    let mut containers: BTreeMap<String, (PodRef, crate::fleet::pods::MemoryCgroup, usize)> =
        BTreeMap::new();
    let processes = pids
        .into_iter()
        .filter(|p| !skip.contains(p))
        .filter_map(|pid| {
            let cgroups = procfs::cgroup_text(pid).unwrap_or_default();
            let mut pod = crate::fleet::pods::pod_of(&cgroups);
            if *targets == Targets::Pods && pod.is_none() {
                return None;
            }
            if let Some(p) = &mut pod {
                p.name_from(&api_pods);
            }
            let comm = procfs::comm(pid).unwrap_or_default();
            if let Some(sel) = selection {
                let id = crate::fleet::kube::Identity {
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
                && let Some(cg) = crate::fleet::pods::memory_cgroup_of(&cgroups)
                && crate::fleet::pods::pod_of_path(cg.path()).and_then(|m| m.container_id).as_ref()
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
            let (_, memory) = crate::fleet::pods::cgroup_memory(cgroup_root, &cg)?;
            Some(ContainerObservation { pod, memory, processes })
        })
        .collect();
    (processes, containers)
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
    })
}

async fn watch(cfg: &WatchConfig, signals: &mut Signals) -> Result<WatchReport, Error> {
    let start = Instant::now();
    let start_unix = runtime::now_unix();
    let params = Params { min_growth_bytes: bytes_f64(cfg.min_growth), ..Params::default() };
    let mut list = WatchList::new(cfg.sample_interval.as_secs_f64());
    let mut escalator = escalator_for(cfg);
    // `leak agent`: metrics and reports over HTTP, from the state published after each
    // sample (every process, stable ones included).
    let published = Arc::new(crate::fleet::serve::Published::default());
    let names = if cfg.listen.is_some() { Names::start() } else { Names::default() };
    let server = match cfg.listen {
        Some(addr) => Some(serve(addr, &published, cfg).await?),
        None => None,
    };
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
                    runtime::local_hms(report.window.end_unix_s),
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
        runtime::local_hms(report.window.end_unix_s),
        report.duration_s
    );
    print(&render(&report, &header, cfg.top));
    write_outputs(cfg, &report)?;
    Ok(report)
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
/// `cfg` configures.
async fn serve(
    addr: std::net::SocketAddr,
    published: &Arc<crate::fleet::serve::Published>,
    cfg: &WatchConfig,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Error> {
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
    Ok(tokio::spawn(crate::fleet::http::serve(listener, handler, web)))
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
    let end_unix = runtime::now_unix();
    WatchReport {
        version: WATCH_REPORT_VERSION,
        window: Window { start_unix_s: start_unix, end_unix_s: end_unix },
        duration_s: ((end_unix - start_unix) * 1000.0).round() / 1000.0,
        processes_watched: list.len(),
        processes,
        containers,
        escalations: escalator.map(|e| e.done().to_vec()).unwrap_or_default(),
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
                qos: crate::fleet::pods::QosClass::Burstable,
                name: None,
                namespace: None,
                container_name: None,
                workload_kind: None,
                workload: None,
                node: None,
            },
            // A limit of 200 MiB; the page cache is all active.
            memory: CgroupMemory {
                usage: anon + 100 * MB,
                anon,
                working_set: anon + 100 * MB,
                limit: Some(200 * MB),
            },
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
            end_reason: "duration".into(),
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
            text.contains("\n      10  p10                 27.0 MiB    +19.0 MiB     +3.5 GiB/h  leak (confidence 99.9%)\n"),
            "{text}"
        );
        assert!(!text.contains("p20"), "{text}");
    }
}
