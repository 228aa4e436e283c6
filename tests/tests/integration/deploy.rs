//! `deploy/`: the manifests validate against the Kubernetes schemas (offline, with the
//! `kubernetes-validate` package `cargo xtask test` installs), and the daemon set's capability
//! set is enough: leak, holding exactly those capabilities, traces another user's process;
//! and the agent, short of any one of them, names it in one line (or works without it).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use leak_tests::{Fixture, fixture, read_report, require_root};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let tool = workspace().join("target/tools/kubernetes-validate/bin/kubernetes-validate");
    assert!(tool.exists(), "{} (cargo xtask test installs it)", tool.display());
    let files = manifests();
    let names: Vec<String> =
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["daemonset.yaml", "networkpolicy.yaml", "rbac.yaml", "service.yaml"]);
    // The oldest version with the fields used (appArmorProfile: 1.30) and the newest known.
    for version in ["1.30", "1.37"] {
        let out = Command::new(&tool)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "Kubernetes {version}: {text}");
        assert_eq!(text.matches(" passed for resource ").count(), 7, "{text}");
    }
}

/// The capabilities the daemon set's container adds (its `add:` list).
fn daemonset_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("deploy/daemonset.yaml")).unwrap();
    let mut lines = text.lines().skip_while(|l| l.trim() != "add:").skip(1);
    let caps: Vec<String> =
        lines.by_ref().map_while(|l| l.trim().strip_prefix("- ").map(str::to_owned)).collect();
    assert!(!caps.is_empty(), "no capabilities in daemonset.yaml");
    caps
}

#[test]
fn the_daemonsets_capabilities_are_enough_to_trace_another_users_process() {
    require_root();
    let caps = daemonset_capabilities();
    assert!(!caps.iter().any(|c| c == "ALL"), "{caps:?}");
    // The leaker fixture as `nobody`, as a pod's process would be some other user.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(fixture("leaker"));
    let mut target = Fixture::start_command(cmd);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let bounding = format!(
        "-all,{}",
        caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect::<Vec<_>>().join(",")
    );
    let mut leak = Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .arg("--")
        .arg(leak_tests::leak_bin())
        .args(["attach", "--pid", &target.pid().to_string(), "--json"])
        .arg(&json)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = leak_tests::Lines::spawn(leak.stderr.take().unwrap());
    let line = stderr.wait_for("the attached line", |l| {
        l.starts_with("attached to PID") || l.starts_with("leak: ")
    });
    assert!(line.starts_with("attached to PID"), "with {bounding}: {line}");
    target.go_and_wait_done();
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(leak.id().cast_signed(), libc::SIGINT) };
    assert!(leak.wait().unwrap().success());
    let report = read_report(&json);
    leak_tests::assert_site(&report, "leak_malloc", (40_960, 10));
}

/// The agent with the daemon set's capabilities but one: it names the one it lacks in one
/// line and stops, or (`DAC_READ_SEARCH`) names it in a warning and serves; `BPF` and
/// `PERFMON` are covered by `SYS_ADMIN`, and `SYS_RESOURCE` is only needed where the kernel
/// charges BPF maps to `RLIMIT_MEMLOCK` (before 5.11).
#[test]
fn the_agent_names_each_capability_it_lacks() {
    require_root();
    let caps = daemonset_capabilities();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let old_memlock = (v.next().unwrap(), v.next().unwrap()) < (5, 11);
    let dir = tempfile::tempdir().unwrap();
    for missing in &caps {
        let rest: Vec<String> = caps
            .iter()
            .filter(|c| *c != missing)
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect();
        let out = Command::new("setpriv")
            .arg(format!("--bounding-set=-all,{}", rest.join(",")))
            .arg("--")
            .arg(leak_tests::leak_bin())
            .args(["agent", "--listen", "127.0.0.1:0", "--duration", "1s", "--out-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named: Vec<&str> =
            stderr.lines().filter(|l| l.contains(&format!("lacks CAP_{missing}"))).collect();
        match missing.as_str() {
            "SYS_ADMIN" | "SYS_PTRACE" => {
                assert!(!out.status.success(), "without {missing}: {stderr}");
                assert_eq!(named.len(), 1, "without {missing}: {stderr}");
                assert!(named[0].starts_with("leak: the agent lacks"), "{stderr}");
            }
            "SYS_RESOURCE" if old_memlock => {
                assert!(!out.status.success() && named.len() == 1, "{stderr}");
            }
            "DAC_READ_SEARCH" => {
                assert!(out.status.success(), "without {missing}: {stderr}");
                assert_eq!(named.len(), 1, "without {missing}: {stderr}");
            }
            _ => {
                assert!(out.status.success(), "without {missing}: {stderr}");
                assert!(named.is_empty() && stderr.contains("serving http://"), "{stderr}");
            }
        }
    }
}
