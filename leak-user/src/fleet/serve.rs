//! What `leak agent` serves over HTTP (#6), read-only:
//!
//! - `/`: the node's watch page (HTML, `fleet::page`): its growing processes and
//!   containers charted, each trace linked;
//! - `/healthz`;
//! - `/metrics`: Prometheus text: each watched process's anonymous memory, growth rate,
//!   bytes gained over the judged window and verdict, labelled with its pod, container,
//!   workload and node (#18); the same for each container's memory cgroup, with its limit,
//!   usage against it and the projected seconds to reach it; each trace's report id
//!   (`leak_trace_info`, for links to its page); each traced process's top sites
//!   (outstanding bytes and allocations), drops and probe hits; the agent's own CPU time;
//!   the OOM kills by workload (`leak_oom_kills_total`) and each kept kill
//!   (`leak_oom_kill_info`, with its post-mortem's report id);
//! - `/api/v1/oom_kills`: the watched processes the OOM killer killed, each with its triage
//!   line, chart and post-mortem (`/api/v1/oom_kills/{id}`);
//! - `/api/v1/reports`: the traced processes, running and done;
//!   `/api/v1/reports/{id}`: a report (JSON), with `/report.html` (the page to look at),
//!   `/flamegraph.svg` and `/profile.pb.gz` (pprof: what Pyroscope, Parca and Grafana ingest).
//!
//! The watch loop publishes its latest state ([`Published::publish`]); requests read it.
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use serde::Serialize;

use crate::{
    analysis::report::{Report, StackFrame},
    analysis::trend::Verdict,
    fleet::http::{Handler, Request, Response},
    fleet::page,
    fleet::pods::PodRef,
    fleet::report::{Escalation, OomKillReport, WatchReport, WatchedContainer, WatchedProcess},
    output::prometheus::{self, Family, Kind},
};

/// Processes and containers charted on the node's page.
pub const TOP_PROCESSES: usize = 20;

/// Sites per traced process in `/metrics` (bounded cardinality).
pub const TOP_SITES: usize = 10;

/// What the metrics keep of a finished report (parsed once: reports can be large).
#[derive(Clone, Debug, Default)]
struct Summary {
    /// (site id, innermost function, bytes, allocations), largest first.
    sites: Vec<(String, String, u64, u64)>,
    drops: Vec<(String, u64)>,
    hits: Vec<(String, u64)>,
}

/// The agent's state as the watch loop last published it.
#[derive(Default)]
pub struct Published {
    report: Mutex<Option<WatchReport>>,
    summaries: Mutex<HashMap<String, Summary>>,
    /// OOM kills by workload, since the agent started.
    kills: Mutex<Vec<(crate::fleet::oom::Labels, u64)>>,
}

impl Published {
    /// Replaces the OOM kills' counts by workload.
    pub fn publish_kills(&self, kills: &crate::fleet::oom::OomKills) {
        *self.kills.lock().unwrap_or_else(PoisonError::into_inner) =
            kills.totals().map(|(l, n)| (l.clone(), n)).collect();
    }

    /// Replaces the published state.
    pub fn publish(&self, report: WatchReport) {
        *self.report.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
    }

    fn report(&self) -> Option<WatchReport> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets the summaries of reports the agent no longer keeps.
    fn forget_all_but(&self, kept: &[Escalation]) {
        let mut cache = self.summaries.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > kept.len() {
            cache.retain(|json, _| kept.iter().any(|e| &e.json == json));
        }
    }

    /// The summary of a finished escalation's report, read once.
    fn summary(&self, e: &Escalation) -> Option<Summary> {
        let mut cache = self.summaries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = cache.get(&e.json) {
            return Some(s.clone());
        }
        let report: Report = serde_json::from_slice(&std::fs::read(&e.json).ok()?).ok()?;
        let s = Summary {
            sites: report
                .sites
                .iter()
                .take(TOP_SITES)
                .map(|s| {
                    let f =
                        s.stack.first().map_or_else(|| "[unknown]".to_owned(), StackFrame::name);
                    (s.id.clone(), f, s.outstanding_bytes, s.outstanding_allocs)
                })
                .collect(),
            drops: report.drops.into_iter().collect(),
            hits: report.probe_hits.into_iter().collect(),
        };
        cache.insert(e.json.clone(), s.clone());
        Some(s)
    }
}

