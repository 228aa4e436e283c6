//! The image (`cargo xtask image`, from `deploy/Dockerfile`) runs the agent as
//! `deploy/daemonset.yaml` says (#16): the manifest itself is read and its security context,
//! host pid namespace, volumes, environment and arguments become `podman run` options.
//! Inside, the agent runs its start-up check (in the container's log), finds a leaking
//! process that runs on the host in a kubelet-style pod cgroup, traces it, and serves its
//! report and metrics, read from the host. Then, short of one capability at a time, it names
//! the one it lacks in one line.
//!
//! Substitutions, and only these: the reports' host directory is a temporary one, the
//! sampling and tracing times are shortened, and the port is published on loopback.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use leak_tests::{Fixture, fixture, require_root, systemd_pod_cgroup};

/// The image `cargo xtask test` builds (`cargo xtask image`).
const IMAGE: &str = "localhost/leak:dev";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The agent container of `deploy/daemonset.yaml`, and its pod's `hostPID`, `volumes`.
fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(workspace().join("deploy/daemonset.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("deploy/daemonset.yaml parses")
}

/// `podman` as this machine runs it (see `xtask/src/image.rs`).
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc"]);
    c
}

/// The `podman run` options that say what the manifest says, the reports' host path
/// replaced by `reports`, without the capabilities in `without`.
fn run_options(
    m: &serde_json::Value,
    reports: &Path,
    without: Option<&str>,
    root: bool,
) -> Vec<String> {
    let pod = &m["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let mut o: Vec<String> =
        ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"].map(str::to_owned).to_vec();
    if pod["hostPID"] == true {
        o.push("--pid=host".into());
    }
    if let Some(uid) = sc["runAsUser"].as_u64().filter(|_| root) {
        o.push(format!("--user={uid}"));
    }
    if sc["allowPrivilegeEscalation"] == false {
        o.push("--security-opt=no-new-privileges".into());
    }
    if sc["readOnlyRootFilesystem"] == true {
        o.push("--read-only".into());
    }
    for cap in sc["capabilities"]["drop"].as_array().unwrap() {
        o.push(format!("--cap-drop={}", cap.as_str().unwrap()));
    }
    for cap in sc["capabilities"]["add"].as_array().unwrap() {
        let cap = cap.as_str().unwrap();
        if Some(cap) != without {
            o.push(format!("--cap-add={cap}"));
        }
    }
    if sc["seccompProfile"]["type"] == "Unconfined" {
        o.push("--security-opt=seccomp=unconfined".into());
    }
    if sc["appArmorProfile"]["type"] == "Unconfined" {
        o.push("--security-opt=apparmor=unconfined".into());
    }
    for mount in c["volumeMounts"].as_array().unwrap() {
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("a volume for each mount");
        let host = volume["hostPath"]["path"].as_str().expect("hostPath volumes");
        let host = if host == "/var/lib/leak" { reports.to_str().unwrap() } else { host };
        let ro = if mount["readOnly"] == true { ":ro" } else { "" };
        o.push(format!("--volume={host}:{}{ro}", mount["mountPath"].as_str().unwrap()));
    }
    for env in c["env"].as_array().unwrap() {
        // The downward API's node name.
        let value = env["value"].as_str().unwrap_or("test-node");
        o.push(format!("--env={}={value}", env["name"].as_str().unwrap()));
    }
    for port in c["ports"].as_array().unwrap() {
        o.push(format!("--publish=127.0.0.1::{}", port["containerPort"]));
    }
    o
}

/// The container's arguments: the manifest's, with shorter sampling and tracing times.
fn agent_args(m: &serde_json::Value, extra: &[&str]) -> Vec<String> {
    let c = &m["spec"]["template"]["spec"]["containers"][0];
    let mut args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_str().unwrap();
            match a.split_once('=') {
                Some(("--sample-interval", _)) => "--sample-interval=250ms".into(),
                Some(("--trace-for", _)) => "--trace-for=2s".into(),
                _ => a.to_owned(),
            }
        })
        .collect();
    args.extend(["--min-growth=64K".to_owned(), "--interval=1h".to_owned()]);
    args.extend(extra.iter().map(|&a| a.to_owned()));
    args
}

