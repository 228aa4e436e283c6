//! The in-cluster Kubernetes API, read-only: the pods of this node, for their names,
//! namespaces and container names (#6). HTTPS with the service account's CA and token, one
//! request per refresh; when the API is not reachable the agent goes on without names.
use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use hashbrown::HashMap;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};

use crate::fleet::kube::{PodMeta, parse_pod_list};

/// Where the service account's credentials are mounted in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Connect and read timeouts: a slow API must not hold up the agent.
const TIMEOUT: Duration = Duration::from_secs(5);

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

/// This node's pods by UID.
///
/// # Errors
/// A one-line reason: credentials unreadable, connection or TLS failure, an HTTP error
/// status, or a body that is not a pod list.
pub fn fetch_pods(cfg: &ApiConfig) -> Result<HashMap<String, PodMeta>, String> {
    let token = std::fs::read_to_string(&cfg.token_file)
        .map_err(|e| format!("reading {}: {e}", cfg.token_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&cfg.ca_file)
        .map_err(|e| format!("reading {}: {e}", cfg.ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", cfg.ca_file.display()))?;
        roots.add(cert).map_err(|e| format!("{}: {e}", cfg.ca_file.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(cfg.host.clone()).map_err(|e| format!("{}: {e}", cfg.host))?;
    let conn = rustls::ClientConnection::new(Arc::new(tls), name).map_err(|e| e.to_string())?;
    let addr = (cfg.host.as_str(), cfg.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}:{}: {e}", cfg.host, cfg.port))?
        .next()
        .ok_or_else(|| format!("{}: no address", cfg.host))?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{addr}: {e}"))?;
    tcp.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let path = match &cfg.node {
        Some(node) => format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
        None => "/api/v1/pods".to_owned(),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: \
         application/json\r\nConnection: close\r\n\r\n",
        cfg.host,
        token.trim()
    )
    .map_err(|e| format!("{addr}: {e}"))?;
    let mut response = Vec::new();
    // A server that closes without TLS close_notify still sent the whole body.
    if let Err(e) = stream.read_to_end(&mut response)
        && e.kind() != std::io::ErrorKind::UnexpectedEof
    {
        return Err(format!("{addr}: {e}"));
    }
    let body = http_body(&response)?;
    parse_pod_list(&body)
}

/// The body of an HTTP/1.1 response, checked for status 200, de-chunked if need be.
fn http_body(response: &[u8]) -> Result<Vec<u8>, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the API's answer has no HTTP head")?;
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let body = &response[end + 4..];
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let text = String::from_utf8_lossy(body);
        return Err(format!("the API answered {status}: {}", text.trim()));
    }
    if !head.contains("transfer-encoding: chunked") {
        return Ok(body.to_vec());
    }
    // Chunks: a hex size line, the data, CRLF; a zero size ends them.
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    loop {
        let line_end =
            rest.windows(2).position(|w| w == b"\r\n").ok_or("a chunk without its size line")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_plain_chunked_and_errors() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(http_body(plain).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"{\"a\":1}");
        let denied = b"HTTP/1.1 403 Forbidden\r\n\r\npods is forbidden";
        assert_eq!(http_body(denied).unwrap_err(), "the API answered 403: pods is forbidden");
        assert!(http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        assert!(http_body(b"garbage").is_err());
    }
}
