//! `leak watch`: memory-only sampling flags the leaking process, not the one whose cache
//! levels off, and `--escalate` traces the flagged one (fixture `cacher`, see growth.rs);
//! `--html`'s page, in Chromium, links the trace's own page.
use std::{path::Path, process::Command};

use leak_tests::{
    Fixture, PodCgroup, browser, fixture, pod_ids, read_report, require_root, run_leak, site,
    systemd_pod_cgroup, watch_report,
};
use leak_user::{analysis::trend::Verdict, fleet::pods::QosClass, fleet::report::WatchReport};

#[test]
fn watch_flags_the_leaking_process_and_escalates_to_the_probes() {
    require_root();
    let start = |mode: &[&str]| {
        let mut cmd = Command::new(fixture("cacher"));
        // 25 ms ticks for longer than the watch (it is killed at the end).
        cmd.args(["100000", "25"]).args(mode);
        Fixture::start_command(cmd)
    };
    let leaking = start(&[]);
    let clean = start(&["clean"]);
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("watch.json"), dir.path().join("watch.html"));
    let (a, b) = (leaking.pid().to_string(), clean.pid().to_string());
    let done = run_leak(&[
        "watch",
        "--pid",
        &a,
        "--pid",
        &b,
        "--sample-interval",
        "250ms",
        "--interval",
        "1s",
        "--min-growth",
        "64K",
        "--escalate",
        "2s",
        // The allocator's probes, for exact bytes (the default, a growth profile, is the
        // agent test's).
        "--escalate-mode",
        "exact",
        "--out-dir",
        dir.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        // Room for the 2 s escalation after the leak is seen (about 2 s in) and the probes
        // are attached: under the whole suite's load, attaching alone has taken 2 s, and an
        // escalation cut short after one sample cannot judge its sites.
        "--duration",
        "8s",
    ]);
    let (text, report) = watch_report(&done, &json);
    assert_eq!(report.processes_watched, 2);
    let verdict = |pid: u32| {
        let p = report.processes.iter().find(|p| p.pid == pid).expect("watched");
        (p.trend.verdict, p.trend.gained_bytes)
    };
    // Shown if an assertion fails: the escalation's warnings go there.
    eprintln!("leak watch's stderr: {:#?}", done.stderr);
    let (v, gained) = verdict(leaking.pid());
    assert_eq!(v, Verdict::Leak, "{text}");
    // 40 KiB/s of touched heap for ~8 s, in whole pages.
    assert!(gained >= 64 << 10 && gained % 4096 == 0, "{gained}");
    let (v, _) = verdict(clean.pid());
    assert!(matches!(v, Verdict::Stable | Verdict::Plateau), "the cache levels off: {text}");
    // Only the leaking process was traced, and its report names the leak.
    assert_eq!(report.escalations.len(), 1, "{text}");
    let e = &report.escalations[0];
    assert_eq!((e.pid, e.exit_code), (leaking.pid(), Some(0)), "{text}");
    let traced = read_report(std::path::Path::new(&e.json));
    assert_eq!(traced.target.pid, leaking.pid());
    // Its full --escalate time, or cut short (SIGINT) when the watch ended first.
    assert!(matches!(traced.end_reason.as_str(), "duration" | "signal"), "{}", traced.end_reason);
    let leak = site(&traced, "leak_fn");
    assert!(leak.outstanding_bytes > 0);
    assert_eq!(leak.outstanding_bytes, leak.outstanding_allocs * 1024);
    assert!(matches!(leak.trend.verdict, Verdict::Leak | Verdict::Growing), "{:#?}", leak.trend);
    assert!(std::fs::read_to_string(&e.svg).unwrap().contains("leak_fn"));
    assert!(report.not_escalated.is_empty(), "{text}");
    assert!(done.stdout.iter().any(|l| l.starts_with("== watch ended")), "{:#?}", done.stdout);
    check_watch_page(&html, &report, leaking.pid());
}

