//! `leak agent` on this machine as on a node: a leaking fixture in a kubelet-style pod cgroup
//! is found, judged, traced, and its report, flame graph, pprof profile and metrics are
//! served over HTTP. A real Prometheus (Debian's) scrapes the metrics and gives the leak
//! back through its query API; Go's pprof reads the profile; SIGTERM ends the agent cleanly.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use leak_tests::{
    FakeKubeApi, Fixture, Leak, PodCgroup, Prometheus, agent_in_pod, fixture, go_pprof_samples,
    http_get, http_get_text, require_root, serving_addr, systemd_pod_cgroup,
};

/// A leaking `cacher` in a kubelet-style pod cgroup and, as in a container, in its own mount
/// namespace on a tmpfs root that the host cannot see (its files are reached through
/// `/proc/PID/map_files`). `root` must outlive it.
fn start_container(cgroup: &PodCgroup, root: &Path) -> Fixture {
    let r = root.to_str().unwrap();
    let libc = "/lib/x86_64-linux-gnu/libc.so.6";
    let ld = "/lib64/ld-linux-x86-64.so.2";
    // The shell execs all the way: the fixture keeps the spawned pid.
    let script = format!(
        "mount -t tmpfs none {r} && mkdir -p {r}/lib/x86_64-linux-gnu {r}/lib64 && \
         cp {cacher} {r}/cacher && cp {libc} {r}{libc} && cp {ld} {r}{ld} && \
         exec chroot {r} /cacher 1000000 2",
        cacher = fixture("cacher").display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let target = Fixture::start_command(cmd);
    cgroup.add(target.pid());
    assert_eq!(std::fs::read_dir(root).unwrap().count(), 0, "the host sees an empty root");
    target
}

/// A container of [`start_container`], and an API that names its pod shop/shop-api-1 and its
/// container api: (cgroup, pod UID, container id, process, API, its root directory).
fn leaking_pod() -> (PodCgroup, String, String, Fixture, FakeKubeApi, tempfile::TempDir) {
    let (cgroup, uid, cid) = systemd_pod_cgroup();
    let root = tempfile::tempdir().unwrap();
    cgroup.limit_memory(LIMIT);
    let target = start_container(&cgroup, root.path());
    let api = FakeKubeApi::start(&uid, "shop", "shop-api-1", "api", &cid);
    (cgroup, uid, cid, target, api, root)
}

/// The container's memory cgroup, as served in `metrics` (fetched again until then): leaking,
/// with memory charged to it.
fn assert_container_leaks(addr: &str, metrics: String, uid: &str, cid: &str) {
    // Its container's memory cgroup: leaking too, with the memory charged to it. The
    // kernel folds per-CPU counts into memory.stat in batches (64 pages a CPU), so the
    // series climbs in steps: wait for enough of them.
    let container = format!(
        "pod_uid=\"{uid}\",container_id=\"{cid}\",namespace=\"shop\",pod=\"shop-api-1\",\
         container=\"api\",workload_kind=\"Deployment\",workload=\"shop-api\",node=\"test-node\""
    );
    let leaking = format!("leak_container_verdict{{{container},verdict=\"leak\"}} 1\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut metrics = metrics;
    while !metrics.contains(&leaking) {
        assert!(Instant::now() < deadline, "{leaking}\n{metrics}");
        std::thread::sleep(Duration::from_millis(250));
        metrics = http_get_text(addr, "/metrics");
    }
    let anon_line = format!("leak_container_memory_bytes{{{container},kind=\"anon\"}} ");
    let anon: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&anon_line))
        .unwrap_or_else(|| panic!("{anon_line}\n{metrics}"))
        .parse()
        .unwrap();
    // Pages are charged where they are faulted in: what the leak touched since the move.
    assert!(anon > 0.0, "{anon}");
    // Against its limit (leaking_pod's): usage, and the time left at this rate.
    let value = |family: &str| -> f64 {
        let line = format!("{family}{{{container}}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line}\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("leak_container_memory_limit_bytes").to_string(), LIMIT.to_string());
    let ratio = value("leak_container_memory_limit_ratio");
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    assert!(value("leak_container_time_to_limit_seconds") > 0.0);
    assert!(
        value("leak_container_gained_bytes") > 0.0 && value("leak_container_window_seconds") > 0.0
    );
}

/// The leaking pod's container's memory limit.
const LIMIT: u64 = 1 << 30;

/// The node's page (`/`): the leaking process `pid` charted under its pod's name, linked to
/// its trace `id`.
fn check_node_page(addr: &str, pid: u32, id: &str) {
    let node = http_get_text(addr, "/");
    assert!(node.contains("<h1>leak agent on node test-node: "), "{node}");
    let process = node
        .split(&format!("id=\"pid-{pid}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("the traced process on the node's page: {node}"));
    let process = &process[..process.find("</div>\n").unwrap()];
    assert!(process.contains("badge leak") && process.contains("pod shop/shop-api-1"), "{node}");
    assert!(process.contains("<div class=\"chart\"><svg"), "{process}");
    let link = format!("href=\"api/v1/reports/{id}/report.html\"");
    assert!(process.contains(&link) && node.contains("<table id=\"traces\">"), "{process}");
}

/// A report entry's pod, named through the (fake) API: names, and the workload above it.
fn assert_named(r: &serde_json::Value, cid: &str) {
    assert_eq!(r["pod"]["container_id"], cid);
    assert_eq!(r["pod"]["namespace"], "shop", "{r:#}");
    assert_eq!(r["pod"]["name"], "shop-api-1", "{r:#}");
    assert_eq!(r["pod"]["container_name"], "api", "{r:#}");
    // Its workload: the Deployment above its ReplicaSet, read through the API.
    assert_eq!(r["pod"]["workload_kind"], "Deployment", "{r:#}");
    assert_eq!(r["pod"]["workload"], "shop-api", "{r:#}");
    assert_eq!(r["pod"]["node"], "test-node", "{r:#}");
}

#[test]
fn agent_finds_traces_and_serves_a_leaking_pod() {
    require_root();
    let (cgroup, uid, cid, target, api, root) = leaking_pod();
    let dir = tempfile::tempdir().unwrap();
    let (agent, addr, _agent_cgroup) =
        agent_in_pod(&api, &dir.path().join("reports"), &["--trace-for", "2s"]);
    assert_eq!(http_get_text(&addr, "/healthz"), "ok\n");

    // The fixture is judged a leak after a few samples, then traced for 2 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let list: serde_json::Value =
            serde_json::from_str(&http_get_text(&addr, "/api/v1/reports")).unwrap();
        let done = list.as_array().unwrap().iter().find(|r| {
            r["pid"] == target.pid() && r["status"] == "done" && r["pod"]["pod_uid"] == uid
        });
        if let Some(r) = done {
            assert_named(r, &cid);
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no finished report: {list:#}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let report: leak_tests::Report =
        serde_json::from_str(&http_get_text(&addr, &format!("/api/v1/reports/{id}"))).unwrap();
    assert_eq!(report.target.pid, target.pid());
    // Escalated to a growth profile by default: the leak's pages, by the stack that touched
    // them (malloc's header and the fixture's memset: one site per line of leak_fn).
    let leak = leak_tests::growth_site(&report, "leak_fn");
    let svg = http_get_text(&addr, &format!("/api/v1/reports/{id}/flamegraph.svg"));
    // The page to look at, self-contained: the site's chart, its stack, the flame graphs.
    let html = http_get_text(&addr, &format!("/api/v1/reports/{id}/report.html"));
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("leak_fn"), "{html}");
    assert!(html.contains("class=\"chart site-chart\"><svg") && html.contains("<iframe"));
    assert!(svg.contains("leak_fn"));
    check_node_page(&addr, target.pid(), &id);
    let (status, profile) = http_get(&addr, &format!("/api/v1/reports/{id}/profile.pb.gz"));
    assert_eq!(status, 200);
    let profile_path = dir.path().join("profile.pb.gz");
    std::fs::write(&profile_path, &profile).unwrap();
    let samples = go_pprof_samples(&profile_path, dir.path());
    // Its sites at leak_fn, summed: one function to pprof.
    let leak_fn = report
        .sites
        .iter()
        .filter(|s| leak_tests::frame0(s) == Some("leak_fn"))
        .fold((0, 0), |(n, b), s| (n + s.outstanding_allocs, b + s.outstanding_bytes));
    assert_eq!(samples["leak_fn"], leak_fn, "go tool pprof reads the served profile: {samples:#?}");
    assert_eq!(http_get(&addr, "/api/v1/reports/nope").0, 404);

    // Metrics: the process's verdict with its pod, the traced site, the agent's own cost.
    let metrics = http_get_text(&addr, "/metrics");
    let process = format!(
        "pid=\"{}\",comm=\"cacher\",pod_uid=\"{uid}\",container_id=\"{cid}\",\
         namespace=\"shop\",pod=\"shop-api-1\",container=\"api\",workload_kind=\"Deployment\",\
         workload=\"shop-api\",node=\"test-node\"",
        target.pid()
    );
    assert!(
        metrics.contains(&format!("leak_process_verdict{{{process},verdict=\"leak\"}} 1\n")),
        "{metrics}"
    );
    let site_line = format!(
        "leak_site_outstanding_bytes{{{process},site=\"{}\",function=\"leak_fn\"}} {}\n",
        leak.id, leak.outstanding_bytes
    );
    assert!(metrics.contains(&site_line), "{site_line}\n{metrics}");
    assert!(metrics.contains("\nleak_agent_cpu_seconds_total "), "{metrics}");
    assert!(metrics.contains("# TYPE leak_drops_total counter\n"), "{metrics}");
    assert_container_leaks(&addr, metrics, &uid, &cid);

    // Prometheus scrapes the agent and answers a query for the traced site.
    let prometheus = Prometheus::start(dir.path(), &addr);
    let query = format!(
        "leak_site_outstanding_bytes{{function=\"leak_fn\",pid=\"{}\",site=\"{}\"}}",
        target.pid(),
        leak.id
    );
    let result = prometheus.query_until(&query, |r| !r.is_empty());
    assert_eq!(result[0]["metric"]["pod_uid"], uid.as_str(), "{result:#?}");
    assert_eq!(result[0]["value"][1], leak.outstanding_bytes.to_string(), "{result:#?}");
    assert_leak_verdict(&prometheus, target.pid(), &cid);
    assert_dashboard_queries(&prometheus);
    drop(prometheus);

    // The container restarts: its process exits and a new one starts in the same pod.
    let target = restart_is_traced(&addr, &cgroup, root.path(), target, &id);

    // SIGTERM: the agent ends by itself, successfully.
    let done = agent.terminate();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    drop(target);
    assert_nothing_left();
}

/// Prometheus has the process's leak verdict, labelled with its container.
fn assert_leak_verdict(prometheus: &Prometheus, pid: u32, cid: &str) {
    // Label values are strings.
    let pid = pid.to_string();
    let verdicts = prometheus.query_until("leak_process_verdict{verdict=\"leak\"} == 1", |r| {
        r.iter().any(|s| s["metric"]["pid"].as_str() == Some(pid.as_str()))
    });
    // (Other tests' pods may leak on this host meanwhile: only this process's series count.)
    let mine = verdicts.iter().filter(|s| s["metric"]["pid"].as_str() == Some(pid.as_str()));
    assert!(
        mine.clone().count() > 0 && mine.into_iter().all(|s| s["metric"]["container_id"] == cid),
        "{verdicts:#?}"
    );
}

/// Every query of the Grafana dashboard (`deploy/grafana/leak.json`), its variables set to
/// "All", returns data from this Prometheus, which scrapes the agent: each panel has
/// something to show for the leaking pod.
fn assert_dashboard_queries(prometheus: &Prometheus) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/leak.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let all = |q: &str| q.replace("$namespace", ".*").replace("$workload", ".*");
    let mut queries: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        // Empty until a process is OOM-killed: the `oom` tests query them after their kills.
        if panel["title"].as_str().unwrap().starts_with("OOM kills") {
            continue;
        }
        for t in panel["targets"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap().to_owned();
            queries.push((title, all(t["expr"].as_str().unwrap())));
        }
    }
    // Variables: Grafana's label_values(METRIC, LABEL) asks for the label's values.
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["query"]["query"].as_str() else { continue };
        let (metric, label) = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(", "))
            .unwrap_or_else(|| panic!("a label_values query: {q}"));
        queries.push((format!("${}", v["name"]), format!("group by ({label}) ({})", all(metric))));
    }
    assert!(queries.len() >= 12, "{queries:#?}");
    for (title, q) in &queries {
        let result = prometheus.query_until(q, |r| !r.is_empty());
        assert!(!result.is_empty(), "{title}: {q}");
    }
    // The workload's name reached Prometheus: the variable's values include it.
    let workloads = prometheus.query_until("group by (workload) (leak_container_verdict)", |r| {
        r.iter().any(|s| s["metric"]["workload"] == "shop-api")
    });
    assert!(!workloads.is_empty());
    // Its workload is counted under `leak` (its worst verdict), once.
    let leak = queries.iter().find(|(t, q)| t == "Workloads by verdict" && q.contains("== 4"));
    let counted = prometheus.query_until(&leak.unwrap().1, |r| !r.is_empty());
    let n: f64 = counted[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{counted:#?}");
    follow_trace_links(prometheus, &dashboard);
}

/// The Traces table's links, filled in as Grafana does from a `leak_trace_info` row (the
/// agent URL set to the agent's address here), each answer 200 with what it names.
fn follow_trace_links(prometheus: &Prometheus, dashboard: &serde_json::Value) {
    let row = prometheus.query_until("leak_trace_info{status=\"done\"}", |r| !r.is_empty());
    let (id, instance) = (&row[0]["metric"]["id"], &row[0]["metric"]["instance"]);
    let (id, instance) = (id.as_str().unwrap(), instance.as_str().unwrap());
    let traces = dashboard["panels"].as_array().unwrap().iter().find(|p| p["title"] == "Traces");
    let links: Vec<&str> = traces.unwrap()["fieldConfig"]["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|o| o["properties"].as_array().unwrap())
        .filter(|p| p["id"] == "links")
        .flat_map(|p| p["value"].as_array().unwrap())
        .map(|l| l["url"].as_str().unwrap())
        .collect();
    assert!(links.len() >= 5, "{links:?}");
    for link in links {
        let url = link
            .replace("${agent_url}", &format!("http://{instance}"))
            .replace("${__data.fields.instance}", instance)
            .replace("${__value.raw}", id);
        assert!(!url.contains("${"), "a variable the test does not know: {link}");
        let path = &url[url.find(instance).unwrap() + instance.len()..];
        let (status, body) = http_get(instance, path);
        assert_eq!(status, 200, "{link} -> {path}");
        let expected: &[u8] = match path.rsplit('/').next().unwrap() {
            "flamegraph.svg" => b"<?xml",
            "profile.pb.gz" => b"\x1f\x8b",
            _ => b"<!DOCTYPE html>",
        };
        assert!(body.starts_with(expected), "{path}: {:?}", &body[..body.len().min(40)]);
    }
}

/// Waits for every leak process to end, then checks that none of leak's BPF programs is still
/// loaded (a program goes with its last probe and descriptor).
fn assert_nothing_left() {
    // The trace's probes are unregistered after it exits, by a background helper (see
    // `Tracer::release_in_background`): its programs are gone only once that has exited.
    let deadline = Instant::now() + Duration::from_mins(1);
    let running = || {
        let out = Command::new("pgrep").args(["-x", "leak"]).output();
        out.is_ok_and(|o| o.status.success())
    };
    while running() {
        assert!(Instant::now() < deadline, "leak processes left after a minute");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing of the trace is left in the kernel: none of leak's programs is loaded (a
    // program goes with its last probe and descriptor).
    let out = Command::new("bpftool").args(["-j", "prog", "show"]).output().unwrap();
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&serde_json::Value> = progs
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            leak_common::Program::ALL.iter().any(|ours| p["name"].as_str() == Some(ours.name()))
        })
        .collect();
    assert!(ours.is_empty(), "left loaded after SIGTERM: {ours:#?}");
}

#[test]
fn agent_watches_only_the_selected_pods() {
    require_root();
    let (_cgroup, _, _, target, api, _root) = leaking_pod();
    let pid_label = format!("pid=\"{}\"", target.pid());
    for (flags, watched) in [
        (&["--namespace", "other"][..], false),
        (&["--exclude-namespace", "sh*"], false),
        (&["--namespace", "sh*", "--container", "api", "--process", "cach?r"], true),
    ] {
        let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--sample-interval", "250ms"];
        // No growth is enough to trace: this test is about what is watched.
        args.extend(["--interval", "1h", "--min-growth", "1G"]);
        args.extend_from_slice(flags);
        let mut agent = Leak::spawn_env(&args, &api.env());
        let addr = serving_addr(&mut agent);
        // Long enough for the pod list and several samples.
        let deadline = Instant::now() + Duration::from_secs(4);
        let mut seen = false;
        while Instant::now() < deadline && !seen {
            std::thread::sleep(Duration::from_millis(250));
            seen = http_get_text(&addr, "/metrics").contains(&pid_label);
        }
        assert_eq!(seen, watched, "{flags:?}");
        let done = agent.terminate();
        assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
    }
    drop(target);
    assert_nothing_left();
}

/// Restarts the container of `target` (its process exits, a new one starts in the same pod)
/// and checks that the first report (`id`) is kept and the new process is traced in turn.
/// Returns the new process.
fn restart_is_traced(
    addr: &str,
    cgroup: &PodCgroup,
    root: &Path,
    target: Fixture,
    id: &str,
) -> Fixture {
    let first = target.pid();
    drop(target);
    let target = start_container(cgroup, root);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value =
            serde_json::from_str(&http_get_text(addr, "/api/v1/reports")).unwrap();
        let status = |pid: u32| {
            list.as_array().unwrap().iter().find(|r| r["pid"] == pid).map(|r| r["status"].clone())
        };
        assert_eq!(status(first), Some("done".into()), "the first report is kept: {list:#}");
        if status(target.pid()) == Some("done".into()) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted process was not traced: {list:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(http_get(addr, &format!("/api/v1/reports/{id}")).0, 200, "still served");
    target
}

/// A test CA and a server certificate for 127.0.0.1 it signed, made with openssl: (CA
/// certificate, server certificate, server key).
fn test_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=leak test CA"]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    openssl(&csr);
    std::fs::write(
        p("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
         keyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

/// `curl` of `url` with `args` (credentials, CA): the status, 0 when no HTTP answer came.
fn curl(url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// With exporter-toolkit's web config (TLS, a bcrypt user) and a bearer token, the agent
/// answers only over TLS, only with the right credentials (`/healthz` excepted), and a real
/// Prometheus scrapes it with the matching `scrape_config`.
#[test]
fn agent_api_needs_tls_and_credentials_when_configured() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // The key by a path relative to the web config, as exporter-toolkit reads them.
    let (ca, cert, _key) = test_pki(dir.path());
    let hash = bcrypt::hash("scrape-pass", 10).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: server.key\n\
             basic_auth_users:\n  prometheus: {hash}\n",
            cert.display()
        ),
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "in-cluster-t0ken\n").unwrap();
    let mut agent = Leak::spawn(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--sample-interval",
        "250ms",
        "--web-config",
        web.to_str().unwrap(),
        "--bearer-token-file",
        token.to_str().unwrap(),
        "--out-dir",
        dir.path().join("reports").to_str().unwrap(),
    ]);
    let line = agent.stderr.wait_for("the serving line", |l| l.contains("serving https://"));
    assert!(line.contains("credentials required"), "{line}");
    let addr = line.split("https://").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let url = |path: &str| format!("https://{addr}{path}");
    let ca_arg = ca.to_str().unwrap();
    let tls = ["--cacert", ca_arg];
    // No TLS: no HTTP answer at all.
    assert_eq!(curl(&format!("http://{addr}/metrics"), &[]).0, 0);
    // TLS without credentials, with wrong ones: 401.
    assert_eq!(curl(&url("/metrics"), &tls).0, 401);
    assert_eq!(curl(&url("/metrics"), &[&tls[..], &["-u", "prometheus:wrong"]].concat()).0, 401);
    assert_eq!(curl(&url("/metrics"), &[&tls[..], &["-u", "nobody:scrape-pass"]].concat()).0, 401);
    let bearer = ["-H", "Authorization: Bearer wrong"];
    assert_eq!(curl(&url("/api/v1/reports"), &[&tls[..], &bearer].concat()).0, 401);
    // The right ones: 200.
    let (status, metrics) =
        curl(&url("/metrics"), &[&tls[..], &["-u", "prometheus:scrape-pass"]].concat());
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("leak_agent_cpu_seconds_total"), "{metrics}");
    let bearer = ["-H", "Authorization: Bearer in-cluster-t0ken"];
    assert_eq!(curl(&url("/api/v1/reports"), &[&tls[..], &bearer].concat()).0, 200);
    // A certificate the client does not trust: refused by the client.
    assert_eq!(curl(&url("/healthz"), &[]).0, 0);
    // Liveness probes need none.
    assert_eq!(curl(&url("/healthz"), &tls).0, 200);

    // Prometheus with the matching scrape_config gets the agent's own metrics.
    let scrape = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {ca_arg}\n    basic_auth:\n      \
         username: prometheus\n      password: scrape-pass\n"
    );
    let prometheus = Prometheus::start_with(dir.path(), &addr, &scrape);
    let up = prometheus.query_until("up{job=\"leak\"} == 1", |r| !r.is_empty());
    assert_eq!(up.len(), 1, "{up:#?}");
    let cpu = prometheus.query_until("leak_agent_cpu_seconds_total", |r| !r.is_empty());
    assert_eq!(cpu[0]["metric"]["job"], "leak", "{cpu:#?}");
    drop(prometheus);
    let done = agent.terminate();
    assert_eq!(done.status.code(), Some(0), "{:#?}", done.stderr);
}
