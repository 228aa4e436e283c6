//! Sampled tracing (`--sample`): the fixture's leak sites are found, and each site's
//! estimated bytes and allocations are close to the truth (fixture `sampled`, run at scale 4).
use leak_tests::{
    assert_no_drops, assert_site, fixture, read_report, run_with_report, site, summary,
};

const SCALE: u64 = 4;

/// (function, bytes, allocations) leaked at scale 1.
const TRUTH: [(&str, u64, u64); 3] = [
    ("leak_small", 32768 * 64, 32768),
    ("leak_medium", 2048 * 4000, 2048),
    ("leak_large", 64 * 128 * 1024, 64),
];

#[test]
fn sampling_finds_every_leak_site_with_unbiased_estimates() {
    let bin = fixture("sampled");
    let (done, _keep, json) =
        run_with_report(&["--sample", "16K"], &[bin.to_str().unwrap(), &SCALE.to_string()]);
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    // Frees of blocks that were never sampled are not lost events.
    assert_no_drops(&report);
    let sampling = report.sampling.expect("the report says it was sampled");
    assert_eq!(sampling.mean_bytes, 16 * 1024);
    // 40 MiB leaked in all: about 2,600 samples (each 64-byte block is sampled with p = 0.4%,
    // each 4000-byte one with 22%, each 128 KiB one almost surely).
    assert!((1500..4000).contains(&sampling.samples), "{sampling:?}");
    for (function, bytes, allocs) in TRUTH {
        let s = site(&report, function);
        let (bytes, allocs) = (bytes * SCALE, allocs * SCALE);
        // The smallest site rests on about 500 samples: a relative error of about 4.5%; 20%
        // is more than four of those.
        #[expect(clippy::cast_precision_loss, reason = "MiB")]
        let err = |est: u64, truth: u64| (est as f64 / truth as f64 - 1.0).abs();
        assert!(
            err(s.outstanding_bytes, bytes) < 0.2 && err(s.outstanding_allocs, allocs) < 0.2,
            "{function}: estimated {} B in {}, truth {bytes} B in {allocs}; {:#?}",
            s.outstanding_bytes,
            s.outstanding_allocs,
            summary(&report)
        );
    }
    // The churn (freed at once) is not a leak site, sampled or not.
    assert!(
        report
            .sites
            .iter()
            .all(|s| s.stack.first().is_none_or(|f| f.function.as_deref() != Some("churn")))
    );
    // On stderr: `leak run` leaves stdout to the command.
    assert!(done.stderr.iter().any(|l| l.starts_with("sampled: one allocation per 16.0 KiB")));
}

/// Without `--sample` the same fixture is counted exactly.
#[test]
fn the_same_fixture_unsampled_is_exact() {
    let bin = fixture("sampled");
    let (done, _keep, json) = run_with_report(&[], &[bin.to_str().unwrap(), "1"]);
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let report = read_report(&json);
    assert_no_drops(&report);
    assert!(report.sampling.is_none());
    for (function, bytes, allocs) in TRUTH {
        assert_site(&report, function, (bytes, allocs));
    }
}
