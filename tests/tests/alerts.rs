//! `deploy/prometheus/`: the alerting rules pass `promtool check rules`, and `promtool test
//! rules` runs their cases (`leak-rules.test.yaml`: a workload leaking on 3 pods on 2 nodes
//! fires the leak alert with that scope in its annotation, a cache that levels off does not,
//! the 70/85/95% limit steps fire in order); the Prometheus Operator's `PrometheusRule` holds
//! the same groups; the `ServiceMonitor` scrapes the agents' Service keeping their labels.
//! promtool is Debian's `prometheus` package (`cargo xtask test` installs it).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/prometheus")
}

/// `promtool ARGS` in `dir`: its output, asserted successful.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool (cargo xtask test installs Debian's prometheus package)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}: {text}");
    text
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_rules_pass_promtools_checks_and_cases() {
    let dir = rules_dir();
    let checked = promtool(&dir, &["check", "rules", "leak-rules.yaml"]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "leak-rules.test.yaml"]);
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
    let checked = promtool(tmp.path(), &["check", "rules", "spec.json"]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
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
    // The agent's namespace/pod/container labels name the watched pods, not the agent.
    assert_eq!(endpoint["honorLabels"], true);
}
