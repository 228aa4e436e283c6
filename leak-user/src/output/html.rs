//! The HTML report (#17): one self-contained page (inline CSS and SVG, no script of its own,
//! nothing fetched) that answers "is it leaking, where, how fast" at a glance: the triage
//! line, the process's memory with the traced total on the same axes, a chart per top site
//! with its fitted trend (and a plateau's level), both flame graphs, and what was dropped
//! or degraded.
//!
//! The flame graphs are inferno's interactive SVGs, each in an `<iframe>` of its own (as a
//! `data:` URL): their scripts and element ids stay apart from each other's.
use std::fmt::Write as _;

use base64::Engine as _;

use crate::{
    analysis::{
        report::{EndReason, Report, Site, StackFrame, TrendView},
        trend::Verdict,
        units::{human_bytes, signed_bytes},
    },
    output::{
        charts::{self, Line},
        escape_markup as esc,
    },
};

/// What the page is made from.
pub struct Page<'a> {
    /// The report.
    pub report: &'a Report,
    /// The growth flame graph (SVG).
    pub growth_svg: Option<&'a [u8]>,
    /// The differential flame graph (SVG).
    pub diff_svg: Option<&'a [u8]>,
    /// Unix seconds to a time of day (local time for a person; tests pass a fixed one).
    pub clock: &'a dyn Fn(f64) -> String,
    /// Sites given a chart of their own.
    pub top: usize,
}

