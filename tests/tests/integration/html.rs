//! The HTML report in a real browser (#17): Debian's Chromium, headless, loads the demo's
//! page and a fixture's, with no console message; every chart is there and has lines; and
//! the embedded flame graph's search (inferno's, run by its own script) finds the leaking
//! function. The demo's page is also saved as a screenshot (`target/html/demo.png`; the one
//! in `docs/` was taken this way).
//! (`leak watch --html`'s page is checked in the browser by `watch.rs`.)
use std::{path::PathBuf, process::Command};

use leak_tests::{
    Fixture, Leak,
    browser::{check_in_browser, out_dir},
    fixture, require_root,
};

/// Traces `target` for `seconds` with `--html` (and `--json`): the page, and how many charts
/// it should hold (the process's, and one per shown site with two samples or more).
fn trace_to_html(target: &Fixture, name: &str, seconds: u32, top: usize) -> (PathBuf, usize) {
    let html = out_dir().join(format!("{name}.html"));
    let json = out_dir().join(format!("{name}.json"));
    let duration = format!("{seconds}s");
    let top_arg = top.to_string();
    let leak = Leak::attach(
        target.pid(),
        &[
            "--duration",
            &duration,
            "--interval",
            "1h",
            "--sample-interval",
            "500ms",
            "--top",
            &top_arg,
            "--html",
            html.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    let done = leak.wait();
    assert!(done.status.success(), "{:#?}", done.stderr);
    let report = leak_tests::read_report(&json);
    let plotted = report.sites.iter().take(top).filter(|s| s.series.t_s.len() >= 2).count();
    (html, 1 + plotted)
}

/// The demo (`cargo xtask demo`'s program), traced as the demo traces it.
#[test]
fn the_demos_page_in_a_browser() {
    require_root();
    // The demo says one line when it serves (not "ready"): from then on it runs main, libc
    // mapped.
    let demo = Fixture::start_command_until(Command::new(fixture("demo")), |l| {
        l.starts_with("leak-demo: pid ")
    });
    let (html, charts) = trace_to_html(&demo, "demo", 8, 3);
    assert!(charts >= 3, "the process, the leak and the cache");
    check_in_browser(&html, charts, Some("parse_request"), Some(&out_dir().join("demo.png")));
}

/// A fixture's page: a leak and a cache that fills.
#[test]
fn a_fixtures_page_in_a_browser() {
    require_root();
    let mut cmd = Command::new(fixture("cacher"));
    cmd.args(["1000000", "50"]);
    let cacher = Fixture::start_command(cmd);
    let (html, charts) = trace_to_html(&cacher, "cacher", 6, 10);
    assert!(charts >= 3, "the process, leak_fn and cache_put");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("badge plateau") && page.contains("badge leak"), "both verdicts");
    check_in_browser(&html, charts, Some("leak_fn"), None);
}