/// The watch page in the browser: a chart per process that is not stable, and the leaking
/// process `pid` linked to its trace's page, next to the watch page.
fn check_watch_page(html: &Path, report: &WatchReport, pid: u32) {
    let unstable = report.processes.iter().filter(|p| p.trend.verdict != Verdict::Stable).count();
    browser::check_in_browser(html, unstable, None, Some(&browser::out_dir().join("watch.png")));
    let page = std::fs::read_to_string(html).unwrap();
    let process = page.split(&format!("id=\"pid-{pid}\"")).nth(1).expect("the leaking process");
    let href = process
        .split("<a class=\"trace\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("a link to its trace: {process}"));
    assert!(!href.contains('/'), "a page in the same directory: {href}");
    let trace = std::fs::read_to_string(html.with_file_name(href)).unwrap();
    assert!(trace.contains(&format!("<title>leak: pid {pid} (cacher)</title>")), "{href}");
}

#[test]
fn watch_of_a_missing_process_is_bad_input() {
    run_leak(&["watch", "--pid", "999999999"]).assert_bad_input("no such process");
}

#[test]
fn watch_pods_finds_processes_by_their_kubelet_cgroups() {
    require_root();
    let fs = Path::new("/sys/fs/cgroup");
    let leaking = |pod: Option<&PodCgroup>| {
        // 1 MiB/s: the kernel charges a cgroup in batches (64 pages a CPU), so a container's
        // series climbs in 256 KiB steps; at 512 KiB/s a flat stretch of three samples at
        // the end of the 4 s watch once read as a plateau (CI). About one step a sample here.
        let mut cmd = Command::new(fixture("cacher"));
        cmd.args(["1000000", "1"]);
        let f = Fixture::start_command(cmd);
        if let Some(p) = pod {
            p.add(f.pid());
        }
        f
    };
    // containerd under the systemd driver, in cgroup v2.
    let (systemd, uid, cid) = systemd_pod_cgroup();
    let in_systemd_pod = leaking(Some(&systemd));
    // The cgroupfs driver in cgroup v1's memory hierarchy, where there is one.
    let v1 = fs.join("memory");
    let (uid1, cid1) = pod_ids();
    let cgroupfs = v1
        .join("memory.limit_in_bytes")
        .exists()
        .then(|| PodCgroup::new(&v1, &format!("kubepods/besteffort/pod{uid1}/{cid1}")));
    let in_cgroupfs_pod = cgroupfs.as_ref().map(|c| leaking(Some(c)));
    // Not in a pod: not watched.
    let outside = leaking(None);

    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("watch.json");
    let done = run_leak(&[
        "watch",
        "--pods",
        "--sample-interval",
        "250ms",
        "--interval",
        "1s",
        "--min-growth",
        "64K",
        "--json",
        json.to_str().unwrap(),
        "--duration",
        "4s",
    ]);
    let (text, report) = watch_report(&done, &json);
    let find = |pid: u32| report.processes.iter().find(|p| p.pid == pid);
    let expect = |pid: u32, uid: &str, cid: &str, runtime: Option<&str>, qos: QosClass| {
        let p = find(pid).unwrap_or_else(|| panic!("pid {pid} watched: {text}"));
        assert_eq!(p.trend.verdict, Verdict::Leak, "{text}");
        let pod = p.pod.as_ref().expect("its pod");
        assert_eq!(pod.pod_uid, uid);
        assert_eq!(pod.container_id.as_deref(), Some(cid));
        assert_eq!(pod.runtime.as_deref(), runtime);
        assert_eq!(pod.qos, qos);
    };
    expect(in_systemd_pod.pid(), &uid, &cid, Some("containerd"), QosClass::Burstable);
    if let Some(f) = &in_cgroupfs_pod {
        expect(f.pid(), &uid1, &cid1, None, QosClass::BestEffort);
    }
    assert!(find(outside.pid()).is_none(), "{text}");
    // Each container's memory cgroup is judged too: leaking, with one process.
    let container = |cid: &str| {
        let c = report.containers.iter().find(|c| c.pod.container_id.as_deref() == Some(cid));
        let c = c.unwrap_or_else(|| panic!("container {cid} watched: {text}"));
        assert_eq!((c.trend.verdict, c.processes), (Verdict::Leak, 1), "{text}");
        assert!(c.anon_bytes > 0 && c.memory_bytes >= c.anon_bytes, "{c:#?}");
    };
    container(&cid);
    if in_cgroupfs_pod.is_some() {
        container(&cid1);
    }
    assert_eq!(report.containers.len(), 1 + usize::from(in_cgroupfs_pod.is_some()), "{text}");
    // The text report names the pod.
    let line = format!("pod {uid} container {}", &cid[..12]);
    assert!(done.stdout.iter().any(|l| l.contains(&line)), "{:#?}", done.stdout);
    drop((in_systemd_pod, in_cgroupfs_pod, outside));
}
