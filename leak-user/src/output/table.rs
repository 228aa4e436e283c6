//! Pure: the human-readable text report.
use std::fmt::Write as _;

use hashbrown::HashMap;

use crate::{
    analysis::aggregate::AGE_NAMES,
    analysis::report::{ProcessView, Report},
    analysis::trend::Verdict,
    analysis::units::{human_bytes, human_seconds, signed_bytes},
};

/// Frames shown per site before eliding the rest.
const MAX_FRAMES: usize = 12;

/// What the text report shows besides the report itself.
#[derive(Clone, Debug, Default)]
pub struct TableOptions<'a> {
    /// First line, e.g. `pid 42 (demo) 14:02:15, 10.0 s traced`.
    pub header: &'a str,
    /// Sites shown.
    pub top: usize,
    /// Change of each site's bytes since the previous report, by site id.
    pub deltas: Option<&'a HashMap<String, i64>>,
    /// Change of the total since the previous report.
    pub total_delta: Option<i64>,
}

/// The interval report: a header, one line of totals and growth, and one line a site (its
/// verdict and the two innermost frames); whole stacks are for the final report and the files.
#[must_use]
pub fn render_brief(report: &Report, opts: &TableOptions<'_>) -> String {
    let mut s = head(report, opts, "");
    let _ = writeln!(s, "; growth: {}", report.growth.summary);
    for c in &report.growth.caveats {
        let _ = writeln!(s, "note: {c}");
    }
    let drops: Vec<String> =
        report.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    if !drops.is_empty() {
        let _ = writeln!(s, "drops: {}", drops.join(" "));
    }
    for (rank, site) in report.sites_by_verdict().into_iter().take(opts.top).enumerate() {
        let _ = write!(
            s,
            "#{:<3} {:>10} {:>7} {}{}",
            rank + 1,
            human_bytes(site.outstanding_bytes),
            site.outstanding_allocs,
            units(report).1,
            if site.outstanding_allocs == 1 { " " } else { "s" }
        );
        if let Some(d) = opts.deltas.and_then(|m| m.get(&site.id)) {
            let _ = write!(s, " {:>11}", signed_bytes(*d));
        }
        let _ = write!(s, "  {:<22}", verdict_words(site));
        let _ = write!(s, "  {}", site.name());
        if let Some(loc) =
            site.stack.first().and_then(crate::analysis::report::StackFrame::location)
        {
            let _ = write!(s, " ({loc})");
        }
        s.push('\n');
    }
    more_sites(&mut s, report, opts.top);
    s
}

/// The header line and the totals (`{label}1.0 MiB in 12 allocations (+4.0 KiB since last
/// report)`), the line left open.
fn head(report: &Report, opts: &TableOptions<'_>, label: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== {} ==", opts.header);
    let _ = write!(
        s,
        "{label}{} in {} {}{}",
        human_bytes(report.totals.outstanding_bytes),
        report.totals.outstanding_allocs,
        units(report).0,
        if report.totals.outstanding_allocs == 1 { "" } else { "s" }
    );
    if let Some(d) = opts.total_delta {
        let _ = write!(s, " ({} since last report)", signed_bytes(d));
    }
    s
}

/// What a report counts, in full and short: allocations, or a growth profile's pages.
fn units(report: &Report) -> (&'static str, &'static str) {
    match report.mode {
        crate::analysis::report::Mode::Exact => ("allocation", "alloc"),
        crate::analysis::report::Mode::Growth => ("page", "page"),
    }
}

/// `(N more sites, B)` below the `top` shown.
fn more_sites(s: &mut String, report: &Report, top: usize) {
    if report.sites.len() > top {
        let rest = &report.sites_by_verdict()[top..];
        let bytes: u64 = rest.iter().map(|x| x.outstanding_bytes).sum();
        let _ = writeln!(s, "({} more sites, {})", rest.len(), human_bytes(bytes));
    }
}

/// A site's verdict and rate, as the interval lines show it: `leak +338.4 MiB/h`; a
/// plateau's rate is how fast it grows now, not while it filled; nothing for a stable site.
fn verdict_words(site: &crate::analysis::report::Site) -> String {
    if site.trend.verdict == Verdict::Stable {
        return String::new();
    }
    format!("{} {}/h", site.trend.verdict.as_str(), signed_bytes(rate_shown(site)))
}

/// The rate a site line shows, bytes per hour: a plateau's window rate is mostly its filling;
/// what it does now is its news.
fn rate_shown(site: &crate::analysis::report::Site) -> i64 {
    let per_h = if site.trend.verdict == Verdict::Plateau {
        site.trend.recent_rate_bytes_per_s * 3600.0
    } else {
        site.trend.rate_bytes_per_h
    };
    #[expect(clippy::cast_possible_truncation, reason = "saturating display value")]
    let rate = per_h as i64;
    rate
}

