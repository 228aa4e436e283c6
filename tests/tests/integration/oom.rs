//! OOM kills, real ones: `grower` leaks in a memory cgroup of its own with a small limit until
//! the kernel's OOM killer kills it; `leak run` and `leak attach`, in either mode, end with
//! `end_reason: "oom_kill"` and the post-mortem report; the agent, watching the fixture in a
//! pod's cgroup (fake Kubernetes API), records each kill with its post-mortem, posts an Event
//! on the pod, counts it and links a crash loop. A process killed otherwise gets no OOM
//! report.
use std::time::{Duration, Instant};

use leak_tests::{
    FakeKubeApi, Leak, Prometheus, agent_in_pod, http_get, http_get_text, oom_cgroup, read_report,
    require_root, systemd_pod_cgroup,
    truth::{
        OOM_LIMIT as LIMIT, OOM_RATE_KIB as RATE_KIB, assert_grower_oom_killed, grower_in,
        grower_last_leaked, grower_script, resident, run_until_oom_killed, sites_of,
    },
};

/// Where tracefs cannot be had: told by the cgroup's count.
const COUNTERS: &[(&str, &str)] = &[("LEAK_OOM_SOURCE", "counters")];

#[test]
fn run_ends_an_exact_trace_with_the_oom_kill() {
    run_until_oom_killed("exact", RATE_KIB, &[], true);
}

#[test]
fn run_ends_a_growth_profile_with_the_oom_kill() {
    run_until_oom_killed("growth", RATE_KIB, &[], true);
    run_until_oom_killed("growth", RATE_KIB, COUNTERS, true);
}

#[test]
fn attach_ends_with_the_oom_kill_of_its_target() {
    require_root();
    let cgroup = oom_cgroup(LIMIT);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    // Slow enough for the attach to be in place well before the kill.
    let rate = RATE_KIB / 2;
    let mut target = grower_in(&cgroup, 120, rate);
    let leak = Leak::attach(target.pid(), &["--mode", "growth", "--json", json.to_str().unwrap()]);
    let status = target.wait();
    let done = leak.wait();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
    assert_eq!(cgroup.oom_kills(), 1);
    let report = read_report(&json);
    assert_grower_oom_killed(&report, LIMIT, grower_last_leaked(&target.stdout.drain()), rate);
}

#[test]
fn a_process_killed_otherwise_gets_no_oom_report() {
    require_root();
    for env in [&[][..], COUNTERS] {
        // Killed by SIGKILL, not by the OOM killer: under `leak run`...
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let args = ["run", "-q", "--json", json.to_str().unwrap(), "--", "sh", "-c", "kill -9 $$"];
        let done = Leak::spawn_env(&args, env).wait();
        assert_eq!(done.status.code(), Some(137), "{:#?}", done.stderr);
        assert_eq!(read_report(&json).end_reason, "target_exited");
        // ... and attached to: killed while its memory is limited, just after another
        // cgroup's kill (which must not be taken for it), and after a kill in its own cgroup
        // samples ago (a process it ran, killed, must not be taken for it either).
        let cgroup = oom_cgroup(LIMIT);
        let other = oom_cgroup(8 << 20);
        let target = grower_in(&cgroup, 120, 64);
        let leak = Leak::attach_env(target.pid(), &["--json", json.to_str().unwrap()], env);
        std::thread::sleep(Duration::from_secs(2));
        let sibling = std::process::Command::new("sh")
            .args(["-c", &grower_script(&cgroup, 60, RATE_KIB)])
            .output()
            .unwrap();
        assert_eq!(cgroup.oom_kills(), 1, "{sibling:?}");
        std::thread::sleep(Duration::from_secs(3));
        let killed = std::process::Command::new("sh")
            .args(["-c", &grower_script(&other, 60, 4096)])
            .output()
            .unwrap();
        assert_eq!(other.oom_kills(), 1, "{killed:?}");
        let mut target = target;
        assert!(target.try_wait().is_none(), "the OOM killer took the sibling, not the target");
        drop(target);
        let done = leak.wait();
        assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
        assert_eq!(read_report(&json).end_reason, "target_exited", "{env:?}");
    }
}

/// What the agent test's grower leaks, KiB/s: killed about 25 s after it starts, judged
/// and profiled within the first few.
const AGENT_RATE_KIB: u64 = 4 << 10;