/// The request handler over `state`.
#[must_use]
pub fn handler(state: Arc<Published>) -> Handler {
    Arc::new(move |request: &Request| route(&state, request))
}

/// A report's id: its file name without `.json` (`leak-COMM-PID`).
fn id_of(e: &Escalation) -> String {
    Path::new(&e.json).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn route(state: &Published, request: &Request) -> Response {
    let parts: Vec<&str> = request.path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => match state.report() {
            Some(report) => Response::ok("text/html; charset=utf-8", page(&report)),
            None => Response::error(503, "starting: the first sample is not judged yet"),
        },
        ["healthz"] => Response::ok("text/plain; charset=utf-8", "ok\n"),
        ["metrics"] => Response::ok(prometheus::CONTENT_TYPE, metrics(state)),
        ["api", "v1", "reports"] => {
            let list: Vec<ReportEntry> =
                state.report().iter().flat_map(|r| &r.escalations).map(ReportEntry::of).collect();
            json(&list)
        }
        ["api", "v1", "oom_kills"] => {
            json(&state.report().map(|r| r.oom_kills).unwrap_or_default())
        }
        ["api", "v1", "oom_kills", id] => {
            let kill = state.report().and_then(|r| r.oom_kills.into_iter().find(|k| k.id == *id));
            kill.map_or_else(Response::not_found, |k| json(&k))
        }
        ["api", "v1", "reports", id, rest @ ..] => {
            let Some(report) = state.report() else { return Response::not_found() };
            let Some(e) = report.escalations.iter().rev().find(|e| id_of(e) == *id) else {
                return Response::not_found();
            };
            let html = crate::fleet::escalate::html_of(&e.json);
            let (path, content_type) = match rest {
                [] => (&e.json, "application/json"),
                ["report.html"] => (&html, "text/html; charset=utf-8"),
                ["flamegraph.svg"] => (&e.svg, "image/svg+xml"),
                ["profile.pb.gz"] => (&e.pprof, "application/octet-stream"),
                _ => return Response::not_found(),
            };
            if e.exit_code.is_none() {
                return Response::error(503, "still tracing: the report is written when it ends");
            }
            match std::fs::read(path) {
                Ok(body) => Response::ok(content_type, body),
                Err(_) => Response::not_found(),
            }
        }
        _ => Response::not_found(),
    }
}

/// The watch page of the node (`/`), each finished trace linked to its page here.
fn page(report: &WatchReport) -> String {
    let link = |e: &Escalation| {
        let html = crate::fleet::escalate::html_of(&e.json);
        (e.exit_code.is_some() && Path::new(&html).exists())
            .then(|| format!("api/v1/reports/{}/report.html", page::url_path(id_of(e).as_bytes())))
    };
    let title = std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .map_or_else(|| "leak agent".to_owned(), |n| format!("leak agent on node {n}"));
    page::render(&page::WatchPage {
        title: &title,
        report,
        clock: &crate::runtime::local_hms,
        top: TOP_PROCESSES,
        link: &link,
    })
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            Response::ok("application/json", body)
        }
        Err(e) => Response::error(500, &e.to_string()),
    }
}

/// One traced process in `/api/v1/reports`.
#[derive(Serialize)]
struct ReportEntry {
    id: String,
    pid: u32,
    comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<PodRef>,
    start_unix_s: f64,
    /// `tracing`, `done` or `failed`.
    status: &'static str,
    url: String,
}

