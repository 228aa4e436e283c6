//! The agent in a cluster of one: a stand-in Kubernetes API, the agent started in a pod
//! cgroup, and its HTTP API read.
use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Finished, Leak, PodCgroup, systemd_pod_cgroup_of, timeout};

/// A stand-in Kubernetes API server (`tests/support/fake_kube_api.py`) serving one pod: the
/// environment `leak agent` needs to reach it, and the process (killed on drop).
pub struct FakeKubeApi {
    child: Child,
    /// `KUBERNETES_SERVICE_HOST` and the rest, for [`Leak::spawn_env`].
    pub env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl FakeKubeApi {
    /// Serves a pod `namespace/name` with UID `uid` whose container `container` has id `cid`,
    /// on node `test-node`, to the bearer of a token it makes up; the pod is run by
    /// Deployment `name` less its last `-` part, through a `ReplicaSet`.
    #[must_use]
    pub fn start(uid: &str, namespace: &str, name: &str, container: &str, cid: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        // Self-signed for 127.0.0.1, not a CA: the agent trusts it as its cluster's CA bundle.
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-keyout", &p("key.pem"), "-out", &p("cert.pem")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl could not make a certificate");
        std::fs::write(p("token"), "test-token\n").unwrap();
        // The pod belongs to ReplicaSet NAME-5d8f7 (ends at the last '-') of Deployment NAME.
        let deployment = name.rsplit_once('-').map_or(name, |(d, _)| d);
        let pods = format!(
            r#"{{"kind":"PodList","items":[{{"metadata":{{"uid":"{uid}","name":"{name}","namespace":"{namespace}","ownerReferences":[{{"kind":"ReplicaSet","name":"{deployment}-5d8f7","controller":true}}]}},"spec":{{"nodeName":"test-node"}},"status":{{"containerStatuses":[{{"name":"{container}","containerID":"containerd://{cid}"}}]}}}}]}}"#
        );
        std::fs::write(p("pods.json"), pods).unwrap();
        let rs = dir.path().join(format!("apis/apps/v1/namespaces/{namespace}/replicasets"));
        std::fs::create_dir_all(&rs).unwrap();
        let owner = format!(
            r#"{{"kind":"ReplicaSet","metadata":{{"name":"{deployment}-5d8f7","ownerReferences":[{{"kind":"Deployment","name":"{deployment}","controller":true}}]}}}}"#
        );
        std::fs::write(rs.join(format!("{deployment}-5d8f7.json")), owner).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("support/fake_kube_api.py");
        let child = Command::new("python3")
            .arg(script)
            .args([p("cert.pem"), p("key.pem"), "test-token".into(), "test-node".into()])
            .args([dir.path().to_string_lossy().into_owned(), p("port")])
            .spawn()
            .expect("start the fake API server");
        let deadline = Instant::now() + timeout();
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(p("port")) {
                break port;
            }
            assert!(Instant::now() < deadline, "the fake API server did not start");
            thread::sleep(Duration::from_millis(50));
        };
        let env = [
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_owned()),
            ("KUBERNETES_SERVICE_PORT", port),
            ("LEAK_KUBE_TOKEN_FILE", p("token")),
            ("LEAK_KUBE_CA_FILE", p("cert.pem")),
            ("NODE_NAME", "test-node".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self { child, env, dir }
    }

    /// The Events posted to it so far, in order.
    #[must_use]
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an Event"))
            .collect()
    }

    /// The environment as [`Leak::spawn_env`] takes it.
    #[must_use]
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `leak agent` as the agent tests run it, against `api`: in a pod of its own, in its own
/// cgroup namespace (other pods' cgroup paths are relative to it there until it enters the
/// host's), on a free loopback port, sampling every 250 ms, judging growth from 64 KiB, its
/// reports in `reports`, with `extra` options. Returns it, the address it serves at, and its
/// pod's cgroup (to outlive it).
#[must_use]
pub fn agent_in_pod(
    api: &FakeKubeApi,
    reports: &Path,
    extra: &[&str],
) -> (Leak, String, PodCgroup) {
    let (cgroup, _, _) = systemd_pod_cgroup_of("besteffort");
    let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--sample-interval", "250ms"];
    args.extend(["--interval", "1h", "--min-growth", "64K"]);
    args.extend(["--out-dir", reports.to_str().expect("a UTF-8 path")]);
    args.extend_from_slice(extra);
    let mut agent = Leak::spawn_in_pod(&cgroup, &args, &api.env());
    let addr = serving_addr(&mut agent);
    (agent, addr, cgroup)
}

/// A finished `leak watch --json`'s report: its text, and parsed.
#[must_use]
pub fn watch_report(
    done: &Finished,
    json: &Path,
) -> (String, leak_user::fleet::report::WatchReport) {
    assert_eq!(done.status.code(), Some(0), "stderr: {:#?}", done.stderr);
    let text = std::fs::read_to_string(json).expect("the watch report");
    let report = serde_json::from_str(&text).expect("a watch report");
    (text, report)
}

/// `GET path` from the agent serving on `addr`: the status and the body.
#[must_use]
pub fn http_get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent");
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the response");
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, out[end + 4..].to_vec())
}

/// `GET path`'s body, which must come with status 200.
#[must_use]
pub fn http_get_text(addr: &str, path: &str) -> String {
    let (status, body) = http_get(addr, path);
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    String::from_utf8(body).expect("UTF-8")
}

/// The address a starting `leak agent` says it serves on.
pub fn serving_addr(agent: &mut Leak) -> String {
    let line = agent.stderr.wait_for("the serving line", |l| l.contains("serving http://"));
    line.split("http://").nth(1).and_then(|a| a.split('/').next()).expect("an address").to_owned()
}
