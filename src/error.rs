//! The one error type of the data plane. Each variant knows its status, its contract code,
//! and whose fault it is, and renders itself as the contract's JSON error body.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no task matches this request")]
    NoRoute,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BadRequestBody(String),
    #[error("model version {0:?} is not allowed for this task")]
    ModelVersionNotAllowed(String),
    #[error("upstream request failed: {0}")]
    Upstream(String),
    #[error("upstream response unusable: {0}")]
    BadUpstreamResponse(String),
    #[error("upstream reported model version {reported:?}, pinned {pinned:?}")]
    VersionMismatch { pinned: String, reported: String },
    #[error("the review path is unavailable: {0}")]
    ReviewUnavailable(String),
    #[error("too many requests in flight")]
    Overloaded,
    #[error("upstream did not answer within {0} ms")]
    UpstreamTimeout(u128),
}

/// Whose fault an error is: decides the log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Downstream,
    Upstream,
    Internal,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::InvalidJson(_) | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ModelVersionNotAllowed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::Upstream(_)
            | ProxyError::BadUpstreamResponse(_)
            | ProxyError::VersionMismatch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ReviewUnavailable(_) | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadRequestBody(_) => "bad_request",
            ProxyError::ModelVersionNotAllowed(_) => "model_version_not_allowed",
            ProxyError::Upstream(_) => "upstream_error",
            ProxyError::BadUpstreamResponse(_) => "bad_upstream_response",
            ProxyError::VersionMismatch { .. } => "version_mismatch",
            ProxyError::ReviewUnavailable(_) => "review_unavailable",
            ProxyError::Overloaded => "overloaded",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoRoute
            | ProxyError::InvalidJson(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequestBody(_)
            | ProxyError::ModelVersionNotAllowed(_) => Fault::Downstream,
            ProxyError::Upstream(_)
            | ProxyError::BadUpstreamResponse(_)
            | ProxyError::VersionMismatch { .. }
            | ProxyError::UpstreamTimeout(_) => Fault::Upstream,
            ProxyError::ReviewUnavailable(_) | ProxyError::Overloaded => Fault::Internal,
        }
    }

    /// The contract's error body: `{"error": {"code", "message", "task"}}`.
    pub fn to_response(&self, task: Option<&str>) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string(), "task": task }
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(
            self,
            ProxyError::BodyTooLarge { .. } | ProxyError::BadRequestBody(_)
        ) {
            // The rest of the request body was not read: this connection cannot be reused.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_code() {
        let e = ProxyError::ModelVersionNotAllowed("gpt-5".into());
        let resp = e.to_response(Some("t"));
        assert_eq!(resp.status(), 422);
        assert_eq!(e.code(), "model_version_not_allowed");
        assert_eq!(e.fault(), Fault::Downstream);
        assert_eq!(ProxyError::UpstreamTimeout(5).status(), 504);
        assert_eq!(ProxyError::Overloaded.code(), "overloaded");
    }
}