impl ReportEntry {
    fn of(e: &Escalation) -> Self {
        let id = id_of(e);
        Self {
            url: format!("/api/v1/reports/{id}"),
            id,
            pid: e.pid,
            comm: e.comm.clone(),
            pod: e.pod.clone(),
            start_unix_s: e.start_unix_s,
            status: match e.exit_code {
                None => "tracing",
                Some(0) => "done",
                Some(_) => "failed",
            },
        }
    }
}

/// Labels naming a process: pid, comm, and its pod and container when it has them.
fn process_labels(pid: u32, comm: &str, pod: Option<&PodRef>) -> Vec<(&'static str, String)> {
    let mut labels = vec![("pid", pid.to_string()), ("comm", comm.to_owned())];
    labels.extend(pod_labels(pod));
    labels
}

/// Labels naming a pod and container: ids, and names when the Kubernetes API gave them.
fn pod_labels(pod: Option<&PodRef>) -> Vec<(&'static str, String)> {
    let mut labels = Vec::new();
    if let Some(p) = pod {
        labels.push(("pod_uid", p.pod_uid.clone()));
        labels.push(("container_id", p.container_id.clone().unwrap_or_default()));
        // Names, when the Kubernetes API gave them.
        for (label, value) in [
            ("namespace", &p.namespace),
            ("pod", &p.name),
            ("container", &p.container_name),
            ("workload_kind", &p.workload_kind),
            ("workload", &p.workload),
            ("node", &p.node),
        ] {
            if let Some(v) = value {
                labels.push((label, v.clone()));
            }
        }
    }
    labels
}

#[expect(clippy::cast_precision_loss, reason = "metric values are f64")]
fn metrics(state: &Published) -> String {
    let mut watched = Family::new(
        "leak_processes_watched",
        Kind::Gauge,
        "Processes whose memory the agent samples.",
    );
    let mut traced = Family::new(
        "leak_traced_processes",
        Kind::Gauge,
        "Processes with the probes attached now.",
    );
    let mut site_bytes = Family::new(
        "leak_site_outstanding_bytes",
        Kind::Gauge,
        "Bytes allocated at a site and not freed, per traced process (top sites).",
    );
    let mut site_allocs = Family::new(
        "leak_site_outstanding_allocations",
        Kind::Gauge,
        "Allocations made at a site and not freed, per traced process (top sites).",
    );
    let mut drops =
        Family::new("leak_drops_total", Kind::Counter, "Events a trace lost, by reason.");
    let mut hits =
        Family::new("leak_probe_hits_total", Kind::Counter, "Probe hits of a trace, by probe.");
    let mut trace_info = Family::new(
        "leak_trace_info",
        Kind::Gauge,
        "1 for each trace the agent keeps: its report's id (/api/v1/reports/{id}/report.html) and status (tracing, done or failed).",
    );
    let mut cpu = Family::new(
        "leak_agent_cpu_seconds_total",
        Kind::Counter,
        "CPU time of the agent and of the traces it ran.",
    );
    let report = state.report();
    let oom = oom_families(
        state,
        report.as_ref().map_or(&[], |r| &r.oom_kills),
        report.as_ref().map_or(&[], |r| &r.processes),
    );
    let process = process_families(report.as_ref().map_or(&[], |r| &r.processes));
    let container = container_families(report.as_ref().map_or(&[], |r| &r.containers));
    if let Some(report) = report {
        state.forget_all_but(&report.escalations);
        watched.push(vec![], report.processes_watched as f64);
        let running = report.escalations.iter().filter(|e| e.exit_code.is_none()).count();
        traced.push(vec![], running as f64);
        for e in &report.escalations {
            let mut l = process_labels(e.pid, &e.comm, e.pod.as_ref());
            let entry = ReportEntry::of(e);
            l.extend([
                ("id", entry.id),
                ("status", entry.status.to_owned()),
                ("reason", e.reason.clone()),
            ]);
            trace_info.push(l, 1.0);
        }

        for e in report.escalations.iter().filter(|e| e.exit_code == Some(0)) {
            let Some(s) = state.summary(e) else { continue };
            let labels = process_labels(e.pid, &e.comm, e.pod.as_ref());
            for (site, function, bytes, count) in &s.sites {
                let mut l = labels.clone();
                l.push(("site", site.clone()));
                l.push(("function", function.clone()));
                site_bytes.push(l.clone(), *bytes as f64);
                site_allocs.push(l, *count as f64);
            }
            for (reason, n) in &s.drops {
                let mut l = labels.clone();
                l.push(("reason", reason.clone()));
                drops.push(l, *n as f64);
            }
            for (probe, n) in &s.hits {
                let mut l = labels.clone();
                l.push(("probe", probe.clone()));
                hits.push(l, *n as f64);
            }
        }
    }
    if let Some(s) = own_cpu_seconds() {
        cpu.push(vec![], s);
    }
    let families: Vec<Family> = std::iter::once(watched)
        .chain(process)
        .chain(container)
        .chain([traced, trace_info, site_bytes, site_allocs, drops, hits])
        .chain(oom)
        .chain([cpu])
        .collect();
    prometheus::render(&families)
}

