//! Pin the model version in the request, forward it, and read the response with a cap.
//!
//! One pool of keep-alive HTTP/1.1 connections (`upstream/pool.rs`) serves every upstream:
//! idle lists are keyed by authority, so a rules reload never rebuilds them, and an upstream
//! whose URL changed simply uses another list while the old one's idle connections time out.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri, Version, request};
use http_body_util::Full;
use serde_json::Value;

mod pool;

use crate::error::ProxyError;
use crate::rules::{Task, Upstream};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `content-length` stays unless the message came chunked: a response passes on with the
/// very body it framed (a `HEAD` answer's too), and a request's is replaced once its body
/// is final.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) names present instead of a hashed remove per listed name:
    // usually none is there.
    let doomed = |name: &HeaderName| HOP_BY_HOP.contains(name);
    if !headers.keys().any(doomed) {
        return;
    }
    if let Some(listed) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        let listed: Vec<HeaderName> = listed
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    // A chunked message was read whole: its length is the body's now, not a header's.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let present: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for name in present {
        headers.remove(name);
    }
}

/// Idle upstream connections are let go after this long: just under uvicorn's default
/// keep-alive timeout of 5 s (vLLM's OpenAI server and most Python model servers run on
/// it), so that triage drops a connection before the server closes it rather than racing
/// the close. A request written into a connection the server is closing fails (502) and is
/// never resent: the model may have run it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pool: std::sync::Arc<pool::Pool>,
    max_response_bytes: usize,
}

