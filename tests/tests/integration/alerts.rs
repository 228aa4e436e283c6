//! `deploy/prometheus/`: the alerting rules pass `promtool check rules`, and `promtool test
//! rules` runs their cases (`leak-rules.test.yaml`: a workload leaking on 3 pods on 2 nodes
//! fires the leak alert with that scope in its annotation, a cache that levels off does not,
//! the 70/85/95% limit steps fire in order); the Prometheus Operator's `PrometheusRule` holds
//! the same groups; the `ServiceMonitor` scrapes the agents' Service keeping their labels.
//! `alertmanager.yaml`'s inhibit rules, loaded into a real Alertmanager, leave only the
//! highest of the limit steps. promtool is Debian's `prometheus` package and Alertmanager
//! `prometheus-alertmanager` (`cargo xtask test` installs both).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/prometheus")
}

/// `name ARGS` in `dir`: its output, asserted successful.
fn tool(name: &str, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {name} (cargo xtask test installs it): {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} {args:?}: {text}");
    text
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_rules_pass_promtools_checks_and_cases() {
    let dir = rules_dir();
    let checked = tool("promtool", &dir, &["check", "rules", "leak-rules.yaml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = tool("promtool", &dir, &["test", "rules", "leak-rules.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn the_prometheus_rule_holds_the_same_groups() {
    let dir = rules_dir();
    let plain = yaml(&dir.join("leak-rules.yaml"));
    let operator = yaml(&dir.join("prometheusrule.yaml"));
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(operator["spec"]["groups"], plain["groups"]);
    // And promtool reads them as rules.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("spec.json");
    std::fs::write(&file, serde_json::to_vec(&operator["spec"]).unwrap()).unwrap();
    let checked = tool("promtool", tmp.path(), &["check", "rules", "spec.json"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
}

#[test]
fn the_service_monitor_scrapes_the_agents_service_keeping_its_labels() {
    let monitor = yaml(&rules_dir().join("servicemonitor.yaml"));
    let service = yaml(&rules_dir().join("../service.yaml"));
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]);
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        service["metadata"]["namespace"]
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    // The agent's namespace/pod/container labels name the watched pods, not the agent: the
    // target's own are dropped before the scrape, and the agent's win over any other.
    assert_eq!(endpoint["honorLabels"], true);
    let drop = &endpoint["relabelings"][0];
    assert_eq!(drop["action"], "labeldrop");
    let names: Vec<&str> = drop["regex"].as_str().unwrap().split('|').collect();
    assert_eq!(names, ["namespace", "pod", "container"]);
}

/// Debian's Alertmanager with `alertmanager.yaml` on a free loopback port (killed on drop).
struct Alertmanager {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", rules_dir().join("alertmanager.yaml").display()))
            .arg(format!("--storage.path={}", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            // No cluster: a lone instance.
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus-alertmanager (cargo xtask test installs it)");
        let am = Self { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while Command::new("amtool")
            .args(["alert", "query", "--alertmanager.url", &am.url])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            assert!(std::time::Instant::now() < deadline, "alertmanager did not start");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        am
    }

    fn amtool(&self, args: &[&str]) -> String {
        let out = Command::new("amtool")
            .args(args)
            .args(["--alertmanager.url", &self.url])
            .output()
            .expect("amtool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "amtool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        text
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn alertmanager_sends_only_the_highest_limit_step() {
    let dir = rules_dir();
    let checked = tool("amtool", &dir, &["check-config", "alertmanager.yaml"]);
    assert!(checked.contains("2 inhibit rules"), "{checked}");
    let am = Alertmanager::start();
    let pod = ["namespace=shop", "pod=db-0", "container=db"];
    // Another pod at 70%: not inhibited by db-0's critical.
    am.amtool(&[
        "alert",
        "add",
        "alertname=LeakMemoryNearLimit",
        "severity=info",
        "namespace=shop",
        "pod=web-1",
        "container=web",
    ]);
    for severity in ["info", "warning", "critical"] {
        let mut args = vec!["alert", "add", "alertname=LeakMemoryNearLimit"];
        let label = format!("severity={severity}");
        args.push(&label);
        args.extend(pod);
        am.amtool(&args);
    }
    // Inhibition is worked out as alerts arrive: ask until it settles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let active: serde_json::Value =
            serde_json::from_str(&am.amtool(&["alert", "query", "-o", "json"])).unwrap();
        let mut sent: Vec<String> = active
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a["labels"]["pod"].as_str().unwrap(),
                    a["labels"]["severity"].as_str().unwrap()
                )
            })
            .collect();
        sent.sort();
        if sent == ["db-0 critical", "web-1 info"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not inhibited: {sent:?}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