/// The OOM kills by workload since the start, and each one kept.
#[expect(clippy::cast_precision_loss, reason = "metric values are f64")]
fn oom_families(
    state: &Published,
    kept: &[OomKillReport],
    processes: &[WatchedProcess],
) -> [Family; 2] {
    let mut total = Family::new(
        "leak_oom_kills_total",
        Kind::Counter,
        "Watched processes the kernel's OOM killer killed, by workload (namespace, workload_kind, workload, container; comm outside pods), since the agent started.",
    );
    let mut info = Family::new(
        "leak_oom_kill_info",
        Kind::Gauge,
        "1 for each OOM kill the agent keeps: its id (/api/v1/oom_kills/{id}), the victim, and its post-mortem's report id (empty: not profiled).",
    );
    // Every watched pod's workload's counter, from 0: `increase()` over a series that
    // appears at its first kill would miss that kill.
    let counted = state.kills.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let watched =
        processes.iter().filter(|p| p.pod.is_some()).map(crate::fleet::oom::workload_labels);
    let zeros: std::collections::BTreeSet<_> =
        watched.filter(|l| !counted.iter().any(|(c, _)| c == l)).collect();
    for (labels, n) in counted {
        total.push(labels, n as f64);
    }
    for labels in zeros {
        total.push(labels, 0.0);
    }
    for k in kept {
        let p = &k.process;
        let mut l = process_labels(p.pid, &p.comm, p.pod.as_ref());
        let report_id = k.profile.as_ref().map(id_of).unwrap_or_default();
        l.extend([("id", k.id.clone()), ("report", report_id)]);
        info.push(l, 1.0);
    }
    [total, info]
}

/// Each watched process's anonymous memory, growth rate and verdict.
#[expect(clippy::cast_precision_loss, reason = "metric values are f64")]
fn process_families(processes: &[WatchedProcess]) -> Vec<Family> {
    let mut anon = Family::new(
        "leak_process_anon_bytes",
        Kind::Gauge,
        "Anonymous resident memory of a watched process.",
    );
    let mut rate = Family::new(
        "leak_process_growth_bytes_per_second",
        Kind::Gauge,
        "Growth rate of a watched process's anonymous memory (Theil-Sen).",
    );
    let mut gained = Family::new(
        "leak_process_gained_bytes",
        Kind::Gauge,
        "Anonymous memory a watched process gained over the judged window (last sample minus first).",
    );
    let mut window = Family::new(
        "leak_process_window_seconds",
        Kind::Gauge,
        "Length of the window a watched process's verdict judges (since it was first seen).",
    );
    let mut verdict = Family::new(
        "leak_process_verdict",
        Kind::Gauge,
        "1 for a watched process's current verdict: leak, growing, plateau or stable.",
    );
    for p in processes {
        let labels = process_labels(p.pid, &p.comm, p.pod.as_ref());
        anon.push(labels.clone(), p.anon_bytes as f64);
        rate.push(labels.clone(), p.trend.rate_bytes_per_s);
        gained.push(labels.clone(), p.trend.gained_bytes as f64);
        window.push(labels.clone(), p.watched_s);
        push_verdicts(&mut verdict, &labels, p.trend.verdict);
    }
    vec![anon, rate, gained, window, verdict]
}

