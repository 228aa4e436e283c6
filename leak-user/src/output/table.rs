//! Pure: the human-readable text report.
use std::fmt::Write as _;

use hashbrown::HashMap;

use crate::report::Report;

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

/// Renders the top sites with their stacks.
#[must_use]
pub fn render(report: &Report, opts: &TableOptions<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "== {} ==", opts.header);
    let _ = write!(
        s,
        "outstanding: {} in {} allocation{}",
        human_bytes(report.totals.outstanding_bytes),
        report.totals.outstanding_allocs,
        if report.totals.outstanding_allocs == 1 { "" } else { "s" }
    );
    if let Some(d) = opts.total_delta {
        let _ = write!(s, " ({} since last report)", signed_bytes(d));
    }
    s.push('\n');
    let drops: Vec<String> =
        report.drops.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k}={v}")).collect();
    if !drops.is_empty() {
        let _ = writeln!(s, "drops: {}", drops.join(" "));
    }
    if report.sites.is_empty() {
        s.push_str("no outstanding allocations\n");
        return s;
    }
    s.push('\n');
    for (rank, site) in report.sites.iter().take(opts.top).enumerate() {
        let _ = write!(
            s,
            "#{:<3} {:>10} in {:>6} alloc{}",
            rank + 1,
            human_bytes(site.outstanding_bytes),
            site.outstanding_allocs,
            if site.outstanding_allocs == 1 { " " } else { "s" }
        );
        if let Some(d) = opts.deltas.and_then(|m| m.get(&site.id)) {
            let _ = write!(s, "  {:>12}", signed_bytes(*d));
        }
        if let Some(f) = &site.allocator_fn {
            let _ = write!(s, "  via {f}");
        }
        s.push('\n');
        if site.stack.is_empty() {
            s.push_str("       [no stack]\n");
        }
        let width =
            site.stack.iter().take(MAX_FRAMES).map(|f| f.name().len()).max().unwrap_or(0).min(48);
        for f in site.stack.iter().take(MAX_FRAMES) {
            let name = f.name();
            let loc = f.location().or_else(|| f.module.clone()).unwrap_or_default();
            let _ = writeln!(s, "       {name:<width$}  {loc}");
        }
        if site.stack.len() > MAX_FRAMES {
            let _ = writeln!(s, "       ... {} more frames", site.stack.len() - MAX_FRAMES);
        }
    }
    if report.sites.len() > opts.top {
        let rest = &report.sites[opts.top..];
        let bytes: u64 = rest.iter().map(|x| x.outstanding_bytes).sum();
        let _ = writeln!(s, "({} more sites, {})", rest.len(), human_bytes(bytes));
    }
    s
}

/// `1.5 KiB`-style sizes (binary units).
#[must_use]
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `+1.5 KiB` / `-12 B` / `+0 B`.
#[must_use]
pub fn signed_bytes(d: i64) -> String {
    let sign = if d < 0 { '-' } else { '+' };
    format!("{sign}{}", human_bytes(d.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

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
