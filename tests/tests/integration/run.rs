//! `leak run`: probes attached before the program's main, exit code passed through.
use leak_tests::{assert_absent, assert_site, fixture, read_report, require_root, run_leak};

#[test]
fn run_traces_from_the_first_instruction_and_passes_the_exit_code() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let bin = fixture("runner");
    let done = run_leak(&["run", "--json", json.to_str().unwrap(), "--", bin.to_str().unwrap()]);
    assert_eq!(done.status.code(), Some(3), "the command's exit code; stderr: {:#?}", done.stderr);
    assert!(done.stderr.iter().any(|l| l.starts_with("attached to PID")), "{:#?}", done.stderr);
    let report = read_report(&json);
    assert_eq!(report.end_reason, "target_exited");
    assert_eq!(report.target.comm, "runner");
    // Allocated by a constructor, before main: the probes were already there.
    assert_site(&report, "ctor_leak", (1024, 2));
    assert_site(&report, "leak_at_start", (3000, 3));
    assert_absent(&report, "no_leak");
}

#[test]
fn run_of_a_missing_command_is_bad_input() {
    require_root();
    run_leak(&["run", "--", "/nonexistent/program"]).assert_bad_input("command not found");
    run_leak(&["run", "--", "no-such-command-on-path"]).assert_bad_input("command not found");
}

#[test]
fn run_with_a_duration_reports_then_waits_for_the_command() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let done = run_leak(&[
        "run",
        "--duration",
        "500ms",
        "--json",
        json.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "sleep 2; exit 4",
    ]);
    assert_eq!(done.status.code(), Some(4), "stderr: {:#?}", done.stderr);
    assert_eq!(read_report(&json).end_reason, "duration");
}

#[test]
fn sigterm_while_waiting_is_passed_to_the_command() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut leak = leak_tests::Leak::spawn(&[
        "run",
        "--duration",
        "200ms",
        "--json",
        json.to_str().unwrap(),
        "--",
        "sleep",
        "60",
    ]);
    leak.stderr.wait_for("the waiting line", |l| l.contains("waiting for pid"));
    let done = leak.terminate();
    // sleep died of the forwarded SIGTERM: 128 + 15.
    assert_eq!(done.status.code(), Some(143), "stderr: {:#?}", done.stderr);
    assert_eq!(read_report(&json).end_reason, "duration");
}

/// The benchmarks' probe floor: the same probes, programs that do nothing (no record, no
/// count): what the probes alone cost is measured against it.
#[test]
fn the_probe_floor_attaches_the_same_probes_and_records_nothing() {
    require_root();
    let bin = fixture("runner");
    let mut reports = Vec::new();
    for floor in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let mut args = vec!["run", "--json", json.to_str().unwrap()];
        if floor {
            args.push("--probe-floor");
        }
        args.extend(["--", bin.to_str().unwrap()]);
        let done = run_leak(&args);
        assert_eq!(done.status.code(), Some(3), "stderr: {:#?}", done.stderr);
        let attached: Vec<&String> =
            done.stderr.iter().filter(|l| l.starts_with("attached to PID")).collect();
        let probes = attached[0].rsplit_once('(').unwrap().1.to_owned();
        reports.push((probes, read_report(&json)));
    }
    let (full, floor) = (&reports[0], &reports[1]);
    assert_eq!(full.0, floor.0, "the same number of probes");
    assert!(full.1.totals.outstanding_bytes > 0 && full.1.probe_hits["malloc_enter"] > 0);
    // What the probes cost the target: measured at start, times the hits.
    let cost = full.1.probe_time.as_ref().expect("the probes' cost in the report");
    assert!(cost.entry_ns > 0 && cost.return_ns > 0, "{cost:#?}");
    assert_eq!(
        cost.entry_hits,
        full.1
            .probe_hits
            .iter()
            .filter(|(k, _)| k.ends_with("_enter"))
            .map(|(_, v)| v)
            .sum::<u64>()
    );
    assert!(cost.estimated_s > 0.0, "{cost:#?}");
    assert_eq!(floor.1.totals.outstanding_bytes, 0);
    assert!(floor.1.probe_hits.values().all(|&h| h == 0), "{:#?}", floor.1.probe_hits);
}

/// The terminal report is concise: one line a site while tracing, whole stacks only at the
/// end; no interval report repeats the final one when --interval equals --duration; -q
/// prints the summary line alone.
#[test]
fn the_terminal_report_is_concise() {
    require_root();
    let start = || {
        let mut cmd = std::process::Command::new(fixture("cacher"));
        cmd.args(["1000000", "25"]);
        leak_tests::Fixture::start_command(cmd)
    };
    let headers = |lines: &[String]| lines.iter().filter(|l| l.starts_with("== ")).count();
    // Intervals of 1 s over 3 s: brief ones (no stack lines), then the final one with stacks.
    let target = start();
    let done =
        leak_tests::Leak::attach(target.pid(), &["--interval", "1s", "--duration", "3s"]).wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let fin = done.stdout.iter().position(|l| l.starts_with("== final report: ")).expect("final");
    let (intervals, last) = done.stdout.split_at(fin);
    assert!(headers(intervals) >= 1, "{:#?}", done.stdout);
    let site_lines = intervals.iter().filter(|l| l.starts_with('#')).count();
    assert!(site_lines >= 2, "{intervals:#?}");
    assert!(
        intervals.iter().all(|l| !l.starts_with("       ")),
        "no stack lines while tracing: {intervals:#?}"
    );
    assert!(last.iter().any(|l| l.trim_start().starts_with("leak_fn ")), "{last:#?}");
    // --interval equal to --duration: the final report alone.
    let target = start();
    let done =
        leak_tests::Leak::attach(target.pid(), &["--interval", "2s", "--duration", "2s"]).wait();
    assert_eq!(headers(&done.stdout), 1, "{:#?}", done.stdout);
    // -q: one summary line, no report.
    let target = start();
    let done =
        leak_tests::Leak::attach(target.pid(), &["-q", "--interval", "1s", "--duration", "3s"])
            .wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert_eq!(headers(&done.stdout), 0, "{:#?}", done.stdout);
    let summary: Vec<&String> =
        done.stdout.iter().filter(|l| l.starts_with("leak: pid ")).collect();
    assert_eq!(summary.len(), 1, "{:#?}", done.stdout);
    assert!(summary[0].contains(" at leak_fn <- main"), "{}", summary[0]);
    drop(target);
}
