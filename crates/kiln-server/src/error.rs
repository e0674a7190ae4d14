//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An HTTP error that renders as OpenAI clients expect.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message naming the problem.
    pub message: String,
    /// The offending request field, if any.
    pub param: Option<String>,
    /// A short machine-readable code.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 for a bad field.
    pub fn bad(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_owned()),
            code: None,
        }
    }

    /// Any status with a message.
    pub fn new(status: StatusCode, message: impl Into<String>, code: Option<&'static str>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

/// The body of an error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

/// OpenAI's fields of an error; `param` and `code` are `null` when there is none.
#[derive(Serialize)]
struct ErrorFields<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorFields {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.code,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // A full queue drains in about a step per queued request: try again soon.
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_keep_openais_shape() {
        for (e, want) in [
            (
                ApiError::bad("temperature", "too hot"),
                serde_json::json!({"error": {"message": "too hot", "type": "invalid_request_error",
                                             "param": "temperature", "code": null}}),
            ),
            (
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "full", Some("queue_full")),
                serde_json::json!({"error": {"message": "full", "type": "rate_limit_error",
                                             "param": null, "code": "queue_full"}}),
            ),
        ] {
            let r = e.into_response();
            let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            assert_eq!(body, want.to_string().as_bytes());
        }
    }
}
