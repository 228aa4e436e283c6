//! The in-cluster Kubernetes API: the pods of this node, for their names,
//! namespaces and container names (#6), and their controllers' owners, for the workload
//! (#18), read and kept fresh in the background ([`PodNames`]); and the Events that explain an
//! OOM kill, posted (#25). HTTPS with the service account's CA and token, one
//! request per refresh (and one per `ReplicaSet` or Job not seen before), on hyper's HTTP/1.1 client over tokio-rustls; bounded in time and in
//! the size of the answer (the API is reached over the network and may be slow, hostile or
//! broken). When the API is not reachable the agent goes on without names.
use std::{path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use hashbrown::HashMap;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::fleet::kube::{Owners, PodMeta, parse_pod_list};

/// Where the service account's credentials are mounted in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Time for the whole request, connection included: a slow API must not hold up the agent.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest pod list accepted: one node's pods take tens of KiB (110 pods by default, a
/// few KiB each); anything near this is not an answer to trust.
pub const MAX_BODY: usize = 32 << 20;

/// How to reach the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Bearer token file.
    pub token_file: PathBuf,
    /// CA bundle (PEM) the API server's certificate is checked against.
    pub ca_file: PathBuf,
    /// Only this node's pods (`spec.nodeName`), if known.
    pub node: Option<String>,
}

