//! Growth analysis on a real process: a slow leak next to a bounded cache that fills, then
//! recycles (fixture `cacher`: 1 KiB leaked and one 4 KiB cache entry replaced every tick, 32
//! entries at most).
use leak_tests::{
    assert_no_drops, assert_site, fixture, read_report, run_with_report, site, summary,
};
use leak_user::{analysis::trend::Verdict, config::LEAK_FOUND_EXIT};

const TICK_MS: &str = "25";
const CACHE_BYTES: u64 = 32 * 4096;
/// Interval reports (1 s apart, samples every 250 ms) within which the leak must be flagged:
/// the verdict needs 6 samples and a significant trend; the cache has filled by 0.8 s.
const FLAGGED_WITHIN: usize = 3;

/// The verdict word of a site line (`#1 ... leak +1.0 MiB/h ...`).
fn verdict_word(line: &str) -> String {
    let word =
        ["leak", "growing", "plateau"].into_iter().find(|w| line.contains(&format!("  {w} ")));
    word.unwrap_or("stable").to_owned()
}

/// The verdict words shown on `function`'s site line in each report, in order: interval
/// reports name the site on its line (`leak_fn <- main`), the final one in the stack below.
fn verdicts_per_report(lines: &[String], function: &str) -> Vec<Option<String>> {
    let mut reports = Vec::new();
    let mut header: Option<&str> = None;
    for line in lines {
        if line.starts_with("== ") {
            reports.push(None);
        } else if line.starts_with('#') {
            header = None;
            if line.contains(&format!("  {function} <- ")) {
                if let Some(last) = reports.last_mut() {
                    *last = Some(verdict_word(line));
                }
            } else {
                header = Some(line);
            }
        } else if let (Some(h), Some(last)) = (header, reports.last_mut())
            && line.split_whitespace().next() == Some(function)
        {
            // The first frame under a site line is the allocator's caller.
            *last = Some(verdict_word(h));
            header = None;
        } else {
            header = None;
        }
    }
    reports
}