/// One-hot: 1 for `current`, 0 for the other verdicts, each labelled `verdict`.
fn push_verdicts(family: &mut Family, labels: &[(&'static str, String)], current: Verdict) {
    for v in [Verdict::Leak, Verdict::Growing, Verdict::Plateau, Verdict::Stable] {
        let mut l = labels.to_vec();
        l.push(("verdict", v.as_str().to_owned()));
        family.push(l, f64::from(u8::from(current == v)));
    }
}

/// Each container's memory, limit, growth and verdict.
#[expect(clippy::cast_precision_loss, reason = "metric values are f64")]
fn container_families(containers: &[WatchedContainer]) -> Vec<Family> {
    let mut memory = Family::new(
        "leak_container_memory_bytes",
        Kind::Gauge,
        "Memory charged to a container's cgroup: kind=\"anon\" (anonymous), \"working_set\" (less the inactive page cache) or \"usage\" (page cache included).",
    );
    let mut limit = Family::new(
        "leak_container_memory_limit_bytes",
        Kind::Gauge,
        "A container's memory limit (memory.max; v1 memory.limit_in_bytes), when it has one.",
    );
    let mut ratio = Family::new(
        "leak_container_memory_limit_ratio",
        Kind::Gauge,
        "A container's working set over its memory limit (1: at the limit).",
    );
    let mut to_limit = Family::new(
        "leak_container_time_to_limit_seconds",
        Kind::Gauge,
        "Seconds until a container's working set reaches its limit at the current growth rate, when it grows (verdict leak or growing).",
    );
    let mut rate = Family::new(
        "leak_container_growth_bytes_per_second",
        Kind::Gauge,
        "Growth rate of a container's anonymous memory (Theil-Sen).",
    );
    let mut gained = Family::new(
        "leak_container_gained_bytes",
        Kind::Gauge,
        "Anonymous memory a container gained over the judged window (last sample minus first).",
    );
    let mut window = Family::new(
        "leak_container_window_seconds",
        Kind::Gauge,
        "Length of the window a container's verdict judges (since it was first seen).",
    );
    let mut verdict = Family::new(
        "leak_container_verdict",
        Kind::Gauge,
        "1 for a container's current verdict: leak, growing, plateau or stable.",
    );
    for c in containers {
        let labels = pod_labels(Some(&c.pod));
        for (kind, v) in [
            ("anon", c.anon_bytes),
            ("working_set", c.working_set_bytes),
            ("usage", c.memory_bytes),
        ] {
            let mut l = labels.clone();
            l.push(("kind", kind.to_owned()));
            memory.push(l, v as f64);
        }
        if let Some(bytes) = c.limit_bytes {
            limit.push(labels.clone(), bytes as f64);
            ratio.push(labels.clone(), c.working_set_bytes as f64 / bytes.max(1) as f64);
        }
        if let Some(s) = c.seconds_to_limit {
            to_limit.push(labels.clone(), s);
        }
        rate.push(labels.clone(), c.trend.rate_bytes_per_s);
        gained.push(labels.clone(), c.trend.gained_bytes as f64);
        window.push(labels.clone(), c.watched_s);
        push_verdicts(&mut verdict, &labels, c.trend.verdict);
    }
    vec![memory, limit, ratio, to_limit, rate, gained, window, verdict]
}

/// This process's CPU time plus that of its reaped children (the traces), seconds.
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split(' ').collect();
    // utime, stime, cutime, cstime: fields 14 to 17 of the line, 11 to 14 after the name.
    let ticks: f64 = fields.get(11..15)?.iter().filter_map(|f| f.parse::<f64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    #[expect(clippy::cast_precision_loss, reason = "clock ticks per second")]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}
