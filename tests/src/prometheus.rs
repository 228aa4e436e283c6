//! Debian's Prometheus, for the agent's tests: it scrapes the agent and answers the
//! dashboard's and the alerts' queries.
use std::{
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};

use crate::http_get;

/// Debian's Prometheus on a free loopback port, scraping `target` every second.
pub struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Prometheus {
    #[must_use]
    pub fn start(dir: &std::path::Path, target: &str) -> Self {
        Self::start_with(dir, target, "")
    }

    /// As [`Prometheus::start`], with `scrape` added to the job's `scrape_config` (indented
    /// by four spaces: TLS, credentials).
    #[must_use]
    pub fn start_with(dir: &std::path::Path, target: &str, scrape: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: leak\n{scrape}    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port: the kernel picks one, Prometheus takes it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start prometheus (cargo xtask test installs Debian's package)");
        let p = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&p.addr).is_err() || http_get(&p.addr, "/-/ready").0 != 200 {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// Runs the instant query `promql` until `done` accepts its result vector (30 s at most).
    #[must_use]
    pub fn query_until(
        &self,
        promql: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let encoded: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={encoded}"));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
            if status == 200 && done(&result) {
                return result;
            }
            assert!(Instant::now() < deadline, "{promql}: {status} {v:#}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
