//! The HTML report in a real browser (#17): Debian's Chromium, headless, loads the demo's
//! page and a fixture's, with no console message; every chart is there and has lines; and
//! the embedded flame graph's search (inferno's, run by its own script) finds the leaking
//! function. The demo's page is also saved as a screenshot (`target/html/demo.png`; the one
//! in `docs/` was taken this way).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;
use leak_tests::{Fixture, Leak, fixture, require_root};

/// Headless Chromium as this machine runs it: no sandbox (root), and nothing that reaches
/// the network (the machine has none; without these flags it tries, many times).
fn chromium(profile: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium (cargo xtask setup installs Debian's chromium)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Checks the page at `html` in the browser: no console message, `charts` charts each with a
/// line, and the growth flame graph's search for `function` matching something.
fn check_in_browser(html: &Path, charts: usize, function: &str, screenshot: Option<&Path>) {
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", html.display());
    let (dom, log) = chromium(profile.path(), &["--dump-dom", &url]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    // Every chart, with at least one drawn line of several points.
    let parts: Vec<&str> = dom.split("<div class=\"chart").skip(1).collect();
    assert_eq!(parts.len(), charts, "charts in {}", html.display());
    for part in &parts {
        let svg = &part[..part.find("</svg>").expect("the chart's svg")];
        let drawn = svg.split("<polyline").skip(1).any(|l| {
            l.split("points=\"")
                .nth(1)
                .is_some_and(|p| p.split('"').next().unwrap().split(' ').count() >= 2)
        });
        assert!(drawn, "a chart with no line: {svg}");
    }
    // The flame graph, as embedded: inferno's own script searches it (?s=...).
    let data = dom
        .split("id=\"growth-flamegraph\"")
        .nth(1)
        .and_then(|s| s.split("data:image/svg+xml;base64,").nth(1))
        .and_then(|s| s.split('"').next())
        .expect("the growth flame graph's frame");
    let svg = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("growth.svg");
    std::fs::write(&file, svg).unwrap();
    let (searched, log) = chromium(
        profile.path(),
        &["--dump-dom", &format!("file://{}?s={function}", file.display())],
    );
    assert!(!log.contains(":CONSOLE"), "{log}");
    let matched = searched
        .split("id=\"matched\"")
        .nth(1)
        .and_then(|s| s.split("Matched: ").nth(1))
        .and_then(|s| s.split('%').next())
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no search result for {function}"));
    assert!(matched > 0.0, "{function} matched {matched}%");
    if let Some(png) = screenshot {
        let size = "--window-size=1200,2600";
        chromium(profile.path(), &[size, &format!("--screenshot={}", png.display()), &url]);
        assert!(std::fs::metadata(png).unwrap().len() > 10_000);
    }
}

fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/html");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

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
    check_in_browser(&html, charts, "parse_request", Some(&out_dir().join("demo.png")));
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
    check_in_browser(&html, charts, "leak_fn", None);
}
