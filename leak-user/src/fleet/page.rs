//! The watch page (#17): `leak watch --html`, and what the agent serves at `/`. One
//! self-contained page (the trace report's style, no script, nothing fetched): who leaks
//! and how fast, a chart per container and per process that is not stable (memory over
//! the window, with the fitted trend or a plateau's level), and a link to each trace's own
//! page. Pure: the caller passes the clock and how to link a trace.
use std::fmt::Write as _;

use crate::{
    analysis::{
        report::TrendView,
        trend::Verdict,
        units::{human_bytes, signed_bytes},
    },
    fleet::report::{
        Escalation, OomKillReport, WatchReport, WatchedContainer, WatchedProcess, per_hour,
        pod_name,
    },
    output::{
        charts::{self, Line},
        escape_markup as esc,
        html::{CSS, badge, duration, judged_line, points},
    },
};

/// What the page is made from.
pub struct WatchPage<'a> {
    /// What watched: `leak watch`, or `leak agent on node NAME`.
    pub title: &'a str,
    /// The report.
    pub report: &'a WatchReport,
    /// Unix seconds to a time of day.
    pub clock: &'a dyn Fn(f64) -> String,
    /// Processes (and containers) given a chart, at most.
    pub top: usize,
    /// Where a finished trace's page is (`None`: not written, or not kept any more).
    pub link: &'a dyn Fn(&Escalation) -> Option<String>,
}

/// The page.
#[must_use]
pub fn render(p: &WatchPage) -> String {
    let r = p.report;
    let mut h = String::with_capacity(64 * 1024);
    let title = format!(
        "{}: {} process{}",
        esc(p.title),
        r.processes_watched,
        if r.processes_watched == 1 { "" } else { "es" }
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title>\
         <style>{CSS}</style></head><body>\n<h1>{title}</h1>\n"
    );
    triage(&mut h, p);
    oom_kills(&mut h, p);
    containers(&mut h, p);
    processes(&mut h, p);
    traces(&mut h, p);
    h.push_str("</body></html>\n");
    h
}

fn triage(h: &mut String, p: &WatchPage) {
    let r = p.report;
    let count = |v: Verdict| r.processes.iter().filter(|x| x.trend.verdict == v).count();
    let (leaks, growing, plateau) =
        (count(Verdict::Leak), count(Verdict::Growing), count(Verdict::Plateau));
    let worst = r.processes.first().map_or(Verdict::Stable, |x| x.trend.verdict);
    let mut line = format!(
        "from {} to {} ({}): <b>{leaks} leaking</b>, {growing} growing, {plateau} plateau",
        (p.clock)(r.window.start_unix_s),
        (p.clock)(r.window.end_unix_s),
        duration(r.duration_s),
    );
    let unstable = r.containers.iter().filter(|c| c.trend.verdict != Verdict::Stable).count();
    if !r.containers.is_empty() {
        let _ = write!(line, "; {unstable} of {} containers not stable", r.containers.len());
    }
    let _ = write!(line, "; {} traced", r.escalations.len());
    if let Some(x) = r.processes.first().filter(|x| x.trend.verdict == Verdict::Leak) {
        let _ = write!(
            line,
            "<br>fastest: <b>{}</b> (pid {}) {} at {}",
            esc(&x.comm),
            x.pid,
            esc(&signed_bytes(x.trend.gained_bytes)),
            esc(&per_hour(x.trend.rate_bytes_per_h))
        );
    }
    let _ = writeln!(h, "<p class=\"triage {}\">{line}</p>", worst.as_str());
    for n in &r.notes {
        let _ = writeln!(h, "<p class=\"caveat\">Note: {}</p>", esc(n));
    }
}

/// Writes the heading of the section of `all` (`what`: `processes`, judged on `by`) and
/// returns the ones to chart: those that are not stable (ordered first), or when none is
/// growing the first ones; `top` at most.
fn section<'r, T>(
    h: &mut String,
    (what, by): (&str, &str),
    all: &'r [T],
    top: usize,
    trend: impl Fn(&T) -> &TrendView,
) -> &'r [T] {
    let unstable = all.iter().take_while(|x| trend(x).verdict != Verdict::Stable).count();
    let (list, which) = if unstable > 0 {
        (&all[..unstable.min(top)], " that are not stable")
    } else {
        (&all[..all.len().min(top)], " (none is growing)")
    };
    let mut title = what.to_owned();
    title[..1].make_ascii_uppercase();
    let _ = writeln!(
        h,
        "<h2>{title}</h2>\n<p class=\"muted\">{} of {} {what}{which}, by {by}</p>",
        list.len(),
        all.len(),
    );
    list
}