/// The pages' style sheet (this report's and the watch page's).
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1100px;\
color:#222;padding:0 16px}h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:28px 0 8px;\
border-bottom:1px solid #ddd}.triage{font-size:16px;background:#f6f6f6;border-left:4px solid #888;\
padding:8px 12px}.leak{border-color:#d62728}.growing{border-color:#ff7f0e}.plateau{border-color:\
#1f77b4}.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;\
background:#888}.badge.leak{background:#d62728}.badge.growing{background:#ff7f0e}.badge.plateau{\
background:#1f77b4}.badge.stable{background:#2ca02c}svg{max-width:100%;height:auto}.site{margin:\
16px 0;padding:8px 0;border-top:1px solid #eee}ol.stack{font:12px/1.5 ui-monospace,monospace;\
margin:4px 0;color:#444}iframe{width:100%;height:420px;border:1px solid #ddd}table{border-\
collapse:collapse}td{padding:2px 12px 2px 0}.muted{color:#777}.caveat{background:#fff8e1;\
border-left:4px solid #ffb300;padding:6px 12px}";

/// The page.
#[must_use]
pub fn render(p: &Page) -> String {
    let r = p.report;
    let mut h = String::with_capacity(64 * 1024);
    let title = format!("leak: pid {} ({})", r.target.pid, r.target.comm);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    triage(&mut h, p);
    process_chart(&mut h, p);
    sites(&mut h, p);
    flame_graphs(&mut h, p);
    health(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

/// A verdict with its evidence, in the words every report uses.
#[must_use]
pub fn verdict_text(t: &TrendView) -> String {
    t.verdict.describe(t.confidence)
}

fn triage(h: &mut String, p: &Page) {
    let r = p.report;
    let t = &r.growth.trend;
    let (start, end) = ((p.clock)(r.window.start_unix_s), (p.clock)(r.window.end_unix_s));
    let mut line = format!(
        "<b>{}</b> from {start} to {end} ({:.0} s), {}/h; verdict <b>{}</b>",
        esc(&signed_bytes(t.gained_bytes)),
        r.duration_s,
        esc(&signed_bytes(rounded(t.rate_bytes_per_h))),
        esc(&r.verdict_words())
    );
    if let Some(l) = &r.growth.limit {
        let when = l.time_to_limit_s.map_or_else(
            || "not reached at this rate".to_owned(),
            |s| format!("reached in {}", duration(s)),
        );
        let _ = write!(line, "; limit {} ({}): {when}", human_bytes(l.bytes), esc(&l.source));
    }
    if let Some(text) = r.process.as_ref().and_then(crate::analysis::growth::explained) {
        let _ = write!(line, "; {}", esc(&text));
    }
    let _ = write!(
        h,
        "<p class=\"triage {}\">{line}</p>\n<p class=\"muted\">{}</p>\n",
        r.growth.verdict.as_str(),
        esc(&r.growth.summary)
    );
    for c in &r.growth.caveats {
        let _ = writeln!(h, "<p class=\"caveat\">Note: {}</p>", esc(c));
    }
}

/// The verdict as a coloured badge: `<span class="badge leak">leak (99%)</span>`.
#[must_use]
pub fn badge(t: &TrendView) -> String {
    format!("<span class=\"badge {}\">{}</span>", t.verdict.as_str(), esc(&verdict_text(t)))
}

/// `(unix seconds, bytes)` of a series sampled at `t_s` seconds after `start`.
#[must_use]
pub fn points(start: f64, t_s: &[f64], values: &[u64]) -> Vec<(f64, f64)> {
    #[expect(clippy::cast_precision_loss, reason = "plotted")]
    t_s.iter().zip(values).map(|(t, v)| (start + t, *v as f64)).collect()
}

fn process_chart(h: &mut String, p: &Page) {
    let r = p.report;
    let start = r.window.start_unix_s;
    let mut lines = Vec::new();
    if let Some(v) = &r.process {
        let s = &v.series;
        lines.push(Line {
            name: "resident (RSS)",
            color: charts::RSS,
            dashed: false,
            points: points(start, &s.t_s, &s.rss_bytes),
        });
        lines.push(Line {
            name: "private",
            color: charts::PRIVATE,
            dashed: false,
            points: points(start, &s.t_s, &s.private_bytes),
        });
    }
    let g = &r.growth.series;
    lines.push(Line {
        name: "traced (not freed)",
        color: charts::TRACED,
        dashed: false,
        points: points(start, &g.t_s, &g.bytes),
    });
    // A post-mortem: the limit the process was killed at, across the window (another report
    // leaves it out: a far limit would flatten the lines that matter).
    if let Some(l) = r.growth.limit.as_ref().filter(|_| r.end_reason == EndReason::OomKill) {
        #[expect(clippy::cast_precision_loss, reason = "plotted")]
        let limit = l.bytes as f64;
        lines.push(Line {
            name: "the memory limit it was killed at",
            color: charts::FIT,
            dashed: true,
            points: vec![(r.window.start_unix_s, limit), (r.window.end_unix_s, limit)],
        });
    }
    h.push_str("<h2>The process's memory</h2>\n");
    match charts::chart(
        "Memory of the process, and what the probes traced",
        &lines,
        (1000, 300),
        p.clock,
    ) {
        Some(svg) => {
            let _ = writeln!(h, "<div class=\"chart\" id=\"process-chart\">{svg}</div>");
        }
        None => h.push_str("<p class=\"muted\">One sample: nothing to plot.</p>\n"),
    }
}

fn sites(h: &mut String, p: &Page) {
    let r = p.report;
    let shown = r.sites.len().min(p.top);
    let _ = writeln!(
        h,
        "<h2>Top sites</h2>\n<p class=\"muted\">{shown} of {} sites, leaks first, then by \
         bytes not freed</p>",
        r.sites.len()
    );
    for (i, s) in r.sites_by_verdict().into_iter().take(p.top).enumerate() {
        site(h, p, i + 1, s);
    }
}

fn site(h: &mut String, p: &Page, rank: usize, s: &Site) {
    let start = p.report.window.start_unix_s;
    let pts = points(start, &s.series.t_s, &s.series.bytes);
    let t = &s.trend;
    let mut lines =
        vec![Line { name: "not freed", color: charts::TRACED, dashed: false, points: pts.clone() }];
    lines.extend(judged_line(&pts, t));
    let name = s.stack.first().map_or_else(|| "[no stack]".to_owned(), StackFrame::name);
    let _ = writeln!(
        h,
        "<div class=\"site\" id=\"site-{}\"><b>#{rank}</b> {} in {} allocation{} \
         {} {}/h <code>{}</code>",
        esc(&s.id),
        human_bytes(s.outstanding_bytes),
        s.outstanding_allocs,
        if s.outstanding_allocs == 1 { "" } else { "s" },
        badge(t),
        esc(&signed_bytes(rounded(t.rate_bytes_per_h))),
        esc(&name),
    );
    let title = format!("#{rank} {name}");
    if let Some(svg) = charts::chart(&title, &lines, (1000, 200), p.clock) {
        let _ = writeln!(h, "<div class=\"chart site-chart\">{svg}</div>");
    }
    h.push_str("<ol class=\"stack\">");
    for f in &s.stack {
        let at = f
            .location()
            .map(|l| format!(" <span class=\"muted\">{}</span>", esc(&l)))
            .unwrap_or_default();
        let _ = write!(h, "<li>{}{at}</li>", esc(&f.name()));
    }
    if let Some(end) = s.stack_end.filter(|e| *e != crate::analysis::model::StackEnd::Complete) {
        let _ = write!(h, "<li class=\"muted\">({})</li>", end.describe());
    }
    h.push_str("</ol></div>\n");
}

/// The line that shows a verdict on the chart of `pts`: a plateau's level (the last
/// quarter's mean), or the fitted trend of a growing series; none for a stable one.
#[must_use]
pub fn judged_line(pts: &[(f64, f64)], t: &TrendView) -> Option<Line<'static>> {
    let (a, b) = (pts.first()?, pts.last()?);
    match t.verdict {
        Verdict::Stable => None,
        Verdict::Plateau => {
            let tail = &pts[pts.len() - pts.len().div_ceil(4)..];
            #[expect(clippy::cast_precision_loss, reason = "a mean")]
            let level = tail.iter().map(|p| p.1).sum::<f64>() / tail.len() as f64;
            Some(Line {
                name: "level",
                color: charts::FIT,
                dashed: true,
                points: vec![(a.0, level), (b.0, level)],
            })
        }
        Verdict::Leak | Verdict::Growing => Some(Line {
            name: "trend",
            color: charts::FIT,
            dashed: true,
            points: charts::fitted(pts, t.rate_bytes_per_s),
        }),
    }
}

fn flame_graphs(h: &mut String, p: &Page) {
    h.push_str("<h2>Flame graphs</h2>\n");
    for (id, what, svg) in [
        ("growth-flamegraph", "Growth by allocation stack", p.growth_svg),
        ("diff-flamegraph", "First sample against the last (red: grew, blue: shrank)", p.diff_svg),
    ] {
        let Some(svg) = svg else { continue };
        let data = base64::engine::general_purpose::STANDARD.encode(svg);
        let _ = writeln!(
            h,
            "<p>{what} (click to zoom, Ctrl+F or the Search button to highlight)</p>\
             <iframe id=\"{id}\" title=\"{what}\" src=\"data:image/svg+xml;base64,{data}\"></iframe>"
        );
    }
}

fn health(h: &mut String, r: &Report) {
    h.push_str("<h2>Drops, probe cost, degradations</h2>\n<table>\n");
    let lost: Vec<String> =
        r.drops.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{} {n}", esc(k))).collect();
    let drops = if lost.is_empty() { "none".to_owned() } else { lost.join(", ") };
    let _ = writeln!(h, "<tr><td>drops</td><td id=\"drops\">{drops}</td></tr>");
    if let Some(pt) = &r.probe_time {
        let _ = writeln!(
            h,
            "<tr><td>probe cost</td><td>{} entry and {} return hits, about {:.2} s of the target's \
             time ({} ns an entry, {} ns a return)</td></tr>",
            pt.entry_hits, pt.return_hits, pt.estimated_s, pt.entry_ns, pt.return_ns
        );
    }
    if let Some(k) = &r.kernel {
        let degraded =
            if k.degraded.is_empty() { "nothing".to_owned() } else { esc(&k.degraded.join("; ")) };
        let _ = writeln!(
            h,
            "<tr><td>kernel</td><td>{} ({} BPF object, probes: {}); degraded: {degraded}</td></tr>",
            esc(&k.release),
            esc(&k.bpf_object),
            esc(&k.probes)
        );
    }
    for m in &r.modules {
        let _ =
            writeln!(h, "<tr><td>symbols</td><td>{}: {}</td></tr>", esc(&m.name), esc(&m.symbols));
    }
    let truncated = r
        .sites
        .iter()
        .filter(|s| s.stack_end.is_some_and(|e| e != crate::analysis::model::StackEnd::Complete))
        .count();
    let _ = writeln!(
        h,
        "<tr><td>stacks cut short</td><td>{truncated} of {} sites</td></tr>",
        r.sites.len()
    );
    h.push_str("</table>\n");
}

/// A rate, rounded for display.
#[expect(clippy::cast_possible_truncation, reason = "a displayed rate")]
#[must_use]
pub fn rounded(v: f64) -> i64 {
    v.round() as i64
}

/// `3 h 20 min`, `45 min`, `30 s`.
#[must_use]
pub fn duration(s: f64) -> String {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "displayed")]
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::build::tests::sample_report;

    fn clock(unix_s: f64) -> String {
        format!("T{:.0}", unix_s - 1_700_000_000.0)
    }

    /// The sample report with ten samples: `leak_fn` climbing 1 KiB a second, judged a leak.
    fn climbing() -> Report {
        let mut r = sample_report();
        let t: Vec<f64> = (0..10).map(f64::from).collect();
        let bytes: Vec<u64> = (0..10).map(|i| 1024 * i).collect();
        let s = &mut r.sites[0];
        s.series.t_s.clone_from(&t);
        s.series.bytes.clone_from(&bytes);
        s.trend.verdict = Verdict::Leak;
        s.trend.confidence = 0.99;
        s.trend.rate_bytes_per_s = 1024.0;
        s.trend.rate_bytes_per_h = 1024.0 * 3600.0;
        r.growth.series.t_s = t;
        r.growth.series.bytes = bytes;
        r.growth.trend = s.trend;
        r.growth.trend.gained_bytes = 9 * 1024;
        // The total itself not yet conclusive: the report's verdict is still its site's.
        r.growth.trend.verdict = Verdict::Growing;
        r.growth.verdict = Verdict::Leak;
        r.sites[0].id = "<id>".into();
        r.growth.leak_sites = vec!["<id>".into()];
        r.growth.summary =
            "+9.0 KiB over T0-T10 (+3.5 MiB/h); leak suspected at leak_fn <- main (confidence \
             99.0%)"
                .into();
        r
    }

    #[test]
    fn one_page_with_triage_charts_stacks_and_flame_graphs() {
        let r = climbing();
        let html = render(&Page {
            report: &r,
            growth_svg: Some(b"<svg>growth</svg>"),
            diff_svg: Some(b"<svg>diff</svg>"),
            clock: &clock,
            top: 10,
        });
        assert!(html.starts_with("<!DOCTYPE html>") && html.ends_with("</html>\n"));
        // Triage: gained, the range in the clock's words, the rate, the verdict.
        assert!(
            html.contains(
                "<b>+9.0 KiB</b> from T0 to T10 (10 s), +3.5 MiB/h; verdict <b>leak (confidence \
                 99.0%) at leak_fn &lt;- main</b>"
            ),
            "{html}"
        );
        // One verdict on the page: the total's own is not shown as another.
        assert!(!html.contains("not conclusive"), "{html}");
        assert!(
            html.contains("<span class=\"badge leak\">leak (confidence 99.0%)</span>"),
            "{html}"
        );
        // The process chart (the traced total alone here) and one chart for the climbing site.
        assert!(html.contains("id=\"process-chart\"><svg"), "{html}");
        assert_eq!(html.matches("class=\"chart site-chart\"><svg").count(), 1, "{html}");
        assert!(html.contains("\ntrend\n</text>"), "the fitted line is in the legend");
        // The stack with file:line, the id escaped.
        assert!(html.contains("<li>leak_fn <span class=\"muted\">demo.c:12</span></li>"), "{html}");
        assert!(html.contains("id=\"site-&lt;id&gt;\""), "{html}");
        // Both flame graphs, each in its own frame.
        let growth = base64::engine::general_purpose::STANDARD.encode(b"<svg>growth</svg>");
        assert!(html.contains(&format!("src=\"data:image/svg+xml;base64,{growth}\"")), "{html}");
        assert_eq!(html.matches("<iframe").count(), 2);
        // Drops are never hidden.
        assert!(html.contains("<td id=\"drops\">unknown_free 2</td>"), "{html}");
        // Self-contained: nothing is fetched.
        assert!(
            !html.contains("http://") && !html.contains("https://") || html.contains("xmlns"),
            "{html}"
        );
        assert!(!html.contains("<script"), "no script of its own");
    }

    #[test]
    fn a_post_mortem_draws_the_limit_it_was_killed_at() {
        let mut r = climbing();
        r.growth.limit = Some(crate::analysis::report::LimitView {
            bytes: 16 << 10,
            source: "cgroup".into(),
            usage_bytes: 12 << 10,
            time_to_limit_s: None,
        });
        let page = |r: &Report| {
            render(&Page { report: r, growth_svg: None, diff_svg: None, clock: &clock, top: 1 })
        };
        assert!(!page(&r).contains("the memory limit it was killed at"), "a live process's");
        r.end_reason = EndReason::OomKill;
        assert!(page(&r).contains("\nthe memory limit it was killed at\n</text>"));
    }

    #[test]
    fn a_single_sample_still_makes_a_page() {
        let r = sample_report();
        let html =
            render(&Page { report: &r, growth_svg: None, diff_svg: None, clock: &clock, top: 1 });
        assert!(html.contains("One sample: nothing to plot."), "{html}");
        assert_eq!(html.matches("class=\"site\"").count(), 1);
        assert!(!html.contains("<iframe"));
    }
}
