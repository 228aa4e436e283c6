//! The OOM kills of watched processes: each one's record (the post-mortem of its profile, or
//! its chart alone), the crash loops of a workload killed again and again, the counts by
//! workload for `/metrics`, and the Kubernetes Events to post. Pure but for reading the
//! post-mortem's JSON once it is written.
use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
};

use crate::{
    analysis::units::{human_bytes, human_duration, round_to, signed_bytes},
    fleet::{
        kube::Event,
        report::{Escalation, OomKillReport, per_hour},
        watchlist::Killed,
    },
};

/// Kills kept (their records; the counts by workload are kept apart, for good).
pub const KEPT: usize = 64;
/// Workloads whose kills are counted, at most (`/metrics` stays bounded).
const MAX_WORKLOADS: usize = 1024;
/// How long an Event waits for the post-mortem to be written before it is posted without.
const EVENT_WAIT_S: f64 = 30.0;

/// The labels a kill is counted under: the workload's for a pod's process, its program's for
/// another.
pub type Labels = Vec<(&'static str, String)>;

/// The kills seen so far.
#[derive(Debug, Default)]
pub struct OomKills {
    records: VecDeque<OomKillReport>,
    totals: BTreeMap<Labels, u64>,
    /// Events that failed, by kill: attempts so far, and when to try again (Unix seconds).
    retries: BTreeMap<String, (u32, f64)>,
}

/// Attempts at posting an Event before it is given up (the record then says so).
const EVENT_ATTEMPTS: u32 = 5;

impl OomKills {
    /// Records a kill, seen at `at_unix_s`, with its latest trace or profile, if it had one.
    pub fn record(&mut self, killed: Killed, at_unix_s: f64, profile: Option<Escalation>) {
        let labels = workload_labels(&killed.process);
        if self.totals.len() < MAX_WORKLOADS || self.totals.contains_key(&labels) {
            *self.totals.entry(labels.clone()).or_default() += 1;
        }
        let previous: Vec<String> = self
            .records
            .iter()
            .filter(|r| workload_labels(&r.process) == labels)
            .map(|r| r.id.clone())
            .collect();
        #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a name")]
        let id = format!(
            "oom-{}-{}-{}",
            crate::output::file_safe(&killed.process.comm),
            killed.process.pid,
            at_unix_s.max(0.0) as u64
        );
        let mut record = OomKillReport {
            id,
            at_unix_s,
            seen_by: killed.seen_by.to_owned(),
            process: killed.process,
            limit_bytes: killed.limit.as_ref().map(|l| l.limit),
            working_set_bytes: killed.limit.as_ref().map(|l| l.working_set),
            also_killed: killed.also_killed,
            profile,
            top_site: None,
            top_share: None,
            top_held: false,
            triage: String::new(),
            previous,
            repeated: None,
            event_posted: None,
        };
        self.finish(&mut record);
        if self.records.len() == KEPT {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// Brings the records up to date: each profile's state from `escalations` (the latest),
    /// and the post-mortems written since, read for what grew.
    pub fn refresh(&mut self, escalations: &[Escalation]) {
        let mut records = std::mem::take(&mut self.records);
        for r in &mut records {
            let Some(p) = &mut r.profile else { continue };
            if let Some(now) = escalations.iter().rev().find(|e| e.json == p.json) {
                p.clone_from(now);
            }
            if r.top_site.is_none()
                && p.exit_code.is_some()
                && let Some((site, share, held)) = top_growth(&p.json)
            {
                r.top_site = Some(site);
                r.top_held = held;
                r.top_share = Some(share);
            }
        }
        let all = records.make_contiguous();
        for i in 0..all.len() {
            let (before, rest) = all.split_at_mut(i);
            let r = &mut rest[0];
            r.triage = triage(r);
            r.repeated = repeated(r, before);
        }
        self.records = records;
    }

    fn finish(&self, record: &mut OomKillReport) {
        record.triage = triage(record);
        let before: Vec<OomKillReport> = self.records.iter().cloned().collect();
        record.repeated = repeated(record, &before);
    }

    /// The records, oldest first.
    #[must_use]
    pub fn reports(&self) -> Vec<OomKillReport> {
        self.records.iter().cloned().collect()
    }

    /// The kills counted by workload, since the start.
    pub fn totals(&self) -> impl Iterator<Item = (&Labels, u64)> {
        self.totals.iter().map(|(l, n)| (l, *n))
    }

    /// The Events due at `now_unix_s`: kills of processes in named pods whose post-mortem
    /// is written, or that had no profile, or that waited [`EVENT_WAIT_S`] for it; each
    /// once (marked pending until [`Self::posted`] says how it went). `url` gives a report's
    /// address from its id.
    pub fn events_due(&mut self, now_unix_s: f64, url: &dyn Fn(&str) -> String) -> Vec<Event> {
        let mut due = Vec::new();
        for r in &mut self.records {
            if r.event_posted.is_some()
                || self.retries.get(&r.id).is_some_and(|(_, next)| now_unix_s < *next)
            {
                continue;
            }
            let Some(pod) = &r.process.pod else { continue };
            let (Some(namespace), Some(name)) = (&pod.namespace, &pod.name) else { continue };
            let written = r.profile.as_ref().is_none_or(|p| p.exit_code.is_some());
            if !written && now_unix_s - r.at_unix_s < EVENT_WAIT_S {
                continue;
            }
            let report = match &r.profile {
                Some(p) if p.exit_code == Some(0) => {
                    let id = std::path::Path::new(&p.json)
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    format!("; report: {}", url(&id))
                }
                _ => String::new(),
            };
            let loop_part = r.repeated.as_ref().map(|l| format!(" ({l})")).unwrap_or_default();
            due.push(Event {
                kill: r.id.clone(),
                namespace: namespace.clone(),
                pod: name.clone(),
                pod_uid: pod.pod_uid.clone(),
                container: pod.container_name.clone(),
                message: format!("{}{loop_part}{report}", r.triage),
            });
            // In flight: not due again until `posted` says how it went.
            let tried = self.retries.get(&r.id).map_or(0, |(n, _)| *n);
            self.retries.insert(r.id.clone(), (tried, f64::INFINITY));
        }
        due
    }

    /// Says whether the Event about kill `id` was posted, at `now_unix_s`: one that was not
    /// is tried again later, 30 s more each time, [`EVENT_ATTEMPTS`] times in all.
    pub fn posted(&mut self, id: &str, ok: bool, now_unix_s: f64) {
        let Some(r) = self.records.iter_mut().find(|r| r.id == id) else { return };
        if ok {
            self.retries.remove(id);
            r.event_posted = Some(true);
            return;
        }
        let tried = self.retries.get(id).map_or(0, |(n, _)| *n) + 1;
        if tried >= EVENT_ATTEMPTS {
            self.retries.remove(id);
            r.event_posted = Some(false);
        } else {
            self.retries.insert(id.to_owned(), (tried, now_unix_s + 30.0 * f64::from(tried)));
            r.event_posted = None;
        }
    }
}

/// `namespace`, `workload_kind`, `workload` and `container` of a pod's process (the pod's
/// name for a bare pod, its UID when the API named nothing); `comm` of another.
#[must_use]
pub fn workload_labels(p: &crate::fleet::report::WatchedProcess) -> Labels {
    match &p.pod {
        Some(pod) => {
            let workload = match (&pod.workload_kind, &pod.workload, &pod.name) {
                (Some(kind), Some(w), _) => (kind.clone(), w.clone()),
                (_, _, Some(name)) => ("Pod".to_owned(), name.clone()),
                _ => ("Pod".to_owned(), pod.pod_uid.clone()),
            };
            vec![
                ("namespace", pod.namespace.clone().unwrap_or_default()),
                ("workload_kind", workload.0),
                ("workload", workload.1),
                ("container", pod.container_name.clone().unwrap_or_default()),
            ]
        }
        None => vec![("comm", p.comm.clone())],
    }
}

/// `OOM-killed after +60.0 MiB over 6s (+36.0 GiB/h); its 96.0 MiB limit reached; 94% of
/// the growth from leak_fn <- main`.
fn triage(r: &OomKillReport) -> String {
    let t = &r.process.trend;
    let mut parts = vec![format!(
        "OOM-killed after {} over {} ({})",
        signed_bytes(t.gained_bytes),
        human_duration(r.process.watched_s),
        per_hour(t.rate_bytes_per_h)
    )];
    if let (Some(limit), Some(used)) = (r.limit_bytes, r.working_set_bytes) {
        // Reached, if it was near at the last sample; else another limit (the node's) ran
        // out, and only what was seen is said.
        if used.saturating_mul(10) >= limit.saturating_mul(9) {
            parts.push(format!("its {} limit reached", human_bytes(limit)));
        } else {
            #[expect(clippy::cast_precision_loss, reason = "a percentage")]
            let share = used as f64 / limit.max(1) as f64 * 100.0;
            parts.push(format!(
                "its container at {share:.0}% of its {} limit at the last sample",
                human_bytes(limit)
            ));
        }
    }
    if !r.also_killed.is_empty() {
        let n = r.also_killed.len();
        parts.push(format!(
            "{n} other process{} of its container killed with it",
            if n == 1 { "" } else { "es" }
        ));
    }
    match (&r.profile, &r.top_site, r.top_share) {
        (_, Some(site), Some(share)) if r.top_held => {
            parts.push(format!("{:.0}% of what it held from {site}", share * 100.0));
        }
        (_, Some(site), Some(share)) => {
            parts.push(format!("{:.0}% of the growth from {site}", share * 100.0));
        }
        (Some(p), _, _) if p.exit_code.is_none() => {
            parts.push("its profile's report is being written".to_owned());
        }
        (Some(_), _, _) => parts.push("its profile's report has no growing stack".to_owned()),
        (None, _, _) => parts.push(format!(
            "not profiled (judged {} until then): its memory chart is all there is",
            t.verdict.as_str()
        )),
    }
    parts.join("; ")
}

/// `3rd OOM kill in 2h0m, each time 90% of the growth from parse_request` for a kill with
/// earlier ones of its workload among `before`.
fn repeated(r: &OomKillReport, before: &[OomKillReport]) -> Option<String> {
    let earlier: Vec<&OomKillReport> =
        before.iter().filter(|b| r.previous.contains(&b.id)).collect();
    let first = earlier.first()?;
    let n = earlier.len() + 1;
    let mut line =
        format!("{} OOM kill in {}", ordinal(n), human_duration(r.at_unix_s - first.at_unix_s));
    let all: Vec<&OomKillReport> = earlier.iter().copied().chain(std::iter::once(r)).collect();
    let sites: Vec<(&String, f64)> = all
        .iter()
        .filter(|k| !k.top_held)
        .filter_map(|k| Some((k.top_site.as_ref()?, k.top_share?)))
        .collect();
    if sites.len() == all.len() && sites.iter().all(|(s, _)| *s == sites[0].0) {
        let least = sites.iter().map(|(_, share)| *share).fold(1.0, f64::min);
        let _ = write!(line, ", each time {:.0}% of the growth from {}", least * 100.0, sites[0].0);
    }
    Some(line)
}

/// `1st`, `2nd`, `3rd`, `4th`, ..., `11th`, `21st`.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The top growing stack of the report at `json` (its first frames) and its share, if it is
/// written and holds anything (see [`top_of`]).
fn top_growth(json: &str) -> Option<(String, f64, bool)> {
    let text = std::fs::read(json).ok()?;
    let report: crate::analysis::report::Report = serde_json::from_slice(&text).ok()?;
    top_of(&report)
}

/// The site that gained most in `report`, and its share of what all sites gained; when
/// nothing gained over its window (a profile started moments before the kill: one sample a
/// site), the site that holds most, and its share of what all hold (then `true`).
#[must_use]
pub fn top_of(report: &crate::analysis::report::Report) -> Option<(String, f64, bool)> {
    type Measure = fn(&crate::analysis::report::Site) -> u64;
    let gained: Measure = |s| s.trend.gained_bytes.max(0).unsigned_abs();
    let held: Measure = |s| s.outstanding_bytes;
    [(gained, false), (held, true)].into_iter().find_map(|(m, is_held)| {
        let total: u64 = report.sites.iter().map(m).sum();
        let top = report.sites.iter().max_by_key(|s| m(s))?;
        #[expect(clippy::cast_precision_loss, reason = "a share")]
        let share = m(top) as f64 / total.max(1) as f64;
        (total > 0).then(|| (top.name(), round_to(share, 3), is_held))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::{report::TrendView, trend::Verdict},
        fleet::watchlist::ContainerLimit,
        fleet::{
            pods::{PodRef, QosClass},
            report::{WatchSeries, WatchedProcess},
        },
    };

    fn process(pid: u32, pod: Option<PodRef>) -> WatchedProcess {
        WatchedProcess {
            pid,
            comm: "api".into(),
            cmdline: String::new(),
            start_time_ticks: 7,
            rss_bytes: 100 << 20,
            anon_bytes: 96 << 20,
            watched_s: 600.0,
            first_seen_s: 0.0,
            exited: true,
            trend: TrendView {
                verdict: Verdict::Leak,
                gained_bytes: 60 << 20,
                rate_bytes_per_h: f64::from(360u32 << 20),
                ..TrendView::default()
            },
            series: WatchSeries::default(),
            pod,
        }
    }

    fn pod() -> PodRef {
        PodRef {
            pod_uid: "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
            container_id: Some("c".repeat(64)),
            runtime: Some("containerd".into()),
            qos: QosClass::Burstable,
            name: Some("shop-api-1".into()),
            namespace: Some("shop".into()),
            container_name: Some("api".into()),
            workload_kind: Some("Deployment".into()),
            workload: Some("shop-api".into()),
            node: Some("n1".into()),
        }
    }

    fn profile(json: &str, exit_code: Option<i32>) -> Escalation {
        Escalation {
            pid: 1,
            comm: "api".into(),
            start_unix_s: 0.0,
            json: json.into(),
            svg: String::new(),
            pprof: String::new(),
            pod: None,
            exit_code,
            reason: "leak".into(),
            start_time_ticks: 7,
        }
    }

    #[test]
    fn each_kill_is_triaged_and_a_crash_loop_is_linked() {
        let mut kills = OomKills::default();
        let killed = |pid| Killed {
            process: process(pid, Some(pod())),
            at: 0.0,
            seen_by: "tracepoint",
            limit: Some(ContainerLimit { limit: 96 << 20, working_set: 95 << 20, dir: None }),
            also_killed: Vec::new(),
        };
        // Not profiled: its chart is all there is, and the Event goes at once.
        kills.record(killed(10), 1000.0, None);
        let r = &kills.reports()[0];
        assert_eq!(r.id, "oom-api-10-1000");
        assert_eq!(
            r.triage,
            "OOM-killed after +60.0 MiB over 10m (+360.0 MiB/h); its 96.0 MiB limit reached; \
             not profiled (judged leak until then): its memory chart is all there is"
        );
        assert_eq!(r.repeated, None);
        let url = |id: &str| format!("http://n1:9464/api/v1/reports/{id}/report.html");
        let due = kills.events_due(1000.0, &url);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].namespace.as_str(), due[0].pod.as_str()), ("shop", "shop-api-1"));
        assert_eq!(due[0].message, r.triage);
        assert!(kills.events_due(1001.0, &url).is_empty(), "once");
        // The API failed: tried again, later.
        kills.posted("oom-api-10-1000", false, 1001.0);
        assert_eq!(kills.reports()[0].event_posted, None);
        assert!(kills.events_due(1002.0, &url).is_empty(), "not at once");
        assert_eq!(kills.events_due(1031.0, &url).len(), 1);
        kills.posted("oom-api-10-1000", true, 1031.0);
        assert_eq!(kills.reports()[0].event_posted, Some(true));
        // Profiled: the Event waits for the post-mortem, then names what grew.
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("leak-api-11.json");
        let json = json.to_str().unwrap();
        kills.record(killed(11), 4600.0, Some(profile(json, None)));
        assert!(kills.reports()[1].triage.ends_with("; its profile's report is being written"));
        assert!(kills.events_due(4601.0, &url).is_empty(), "the report is being written");
        let mut report = crate::analysis::build::tests::sample_report();
        report.sites[0].trend.gained_bytes = 90;
        report.sites[1].trend.gained_bytes = 10;
        std::fs::write(json, serde_json::to_vec(&report).unwrap()).unwrap();
        kills.refresh(&[profile(json, Some(0))]);
        let r = &kills.reports()[1];
        let top = report.sites[0].name();
        assert_eq!(r.top_share, Some(0.9));
        assert!(r.triage.ends_with(&format!("; 90% of the growth from {top}")), "{}", r.triage);
        // The second kill of the workload: linked to the first, which had no profile.
        assert_eq!(r.previous, ["oom-api-10-1000"]);
        assert_eq!(r.repeated.as_deref(), Some("2nd OOM kill in 1h0m"));
        let due = kills.events_due(4602.0, &url);
        assert_eq!(
            due[0].message,
            format!(
                "{} (2nd OOM kill in 1h0m); report: http://n1:9464/api/v1/reports/leak-api-11/report.html",
                r.triage
            )
        );
        // A third, profiled too: each time the same stack.
        let json3 = dir.path().join("leak-api-12.json");
        std::fs::write(&json3, serde_json::to_vec(&report).unwrap()).unwrap();
        let json3 = json3.to_str().unwrap();
        kills.record(killed(12), 8200.0, Some(profile(json3, Some(0))));
        kills.refresh(&[profile(json, Some(0)), profile(json3, Some(0))]);
        let r = &kills.reports()[2];
        assert_eq!(r.previous.len(), 2);
        assert_eq!(r.repeated.as_deref(), Some("3rd OOM kill in 2h0m"), "the first had no profile");
        // Counted by workload.
        let totals: Vec<(Labels, u64)> = kills.totals().map(|(l, n)| (l.clone(), n)).collect();
        assert_eq!(totals.len(), 1);
        assert_eq!(totals[0].1, 3);
        assert_eq!(totals[0].0[2], ("workload", "shop-api".to_owned()));
    }

    #[test]
    fn a_crash_loop_with_one_culprit_says_so() {
        let mut a = process(1, None);
        a.comm = "srv".into();
        let record = |id: &str, at: f64, share: f64| OomKillReport {
            id: id.into(),
            at_unix_s: at,
            seen_by: "tracepoint".into(),
            process: a.clone(),
            limit_bytes: None,
            working_set_bytes: None,
            also_killed: Vec::new(),
            profile: None,
            top_site: Some("parse_request <- handle_conn".into()),
            top_share: Some(share),
            top_held: false,
            triage: String::new(),
            previous: Vec::new(),
            repeated: None,
            event_posted: None,
        };
        let before = [record("a", 0.0, 0.95), record("b", 3600.0, 0.9)];
        let now =
            OomKillReport { previous: vec!["a".into(), "b".into()], ..record("c", 7200.0, 0.92) };
        assert_eq!(
            repeated(&now, &before).as_deref(),
            Some(
                "3rd OOM kill in 2h0m, each time 90% of the growth from parse_request <- handle_conn"
            )
        );
        assert_eq!(workload_labels(&a), vec![("comm", "srv".to_owned())]);
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 101].map(ordinal),
            ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
        );
    }

    #[test]
    fn the_limit_is_said_reached_only_when_it_was_near() {
        let mut kills = OomKills::default();
        let mut k = Killed {
            process: process(20, Some(pod())),
            at: 0.0,
            seen_by: "tracepoint",
            limit: Some(ContainerLimit { limit: 1 << 30, working_set: 300 << 20, dir: None }),
            also_killed: vec![21, 22],
        };
        kills.record(k.clone(), 10.0, None);
        let t = &kills.reports()[0].triage;
        assert!(
            t.contains("; its container at 29% of its 1.0 GiB limit at the last sample; 2 other processes of its container killed with it; not profiled"),
            "{t}"
        );
        k.limit = None;
        kills.record(k, 20.0, None);
        assert!(!kills.reports()[1].triage.contains("limit"), "{}", kills.reports()[1].triage);
        // A post-mortem where nothing grew yet: what it held, in those words.
        let mut report = crate::analysis::build::tests::sample_report();
        for s in &mut report.sites {
            s.trend.gained_bytes = 0;
        }
        let (site, share, held) = top_of(&report).unwrap();
        assert!(held && (share - 3072.0 / 3172.0).abs() < 1e-3, "{site} {share}");
    }
}