/// `<badge> +1.0 MiB at +3.5 MiB/h`.
fn growth(t: &TrendView) -> String {
    format!(
        "{} {} at {}",
        badge(t),
        esc(&signed_bytes(t.gained_bytes)),
        esc(&per_hour(t.rate_bytes_per_h))
    )
}

fn containers(h: &mut String, p: &WatchPage) {
    let r = p.report;
    if r.containers.is_empty() {
        return;
    }
    let what = ("containers", "their memory cgroup's anonymous memory");
    let list = section(h, what, &r.containers, p.top, |c| &c.trend);
    for c in list {
        container(h, p, c);
    }
}

fn container(h: &mut String, p: &WatchPage, c: &WatchedContainer) {
    let s = &c.series;
    let lines = memory_lines(
        p.report.window.start_unix_s + c.first_seen_s,
        &s.t_s,
        [("charged (page cache too)", &s.memory_bytes), ("anonymous", &s.anon_bytes)],
        &c.trend,
    );
    let name = pod_name(&c.pod);
    let _ = write!(
        h,
        "<div class=\"site\" id=\"container-{}\"><b>{}</b> {}; {} anonymous, {} charged; {} \
         watched process{}",
        esc(c.pod.container_id.as_deref().unwrap_or(&c.pod.pod_uid)),
        esc(&name),
        growth(&c.trend),
        human_bytes(c.anon_bytes),
        human_bytes(c.memory_bytes),
        c.processes,
        if c.processes == 1 { "" } else { "es" },
    );
    if let Some(limit) = c.limit_bytes {
        #[expect(clippy::cast_precision_loss, reason = "a percentage")]
        let used = c.working_set_bytes as f64 / limit.max(1) as f64 * 100.0;
        let _ = write!(
            h,
            "; working set {} of its {} limit ({used:.0}%)",
            human_bytes(c.working_set_bytes),
            human_bytes(limit)
        );
        if let Some(s) = c.seconds_to_limit {
            let _ = write!(h, ", <b>reached in {}</b> at this rate", duration(s));
        }
    }
    h.push('\n');
    chart(h, &name, &lines, p);
    h.push_str("</div>\n");
}

/// The OOM kills, latest first: each one's triage line, its crash loop, its post-mortem and
/// its chart to the kill with the limit it reached.
fn oom_kills(h: &mut String, p: &WatchPage) {
    let kills = &p.report.oom_kills;
    if kills.is_empty() {
        return;
    }
    let _ = writeln!(
        h,
        "<h2>OOM kills</h2>\n<p class=\"muted\">{} watched process{} killed by the kernel's OOM \
         killer, latest first</p>",
        kills.len(),
        if kills.len() == 1 { " was" } else { "es were" }
    );
    for k in kills.iter().rev() {
        oom_kill(h, p, k);
    }
}

fn oom_kill(h: &mut String, p: &WatchPage, k: &OomKillReport) {
    let victim = &k.process;
    let _ = write!(
        h,
        "<div class=\"site\" id=\"{}\"><b>{}</b> pid {} killed at {}",
        esc(&k.id),
        esc(&victim.comm),
        victim.pid,
        (p.clock)(k.at_unix_s)
    );
    if let Some(pod) = &victim.pod {
        let _ = write!(h, "; {}", esc(&pod_name(pod)));
    }
    let _ = write!(h, "<p class=\"triage leak\">{}</p>", esc(&k.triage));
    if let Some(r) = &k.repeated {
        let _ = write!(h, "<p><b>{}</b></p>", esc(r));
    }
    match k.profile.as_ref().and_then(|e| (p.link)(e)) {
        Some(href) => {
            let _ = write!(h, "<a class=\"trace\" href=\"{}\">its post-mortem</a>", esc(&href));
        }
        None if k.profile.is_some() => {
            h.push_str("<span class=\"muted\">its post-mortem is being written</span>");
        }
        None => h.push_str("<span class=\"muted\">not profiled: its chart is all there is</span>"),
    }
    h.push('\n');
    let series = &victim.series;
    let start = p.report.window.start_unix_s + victim.first_seen_s;
    let mut lines = memory_lines(
        start,
        &series.t_s,
        [("resident (RSS)", &series.rss_bytes), ("private", &series.anon_bytes)],
        &victim.trend,
    );
    if let (Some(limit), Some(first), Some(last)) =
        (k.limit_bytes, series.t_s.first(), series.t_s.last())
    {
        #[expect(clippy::cast_precision_loss, reason = "chart values")]
        let limit = limit as f64;
        lines.push(Line {
            name: "its container's limit",
            color: charts::TRACED,
            dashed: true,
            points: vec![(start + first, limit), (start + last, limit)],
        });
    }
    chart(h, &format!("{} (pid {}) up to its OOM kill", victim.comm, victim.pid), &lines, p);
    h.push_str("</div>\n");
}