/// `GET /api/v1/oom_kills` until `done` holds of it.
fn kills_until(
    addr: &str,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&http_get_text(addr, "/api/v1/oom_kills")).unwrap();
        let list = list.as_array().unwrap().clone();
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Its post-mortem is written and read: the kill names what grew.
fn explained(k: &serde_json::Value) -> bool {
    k["top_site"].is_string()
}

#[test]
fn the_agent_explains_each_oom_kill_of_a_pod_and_links_a_crash_loop() {
    require_root();
    let (cgroup, uid, cid) = systemd_pod_cgroup();
    cgroup.limit_memory(LIMIT);
    let api = FakeKubeApi::start(&uid, "shop", "shop-api-1", "api", &cid);
    let dir = tempfile::tempdir().unwrap();
    // Profiled for longer than the fixture lives. Its scratch buffer faults in 4 MiB 50
    // times a second: at the cost the budget assumes for a fault, over the default 5% of a
    // CPU.
    let extra = ["--trace-for", "2m", "--max-overhead", "50%"];
    let (agent, addr, _agent_cgroup) = agent_in_pod(&api, &dir.path().join("reports"), &extra);
    // Judged leaking, profiled, killed at its limit.
    let mut first = grower_in(&cgroup, 120, AGENT_RATE_KIB);
    let pid = first.pid();
    let kills =
        kills_until(&addr, "the first kill, explained", |l| l.len() == 1 && explained(&l[0]));
    first.wait();
    let leaked = grower_last_leaked(&first.stdout.drain());
    let k = &kills[0];
    assert_eq!(
        (k["process"]["pid"].as_u64(), k["seen_by"].as_str()),
        (Some(u64::from(pid)), Some("tracepoint"))
    );
    assert_eq!(k["process"]["pod"]["workload"], "shop-api", "{k:#}");
    assert_eq!(k["limit_bytes"], LIMIT);
    let triage = k["triage"].as_str().unwrap();
    assert!(triage.starts_with("OOM-killed after +"), "{triage}");
    assert!(triage.contains("; its 96.0 MiB limit reached; "), "{triage}");
    assert!(triage.contains("% of the growth from leak_fn <- main"), "{triage}");
    // Its chart runs to the kill: the last sample near the limit.
    let anon = k["process"]["series"]["anon_bytes"].as_array().unwrap();
    let last = anon.last().unwrap().as_u64().unwrap();
    assert!(last * 10 >= LIMIT * 8, "{last} of {LIMIT}");
    let id = assert_post_mortem(&addr, k, pid, leaked);
    assert_event(&api, triage, &id);
    // Counted by workload; shown and linked on the node's page.
    let metrics = http_get_text(&addr, "/metrics");
    let counter = "leak_oom_kills_total{namespace=\"shop\",workload_kind=\"Deployment\",workload=\"shop-api\",container=\"api\"}";
    assert!(metrics.contains(&format!("{counter} 1\n")), "{metrics}");
    let page = http_get_text(&addr, "/");
    assert!(page.contains("<h2>OOM kills</h2>"), "{page}");
    assert!(
        page.contains(&format!("href=\"api/v1/reports/{id}/report.html\">its post-mortem")),
        "{page}"
    );

    // The container restarts and is killed again: linked to the first kill.
    let mut second = grower_in(&cgroup, 120, AGENT_RATE_KIB);
    let kills =
        kills_until(&addr, "the second kill, explained", |l| l.len() == 2 && explained(&l[1]));
    second.wait();
    let k = &kills[1];
    assert_eq!(k["previous"], serde_json::json!([kills[0]["id"]]));
    let repeated = k["repeated"].as_str().unwrap();
    assert!(repeated.starts_with("2nd OOM kill in "), "{repeated}");
    assert!(repeated.contains("% of the growth from leak_fn <- main"), "{repeated}");
    assert!(http_get_text(&addr, "/metrics").contains(&format!("{counter} 2\n")));

    assert_dashboard_shows_kills(dir.path(), &addr, &kills);

    // Killed otherwise: no OOM kill.
    let third = grower_in(&cgroup, 120, 256);
    std::thread::sleep(Duration::from_secs(3));
    drop(third);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(kills_until(&addr, "two kills", |_| true).len(), 2);
    assert_eq!(cgroup.oom_kills(), 2);
    let done = agent.terminate();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
}

