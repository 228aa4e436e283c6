//! `--pprof`: Go's own pprof tool reads the profile, with the exact bytes and counts of the
//! JSON report (fixture `cacher`: 1 KiB leaked per tick, a 32-entry cache of 4 KiB blocks).
use leak_tests::{fixture, go_pprof_samples, read_report, run_with_report};

#[test]
fn go_pprof_reads_the_profile_with_the_reports_exact_figures() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("leaks.pb.gz");
    let ticks: u64 = 40;
    let (done, _keep, json) = run_with_report(
        &["--interval", "1h", "--pprof", profile.to_str().unwrap()],
        &[fixture("cacher").to_str().unwrap(), &ticks.to_string(), "5"],
    );
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    let samples = go_pprof_samples(&profile, dir.path());
    assert_eq!(samples["leak_fn"], (ticks, ticks * 1024), "{samples:#?}");
    assert_eq!(samples["cache_put"], (32, 32 * 4096), "{samples:#?}");
    // Every site of the report is a sample, with its figures.
    assert_eq!(samples.len(), report.sites.len(), "{samples:#?}");
    let (count, bytes) = samples.values().fold((0, 0), |(c, b), (sc, sb)| (c + sc, b + sb));
    assert_eq!((count, bytes), (report.totals.outstanding_allocs, report.totals.outstanding_bytes));
}