impl ApiConfig {
    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST` and `_PORT`, the service
    /// account's token and CA (`LEAK_KUBE_TOKEN_FILE` and `LEAK_KUBE_CA_FILE` override their
    /// paths), and `NODE_NAME` (set from the downward API in `deploy/daemonset.yaml`).
    /// `None` outside a cluster.
    #[must_use]
    pub fn in_cluster() -> Option<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT").and_then(|p| p.parse().ok()).unwrap_or(443);
        let file = |var: &str, name: &str| {
            env(var).map_or_else(|| PathBuf::from(SERVICE_ACCOUNT).join(name), PathBuf::from)
        };
        Some(Self {
            host,
            port,
            token_file: file("LEAK_KUBE_TOKEN_FILE", "token"),
            ca_file: file("LEAK_KUBE_CA_FILE", "ca.crt"),
            node: env("NODE_NAME"),
        })
    }
}

/// This node's pods by UID, each with its workload: a `ReplicaSet`'s or Job's owner is looked
/// up once (kept in `owners`; needs `get` on replicasets and jobs). A lookup that fails
/// leaves the pod named by its `ReplicaSet` or Job, and is logged.
///
/// # Errors
/// A one-line reason: credentials unreadable, connection or TLS failure, a timeout, an HTTP
/// error status, an answer over [`MAX_BODY`], or a body that is not a pod list.
pub fn fetch_pods(
    cfg: &ApiConfig,
    owners: &mut Owners,
) -> Result<HashMap<String, PodMeta>, String> {
    fetch_pods_within(cfg, owners, TIMEOUT)
}

/// [`fetch_pods`], giving up after `timeout` (the pod list), and after as much again (the
/// owners' lookups).
fn fetch_pods_within(
    cfg: &ApiConfig,
    owners: &mut Owners,
    timeout: Duration,
) -> Result<HashMap<String, PodMeta>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the API client: {e}"))?;
    let path = match &cfg.node {
        Some(node) => format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
        None => "/api/v1/pods".to_owned(),
    };
    let late = || format!("{}:{}: no answer within {timeout:?}", cfg.host, cfg.port);
    let body = rt
        .block_on(async { tokio::time::timeout(timeout, get(cfg, &path)).await })
        .map_err(|_| late())??;
    let mut pods = parse_pod_list(&body)?;
    let wanted = owners.wanted(&pods);
    if !wanted.is_empty() {
        let answers = rt.block_on(async {
            let mut answers = Vec::new();
            let all = async {
                for (key, path) in wanted {
                    let answer = get(cfg, &path).await;
                    answers.push((key, answer));
                }
            };
            let _ = tokio::time::timeout(timeout, all).await;
            answers
        });
        for (key, answer) in answers {
            let what = format!("{} {}/{}", key.1, key.0, key.2);
            if let Err(e) = owners.record(key, answer.as_deref().map_err(Clone::clone)) {
                log::warn!("cannot read {what}'s owner ({e}): its pods are named by it");
            }
        }
    }
    // Every refresh, not only those that looked an owner up: the pods of this answer are
    // named by their ReplicaSet or Job until applied.
    owners.apply(&mut pods);
    Ok(pods)
}

/// The TLS client configuration trusting the cluster's CA bundle.
fn tls_config(cfg: &ApiConfig) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&cfg.ca_file)
        .map_err(|e| format!("reading {}: {e}", cfg.ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", cfg.ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", cfg.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Posts the Event `body` to `namespace` (needs `create` on events), within [`TIMEOUT`].
///
/// # Errors
/// A one-line reason, as [`fetch_pods`]'s.
pub fn post_event(
    cfg: &ApiConfig,
    namespace: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the API client: {e}"))?;
    let path = format!("/api/v1/namespaces/{namespace}/events");
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    rt.block_on(async { tokio::time::timeout(TIMEOUT, request(cfg, "POST", &path, body)).await })
        .map_err(|_| format!("{}:{}: no answer within {TIMEOUT:?}", cfg.host, cfg.port))?
        .map(drop)
}

/// `GET path`: the body of a 200 answer.
async fn get(cfg: &ApiConfig, path: &str) -> Result<Bytes, String> {
    request(cfg, "GET", path, Vec::new()).await
}

/// `METHOD path` with `body` (JSON, if any): the body of a 200 or 201 answer.
async fn request(
    cfg: &ApiConfig,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, String> {
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| format!("reading {}: {e}", cfg.token_file.display()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(cfg)?));
    let name = ServerName::try_from(cfg.host.clone()).map_err(|e| format!("{}: {e}", cfg.host))?;
    let at = format!("{}:{}", cfg.host, cfg.port);
    let tcp = tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port))
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    let stream = tls.connect(name, tcp).await.map_err(|e| format!("{at}: TLS: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, cfg.host.as_str())
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| format!("{at}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("{at}: reading the answer: {e} (at most {MAX_BODY} bytes)"))?
        .to_bytes();
    if status != hyper::StatusCode::OK && status != hyper::StatusCode::CREATED {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(format!("the API answered {}: {}", status.as_u16(), text.trim()));
    }
    Ok(body)
}

/// This node's pods from the API by UID (their names, namespaces, containers and workloads),
/// refreshed in the background (see [`PodNames::start`]); empty outside a cluster.
#[derive(Clone, Default)]
pub struct PodNames(Arc<std::sync::Mutex<HashMap<String, PodMeta>>>);

impl PodNames {
    /// How often the pod list is fetched again.
    const REFRESH: Duration = Duration::from_secs(15);

    /// Starts fetching this node's pods every [`Self::REFRESH`], when running in a cluster.
    #[must_use]
    pub fn start() -> Self {
        let names = Self::default();
        let Some(api) = ApiConfig::in_cluster() else {
            log::info!("not in a Kubernetes cluster: pods are named by UID");
            return names;
        };
        let shared = names.clone();
        std::thread::spawn(move || {
            let mut failing = false;
            let mut owners = Owners::default();
            loop {
                match fetch_pods(&api, &mut owners) {
                    Ok(pods) => {
                        if failing {
                            log::warn!("the Kubernetes API answers again");
                        }
                        failing = false;
                        *shared.lock() = pods;
                    }
                    Err(e) if !failing => {
                        log::warn!(
                            "the Kubernetes API is not reachable ({e}): pods are named by UID"
                        );
                        failing = true;
                    }
                    Err(e) => log::debug!("Kubernetes API: {e}"),
                }
                std::thread::sleep(Self::REFRESH);
            }
        });
        names
    }

    /// The pods as last fetched, held while the guard lives (the refresher waits at most
    /// that long).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodMeta>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A TLS server on loopback answering every connection with `answer` (after reading the
    /// request head), with a self-signed certificate made by openssl in `dir`: the config to
    /// reach it.
    fn serve(answer: Vec<u8>, dir: &std::path::Path) -> ApiConfig {
        std::fs::create_dir_all(dir).unwrap();
        let p = |f: &str| dir.join(f);
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(p("key.pem"))
            .arg("-out")
            .arg(p("cert.pem"))
            .output()
            .expect("openssl (cargo xtask setup installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        std::fs::write(p("token"), "t").unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(p("cert.pem")).unwrap().map(Result::unwrap).collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(p("key.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                while let Ok((tcp, _)) = listener.accept().await {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                    let mut head = vec![0u8; 4096];
                    let _ = tls.read(&mut head).await;
                    let _ = tls.write_all(&answer).await;
                    let _ = tls.shutdown().await;
                }
            });
        });
        ApiConfig {
            host: "127.0.0.1".into(),
            port,
            token_file: p("token"),
            ca_file: p("cert.pem"),
            node: Some("n".into()),
        }
    }

    fn pods_of(cfg: &ApiConfig) -> Result<HashMap<String, PodMeta>, String> {
        fetch_pods(cfg, &mut Owners::default())
    }

    #[test]
    fn every_refresh_names_the_workload_of_an_owner_known_before() {
        let dir = tempfile::tempdir().unwrap();
        let pods = br#"{"kind":"PodList","items":[{"metadata":{"uid":"u1","name":"web-5d8f7-x","namespace":"shop","ownerReferences":[{"kind":"ReplicaSet","name":"web-5d8f7","controller":true}]}}]}"#;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", pods.len());
        let cfg = serve([head.as_bytes(), pods].concat(), &dir.path().join("a"));
        // Learnt at an earlier refresh: nothing to look up this time.
        let mut owners = Owners::default();
        let mut listed = crate::fleet::kube::parse_pod_list(pods).unwrap();
        let wanted = owners.wanted(&listed);
        let deployment = br#"{"kind":"ReplicaSet","metadata":{"name":"web-5d8f7","ownerReferences":[{"kind":"Deployment","name":"web","controller":true}]}}"#;
        owners.record(wanted[0].0.clone(), Ok(&deployment[..])).unwrap();
        owners.apply(&mut listed);
        assert_eq!(listed["u1"].workload.name, "web");
        let found = fetch_pods(&cfg, &mut owners).unwrap();
        assert_eq!(
            (found["u1"].workload.kind.as_str(), found["u1"].workload.name.as_str()),
            ("Deployment", "web")
        );
    }

    #[test]
    fn pods_errors_and_hostile_answers() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        let pods = br#"{"kind":"PodList","items":[{"metadata":{"uid":"u1","name":"web","namespace":"shop"}}]}"#;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", pods.len());
        let found = pods_of(&serve([head.as_bytes(), pods].concat(), &at("a"))).unwrap();
        assert_eq!(found["u1"].name, "web");
        // Chunked, as the API server streams long lists.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        4\r\n{\"ki\r\n19\r\nnd\":\"PodList\",\"items\":[]}\r\n0\r\n\r\n";
        assert!(pods_of(&serve(chunked.to_vec(), &at("b"))).unwrap().is_empty());
        let denied = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 17\r\n\r\npods is forbidden";
        let err = pods_of(&serve(denied.to_vec(), &at("c"))).unwrap_err();
        assert_eq!(err, "the API answered 403: pods is forbidden");
        let garbage = b"\x00\x01 not http at all\r\n\r\n";
        assert!(pods_of(&serve(garbage.to_vec(), &at("d"))).is_err());
        // An answer bigger than any node's pods take: refused, not buffered.
        let huge = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
        let huge = [huge.into_bytes(), vec![b' '; MAX_BODY + 1]].concat();
        let err = pods_of(&serve(huge, &at("e"))).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        // A server that takes the connection and never answers (nor finishes the TLS
        // handshake): given up on at the deadline, not waited for.
        let slow = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stalled = serve(Vec::new(), &at("g"));
        stalled.port = slow.local_addr().unwrap().port();
        let err = fetch_pods_within(&stalled, &mut Owners::default(), Duration::from_millis(300))
            .unwrap_err();
        assert!(err.ends_with("no answer within 300ms"), "{err}");
        drop(slow);
        // Nobody listening.
        let mut gone = serve(Vec::new(), &at("f"));
        gone.port =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(pods_of(&gone).is_err());
    }
}
