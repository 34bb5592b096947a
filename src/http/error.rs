//! API errors: an HTTP status and a JSON body
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault (a JSON path such as `messages[2].qos`).
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": {"code": self.code, "message": self.message, "field": self.field}
        });
        super::api::json(self.status, &body)
    }
}