#[test]
fn a_slow_leak_is_flagged_and_a_recycling_cache_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("growth.svg");
    let diff = dir.path().join("diff.svg");
    let bin = fixture("cacher");
    let ticks: u64 = 240;
    let (done, _keep, json) = run_with_report(
        &[
            "--fail-on-leak",
            "--interval",
            "1s",
            "--sample-interval",
            "250ms",
            "--svg",
            svg.to_str().unwrap(),
            "--svg-diff",
            diff.to_str().unwrap(),
        ],
        &[bin.to_str().unwrap(), &ticks.to_string(), TICK_MS],
    );
    assert_eq!(
        done.status.code(),
        Some(i32::from(LEAK_FOUND_EXIT)),
        "a leak fails the run; stderr: {:#?}",
        done.stderr
    );
    assert!(
        done.stderr.iter().any(|l| l.contains("leak at leak_fn <- main: +240.0 KiB at ")),
        "the failing site is printed: {:#?}",
        done.stderr
    );
    let report = read_report(&json);
    assert_no_drops(&report);
    // Exact outstanding bytes, and the verdicts.
    let leak = assert_site(&report, "leak_fn", (ticks * 1024, ticks));
    assert_eq!(leak.trend.verdict, Verdict::Leak, "{:#?}", leak.trend);
    assert!(leak.trend.confidence > 0.99, "{:#?}", leak.trend);
    assert_eq!(leak.trend.gained_bytes, i64::try_from(ticks * 1024).unwrap());
    // 1 KiB per 25 ms tick, slower in practice (sleeping and tracing add to each tick).
    let rate = leak.trend.rate_bytes_per_s;
    assert!((10_000.0..=45_000.0).contains(&rate), "rate {rate}");
    // Both rounded (to 0.1 B/s and 1 B/h).
    assert!((leak.trend.rate_bytes_per_h - rate * 3600.0).abs() <= 0.05 * 3600.0 + 1.0);
    assert_eq!(leak.series.bytes.first(), Some(&0), "series start at attach");
    assert_eq!(leak.series.bytes.last(), Some(&(ticks * 1024)));
    let cache = assert_site(&report, "cache_put", (CACHE_BYTES, 32));
    assert_eq!(cache.trend.verdict, Verdict::Plateau, "{:#?}", cache.trend);
    // Samples between reports come from the kernel's per-site totals: each is whole blocks,
    // the leak never shrinks, and the cache, whose replaced entries are freed, never holds
    // more than its 32 entries.
    for (site, block, most) in [(leak, 1024, ticks), (cache, 4096, 32)] {
        let s = &site.series;
        assert!(s.bytes.len() >= 20, "{s:#?}");
        for (bytes, allocs) in s.bytes.iter().zip(&s.allocs) {
            assert_eq!(*bytes, allocs * block, "{s:#?}");
            assert!(*allocs <= most, "{s:#?}");
        }
    }
    assert!(leak.series.bytes.windows(2).all(|w| w[0] <= w[1]), "{:#?}", leak.series);
    assert_eq!(report.growth.leak_sites, std::slice::from_ref(&leak.id), "{:#?}", summary(&report));
    assert!(
        report.growth.summary.contains("; leak suspected at leak_fn <- main"),
        "{}",
        report.growth.summary
    );
    // Every outstanding byte is in some age bucket.
    assert_eq!(report.age.bytes.values().iter().sum::<u64>(), report.totals.outstanding_bytes);
    assert_eq!(leak.age_bytes.values().iter().sum::<u64>(), leak.outstanding_bytes);

    // Interval by interval (on stderr: `leak run` leaves stdout to the command): the leak
    // flagged early, the cache never.
    let leak_seen = verdicts_per_report(&done.stderr, "leak_fn");
    let first = leak_seen.iter().position(|v| v.as_deref() == Some("leak"));
    assert!(
        first.is_some_and(|i| i < FLAGGED_WITHIN),
        "leak flagged within {FLAGGED_WITHIN} intervals: {leak_seen:?}"
    );
    let cache_seen = verdicts_per_report(&done.stderr, "cache_put");
    assert!(cache_seen.len() >= 4, "{cache_seen:?}");
    assert!(
        cache_seen.iter().all(|v| v.as_deref() != Some("leak")),
        "the cache is never called a leak: {cache_seen:?}"
    );

    // The flame graphs show what grew.
    let growth = std::fs::read_to_string(&svg).unwrap();
    assert!(growth.contains("Growth by allocation stack"), "title");
    assert!(growth.contains("leak_fn"));
    let diff = std::fs::read_to_string(&diff).unwrap();
    assert!(diff.contains("leak_fn") && diff.contains("cache_put"));
}

#[test]
fn fail_on_leak_passes_a_clean_run_and_reports_the_process_memory() {
    let bin = fixture("cacher");
    let (done, _keep, json) = run_with_report(
        &["--fail-on-leak", "--interval", "1s", "--sample-interval", "250ms"],
        &[bin.to_str().unwrap(), "120", TICK_MS, "clean"],
    );
    assert_eq!(done.status.code(), Some(0), "no leak, no failure; stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    let cache = site(&report, "cache_put");
    assert_eq!(cache.outstanding_bytes, CACHE_BYTES);
    assert_eq!(cache.trend.verdict, Verdict::Plateau, "{:#?}", cache.trend);
    assert!(report.growth.leak_sites.is_empty(), "{:#?}", report.growth);
    assert!(report.growth.summary.contains("no leak suspected"), "{}", report.growth.summary);
    // smaps_rollup was sampled while the fixture ran (not after its exit).
    let process = report.process.as_ref().expect("process view");
    assert!(process.rss_bytes >= process.private_bytes && process.private_bytes > 0);
    assert!(process.series.t_s.len() >= 4, "{:#?}", process.series);
}
