//! A minimal read-only HTTP/1.1 server, for the node agent's endpoints (#6): GET and HEAD,
//! one request per connection (`Connection: close`), the request head bounded in size and
//! time. Enough for Prometheus scrapes, curl and browsers without a web framework.
//!
//! Request parsing is pure ([`parse_request`]); [`serve`] is the accept loop.
use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Largest request head accepted: the endpoints take no body, and their paths are short.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The reason phrase of `status`.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Parses a request head (up to and including its blank line). Errors are the status to
/// answer with.
///
/// # Errors
/// 400 for a malformed request line, 405 for a method other than GET and HEAD.
pub fn parse_request(head: &[u8]) -> Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let line = text.split("\r\n").next().ok_or(400u16)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(400);
    }
    if method != "GET" && method != "HEAD" {
        return Err(405);
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    Ok(Request { method: method.to_owned(), path: path.to_owned(), query })
}

/// The bytes of `response` to `method` (HEAD: the head alone, with the body's length).
#[must_use]
pub fn encode(response: &Response, method: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(&response.body);
    }
    out
}

/// What answers requests.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Serves `listener` until the task is dropped: each connection in its own task, so a slow
/// client delays nobody else.
///
/// # Errors
/// Accepting failed for good (not a single connection's error, which only ends it).
pub async fn serve(listener: TcpListener, handler: Handler) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            // Out of descriptors and the like: back off, the listener itself is fine.
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let _ = answer(stream, &handler).await;
        });
    }
}

async fn answer(mut stream: TcpStream, handler: &Handler) -> io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await;
    let (response, method) = match head {
        Err(_) => (Response::error(408, "request timeout"), "GET".to_owned()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => {
            // Read what the client still sends: closing with unread data resets the
            // connection, and the client might never see the answer.
            let mut sink = [0u8; 4096];
            let drain = async { while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_millis(200), drain).await;
            (Response::error(431, "request head too large"), "GET".to_owned())
        }
        Ok(Ok(Some(head))) => match parse_request(&head) {
            Ok(request) => (handler(&request), request.method),
            Err(status) => (Response::error(status, reason(status)), "GET".to_owned()),
        },
    };
    stream.write_all(&encode(&response, &method)).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the head; `None` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 4);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_or_refused_with_a_status() {
        let r = parse_request(b"GET /api/v1/reports?limit=3 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/reports");
        assert_eq!(r.query.as_deref(), Some("limit=3"));
        assert_eq!(parse_request(b"HEAD /healthz HTTP/1.0\r\n\r\n").unwrap().method, "HEAD");
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(parse_request(b"GET metrics HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"GET /a /b HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"GET /\r\n\r\n"), Err(400));
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Err(400));
    }

    #[test]
    fn head_responses_have_the_length_but_no_body() {
        let r = Response::ok("text/plain", "hello");
        let get = String::from_utf8(encode(&r, "GET")).unwrap();
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains("Content-Length: 5\r\n") && get.ends_with("\r\n\r\nhello"), "{get}");
        let head = String::from_utf8(encode(&r, "HEAD")).unwrap();
        assert!(head.contains("Content-Length: 5\r\n") && head.ends_with("\r\n\r\n"), "{head}");
    }

    async fn fetch(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serves_requests_over_tcp() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let handler: Handler = Arc::new(|r: &Request| match r.path.as_str() {
                "/healthz" => Response::ok("text/plain", "ok\n"),
                _ => Response::not_found(),
            });
            let server = tokio::spawn(serve(listener, handler));
            let ok = fetch(addr, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
            assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
            let missing = fetch(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
            assert!(missing.starts_with("HTTP/1.1 404 Not Found"), "{missing}");
            let post = fetch(addr, b"POST /healthz HTTP/1.1\r\n\r\n").await;
            assert!(post.starts_with("HTTP/1.1 405 Method Not Allowed"), "{post}");
            // A head that never ends: the client sends it and closes its side.
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut huge = b"GET /".to_vec();
            huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
            s.write_all(&huge).await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            let big = String::from_utf8(out).unwrap();
            assert!(big.starts_with("HTTP/1.1 431 "), "{big}");
            server.abort();
        });
    }
}