/// A site's verdict in the final report, its evidence labelled: `leak +338.4 MiB/h
/// (confidence 99.9%)`, `growing +1.0 MiB/h (not conclusive yet)`, `plateau (now +0 B/h)`;
/// nothing for a stable site.
fn site_verdict(site: &crate::analysis::report::Site) -> String {
    let rate = signed_bytes(rate_shown(site));
    match site.trend.verdict {
        Verdict::Leak => format!(
            "leak {rate}/h (confidence {})",
            crate::analysis::growth::percent_below_certain(site.trend.confidence)
        ),
        Verdict::Growing => format!("growing {rate}/h (not conclusive yet)"),
        Verdict::Plateau => format!("plateau (now {rate}/h)"),
        Verdict::Stable => String::new(),
    }
}

/// Renders the top sites with their stacks.
#[must_use]
pub fn render(report: &Report, opts: &TableOptions<'_>) -> String {
    let label = match report.mode {
        crate::analysis::report::Mode::Exact => "outstanding: ",
        crate::analysis::report::Mode::Growth => "resident (first touched while profiled): ",
    };
    let mut s = head(report, opts, label);
    s.push('\n');
    if let Some(sm) = &report.sampling {
        let _ = writeln!(
            s,
            "sampled: one allocation per {} on average; bytes and counts are estimates from {} \
             sample{}",
            human_bytes(sm.mean_bytes),
            sm.samples,
            if sm.samples == 1 { "" } else { "s" }
        );
    }
    cost_lines(&mut s, report);
    let _ = writeln!(s, "growth: {}", report.growth.summary);
    for c in &report.growth.caveats {
        let _ = writeln!(s, "note: {c}");
    }
    if let Some(p) = &report.process {
        let _ = writeln!(s, "process: {}", process_line(p));
    }
    if report.totals.outstanding_bytes > 0 {
        let ages: Vec<String> = AGE_NAMES
            .iter()
            .zip(report.age.bytes.values())
            .map(|(name, b)| format!("{name} {}", human_bytes(b)))
            .collect();
        let _ = writeln!(s, "by age: {}", ages.join(", "));
    }
    if report.sites.is_empty() {
        s.push_str(match report.mode {
            crate::analysis::report::Mode::Exact => "no outstanding allocations\n",
            crate::analysis::report::Mode::Growth => "no page made resident is resident still\n",
        });
        return s;
    }
    s.push('\n');
    for (rank, site) in report.sites_by_verdict().into_iter().take(opts.top).enumerate() {
        let _ = write!(
            s,
            "#{:<3} {:>10} in {:>6} {}{}",
            rank + 1,
            human_bytes(site.outstanding_bytes),
            site.outstanding_allocs,
            units(report).1,
            if site.outstanding_allocs == 1 { " " } else { "s" }
        );
        if let Some(d) = opts.deltas.and_then(|m| m.get(&site.id)) {
            let _ = write!(s, "  {:>12}", signed_bytes(*d));
        }
        match (&site.allocator_fn, &site.wrapper) {
            (Some(f), Some(w)) => {
                let _ = write!(s, "  via {f} ({w})");
            }
            (Some(f), None) => {
                let _ = write!(s, "  via {f}");
            }
            (None, _) => {}
        }
        let verdict = site_verdict(site);
        if !verdict.is_empty() {
            let _ = write!(s, "  {verdict}");
        }
        s.push('\n');
        if site.stack.is_empty() {
            s.push_str("       [no stack]\n");
        }
        let width =
            site.stack.iter().take(MAX_FRAMES).map(|f| f.name().len()).max().unwrap_or(0).min(48);
        for f in site.stack.iter().take(MAX_FRAMES) {
            let name = f.name();
            let loc =
                f.location().or_else(|| f.module.as_deref().map(str::to_owned)).unwrap_or_default();
            let _ = writeln!(s, "       {name:<width$}  {loc}");
        }
        if site.stack.len() > MAX_FRAMES {
            let _ = writeln!(s, "       ... {} more frames", site.stack.len() - MAX_FRAMES);
        }
        // Say when a stack stops short of its start, and why.
        if let Some(end) =
            site.stack_end.filter(|e| *e != crate::analysis::model::StackEnd::Complete)
        {
            let _ = writeln!(s, "       (stack {})", end.describe());
        }
    }
    more_sites(&mut s, report, opts.top);
    s
}

/// `RSS 3.0 MiB (+4.0 KiB), private 2.0 MiB (+4.0 KiB); traced sites explain 75% of ...`.
fn process_line(p: &ProcessView) -> String {
    let mut s = format!(
        "RSS {} ({}), private {} ({})",
        human_bytes(p.rss_bytes),
        signed_bytes(p.rss_gained_bytes),
        human_bytes(p.private_bytes),
        signed_bytes(p.private_gained_bytes)
    );
    if let Some(text) = crate::analysis::growth::explained(p) {
        let _ = write!(s, "; {text}");
    }
    s
}

