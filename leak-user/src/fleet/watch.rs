//! `leak watch` and the loop of `leak agent`: samples processes' memory only
//! (`/proc/PID/statm` and their containers' memory cgroups, no probes), hands each sample to
//! the [`WatchList`] that judges it, and with `--escalate` attaches the probes to a process
//! judged leaking for a while and writes its report. This is how a fleet is watched at
//! near-zero cost.
//!
//! Reading: [`run`] checks the input, `watch` is the loop; each sample is read by `observe`,
//! recorded by the list, its OOM victims by `kills`, and (the agent, `agent`) published for
//! the API. The report model is `fleet::report`, the escalations `fleet::escalate`.
use std::{
    collections::{BTreeMap, HashSet},
    io::Write as _,
    sync::Arc,
};

use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::{
    analysis::history::Kind,
    analysis::report::{EndReason, Window},
    analysis::trend::{Params, Verdict},
    config::{Selection, Targets, WatchConfig},
    error::Error,
    fleet::{
        agent::Agent,
        escalate::Escalator,
        kills::Kills,
        kubeapi::PodNames,
        oom::OomKills,
        pods::PodRef,
        report::{
            WATCH_REPORT_VERSION, WatchReport, WatchedContainer, WatchedProcess, bytes_f64, render,
        },
        serve::Published,
        watchlist::{
            CgroupDir, ContainerObservation, Observation, Seen, WatchList, floor_note, why_nothing,
        },
    },
    output, procfs,
    runtime::{self, Sampler, Signals, deadline},
};

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
    if cfg.agent.is_some() {
        Agent::prepare(&cfg.out_dir)?;
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
    let agent = match &cfg.agent {
        Some(a) => Some(Agent::start(a, cfg.escalate.is_some()).await?),
        None => None,
    };
    let names = agent.as_ref().map(|a| a.names.clone()).unwrap_or_default();
    let selection = cfg.agent.as_ref().map(|a| &a.selection);
    let mut kills = Kills::start(agent.as_ref().map(|a| a.base.as_str()));
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
        observe(&cfg.targets, &skip(escalator), &names, selection, &cfg.cgroup_root, &cmdlines)
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
    let nothing = |seen: Seen| why_nothing(&cfg.targets, selection, seen);
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
                let serving = agent.as_ref().map(|a| &*a.published);
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
    if let Some(agent) = agent {
        agent.stop();
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
    (escalator, kills): (&mut Option<Escalator>, &OomKills),
    published: Option<&Published>,
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

/// Command lines read so far, by process (pid and start time): read once per process, as
/// reading one takes the process's memory-map lock.
type Cmdlines = std::cell::RefCell<hashbrown::HashMap<(u32, u64), Arc<str>>>;

/// Reads the memory of the targets now, and of the containers they run in (each
/// container's memory cgroup once, under `cgroup_root`).
fn observe(
    targets: &Targets,
    skip: &HashSet<u32>,
    names: &PodNames,
    selection: Option<&Selection>,
    cgroup_root: &std::path::Path,
    cmdlines: &Cmdlines,
) -> (Vec<Observation>, Vec<ContainerObservation>, Seen) {
    // Held for this pass (the refresher waits at most that long), not copied.
    let api_pods = names.lock();
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
                dir: Some(CgroupDir { path: dir, limit_ooms: events }),
            })
        })
        .collect();
    (processes, containers, seen)
}

/// Writes the watch report (`--json`) and page (`--html`), each atomically.
fn write_outputs(cfg: &WatchConfig, report: &WatchReport) -> Result<(), Error> {
    if let Some(p) = &cfg.json {
        let mut text = serde_json::to_vec_pretty(report)
            .map_err(|e| Error::io(format!("writing {}", p.display()))(e.into()))?;
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

/// What the watch keeps besides its list: the escalations, and the OOM kills.
#[derive(Clone, Copy)]
struct Tracked<'a> {
    escalator: Option<&'a Escalator>,
    kills: &'a OomKills,
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
        duration_s: crate::analysis::units::round_to(end_unix - start_unix, 3),
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
