//! `--pprof`: Go's own pprof tool reads the profile, with the exact bytes and counts of the
//! JSON report (fixture `cacher`: 1 KiB leaked per tick, a 32-entry cache of 4 KiB blocks).
use std::{collections::HashMap, path::Path, process::Command};

use leak_tests::{fixture, read_report, run_with_report};

/// `go tool pprof -raw`'s samples: innermost function of each stack -> (count, bytes).
fn go_pprof_samples(profile: &Path, scratch: &Path) -> HashMap<String, (u64, u64)> {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(profile)
        // Go wants a writable cache and home, which a CI shell may not have.
        .env("GOCACHE", scratch.join("gocache"))
        .env("HOME", scratch)
        .output()
        .expect("run go tool pprof (cargo xtask test installs golang-go)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    // "Locations" lines: "     4: 0x55.. M=1 leak_fn /src/cacher.c:23 s=0".
    let functions: HashMap<String, String> = text
        .split_once("\nLocations\n")
        .expect("a Locations section")
        .1
        .lines()
        .take_while(|l| !l.starts_with("Mappings"))
        .filter_map(|l| {
            let (id, rest) = l.trim().split_once(": ")?;
            Some((id.to_owned(), rest.split_whitespace().nth(2)?.to_owned()))
        })
        .collect();
    // Sample lines: "         40      40960: 4 5 3 ".
    text.split_once("\nSamples:\n")
        .expect("a Samples section")
        .1
        .lines()
        .take_while(|l| !l.starts_with("Locations"))
        .filter_map(|l| {
            let (values, ids) = l.split_once(": ")?;
            let mut v = values.split_whitespace().map(str::parse::<u64>);
            let (count, bytes) = (v.next()?.ok()?, v.next()?.ok()?);
            let innermost = ids.split_whitespace().next()?;
            Some((functions[innermost].clone(), (count, bytes)))
        })
        .collect()
}

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
