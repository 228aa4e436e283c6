//! The node agent's HTTP server (#6, #15), on hyper: GET and HEAD, HTTP/1.1 with keep-alive,
//! TLS (tokio-rustls) and credentials when the web configuration asks for them
//! ([`crate::fleet::web`]). Bounded so that a slow or huge request stalls nobody: at most
//! [`MAX_CONNECTIONS`] at once, [`HEAD_TIMEOUT`] to send a request head (and to finish a TLS
//! handshake), [`MAX_HEAD`] bytes of it, [`CONNECTION_TIMEOUT`] for a connection in all.
//!
//! Routing is pure ([`Handler`]: a [`Request`] in, a [`Response`] out); [`serve`] is the
//! accept loop.
use std::{convert::Infallible, io, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, StatusCode, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};

use crate::fleet::web::{Access, WebConfig};

/// Largest request head accepted (hyper's buffer; the smallest it takes): the endpoints
/// take no body, and their paths are short.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send a request head, or to finish a TLS handshake.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last, keep-alive included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_mins(1);
/// Connections served at once; more wait in the kernel's accept queue.
pub const MAX_CONNECTIONS: usize = 64;

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string after `?`, if any.
    pub query: Option<String>,
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body (left out for HEAD).
    pub body: Vec<u8>,
}

impl Response {
    /// 200 with `body`.
    #[must_use]
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self { status: 200, content_type, body: body.into() }
    }

    /// An error status with a one-line text body.
    #[must_use]
    pub fn error(status: u16, message: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{message}\n").into(),
        }
    }

    /// 404.
    #[must_use]
    pub fn not_found() -> Self {
        Self::error(404, "not found")
    }
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `listener` with `handler` until the task is dropped, over TLS and behind the
/// credentials that `web` configures: each connection in its own task.
///
/// # Errors
/// Accepting failed for good (not a single connection's error, which only ends it).
pub async fn serve(listener: TcpListener, handler: Handler, web: WebConfig) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tls = web.tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return Ok(()) };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: back off, the listener itself is fine.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (handler, access, tls) = (Arc::clone(&handler), Arc::clone(&web.access), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let served = async {
                match tls {
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream));
                        if let Ok(Ok(stream)) = handshake.await {
                            connection(stream, handler, access).await;
                        }
                    }
                    None => connection(stream, handler, access).await,
                }
            };
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
        });
    }
}

/// Serves HTTP/1.1 on one connection.
async fn connection<S>(io: S, handler: Handler, access: Arc<Access>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (handler, access) = (Arc::clone(&handler), Arc::clone(&access));
        async move { Ok::<_, Infallible>(respond(&request, &handler, &access).await) }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The answer to one request: 405 for a method other than GET and HEAD, 401 without the
/// credentials required (`/healthz` is open: it tells nothing), else the handler's.
async fn respond<B>(
    request: &hyper::Request<B>,
    handler: &Handler,
    access: &Arc<Access>,
) -> hyper::Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut r = to_hyper(Response::error(405, "method not allowed: use GET or HEAD"));
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let req = Request {
        method: method.as_str().to_owned(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
    };
    if req.path != "/healthz" && !access.is_open() {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let check = Arc::clone(access);
        // bcrypt takes tens of milliseconds the first time: off the runtime's thread.
        let allowed = tokio::task::spawn_blocking(move || check.allows(authorization.as_deref()))
            .await
            .unwrap_or(false);
        if !allowed {
            let mut r = to_hyper(Response::error(
                401,
                "unauthorized: send the credentials the agent's --web-config or --bearer-token-file sets",
            ));
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(access.challenge()),
            );
            return r;
        }
    }
    to_hyper(handler(&req))
}

/// `response` as hyper's (hyper leaves the body out of a HEAD response, keeping its length).
fn to_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *r.status_mut() =
        StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(response.content_type));
    r
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    async fn fetch(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn handler() -> Handler {
        Arc::new(|r: &Request| match r.path.as_str() {
            "/healthz" => Response::ok("text/plain", "ok\n"),
            "/metrics" => Response::ok("text/plain", format!("q={:?}\n", r.query)),
            _ => Response::not_found(),
        })
    }

    #[test]
    fn serves_requests_over_tcp_within_bounds() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = tokio::spawn(serve(listener, handler(), WebConfig::default()));
            let close = "Connection: close\r\n\r\n";
            let ok = fetch(addr, format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{close}").as_bytes())
                .await;
            assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
            let q = fetch(addr, format!("GET /metrics?a=1 HTTP/1.1\r\n{close}").as_bytes()).await;
            assert!(q.ends_with("q=Some(\"a=1\")\n"), "{q}");
            let head = fetch(addr, format!("HEAD /healthz HTTP/1.1\r\n{close}").as_bytes()).await;
            assert!(head.contains("content-length: 3\r\n") && head.ends_with("\r\n\r\n"), "{head}");
            let missing = fetch(addr, format!("GET /nope HTTP/1.1\r\n{close}").as_bytes()).await;
            assert!(missing.starts_with("HTTP/1.1 404 Not Found"), "{missing}");
            let post = fetch(addr, format!("POST /healthz HTTP/1.1\r\n{close}").as_bytes()).await;
            assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed"), "{post}");
            let garbage = fetch(addr, b"\xff\xfe nonsense\r\n\r\n").await;
            assert!(garbage.is_empty() || garbage.starts_with("HTTP/1.1 400"), "{garbage}");
            // A head that never ends.
            let mut huge = b"GET /".to_vec();
            huge.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
            let big = fetch(addr, &huge).await;
            assert!(big.is_empty() || big.starts_with("HTTP/1.1 431 "), "{big}");
            server.abort();
        });
    }

    #[test]
    fn credentials_are_required_when_configured() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let web = WebConfig {
                tls: None,
                access: Arc::new(Access::new(
                    std::collections::BTreeMap::default(),
                    Some("t0ken".into()),
                )),
            };
            let server = tokio::spawn(serve(listener, handler(), web));
            let get =
                |auth: &str| format!("GET /metrics HTTP/1.1\r\n{auth}Connection: close\r\n\r\n");
            let none = fetch(addr, get("").as_bytes()).await;
            assert!(
                none.starts_with("HTTP/1.1 401") && none.contains("www-authenticate: Bearer"),
                "{none}"
            );
            let wrong = fetch(addr, get("Authorization: Bearer nope\r\n").as_bytes()).await;
            assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
            let right = fetch(addr, get("Authorization: Bearer t0ken\r\n").as_bytes()).await;
            assert!(right.starts_with("HTTP/1.1 200"), "{right}");
            // Liveness probes carry no credentials.
            let health = fetch(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
            assert!(health.starts_with("HTTP/1.1 200"), "{health}");
            server.abort();
        });
    }
}