fn processes(h: &mut String, p: &WatchPage) {
    let r = p.report;
    let what = ("processes", "private (anonymous resident) memory");
    let list = section(h, what, &r.processes, p.top, |x| &x.trend);
    for x in list {
        process(h, p, x);
    }
}

fn process(h: &mut String, p: &WatchPage, x: &WatchedProcess) {
    let s = &x.series;
    let lines = memory_lines(
        p.report.window.start_unix_s + x.first_seen_s,
        &s.t_s,
        [("resident (RSS)", &s.rss_bytes), ("private", &s.anon_bytes)],
        &x.trend,
    );
    let _ = write!(
        h,
        "<div class=\"site\" id=\"pid-{}\"><b>{}</b> pid {} {}; {} private, {} resident",
        x.pid,
        esc(&x.comm),
        x.pid,
        growth(&x.trend),
        human_bytes(x.anon_bytes),
        human_bytes(x.rss_bytes),
    );
    if x.exited {
        h.push_str(" <span class=\"muted\">(exited)</span>");
    }
    if !x.cmdline.is_empty() {
        let _ = write!(h, "<br><code>{}</code>", esc(&x.cmdline));
    }
    if let Some(pod) = &x.pod {
        let _ = write!(h, "; {}", esc(&pod_name(pod)));
    }
    // Its latest trace.
    let trace = p.report.escalations.iter().rev().find(|e| e.pid == x.pid && e.comm == x.comm);
    if let Some(href) = trace.and_then(|e| (p.link)(e)) {
        let _ = write!(h, "; <a class=\"trace\" href=\"{}\">its trace</a>", esc(&href));
    }
    h.push('\n');
    chart(h, &format!("{} (pid {})", x.comm, x.pid), &lines, p);
    h.push_str("</div>\n");
}

