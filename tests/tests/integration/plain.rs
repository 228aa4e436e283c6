//! Watching plain processes, off Kubernetes (a VM whose services are systemd units): the
//! agent says why it watches nothing, and `--process` (or `--all`, `--pid`) watches plain
//! processes, judges and traces them as it does pods'; a whole-host watch keeps what leaked
//! and exited. An area of its own, which `cargo xtask test` runs alone: the other watch and
//! agent tests make pod cgroups, and these need a host without any, and a whole-host watch
//! beside them would load it.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use leak_tests::{Fixture, Leak, fixture, http_get_text, require_root, serving_addr, watch_report};
use leak_user::analysis::trend::Verdict;

#[test]
fn the_agent_off_kubernetes_says_why_it_watches_nothing() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let done = Leak::spawn(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--sample-interval",
        "250ms",
        "--duration",
        "2s",
        "--out-dir",
        out.path().to_str().unwrap(),
    ])
    .wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert!(
        done.stderr.iter().any(|l| l
            == "leak: warn: watching nothing: no process of this host runs in a Kubernetes pod \
                (none is in a kubelet's cgroup): pass --all, --pid or --process to watch \
                processes outside pods"),
        "{:#?}",
        done.stderr
    );
}

#[test]
fn the_agent_watches_and_traces_a_plain_process_by_name() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(fixture("cacher"));
    cmd.args(["1000000", "25"]);
    let cacher = Fixture::start_command(cmd);
    let pid = cacher.pid();
    let mut agent = Leak::spawn(&[
        "agent",
        "--process",
        "cacher",
        "--listen",
        "localhost:0",
        "--sample-interval",
        "250ms",
        "--min-growth",
        "64K",
        "--trace-for",
        "2s",
        "--interval",
        "1h",
        "--out-dir",
        out.path().to_str().unwrap(),
    ]);
    let addr = serving_addr(&mut agent);
    let leaking =
        format!("leak_process_verdict{{pid=\"{pid}\",comm=\"cacher\",verdict=\"leak\"}} 1\n");
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut judged, mut traced) = (false, false);
    while Instant::now() < deadline && !(judged && traced) {
        std::thread::sleep(Duration::from_millis(250));
        judged |= http_get_text(&addr, "/metrics").contains(&leaking);
        let reports: serde_json::Value =
            serde_json::from_str(&http_get_text(&addr, "/api/v1/reports")).expect("JSON");
        traced |= reports
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["pid"] == pid && r["status"] == "done"));
    }
    let metrics = http_get_text(&addr, "/metrics");
    assert!(judged, "{metrics}");
    assert!(traced, "{}", http_get_text(&addr, "/api/v1/reports"));
    // Only what --process names.
    assert!(!metrics.contains("comm=\"leak\""), "{metrics}");
    let done = agent.terminate();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
}

/// A whole-host watch keeps a process that leaked and exited (it used to vanish from the
/// report and the page), names processes by their command lines, and says when
/// `--min-growth` hid steady growth.
#[test]
fn watch_keeps_exited_leakers_names_commands_and_says_what_the_floor_hid() {
    leak_tests::require_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("watch.json");
    // Leaks 1 KiB every 25 ms for 4 s, then exits: 2 s before the watch ends. (At 3 s, the
    // growth a watch started a moment later saw was once too little to judge: the process
    // was not kept.)
    let mut cmd = std::process::Command::new(leak_tests::fixture("cacher"));
    cmd.args(["160", "25"]);
    let mut short = leak_tests::Fixture::start_command(cmd);
    let pid = short.pid();
    let done = leak_tests::run_leak(&[
        "watch",
        "--all",
        "--sample-interval",
        "250ms",
        "--min-growth",
        "64K",
        "--duration",
        "6s",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(short.wait().success());
    let (text, report) = watch_report(&done, &json);
    let p = report.processes.iter().find(|p| p.pid == pid).unwrap_or_else(|| panic!("{text}"));
    assert!(p.exited, "{p:#?}");
    assert!(matches!(p.trend.verdict, Verdict::Leak | Verdict::Growing), "{p:#?}");
    assert!(p.cmdline.ends_with("/cacher 160 25"), "{}", p.cmdline);
    let line = done.stdout.iter().find(|l| l.contains(&format!(" {pid}  "))).expect("its line");
    assert!(line.ends_with(" (exited)") && line.contains("cacher"), "{line}");

    // A 40 KiB/s leak watched for 4 s under the default 1 MiB floor: not judged, but said.
    let mut cmd = std::process::Command::new(leak_tests::fixture("cacher"));
    cmd.args(["1000000", "25"]);
    let slow = leak_tests::Fixture::start_command(cmd);
    let pid = slow.pid().to_string();
    let done = leak_tests::run_leak(&[
        "watch",
        "--pid",
        &pid,
        "--sample-interval",
        "250ms",
        "--duration",
        "4s",
        "--json",
        json.to_str().unwrap(),
    ]);
    let (text, report) = watch_report(&done, &json);
    assert_eq!(report.processes[0].trend.verdict, Verdict::Stable, "{text}");
    let note = report
        .notes
        .iter()
        .find(|n| n.contains("--min-growth"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        note.starts_with(&format!("1 process grew steadily by less than --min-growth 1.0 MiB over the window, the fastest pid {pid} (cacher) at +")),
        "{note}"
    );
    let printed = done.stdout.join("\n");
    assert!(printed.contains(&format!("note: {note}")), "{printed}");
}