/// What tracing lost and cost: the drops, the time in probes.
fn cost_lines(s: &mut String, report: &Report) {
    let drops: Vec<String> =
        report.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    if !drops.is_empty() {
        let _ = writeln!(s, "drops: {}", drops.join(" "));
    }
    if let Some(k) = report.kernel.as_ref().filter(|k| !k.degraded.is_empty()) {
        let _ = writeln!(
            s,
            "kernel: {} runs leak's {} BPF object: {}",
            k.release,
            k.bpf_object,
            k.degraded.join("; ")
        );
    }
    let no_lines: Vec<String> = report
        .modules
        .iter()
        .filter(|m| !matches!(m.symbols.as_str(), "debug_info" | "build-id" | "debuglink"))
        .map(|m| format!("{} ({})", m.name, m.symbols))
        .collect();
    if !no_lines.is_empty() {
        let _ = writeln!(
            s,
            "symbols: no file:line in {}: no debug info found (install its debug package, or \
             point --debug-dir at its debug files)",
            no_lines.join(", ")
        );
    }
    if let Some(p) = &report.probe_time {
        let _ = writeln!(
            s,
            "probes: {} entry + {} return hits, at least {} of the target's time ({}/{} ns a hit)",
            p.entry_hits,
            p.return_hits,
            human_seconds(p.estimated_s),
            p.entry_ns,
            p.return_ns
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::build::tests::sample_report;

    #[test]
    fn shows_sites_with_stacks_and_changes() {
        let report = sample_report();
        let mut deltas = HashMap::new();
        deltas.insert("000000000000000a".to_owned(), 2048);
        let text = render(
            &report,
            &TableOptions {
                header: "pid 42 (demo)",
                top: 10,
                deltas: Some(&deltas),
                total_delta: Some(2148),
            },
        );
        let expected = "\
== pid 42 (demo) ==
outstanding: 3.1 KiB in 4 allocations (+2.1 KiB since last report)
drops: unknown_free=2
growth: +0 B over 10:00:00-10:00:10 (+0 B/h); no leak suspected
by age: <10s 3.1 KiB, 10s-1m 0 B, 1m-10m 0 B, >10m 0 B

#1      3.0 KiB in      3 allocs      +2.0 KiB  via malloc
       leak_fn  demo.c:12
       main     demo.c:40
#2        100 B in      1 alloc   via calloc
       cache_fn  demo.c:20
       main      demo.c:41
";
        assert_eq!(text, expected);
    }

    #[test]
    fn shows_verdicts_and_the_process_view() {
        let mut report = sample_report();
        report.sites[0].trend.verdict = Verdict::Leak;
        report.sites[0].trend.confidence = 0.999;
        report.sites[0].trend.rate_bytes_per_h = 28.0 * 1024.0 * 1024.0;
        report.process = Some(crate::analysis::report::ProcessView {
            rss_bytes: 3 << 20,
            private_bytes: 2 << 20,
            rss_gained_bytes: 4096,
            private_gained_bytes: 4096,
            traced_gained_bytes: 3072,
            traced_share: Some(0.75),
            trend: crate::analysis::report::TrendView::default(),
            series: crate::analysis::report::ProcessSeries::default(),
        });
        report.probe_time = Some(crate::analysis::report::ProbeTime {
            entry_hits: 2_000_000,
            return_hits: 1_000_000,
            entry_ns: 1000,
            return_ns: 1200,
            estimated_s: 3.2,
        });
        // A plateau shows how fast it grows now, not while it filled.
        report.sites[1].trend.verdict = Verdict::Plateau;
        report.sites[1].trend.confidence = 0.9;
        report.sites[1].trend.rate_bytes_per_h = 5.0 * 1024.0 * 1024.0;
        report.sites[1].trend.recent_rate_bytes_per_s = 0.5;
        let text = render(&report, &TableOptions { header: "h", top: 10, ..Default::default() });
        assert!(text.contains("via malloc  leak +28.0 MiB/h (confidence 99.9%)\n"), "{text}");
        assert!(text.contains("  plateau (now +1.8 KiB/h)\n"), "{text}");
        assert!(
            text.contains(
                "probes: 2000000 entry + 1000000 return hits, at least 3.2 s of the target's time \
                 (1000/1200 ns a hit)\n"
            ),
            "{text}"
        );
        assert_eq!(human_seconds(0.0004), "400 us");
        assert_eq!(human_seconds(0.012), "12 ms");
        assert!(
            text.contains(
                "process: RSS 3.0 MiB (+4.0 KiB), private 2.0 MiB (+4.0 KiB); traced sites explain 75% of the private growth\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn top_limits_sites_and_summarizes_the_rest() {
        let text =
            render(&sample_report(), &TableOptions { header: "h", top: 1, ..Default::default() });
        assert!(text.contains("leak_fn"));
        assert!(!text.contains("cache_fn"));
        assert!(text.ends_with("(1 more sites, 100 B)\n"), "{text}");
    }

    #[test]
    fn byte_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
        assert_eq!(signed_bytes(-2048), "-2.0 KiB");
        assert_eq!(signed_bytes(0), "+0 B");
        assert_eq!(signed_bytes(i64::MIN), "-8192.0 PiB");
    }
}
