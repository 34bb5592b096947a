//! API errors: an HTTP status and a JSON body
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use crate::bridge::Refusal;

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

    /// The JSON body of the error's response.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {"code": self.code, "message": self.message, "field": self.field}
        })
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        super::wire::json(self.status, &self.body())
    }
}

/// The HTTP form of a bridge refusal.
pub(super) fn refusal(r: Refusal, at: &str) -> ApiError {
    let message = r.to_string();
    match r {
        Refusal::TopicInvalid(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
                .field(format!("{at}topic"))
        }
        Refusal::QosNotSupported => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message)
                .field(format!("{at}qos"))
        }
        Refusal::Denied => ApiError::new(StatusCode::FORBIDDEN, "topic_denied", message)
            .field(format!("{at}topic")),
        Refusal::RetainedStoreFull => ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "retained_store_full",
            message,
        ),
        Refusal::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message),
        Refusal::Undelivered(_) => ApiError::new(StatusCode::BAD_GATEWAY, "undelivered", message),
        Refusal::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
        }
    }
}
