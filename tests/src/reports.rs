//! Reports read and asserted on: a fixture traced end to end, its sites found by function,
//! exact bytes and counts asserted; and what Go's pprof reads of a profile.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Finished, Fixture, Leak, Report, Site, require_root, run_leak};

/// Starts fixture `name`, attaches `leak` (with `--json` and `args`), lets it run its
/// allocations, stops `leak` with SIGINT and returns the report.
#[must_use]
pub fn trace_fixture(name: &str, env: &[(&str, &str)], args: &[&str]) -> Report {
    trace_fixture_env(name, env, args, &[])
}

/// As [`trace_fixture`], with `leak_env` set for `leak`.
#[must_use]
pub fn trace_fixture_env(
    name: &str,
    env: &[(&str, &str)],
    args: &[&str],
    leak_env: &[(&str, &str)],
) -> Report {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut fixture = Fixture::start_with(name, env);
    let mut all = vec!["--json", json.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let leak = Leak::attach_env(fixture.pid(), &all, leak_env);
    fixture.go_and_wait_done();
    let done = leak.interrupt();
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    read_report(&json)
}

/// `leak run OPTIONS --json DIR/report.json -- COMMAND...`: returns how it finished, the
/// directory (kept alive by the caller) and the report path.
#[must_use]
pub fn run_with_report(
    options: &[&str],
    command: &[&str],
) -> (Finished, tempfile::TempDir, PathBuf) {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let mut args = vec!["run"];
    args.extend_from_slice(options);
    args.extend(["--json", json.to_str().expect("utf-8 path"), "--"]);
    args.extend_from_slice(command);
    (run_leak(&args), dir, json)
}

/// Asserts that the site whose frame 0 is `function` holds exactly `(bytes, allocations)`;
/// returns it.
#[track_caller]
#[expect(clippy::must_use_candidate, reason = "an assertion; the site is for more checks")]
pub fn assert_site<'a>(report: &'a Report, function: &str, expected: (u64, u64)) -> &'a Site {
    let s = site(report, function);
    assert_eq!(
        (s.outstanding_bytes, s.outstanding_allocs),
        expected,
        "{function}: {:#?}",
        summary(report)
    );
    s
}

/// Asserts every drop counter is 0: every event was matched.
pub fn assert_no_drops(report: &Report) {
    for (name, count) in &report.drops {
        assert_eq!(*count, 0, "drop counter {name}");
    }
}

/// Reads a JSON report.
#[must_use]
pub fn read_report(path: &Path) -> Report {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

/// The site whose frame 0 (the allocator's caller) is `function`; panics if none or several.
#[must_use]
pub fn site<'a>(report: &'a Report, function: &str) -> &'a Site {
    let found: Vec<&Site> = report.sites.iter().filter(|s| frame0(s) == Some(function)).collect();
    assert_eq!(
        found.len(),
        1,
        "sites with frame 0 = {function}: {:#?}; probe hits {:?}; drops {:?}",
        summary(report),
        report.probe_hits.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>(),
        report.drops.iter().filter(|(_, n)| **n > 0).collect::<Vec<_>>()
    );
    found[0]
}

/// Asserts that `function` appears in no frame of any site.
pub fn assert_absent(report: &Report, function: &str) {
    for s in &report.sites {
        assert!(
            !s.stack.iter().any(|f| f.function.as_deref() == Some(function)),
            "{function} must not hold memory: {:#?}",
            summary(report)
        );
    }
}

/// Outstanding bytes and allocations of the sites with `function` anywhere in their stack.
#[must_use]
pub fn under(report: &Report, function: &str) -> (u64, u64) {
    report
        .sites
        .iter()
        .filter(|s| s.stack.iter().any(|f| f.function.as_deref() == Some(function)))
        .fold((0, 0), |(b, n), s| (b + s.outstanding_bytes, n + s.outstanding_allocs))
}

/// Name of frame 0 of a site.
#[must_use]
pub fn frame0(site: &Site) -> Option<&str> {
    site.stack.first().and_then(|f| f.function.as_deref())
}

/// A growth profile's largest site whose frame 0 is `function` (a function touching memory
/// on two lines is two sites), asserting that the report is a growth profile and the site
/// holds resident pages.
#[track_caller]
#[must_use]
pub fn growth_site<'a>(report: &'a Report, function: &str) -> &'a Site {
    assert_eq!(report.mode, leak_user::analysis::report::Mode::Growth, "a growth profile");
    let s = report
        .sites
        .iter()
        .filter(|s| frame0(s) == Some(function))
        .max_by_key(|s| s.outstanding_bytes)
        .unwrap_or_else(|| panic!("no site at {function}: {:#?}", summary(report)));
    assert!(s.outstanding_allocs > 0);
    assert_eq!(s.resident_bytes, Some(s.outstanding_bytes));
    assert_eq!(s.outstanding_bytes % 4096, 0, "whole pages");
    s
}

/// `(frame 0, bytes, allocs)` of every site, for failure messages.
#[must_use]
pub fn summary(report: &Report) -> Vec<(String, u64, u64)> {
    report
        .sites
        .iter()
        .map(|s| (frame0(s).unwrap_or("?").to_owned(), s.outstanding_bytes, s.outstanding_allocs))
        .collect()
}

/// `go tool pprof -raw`'s samples: innermost function of each stack -> (count, bytes).
#[must_use]
pub fn go_pprof_samples(
    profile: &Path,
    scratch: &Path,
) -> std::collections::HashMap<String, (u64, u64)> {
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
    let functions: std::collections::HashMap<String, String> = text
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
