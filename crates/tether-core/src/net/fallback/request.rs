//! HTTP/1.1 requests and responses of the fallback, sans-IO: a request is
//! parsed from the bytes read so far (head with `httparse`, then a body of
//! `Content-Length` bytes), a response is appended to the bytes to write.

use base64::Engine;

use super::pipe::Credentials;

/// Headers parsed from a request.
const MAX_HEADERS: usize = 32;

/// A parsed request (owned: the bytes it came from are dropped).
#[derive(Debug, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// Query parameters, percent-decoded.
    pub query: Vec<(String, String)>,
    /// `Last-Event-ID` (an SSE client coming back).
    pub last_event_id: Option<String>,
    /// Credentials from `Authorization` (Basic: user name and password;
    /// Bearer: the token as password) or the query (`username`, `password`,
    /// `token`: `EventSource` cannot set headers).
    pub credentials: Credentials,
    /// The client asked to close after this response (or spoke HTTP/1.0).
    pub close: bool,
    /// The body (empty for GET).
    pub body: Vec<u8>,
    /// The `Origin` header, echoed in CORS answers.
    pub origin: Option<String>,
}

impl Request {
    /// The first value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes needed.
    Incomplete {
        /// The head is complete and asks `Expect: 100-continue`: the
        /// client waits for that before it sends the body.
        expects_continue: bool,
    },
    /// A request, and how many bytes it took.
    Complete(Box<Request>, usize),
    /// Not a request we serve: answer `status` with `why` and close.
    Bad {
        /// HTTP status.
        status: u16,
        /// Why, for the client and the log.
        why: String,
    },
}

/// Parses one request from `buf`, with a body of at most `max_body` bytes
/// and a head of at most `max_head`.
pub fn parse(buf: &[u8], max_head: usize, max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => {
            return Parsed::Incomplete {
                expects_continue: false,
            }
        }
        Ok(httparse::Status::Partial) => {
            return Parsed::Bad {
                status: 431,
                why: "request head too large".into(),
            }
        }
        Err(e) => {
            return Parsed::Bad {
                status: 400,
                why: format!("not an HTTP request: {e}"),
            }
        }
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("transfer-encoding").is_some() {
        return Parsed::Bad {
            status: 411,
            why: "send the body with Content-Length, not chunked".into(),
        };
    }
    let len = match header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Parsed::Bad {
                status: 400,
                why: "Content-Length is not a number".into(),
            }
        }
    };
    if len > max_body {
        return Parsed::Bad {
            status: 413,
            why: format!("body of {len} bytes is over the limit of {max_body} (websocket.fallback.max_body_bytes)"),
        };
    }
    if buf.len() < head + len {
        return Parsed::Incomplete {
            expects_continue: header("expect")
                .is_some_and(|e| e.eq_ignore_ascii_case("100-continue")),
        };
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut credentials = Credentials::default();
    match header("authorization").and_then(|a| a.split_once(' ')) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            credentials.password = Some(token.trim().as_bytes().to_vec());
        }
        Some((scheme, b64)) if scheme.eq_ignore_ascii_case("basic") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok());
            let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Parsed::Bad {
                    status: 400,
                    why: "malformed Basic credentials".into(),
                };
            };
            credentials.username = Some(user.to_string());
            credentials.password = Some(pass.as_bytes().to_vec());
        }
        _ => {}
    }
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    if credentials.username.is_none() {
        credentials.username = q("username");
    }
    if credentials.password.is_none() {
        credentials.password = q("password").or_else(|| q("token")).map(String::into_bytes);
    }
    let close = req.version == Some(0)
        || header("connection")
            .is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: path.to_string(),
        last_event_id: header("last-event-id").map(str::to_string),
        origin: header("origin").map(str::to_string),
        credentials,
        close,
        body: buf[head..head + len].to_vec(),
        query,
    };
    Parsed::Complete(Box::new(request), head + len)
}

/// Whether `buf` starts a request the fallback serves: a complete head of a
/// request under `prefix` that is not a WebSocket upgrade. `None` while the
/// head is incomplete.
pub fn is_fallback(buf: &[u8], prefix: &str) -> Option<bool> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return None,
        // The upgrade parser answers it.
        Err(_) => return Some(false),
    }
    let upgrade = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.to_ascii_lowercase().contains("websocket"))
    });
    let path = req.path.unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let under = path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'));
    Some(under && !upgrade)
}

/// The reason phrase of the statuses the fallback answers.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// Headers every fallback response carries: no caching (every answer is
/// live), and CORS open to any origin. Credentials travel in the request
/// (a token), never in cookies, so an open CORS policy gives a foreign page
/// nothing it did not already hold.
fn common(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status} {}\r\nCache-Control: no-store\r\n\
             Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: X-Tether-Session\r\n",
            reason(status)
        )
        .as_bytes(),
    );
}

