//! One verdict per report, stated once, with true caveats: the text, the JSON and the page of
//! one trace agree; a trace in which no probe fired says so instead of "no leak".
use std::process::Command;

use leak_tests::{Fixture, Leak, fixture, read_report, require_root, run_leak};
use leak_user::analysis::trend::Verdict;

/// A leak next to a cache that fills and levels off (fixture `cacher`), traced for 6 s.
#[test]
fn the_text_the_json_and_the_page_state_one_verdict() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("r.json"), dir.path().join("r.html"));
    let mut cmd = Command::new(fixture("cacher"));
    cmd.args(["1000000", "25"]);
    let cacher = Fixture::start_command(cmd);
    let done = Leak::attach(
        cacher.pid(),
        &[
            "--duration",
            "6s",
            "--interval",
            "2s",
            "--sample-interval",
            "250ms",
            "--json",
            json.to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
        ],
    )
    .wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    let report = read_report(&json);
    let g = &report.growth;
    assert_eq!(g.verdict, Verdict::Leak, "{g:#?}");
    assert!(
        g.summary.contains("; leak suspected at leak_fn <- main (confidence "),
        "{}",
        g.summary
    );
    // The process's private memory grew with the leak: nothing to warn about.
    assert!(g.caveats.is_empty(), "{:?}", g.caveats);
    let p = report.process.as_ref().expect("process view");
    let share = p.traced_share.expect("private memory grew");
    assert!(share > 0.5, "{p:#?}");

    // The page: the same verdict in its headline, with its evidence labelled.
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("verdict <b>leak (confidence ")
            && page.contains(" at leak_fn &lt;- main</b>"),
        "{page}"
    );
    assert!(page.contains("badge plateau\">plateau (levelled off)</span>"), "the cache");
    // Never a bare or a certain percentage.
    for text in [page.as_str(), &done.stdout.join("\n")] {
        assert!(!text.contains("(100%)") && !text.contains("confidence 100"), "{text}");
        assert!(!text.contains("explain 1") || text.contains("explain 1%"), "no share over 100%");
    }

    // The text: the final report's verdict is the summary's, its first site the leak, the
    // cache below it as a plateau.
    let text = &done.stdout;
    let at = text.iter().position(|l| l.starts_with("== final report: ")).expect("final");
    let fin = &text[at..];
    let growth = fin.iter().find(|l| l.starts_with("growth: ")).expect("growth line");
    assert_eq!(growth.strip_prefix("growth: "), Some(g.summary.as_str()));
    let sites: Vec<&String> = fin.iter().filter(|l| l.starts_with('#')).collect();
    assert!(sites[0].contains(" leak +") && sites[0].contains("(confidence "), "{fin:#?}");
    let first_frame = &fin[fin.iter().position(|l| l == sites[0]).unwrap() + 1];
    assert!(first_frame.trim_start().starts_with("leak_fn "), "{fin:#?}");
    assert!(sites[1].contains(" plateau (now "), "{fin:#?}");
}

/// `sleep` makes no allocator call: the trace says so, in the report and as a warning, and
/// does not pass for "no leak"; `leak run -- true` likewise.
#[test]
fn a_trace_in_which_no_probe_fired_says_so() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo ready; exec sleep 60"]);
    let mut sleep = Fixture::start_command(cmd);
    // Past its start-up (setlocale allocates): sleeping.
    let comm = format!("/proc/{}/comm", sleep.pid());
    let deadline = std::time::Instant::now() + leak_tests::timeout();
    while std::fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(std::time::Instant::now() < deadline, "sleep never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let done =
        Leak::attach(sleep.pid(), &["--duration", "2s", "--json", json.to_str().unwrap()]).wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert!(
        done.stderr.iter().any(|l| l.starts_with("leak: warn: no probe fired in pid ")),
        "{:#?}",
        done.stderr
    );
    let report = read_report(&json);
    assert!(
        report.growth.summary.ends_with("; nothing traced: no probe fired"),
        "{}",
        report.growth.summary
    );
    assert!(
        report.growth.caveats[0].starts_with("no probe fired: "),
        "{:?}",
        report.growth.caveats
    );
    assert!(!report.growth.summary.contains("no leak suspected"));
    assert!(sleep.try_wait().is_none(), "still sleeping");

    let done = run_leak(&["run", "--json", json.to_str().unwrap(), "--", "true"]);
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert!(done.stderr.iter().any(|l| l.contains("no probe fired in pid ")), "{:#?}", done.stderr);
    let report = read_report(&json);
    assert!(
        report.growth.summary.ends_with("nothing traced: no probe fired"),
        "{}",
        report.growth.summary
    );
}
