//! What every handler asks of a request: the bearer token, the body
//! (bounded), its JSON, a percent-decoded path segment, and a core's
//! answer within the publish timeout.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH};
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::error::{refusal, ApiError};
use super::Api;
use crate::bridge::{oneshot, Refusal};

/// Checks the bearer token when tokens are configured.
pub(super) fn authorize(api: &Api, req: &Request<Incoming>) -> Result<(), ApiError> {
    check_token(
        api,
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Checks an `Authorization` value (`Bearer <token>`) when tokens are
/// configured; the gRPC API's metadata too.
pub(crate) fn check_token(api: &Api, authorization: Option<&str>) -> Result<(), ApiError> {
    if api.cfg.tokens.is_empty() {
        return Ok(());
    }
    let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        ));
    };
    if api
        .cfg
        .tokens
        .iter()
        .any(|t| same(t.as_bytes(), given.trim().as_bytes()))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "unknown token",
        ))
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request body, at most `http.max_body_bytes` (413 beyond).
pub(super) async fn body(api: &Api, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let max = api.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds http.max_body_bytes ({max} bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("reading the body: {e}"),
        )),
    }
}

/// Parses JSON into `T`, naming the field at fault on error.
pub(super) fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("malformed JSON: {inner}"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", inner.to_string()).field(path)
        }
    })
}

/// Decodes the `%XX` escapes of a path segment; `None` when one is
/// malformed or the result is not UTF-8.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A core's answer, within `http.publish_timeout_ms`.
pub(super) async fn reply<T>(api: &Api, rx: oneshot::Receiver<T>, at: &str) -> Result<T, ApiError> {
    let limit = Duration::from_millis(api.cfg.publish_timeout_ms);
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(v)) => Ok(v),
        // The core dropped the sender: it is stopping.
        Ok(Err(_)) => Err(refusal(Refusal::ShuttingDown, at)),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no core answered within http.publish_timeout_ms ({limit:?})"),
        )),
    }
}
