//! The admin port: health, readiness, metrics. Control plane: never on the request path.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::proxy::{Body, State};

pub struct Admin {
    pub state: Arc<State>,
    pub metrics: PrometheusHandle,
}

pub async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&admin),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"code": "not_found", "message": "no such admin endpoint"}}),
        ),
    }
}

fn readyz(admin: &Admin) -> Response<Body> {
    let rules = admin.state.rules.load();
    let broker = admin.state.publisher.is_connected();
    let status = if broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        serde_json::json!({
            "ready": broker,
            "rules": {"loaded": true, "hash": rules.hash, "tasks": rules.tasks.len()},
            "review_path": {"broker": broker},
        }),
    )
}

pub fn json(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
