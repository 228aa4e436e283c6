//! Pages in a real browser (#17): Debian's Chromium, headless (`cargo xtask setup` installs
//! it). Used by the HTML report's tests and the watch page's.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use base64::Engine as _;

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
/// line, and (a trace's page) the growth flame graph's search for `function` matching
/// something.
pub fn check_in_browser(
    html: &Path,
    charts: usize,
    function: Option<&str>,
    screenshot: Option<&Path>,
) {
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
    if let Some(f) = function {
        search_flame_graph(&dom, f, profile.path());
    }
    if let Some(png) = screenshot {
        let size = "--window-size=1200,2600";
        chromium(profile.path(), &[size, &format!("--screenshot={}", png.display()), &url]);
        assert!(std::fs::metadata(png).unwrap().len() > 10_000);
    }
}

/// The growth flame graph embedded in the page `dom`, searched for `function` by inferno's
/// own script: it matches something.
fn search_flame_graph(dom: &str, function: &str, profile: &Path) {
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
    let (searched, log) =
        chromium(profile, &["--dump-dom", &format!("file://{}?s={function}", file.display())]);
    assert!(!log.contains(":CONSOLE"), "{log}");
    let matched = searched
        .split("id=\"matched\"")
        .nth(1)
        .and_then(|s| s.split("Matched: ").nth(1))
        .and_then(|s| s.split('%').next())
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no search result for {function}"));
    assert!(matched > 0.0, "{function} matched {matched}%");
}

/// Where the pages and screenshots of the browser tests are kept (`target/html`).
#[must_use]
pub fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/html");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