#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration, max_response_bytes: usize) -> Self {
        UpstreamClient {
            pool: std::sync::Arc::new(pool::Pool::new(connect_timeout, IDLE_TIMEOUT)),
            max_response_bytes,
        }
    }

    /// Send the request and read the whole response within the upstream's timeout.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        parts: &request::Parts,
        body: Bytes,
    ) -> Result<UpstreamResponse, ProxyError> {
        let req = self.build(upstream, parts, body)?;
        let exchange = async {
            let (resp, conn) = self
                .pool
                .send(&upstream.authority, req)
                .await
                .map_err(|e| ProxyError::Upstream(error_chain(&e)))?;
            let (head, mut body) = resp.into_parts();
            let body = crate::body::read(&mut body, self.max_response_bytes)
                .await
                .map_err(|e| match e {
                    crate::body::Error::TooLarge => ProxyError::BadUpstreamResponse(format!(
                        "response body larger than {} bytes",
                        self.max_response_bytes
                    )),
                    crate::body::Error::Read(e) => {
                        ProxyError::Upstream(format!("reading response body: {e}"))
                    }
                })?;
            // Read to the end: the connection can serve the next request.
            self.pool.put_back(&upstream.authority, conn).await;
            let mut headers = head.headers;
            strip_hop_by_hop(&mut headers);
            Ok(UpstreamResponse {
                status: head.status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(upstream.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout(upstream.timeout.as_millis())),
        }
    }

    fn build(
        &self,
        upstream: &Upstream,
        parts: &request::Parts,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, ProxyError> {
        let path = match parts.uri.path_and_query() {
            // The common case: the request's own path, shared, not copied.
            Some(path) if upstream.base_path.is_empty() => path.clone(),
            path => {
                let path = path.map_or("/", |p| p.as_str());
                PathAndQuery::try_from(format!("{}{}", upstream.base_path, path))
                    .map_err(|e| ProxyError::Upstream(format!("building upstream URI: {e}")))?
            }
        };
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        headers.insert(header::HOST, upstream.host.clone());
        headers.insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(body.len()),
        );
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = parts.method.clone();
        // Origin form: the request line carries the path, `host` the authority.
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The request as it goes upstream.
#[derive(Debug)]
pub struct Pinned {
    pub body: Bytes,
    /// Index of the serving variant.
    pub variant: usize,
    /// The request named an allowed pinned version itself.
    pub overridden: bool,
}

/// Pin the model version: rewrite a missing or aliased model to the chosen variant's
/// version, route an explicit pinned version to its own variant, refuse anything else.
/// Also adds `"logprobs": true` when the task asks for it. Leaves the body untouched when
/// the task rewrites nothing.
pub fn pin_request(task: &Task, chosen: usize, body: Bytes) -> Result<Pinned, ProxyError> {
    pin(task, chosen, body, false)
}

/// Pin to the given variant whatever allowed version the request names (shadow copies).
pub fn pin_to(task: &Task, variant: usize, body: Bytes) -> Result<Bytes, ProxyError> {
    pin(task, variant, body, true).map(|p| p.body)
}

fn pin(task: &Task, chosen: usize, body: Bytes, force: bool) -> Result<Pinned, ProxyError> {
    let field = task.model.request_field.as_deref();
    if field.is_none() && !task.request_logprobs {
        return Ok(Pinned {
            body,
            variant: chosen,
            overridden: false,
        });
    }
    let mut doc: Value =
        serde_json::from_slice(&body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(ProxyError::InvalidJson("expected a JSON object".into()));
    }
    let mut variant = chosen;
    let mut overridden = false;
    if let Some(field) = field {
        let variants = &task.rollout.variants;
        let requested = match doc.pointer(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(ProxyError::ModelVersionNotAllowed(other.to_string())),
        };
        let rewrite = match requested {
            None => true,
            Some(name) if task.model.aliases.iter().any(|a| a == name) => true,
            // A shadow's version is not servable: only live variants can be named.
            Some(name) => match variants
                .iter()
                .position(|v| v.shadow.is_none() && v.version.as_deref() == Some(name))
            {
                Some(_) if force => true,
                Some(i) => {
                    overridden = i != chosen;
                    variant = i;
                    false
                }
                None if variants.iter().all(|v| v.version.is_none()) => false,
                None => return Err(ProxyError::ModelVersionNotAllowed(name.to_owned())),
            },
        };
        if rewrite && let Some(version) = variants.get(variant).and_then(|v| v.version.as_deref()) {
            set_pointer(&mut doc, field, Value::String(version.to_owned()))?;
        }
    }
    if task.request_logprobs
        && let Some(obj) = doc.as_object_mut()
    {
        obj.insert("logprobs".into(), Value::Bool(true));
    }
    let body = serde_json::to_vec(&doc).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    Ok(Pinned {
        body: body.into(),
        variant,
        overridden,
    })
}

fn set_pointer(doc: &mut Value, pointer: &str, value: Value) -> Result<(), ProxyError> {
    if let Some(slot) = doc.pointer_mut(pointer) {
        *slot = value;
        return Ok(());
    }
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    let key = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.insert(key, value);
            Ok(())
        }
        _ => Err(ProxyError::InvalidJson(format!(
            "no JSON object at {parent:?} for the model field"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Upstream;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_stripped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "close, x-private"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-length", "12"),
            ("x-private", "1"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-request-id"]);

        // Nothing to strip: untouched, `content-length` too.
        headers.insert("content-length", HeaderValue::from_static("12"));
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn the_upstream_uri_joins_its_base_path_and_the_request_path() {
        let client = UpstreamClient::new(Duration::from_secs(1), 1024);
        let upstream = |base: &str| Upstream {
            name: "m".into(),
            authority: "model:8000".parse().unwrap(),
            host: HeaderValue::from_static("model:8000"),
            base_path: base.into(),
            timeout: Duration::from_secs(1),
        };
        let (parts, ()) = Request::post("http://sidecar/v1/chat?x=1")
            .header("host", "sidecar")
            .body(())
            .unwrap()
            .into_parts();
        let req = client
            .build(&upstream(""), &parts, Bytes::from_static(b"{}"))
            .unwrap();
        assert_eq!(req.uri(), "/v1/chat?x=1");
        assert_eq!(req.headers()["host"], "model:8000");
        assert_eq!(req.headers()["content-length"], "2");
        let req = client
            .build(&upstream("/base"), &parts, Bytes::new())
            .unwrap();
        assert_eq!(req.uri(), "/base/v1/chat?x=1");
    }
}