/// A chart's lines: the total (grey), the part judged (blue) and the judgement's line, for
/// samples at `t_s` seconds after `start`.
fn memory_lines(
    start: f64,
    t_s: &[f64],
    [(total_name, total), (judged_name, judged)]: [(&'static str, &[u64]); 2],
    trend: &TrendView,
) -> Vec<Line<'static>> {
    let judged = points(start, t_s, judged);
    let mut lines = vec![
        Line {
            name: total_name,
            color: charts::RSS,
            dashed: false,
            points: points(start, t_s, total),
        },
        Line { name: judged_name, color: charts::PRIVATE, dashed: false, points: judged.clone() },
    ];
    lines.extend(judged_line(&judged, trend));
    lines
}

fn chart(h: &mut String, title: &str, lines: &[Line], p: &WatchPage) {
    match charts::chart(title, lines, (1000, 220), p.clock) {
        Some(svg) => {
            let _ = writeln!(h, "<div class=\"chart\">{svg}</div>");
        }
        None => h.push_str("<p class=\"muted\">One sample: nothing to plot.</p>\n"),
    }
}

fn traces(h: &mut String, p: &WatchPage) {
    let r = p.report;
    h.push_str("<h2>Traces</h2>\n");
    if r.escalations.is_empty() {
        h.push_str("<p class=\"muted\">No process was traced (leak watch --escalate).</p>\n");
    } else {
        h.push_str(
            "<table id=\"traces\"><tr><th>process</th><th>pod</th><th>from</th><th>status</th>\
             <th>report</th></tr>\n",
        );
        for e in r.escalations.iter().rev() {
            let status = match e.exit_code {
                None => "tracing".to_owned(),
                Some(0) => "done".to_owned(),
                Some(code) => format!("failed (exit {code})"),
            };
            let page = (p.link)(e).map_or_else(
                || "<span class=\"muted\">none</span>".to_owned(),
                |href| format!("<a class=\"trace\" href=\"{}\">page</a>", esc(&href)),
            );
            let _ = writeln!(
                h,
                "<tr><td>{} (pid {})</td><td>{}</td><td>{}</td><td>{status}</td><td>{page}</td></tr>",
                esc(&e.comm),
                e.pid,
                e.pod.as_ref().map(|x| esc(&pod_name(x))).unwrap_or_default(),
                (p.clock)(e.start_unix_s),
            );
        }
        h.push_str("</table>\n");
    }
    if !r.not_escalated.is_empty() {
        let pids: Vec<String> = r.not_escalated.iter().map(u32::to_string).collect();
        let _ = writeln!(
            h,
            "<p>Judged leaking, not traced before the watch ended: pid {}</p>",
            pids.join(", ")
        );
    }
}

/// `path` with every byte but unreserved ones and `/` percent-encoded.
#[must_use]
pub fn url_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        analysis::report::Window,
        fleet::{
            pods::{PodRef, QosClass},
            report::{ContainerSeries, WATCH_REPORT_VERSION, WatchSeries},
        },
    };

    fn clock(unix_s: f64) -> String {
        format!("T{:.0}", unix_s - 1_700_000_000.0)
    }

    fn trend(verdict: Verdict, rate_per_s: f64, gained: i64) -> TrendView {
        TrendView {
            verdict,
            confidence: 0.9,
            rate_bytes_per_s: rate_per_s,
            rate_bytes_per_h: rate_per_s * 3600.0,
            gained_bytes: gained,
            ..TrendView::default()
        }
    }

    fn process(pid: u32, comm: &str, t: TrendView, slope: u64) -> WatchedProcess {
        let t_s: Vec<f64> = (0..10).map(f64::from).collect();
        let anon: Vec<u64> = (0..10).map(|i| (1 << 20) + slope * i).collect();
        WatchedProcess {
            pid,
            comm: comm.into(),
            cmdline: format!("/usr/bin/{comm} --serve"),
            start_time_ticks: 1,
            rss_bytes: anon[9] + 4096,
            anon_bytes: anon[9],
            watched_s: 9.0,
            first_seen_s: 1.0,
            exited: false,
            trend: t,
            series: WatchSeries {
                t_s,
                rss_bytes: anon.iter().map(|a| a + 4096).collect(),
                anon_bytes: anon,
            },
            pod: None,
        }
    }

    fn report() -> WatchReport {
        let pod = PodRef {
            pod_uid: "uid-1".into(),
            container_id: Some("c0ffee".repeat(10)),
            runtime: Some("containerd".into()),
            qos: QosClass::Burstable,
            name: Some("srv-<1>".into()),
            namespace: Some("shop".into()),
            container_name: Some("srv".into()),
            workload_kind: Some("Deployment".into()),
            workload: Some("srv".into()),
            node: Some("n1".into()),
        };
        let mut leaker = process(42, "srv", trend(Verdict::Leak, 1024.0, 9216), 1024);
        leaker.pod = Some(pod.clone());
        let cache = process(43, "cache", trend(Verdict::Plateau, 0.0, 4096), 0);
        let quiet = process(44, "quiet", trend(Verdict::Stable, 0.0, 0), 0);
        let done = Escalation {
            pid: 42,
            comm: "srv".into(),
            start_unix_s: 1_700_000_005.0,
            json: "/r/leak-srv-42.json".into(),
            svg: "/r/leak-srv-42.svg".into(),
            pprof: String::new(),
            pod: Some(pod.clone()),
            exit_code: Some(0),
            reason: "leak".into(),
            start_time_ticks: 0,
        };
        let running = Escalation { pid: 45, comm: "other".into(), exit_code: None, ..done.clone() };
        WatchReport {
            version: WATCH_REPORT_VERSION,
            window: Window { start_unix_s: 1_700_000_000.0, end_unix_s: 1_700_000_010.0 },
            duration_s: 10.0,
            processes_watched: 3,
            processes: vec![leaker, cache, quiet],
            containers: vec![WatchedContainer {
                pod,
                processes: 1,
                memory_bytes: 3 << 20,
                anon_bytes: 2 << 20,
                working_set_bytes: 3 << 20,
                limit_bytes: Some(4 << 20),
                seconds_to_limit: Some(1024.0),
                watched_s: 9.0,
                first_seen_s: 1.0,
                trend: trend(Verdict::Leak, 1024.0, 9216),
                series: ContainerSeries {
                    t_s: vec![0.0, 4.5, 9.0],
                    memory_bytes: vec![3 << 20; 3],
                    anon_bytes: vec![1 << 20, 3 << 19, 2 << 20],
                },
            }],
            escalations: vec![done, running],
            not_escalated: vec![46],
            oom_kills: Vec::new(),
            end_reason: crate::analysis::report::EndReason::Duration,
            notes: vec!["1 process grew steadily by less than --min-growth".into()],
        }
    }

    fn link(e: &Escalation) -> Option<String> {
        e.exit_code.map(|_| format!("reports/{}&x.html", e.pid))
    }

    #[test]
    fn charts_what_grows_and_links_each_trace() {
        let r = report();
        let html = render(&WatchPage {
            title: "leak watch",
            report: &r,
            clock: &clock,
            top: 10,
            link: &link,
        });
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        assert!(html.contains("<h1>leak watch: 3 processes</h1>"), "{html}");
        assert!(
            html.contains(
                "from T0 to T10 (10 s): <b>1 leaking</b>, 0 growing, 1 plateau; 1 of 1 \
                 containers not stable; 2 traced<br>fastest: <b>srv</b> (pid 42) +9.0 KiB at \
                 +3.5 MiB/h"
            ),
            "{html}"
        );
        // A chart for the container and the two processes that are not stable, not the third.
        assert_eq!(html.matches("<div class=\"chart\"><svg").count(), 3, "{html}");
        assert!(html.contains("id=\"pid-42\"") && html.contains("id=\"pid-43\""));
        assert!(!html.contains("id=\"pid-44\""), "a stable process is not charted");
        assert!(html.contains("badge leak") && html.contains("badge plateau"));
        // The fitted trend, and the plateau's level.
        assert!(html.contains("\ntrend\n</text>") && html.contains("\nlevel\n</text>"));
        // Names escaped; the process links its trace; the table lists both, the running one
        // without a page.
        assert!(html.contains("pod shop/srv-&lt;1&gt; container srv (Deployment srv)"), "{html}");
        assert!(
            html.contains("working set 3.0 MiB of its 4.0 MiB limit (75%), <b>reached in 17 min"),
            "{html}"
        );
        assert!(html.contains("<a class=\"trace\" href=\"reports/42&amp;x.html\">its trace</a>"));
        assert!(html.contains("<td>other (pid 45)</td>"), "{html}");
        assert!(html.contains("<td>tracing</td><td><span class=\"muted\">none</span>"), "{html}");
        assert!(html.contains("not traced before the watch ended: pid 46"));
        assert!(!html.contains("<script"), "no script");
    }

    #[test]
    fn paths_in_links_are_encoded() {
        assert_eq!(url_path(b"/r/leak-my srv#1-42.html"), "/r/leak-my%20srv%231-42.html");
        // Bytes as they are, not as UTF-8 would replace them.
        assert_eq!(url_path(b"/r/\xff.html"), "/r/%FF.html");
    }

    #[test]
    fn with_nothing_growing_the_watched_ones_are_shown() {
        let mut r = report();
        r.processes.retain(|x| x.trend.verdict == Verdict::Stable);
        r.containers.clear();
        r.escalations.clear();
        r.not_escalated.clear();
        let html = render(&WatchPage {
            title: "leak watch",
            report: &r,
            clock: &clock,
            top: 10,
            link: &link,
        });
        assert!(html.contains("1 of 1 processes (none is growing)"), "{html}");
        assert!(html.contains("id=\"pid-44\""));
        assert!(!html.contains("<h2>Containers"));
        assert!(html.contains("No process was traced"));
    }
}