/// Fails (never skips) when podman cannot run the image here, saying why in one line.
fn require_image() {
    let out = podman().args(["image", "exists", IMAGE]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(_) => panic!("no image {IMAGE}: `cargo xtask test` builds it (`cargo xtask image`)"),
        Err(e) => panic!("podman cannot start ({e}): `cargo xtask setup` installs it"),
    }
}

fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

/// A container that is removed on drop.
struct Container(String);

impl Container {
    fn logs(&self) -> String {
        let out = podman().args(["logs", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The host address its port `port` is published on.
    fn address(&self, port: u16) -> String {
        let out = podman().args(["port", &self.0, &format!("{port}/tcp")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Container {
    /// The host address of the agent's port (`m`'s), once it answers `/healthz`.
    fn serving(&self, m: &serde_json::Value) -> String {
        let port = m["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap();
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            let a = self.address(port);
            if !a.is_empty() && get(&a, "/healthz").is_some_and(|r| r.0 == 200) {
                return a;
            }
            assert!(Instant::now() < deadline, "the agent never served: {}", self.logs());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman().args(["rm", "-f", "-t", "5", &self.0]).output();
    }
}

/// Starts the agent's container: as the manifest says (`root`: its `runAsUser`, else the
/// image's own user), short of capability `without`, with `extra` arguments.
fn start(
    m: &serde_json::Value,
    reports: &Path,
    without: Option<&str>,
    root: bool,
    extra: &[&str],
) -> Container {
    let name = format!(
        "leak-test-{}-{}-{}",
        std::process::id(),
        without.unwrap_or("all"),
        if root { "root" } else { "user" }
    );
    let _ = podman().args(["rm", "-f", &name]).output();
    let out: Output = podman()
        .args(["run", "--detach", "--name", &name])
        .args(run_options(m, reports, without, root))
        .arg(IMAGE)
        .args(agent_args(m, extra))
        .output()
        .unwrap();
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    Container(name)
}

#[test]
fn the_image_runs_the_agent_as_the_daemonset_says() {
    traces_a_leaking_pod(true);
}

/// The image's own user (not root) with the manifest's capabilities: podman grants them as
/// ambient capabilities, and that is enough on this kernel.
#[test]
fn the_image_traces_as_its_own_user_with_the_capabilities() {
    traces_a_leaking_pod(false);
}

fn traces_a_leaking_pod(root: bool) {
    require_root();
    require_image();
    let m = manifest();
    let (cgroup, uid, _cid) = systemd_pod_cgroup();
    let target = Fixture::start_command({
        let mut c = Command::new(fixture("cacher"));
        c.args(["1000000", "2"]);
        c
    });
    cgroup.add(target.pid());
    let reports = tempfile::tempdir().unwrap();
    // Writable by the image's user too.
    std::fs::set_permissions(reports.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let agent = start(&m, reports.path(), None, root, &[]);
    let addr = agent.serving(&m);
    let deadline = Instant::now() + Duration::from_mins(2);
    // The start-up check is in the container's log.
    let logs = agent.logs();
    assert!(logs.contains("programs, --unwind auto"), "{logs}");
    // The leaking process on the host is found in its pod, traced, and its report served.
    let id = loop {
        let list = get(&addr, "/api/v1/reports").map(|r| r.1).unwrap_or_default();
        let list: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
        let done = list.as_array().and_then(|l| {
            l.iter().find(|r| {
                r["pid"] == target.pid() && r["status"] == "done" && r["pod"]["pod_uid"] == uid
            })
        });
        if let Some(r) = done {
            break r["id"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no report of {}: {list:#}\n{}",
            target.pid(),
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (status, body) = get(&addr, &format!("/api/v1/reports/{id}")).unwrap();
    assert_eq!(status, 200);
    let report: leak_tests::Report = serde_json::from_str(&body).unwrap();
    // The image's agent escalates to a growth profile (its default): perf events and
    // pagemap work from the container.
    let _ = leak_tests::growth_site(&report, "leak_fn");
    let (_, metrics) = get(&addr, "/metrics").unwrap();
    assert!(metrics.contains(&format!("pid=\"{}\"", target.pid())), "{metrics}");
    assert!(metrics.contains("leak_site_outstanding_bytes{"), "{metrics}");
    // The report is on the host, in the volume.
    assert!(reports.path().join(format!("{id}.json")).exists());
}

/// Short of one of the manifest's capabilities at a time, the agent in the image names the
/// one it lacks in one line (see `tests/tests/integration/deploy.rs` for which it can do without).
#[test]
fn the_agent_in_the_image_names_each_capability_it_lacks() {
    require_root();
    require_image();
    let m = manifest();
    let reports = tempfile::tempdir().unwrap();
    let caps =
        m["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
            .as_array()
            .unwrap()
            .clone();
    for cap in caps {
        let cap = cap.as_str().unwrap();
        let c = start(&m, reports.path(), Some(cap), true, &["--duration=2s"]);
        let out = podman().args(["wait", &c.0]).output().unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let logs = c.logs();
        let named: Vec<&str> =
            logs.lines().filter(|l| l.contains(&format!("lacks CAP_{cap}"))).collect();
        match cap {
            "SYS_ADMIN" | "SYS_PTRACE" => {
                assert_ne!(code, "0", "without {cap}: {logs}");
                assert_eq!(named.len(), 1, "without {cap}: {logs}");
            }
            "DAC_READ_SEARCH" => assert_eq!((code.as_str(), named.len()), ("0", 1), "{logs}"),
            // Covered by SYS_ADMIN, or (SYS_RESOURCE) needed before 5.11 only.
            _ => assert_eq!((code.as_str(), named.len()), ("0", 0), "without {cap}: {logs}"),
        }
    }
}

/// The image is one manifest list for amd64 and arm64 (#27), and the `DaemonSet` names it
/// once: each node's runtime picks the image of its architecture, as podman does here. The
/// arm64 image runs here under qemu-user-static (`cargo xtask image` registers it): its
/// agent starts as the `DaemonSet` runs it, but with `--no-trace`, since the emulator passes
/// no BPF system call, and answers `/healthz` and `/metrics`.
#[test]
fn the_image_is_multi_arch_and_its_arm64_agent_serves() {
    require_root();
    require_image();
    let list = podman().args(["manifest", "inspect", IMAGE]).output().unwrap();
    assert!(list.status.success(), "{IMAGE} is no manifest list: `cargo xtask image` makes it");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let mut arches: Vec<&str> = list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    arches.sort_unstable();
    assert_eq!(arches, ["amd64", "arm64"], "{list:#}");
    let text = std::fs::read_to_string(workspace().join("deploy/daemonset.yaml")).unwrap();
    assert!(!text.contains("amd64") && !text.contains("arm64"), "nothing per architecture");
    // Podman picks the list's arm64 image when asked for that architecture.
    let uname = podman()
        .args(["run", "--rm", "--arch", "arm64", "--entrypoint", "uname"])
        .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"])
        .args([IMAGE, "-m"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&uname.stdout).trim(), "aarch64", "{uname:?}");

    let m = manifest();
    let reports = tempfile::tempdir().unwrap();
    let name = format!("leak-test-{}-arm64", std::process::id());
    let _ = podman().args(["rm", "-f", &name]).output();
    let args: Vec<String> = agent_args(&m, &["--no-trace"])
        .into_iter()
        .filter(|a| !a.starts_with("--trace-for"))
        .collect();
    let out = podman()
        .args(["run", "--detach", "--arch", "arm64", "--name", &name])
        .args(run_options(&m, reports.path(), None, true))
        .arg(IMAGE)
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "podman run: {}", String::from_utf8_lossy(&out.stderr));
    let agent = Container(name);
    let addr = agent.serving(&m);
    let (status, metrics) = get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("leak_"), "{metrics}");
    let logs = agent.logs();
    assert!(logs.contains("--no-trace: processes are judged"), "{logs}");
}