/// The post-mortem of kill `k` of `pid` (which said it had leaked `leaked`): its profile's
/// report, written at the kill. Returns the report's id.
fn assert_post_mortem(addr: &str, k: &serde_json::Value, pid: u32, leaked: u64) -> String {
    let id = std::path::Path::new(k["profile"]["json"].as_str().unwrap())
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Profiled from when it was judged growing (or leaking, on a slow sample).
    let reason = k["profile"]["reason"].as_str().unwrap();
    assert!(["growing", "leak"].contains(&reason), "{reason}");
    let report: leak_tests::Report =
        serde_json::from_str(&http_get_text(addr, &format!("/api/v1/reports/{id}"))).unwrap();
    assert_eq!(report.end_reason, "oom_kill");
    assert_eq!(report.target.pid, pid);
    assert_eq!(leak_tests::frame0(report.sites_by_verdict()[0]), Some("leak_fn"));
    // It grew from leak_fn from when the profile started (a few seconds after the fixture):
    // most of what the fixture leaked, never more.
    let profiled = resident(&sites_of(&report, "leak_fn"));
    assert!(
        profiled * 10 >= leaked * 6 && profiled * 100 <= leaked * 105,
        "leak_fn: {profiled} bytes in the post-mortem, {leaked} leaked"
    );
    id
}

/// The Event on the pod, where `kubectl describe pod` shows it: the kill's `triage` line and
/// the address of report `id`.
fn assert_event(api: &FakeKubeApi, triage: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.events().is_empty() {
        assert!(Instant::now() < deadline, "no Event posted");
        std::thread::sleep(Duration::from_millis(250));
    }
    let event = &api.events()[0];
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("LeakOOMKill"))
    );
    assert_eq!(event["involvedObject"]["name"], "shop-api-1");
    assert_eq!(event["involvedObject"]["fieldPath"], "spec.containers{api}");
    let message = event["message"].as_str().unwrap();
    assert!(message.starts_with(triage), "{message}");
    assert!(message.ends_with(&format!("/api/v1/reports/{id}/report.html")), "{message}");
}

/// The dashboard's OOM kill panels, through a real Prometheus scraping the agent at `addr`:
/// the workload counted twice, and each of its `kills` in the table, linked to its record
/// and its post-mortem.
fn assert_dashboard_shows_kills(dir: &std::path::Path, addr: &str, kills: &[serde_json::Value]) {
    let prometheus = Prometheus::start(dir, addr);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/leak.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panel = |title: &str| {
        dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap()
            .clone()
    };
    let query = |p: &serde_json::Value| {
        p["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .replace("$namespace", ".*")
            .replace("$workload", ".*")
    };
    let counted = prometheus.query_until(&query(&panel("OOM kills per workload")), |r| {
        r.iter().any(|s| s["metric"]["workload"] == "shop-api" && s["value"][1] == "2")
    });
    assert_eq!(counted.len(), 1, "{counted:#?}");
    let table = panel("OOM kills");
    let rows = prometheus.query_until(&query(&table), |r| r.len() == kills.len());
    for k in kills {
        let id = k["id"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r["metric"]["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {rows:#?}"));
        let instance = row["metric"]["instance"].as_str().unwrap();
        for (column, value, expected) in [
            ("id", id, "{"),
            ("report", row["metric"]["report"].as_str().unwrap(), "<!DOCTYPE html>"),
        ] {
            let links = table["fieldConfig"]["overrides"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|o| o["matcher"]["options"] == column)
                .flat_map(|o| o["properties"][0]["value"].as_array().unwrap().clone())
                .collect::<Vec<_>>();
            assert_eq!(links.len(), 2, "{column}");
            for link in links {
                let url = link["url"]
                    .as_str()
                    .unwrap()
                    .replace("${agent_url}", &format!("http://{addr}"))
                    .replace("${__data.fields.instance}", instance)
                    .replace("${__value.raw}", value);
                let path = &url[url.find(instance).unwrap() + instance.len()..];
                let (status, body) = http_get(instance, path);
                assert_eq!(status, 200, "{url}");
                assert!(body.starts_with(expected.as_bytes()), "{url}");
            }
        }
    }
}