/// Appends a complete response with a body.
pub fn respond(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8], close: bool) {
    common(out, status);
    body_part(out, content_type, body, close);
}

/// The end of a response's head, and its body.
fn body_part(out: &mut Vec<u8>, content_type: &str, body: &[u8], close: bool) {
    out.extend_from_slice(
        format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

/// Appends a JSON response.
pub fn json(out: &mut Vec<u8>, status: u16, body: &str, close: bool) {
    respond(out, status, "application/json", body.as_bytes(), close);
}

/// Appends a poll's answer: JSON, with the session id in
/// `X-Tether-Session` (as a stream's head has it).
pub fn poll_answer(out: &mut Vec<u8>, sid: &str, body: &str, close: bool) {
    common(out, 200);
    out.extend_from_slice(format!("X-Tether-Session: {sid}\r\n").as_bytes());
    body_part(out, "application/json", body.as_bytes(), close);
}

/// Appends the answer to a CORS preflight.
pub fn preflight(out: &mut Vec<u8>) {
    common(out, 204);
    out.extend_from_slice(
        b"Access-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\n\
          Access-Control-Allow-Headers: Authorization, Content-Type, Last-Event-ID\r\n\
          Access-Control-Max-Age: 600\r\nContent-Length: 0\r\n\r\n",
    );
}

/// Appends the head of an SSE stream (delimited by the connection's end),
/// with the session id in `X-Tether-Session` and the client's reconnection
/// delay.
pub fn sse_head(out: &mut Vec<u8>, sid: &str, retry_ms: u64) {
    common(out, 200);
    out.extend_from_slice(
        format!(
            "Content-Type: text/event-stream\r\nX-Tether-Session: {sid}\r\n\
             Connection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: {retry_ms}\n\n"
        )
        .as_bytes(),
    );
}

/// Appends one SSE event (`id:` and `data:`; the JSON is one line).
pub fn sse_event(out: &mut Vec<u8>, id: Option<&str>, json: &str) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_query_credentials_and_body() {
        let raw = b"POST /push/publish?sid=a%20b&token=t0k HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyGET";
        let Parsed::Complete(r, n) = parse(raw, 8192, 100) else {
            panic!("complete")
        };
        assert_eq!(n, raw.len() - 3, "the pipelined rest is left");
        assert_eq!(r.param("sid"), Some("a b"));
        assert_eq!(r.credentials.password.as_deref(), Some(&b"t0k"[..]));
        assert_eq!(r.body, b"body");
        assert!(!r.close);
        let basic =
            b"GET /push/sse HTTP/1.1\r\nAuthorization: Basic dTpwdw==\r\nConnection: close\r\n\r\n";
        let Parsed::Complete(r, _) = parse(basic, 8192, 100) else {
            panic!("complete")
        };
        assert_eq!(r.credentials.username.as_deref(), Some("u"));
        assert_eq!(r.credentials.password.as_deref(), Some(&b"pw"[..]));
        assert!(r.close);
    }

    #[test]
    fn limits_and_partial_input() {
        assert!(matches!(
            parse(b"GET /push/sse HTTP/1.1\r\n", 8192, 10),
            Parsed::Incomplete {
                expects_continue: false
            }
        ));
        let expects =
            b"POST /push/publish HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        assert!(matches!(
            parse(expects, 8192, 10),
            Parsed::Incomplete {
                expects_continue: true
            }
        ));
        let big = b"POST /push/publish HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert!(matches!(
            parse(big, 8192, 10),
            Parsed::Bad { status: 413, .. }
        ));
        let partial_body = b"POST /push/publish HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert!(matches!(
            parse(partial_body, 8192, 10),
            Parsed::Incomplete { .. }
        ));
        let chunked = b"POST /push/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse(chunked, 8192, 10),
            Parsed::Bad { status: 411, .. }
        ));
        assert!(matches!(parse(&[b'G'; 100], 50, 10), Parsed::Bad { .. }));
    }

    #[test]
    fn only_non_upgrade_requests_under_the_prefix_are_fallback() {
        let up = b"GET /push/sse HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(is_fallback(up, "/push"), Some(false));
        assert_eq!(
            is_fallback(b"GET /push/sse?sid=1 HTTP/1.1\r\n\r\n", "/push"),
            Some(true)
        );
        assert_eq!(
            is_fallback(b"GET /pushy HTTP/1.1\r\n\r\n", "/push"),
            Some(false)
        );
        assert_eq!(
            is_fallback(b"GET /mqtt HTTP/1.1\r\n\r\n", "/push"),
            Some(false)
        );
        assert_eq!(is_fallback(b"GET /push/s", "/push"), None);
    }
}
