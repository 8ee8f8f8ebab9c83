//! The admin port: health, readiness, metrics, the active rules, and reload.
//! Control plane: never on the request path. Mutations need the bearer token.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::proxy::{Body, State};
use crate::rules::reload::{Reloaded, Reloader};

/// The admin bearer token. Its `Debug` never shows it.
pub struct Token(Box<[u8]>);

impl Token {
    /// `None` for an empty token (admin mutations stay disabled).
    pub fn new(raw: &str) -> Option<Token> {
        let t = raw.trim();
        (!t.is_empty()).then(|| Token(t.as_bytes().into()))
    }

    /// Constant-time in the token's content.
    fn matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.0.len()
            && presented
                .iter()
                .zip(self.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

pub struct Admin {
    pub state: Arc<State>,
    pub metrics: PrometheusHandle,
    pub reloader: Arc<Reloader>,
    pub token: Option<Token>,
}

pub async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, "/readyz") => readyz(&admin),
        (&Method::GET, "/metrics") => {
            let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.render())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/admin/rules") => rules(&admin),
        (&Method::POST, "/admin/reload") => {
            if let Err(denied) = authorize(&admin, &req) {
                return denied;
            }
            match admin.reloader.reload("admin").await {
                Ok(Reloaded::Swapped { hash }) => json_response(
                    StatusCode::OK,
                    json!({"result": "ok", "changed": true, "hash": hash}),
                ),
                Ok(Reloaded::Unchanged { hash }) => json_response(
                    StatusCode::OK,
                    json!({"result": "ok", "changed": false, "hash": hash}),
                ),
                Err(errors) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"result": "error", "errors": errors,
                           "error": {"code": "invalid_rules", "message": "the rules were not reloaded; the running rules stay"}}),
                ),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

#[allow(clippy::result_large_err)]
fn authorize(admin: &Admin, req: &Request<Incoming>) -> Result<(), Response<Body>> {
    let Some(token) = &admin.token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "no admin token is configured (TRIAGE_ADMIN_TOKEN or --admin-token-file)",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(p) if token.matches(p) => Ok(()),
        _ => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            );
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Err(resp)
        }
    }
}

fn readyz(admin: &Admin) -> Response<Body> {
    let rules = admin.state.rules.load();
    let broker = admin.state.publisher.is_connected();
    let spool = admin.state.spool.as_deref();
    let spool_ok = spool.is_some_and(|s| s.available());
    let durable = broker || spool_ok;
    let draining = admin
        .state
        .draining
        .load(std::sync::atomic::Ordering::Relaxed);
    let status = if durable && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(
        status,
        json!({
            "ready": durable && !draining,
            "draining": draining,
            "rules": {"loaded": true, "hash": rules.hash, "tasks": rules.tasks.len()},
            "review_path": {
                "durable": durable,
                "broker": broker,
                "spool": {
                    "open": spool.is_some(),
                    "writable": spool.is_some_and(|s| s.healthy()),
                    "available": spool_ok,
                    "items": spool.map_or(0, |s| s.items()),
                },
            },
        }),
    )
}

fn rules(admin: &Admin) -> Response<Body> {
    let rules = admin.state.rules.load_full();
    let status = admin.reloader.status();
    let tasks: Vec<_> = rules
        .tasks
        .iter()
        .map(|t| {
            let mut start = 0u32;
            let variants: Vec<_> = t
                .rollout
                .variants
                .iter()
                .map(|v| {
                    let weight = f64::from(v.buckets(start)) / 100.0;
                    start = v.bucket_end;
                    let guard = v.guard.as_ref().map(|g| {
                        let w = g.window();
                        json!({"halted": g.halted(), "window_requests": w.requests,
                               "window_escalations": w.escalations, "window_errors": w.errors})
                    });
                    json!({"name": &*v.name, "version": v.version.as_deref(), "weight": weight,
                           "upstream": &*v.upstream.name, "threshold": v.policy.threshold,
                           "shadow_rate": v.shadow, "guard": guard})
                })
                .collect();
            json!({"name": &*t.name, "paused": t.paused(), "variants": variants})
        })
        .collect();
    let paused: Vec<&str> = rules
        .tasks
        .iter()
        .filter(|t| t.paused())
        .map(|t| &*t.name)
        .collect();
    json_response(
        StatusCode::OK,
        json!({
            "hash": rules.hash,
            "loaded_at": humantime::format_rfc3339_millis(rules.loaded_at).to_string(),
            "paused_tasks": paused,
            "tasks": tasks,
            "last_reload": &*status,
            "rules": rules.source,
        }),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(status, json!({"error": {"code": code, "message": message}}))
}

pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_compare_and_debug() {
        let t = Token::new(" s3cret\n").unwrap();
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3creT"));
        assert!(!t.matches(b"s3cre"));
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(Token::new("  ").is_none());
    }
}
