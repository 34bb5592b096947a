//! Responses every handler builds: the body type and JSON.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

/// An HTTP response of the API.
pub(super) type Resp = Response<Full<Bytes>>;

/// A JSON response with `status`.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Resp {
    json_text(status, body.to_string())
}

/// A JSON response with `status` whose body is already JSON text.
pub(crate) fn json_text(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
