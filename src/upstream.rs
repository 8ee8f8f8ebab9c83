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
use crate::probe;
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
        // Most bodies go as they came, under the length that framed them: keep it (when
        // it came once; a repeated one is replaced by one).
        let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
        let framed = match (lengths.next(), lengths.next()) {
            (Some(v), None) => v.to_str().ok().and_then(|v| v.parse::<usize>().ok()),
            _ => None,
        };
        if framed != Some(body.len()) {
            headers.insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(body.len()),
            );
        }
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
    if let Some(pinned) = splice(task, chosen, &body, force)? {
        return Ok(pinned);
    }
    pin_by_value(task, chosen, &body, force)
}

/// Which variant serves a request that names `requested` (absent or null: `None`), and
/// whether its model field is to be set to that variant's version.
#[derive(Debug)]
struct Choice {
    variant: usize,
    overridden: bool,
    rewrite: bool,
}

impl Choice {
    /// The chosen variant, the request as it is.
    fn keep(chosen: usize) -> Self {
        Choice {
            variant: chosen,
            overridden: false,
            rewrite: false,
        }
    }
}

fn choose(
    task: &Task,
    chosen: usize,
    requested: Option<&str>,
    force: bool,
) -> Result<Choice, ProxyError> {
    let variants = &task.rollout.variants;
    let mut choice = Choice::keep(chosen);
    choice.rewrite = match requested {
        None => true,
        Some(name) if task.model.aliases.iter().any(|a| a == name) => true,
        // A shadow's version is not servable: only live variants can be named.
        Some(name) => match variants
            .iter()
            .position(|v| v.shadow.is_none() && v.version.as_deref() == Some(name))
        {
            Some(_) if force => true,
            Some(i) => {
                choice.overridden = i != chosen;
                choice.variant = i;
                false
            }
            None if variants.iter().all(|v| v.version.is_none()) => false,
            None => return Err(ProxyError::ModelVersionNotAllowed(name.to_owned())),
        },
    };
    Ok(choice)
}

/// The common case, edited in place: a top-level model field and `logprobs` are found by
/// one checked walk of the body, and only their values change; every other byte goes
/// upstream as the client sent it, and a body that needs no edit is not copied. The key and
/// the versions come ready from rule compilation. `None` leaves the request to
/// [`pin_by_value`]: a nested model field, a body that is not JSON or not UTF-8 (for its
/// error), a model that is neither a plain string nor null, or a key given twice or with
/// escapes.
fn splice(
    task: &Task,
    chosen: usize,
    body: &Bytes,
    force: bool,
) -> Result<Option<Pinned>, ProxyError> {
    const LOGPROBS: &str = "logprobs";
    let member = task.model.request_member.as_ref();
    if task.model.request_field.is_some() && member.is_none() {
        return Ok(None);
    }
    let keys = match member {
        Some(m) => [&*m.key, LOGPROBS],
        None => [LOGPROBS, LOGPROBS],
    };
    let logprobs_at = usize::from(member.is_some());
    let Ok(found) = probe::members(body, &keys[..=logprobs_at]) else {
        return Ok(None);
    };
    let Some(found) = found else {
        return Err(ProxyError::InvalidJson("expected a JSON object".into()));
    };
    if found.ambiguous || std::str::from_utf8(body).is_err() {
        return Ok(None);
    }
    let value = |range: &std::ops::Range<usize>| body.get(range.clone()).unwrap_or_default();

    // Values to replace, and new members (they go first in the object): (opening, value).
    let mut replace: Vec<(std::ops::Range<usize>, &[u8])> = Vec::new();
    let mut insert: Vec<(&[u8], &[u8])> = Vec::new();
    let mut choice = Choice::keep(chosen);
    if let Some(member) = member {
        let current = found.values.first().and_then(Option::as_ref);
        let requested = match current.map(value) {
            None | Some(b"null") => None,
            // Checked UTF-8 above, and no escape to decode.
            Some([b'"', name @ .., b'"']) if !name.contains(&b'\\') => {
                Some(std::str::from_utf8(name).unwrap_or_default())
            }
            Some(_) => return Ok(None),
        };
        choice = choose(task, chosen, requested, force)?;
        let version = task
            .rollout
            .variants
            .get(choice.variant)
            .and_then(|v| v.version_json.as_deref());
        if choice.rewrite
            && let Some(version) = version
        {
            match current {
                Some(range) => replace.push((range.clone(), version)),
                None => insert.push((&member.opening, version)),
            }
        }
    }
    if task.request_logprobs {
        match found.values.get(logprobs_at).and_then(Option::as_ref) {
            Some(range) if value(range) == b"true" => {}
            Some(range) => replace.push((range.clone(), b"true")),
            None => insert.push((b"\"logprobs\":", b"true")),
        }
    }
    if replace.is_empty() && insert.is_empty() {
        return Ok(Some(Pinned {
            body: body.clone(),
            variant: choice.variant,
            overridden: choice.overridden,
        }));
    }
    replace.sort_by_key(|(range, _)| range.start);
    let extra: usize = insert
        .iter()
        .map(|(k, v)| k.len() + v.len() + 1)
        .sum::<usize>()
        + replace.iter().map(|(_, v)| v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(body.len() + extra);
    out.extend_from_slice(body.get(..found.open).unwrap_or_default());
    for (k, (opening, new)) in insert.iter().enumerate() {
        out.extend_from_slice(opening);
        out.extend_from_slice(new);
        if k + 1 < insert.len() || !found.empty {
            out.push(b',');
        }
    }
    let mut at = found.open;
    for (range, new) in &replace {
        out.extend_from_slice(body.get(at..range.start).unwrap_or_default());
        out.extend_from_slice(new);
        at = range.end;
    }
    out.extend_from_slice(body.get(at..).unwrap_or_default());
    Ok(Some(Pinned {
        body: out.into(),
        variant: choice.variant,
        overridden: choice.overridden,
    }))
}

/// Pin by parsing the whole body into a `serde_json::Value` and writing it out again:
/// what [`splice`] leaves, and the reference it is tested against.
fn pin_by_value(
    task: &Task,
    chosen: usize,
    body: &[u8],
    force: bool,
) -> Result<Pinned, ProxyError> {
    let (doc, choice) = pinned_value(task, chosen, body, force)?;
    let body = serde_json::to_vec(&doc).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    Ok(Pinned {
        body: body.into(),
        variant: choice.variant,
        overridden: choice.overridden,
    })
}

fn pinned_value(
    task: &Task,
    chosen: usize,
    body: &[u8],
    force: bool,
) -> Result<(Value, Choice), ProxyError> {
    let field = task.model.request_field.as_deref();
    let mut doc: Value =
        serde_json::from_slice(body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    if !doc.is_object() {
        return Err(ProxyError::InvalidJson("expected a JSON object".into()));
    }
    let mut choice = Choice::keep(chosen);
    if let Some(field) = field {
        let requested = match doc.pointer(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => return Err(ProxyError::ModelVersionNotAllowed(other.to_string())),
        };
        choice = choose(task, chosen, requested, force)?;
        if choice.rewrite
            && let Some(version) = task
                .rollout
                .variants
                .get(choice.variant)
                .and_then(|v| v.version.as_deref())
        {
            set_pointer(&mut doc, field, Value::String(version.to_owned()))?;
        }
    }
    if task.request_logprobs
        && let Some(obj) = doc.as_object_mut()
    {
        obj.insert("logprobs".into(), Value::Bool(true));
    }
    Ok((doc, choice))
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

    fn pinning_rules() -> crate::rules::RuleSet {
        let yaml = r#"
version: 1
upstreams: { llm: { url: "http://model:8000" } }
tasks:
  - name: chat
    match: { path_prefix: /chat }
    upstream: llm
    model: { request_field: /model, aliases: [gpt-4o, latest] }
    confidence: { source: openai_logprobs, request_logprobs: true }
    threshold: 0.5
    rollout:
      variants:
        - { name: stable, version: v-a, weight: 50 }
        - { name: canary, version: "v\"b", weight: 50 }
  - name: plain
    match: { path_prefix: /plain }
    upstream: llm
    model: { request_field: /model, aliases: [gpt-4o] }
    confidence: { source: openai_logprobs }
    threshold: 0.5
    rollout:
      variants:
        - { name: stable, version: v-a, weight: 100 }
  - name: logprobs-only
    match: { path_prefix: /lp }
    upstream: llm
    confidence: { source: openai_logprobs, request_logprobs: true }
    threshold: 0.5
"#;
        crate::rules::compile::compile(
            &[crate::rules::compile::SourceFile {
                name: "pin.yaml".into(),
                text: yaml.into(),
            }],
            None,
        )
        .unwrap()
    }

    /// What the splice made of `body`, checked against the whole-`Value` path: the same
    /// variant, the same document, the same refusal. `None` when the splice stood aside.
    fn spliced(task: &Task, chosen: usize, body: &[u8], force: bool) -> Option<Vec<u8>> {
        // The document, not its bytes: serde_json's default parse is not exact for every
        // float, so writing it out and reading it again may move a digit (the splice does
        // not write numbers at all).
        let by_value = pinned_value(task, chosen, body, force);
        match (
            splice(task, chosen, &Bytes::copy_from_slice(body), force),
            by_value,
        ) {
            (Ok(None), _) => None,
            (Ok(Some(p)), Ok(q)) => {
                let doc = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap();
                assert_eq!(doc(&p.body), q.0, "{}", String::from_utf8_lossy(body));
                assert_eq!((p.variant, p.overridden), (q.1.variant, q.1.overridden));
                Some(p.body.to_vec())
            }
            (Err(e), Err(f)) => {
                assert_eq!(e.code(), f.code(), "{e} / {f}");
                None
            }
            // JSON by its grammar that a `Value` cannot hold (a number past a double's range,
            // a `\\u` escape of half a surrogate pair): the splice forwards it as sent.
            (Ok(Some(p)), Err(f))
                if ["number out of range", "surrogate", "hex escape"]
                    .iter()
                    .any(|m| f.to_string().contains(m)) =>
            {
                Some(p.body.to_vec())
            }
            (p, q) => panic!(
                "{}: splice {p:?}, by value {q:?}",
                String::from_utf8_lossy(body)
            ),
        }
    }

    #[test]
    fn the_model_field_and_logprobs_are_edited_in_place() {
        let rules = pinning_rules();
        let [chat, plain, lp] = [0, 1, 2].map(|i| &rules.tasks[i]);
        let edit = |task, chosen, body: &str| {
            let out = spliced(task, chosen, body.as_bytes(), false).expect(body);
            String::from_utf8(out).unwrap()
        };
        // An alias becomes the chosen variant's version; nothing else moves, not even
        // the spacing or a number serde_json would print another way.
        assert_eq!(
            edit(
                plain,
                0,
                r#"{ "model" : "gpt-4o" , "n": 1.0e2, "x": [1,2] }"#
            ),
            r#"{ "model" : "v-a" , "n": 1.0e2, "x": [1,2] }"#
        );
        assert_eq!(
            edit(plain, 0, r#"{"n":1,"model":null}"#),
            r#"{"n":1,"model":"v-a"}"#
        );
        assert_eq!(edit(plain, 0, r#"{"n":1}"#), r#"{"model":"v-a","n":1}"#);
        assert_eq!(edit(plain, 0, "{ }"), r#"{"model":"v-a" }"#);
        // Already pinned, nothing to request: the body goes as it came.
        assert_eq!(edit(plain, 0, r#"{"model":"v-a"}"#), r#"{"model":"v-a"}"#);
        // The version is written as a JSON string; logprobs set or added.
        assert_eq!(
            edit(chat, 1, r#"{"logprobs":false,"messages":[]}"#),
            r#"{"model":"v\"b","logprobs":true,"messages":[]}"#
        );
        assert_eq!(edit(chat, 0, "{}"), r#"{"model":"v-a","logprobs":true}"#);
        assert_eq!(edit(lp, 0, r#"{"logprobs":true}"#), r#"{"logprobs":true}"#);
        assert_eq!(
            edit(lp, 0, r#"{"a":{"logprobs":1}}"#),
            r#"{"logprobs":true,"a":{"logprobs":1}}"#
        );
        // A pinned version the client names itself moves the request to its variant.
        let p = splice(chat, 1, &Bytes::from_static(br#"{"model":"v-a"}"#), false);
        let p = p.unwrap().unwrap();
        assert_eq!((p.variant, p.overridden), (0, true));

        // Left to the whole-document path: a key given twice or with escapes, a model that
        // is not a plain string, not JSON, not UTF-8.
        for body in [
            &br#"{"model":"a","model":"gpt-4o"}"#[..],
            br#"{"mod\u0065l":"gpt-4o"}"#,
            br#"{"model":"gpt\u002d4o"}"#,
            br#"{"model":5}"#,
            br#"{"model":"#,
            b"{\"model\":\"\xff\"}",
        ] {
            assert!(
                spliced(plain, 0, body, false).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Refused as the whole-document path refuses: an unknown version, not an object.
        for body in [r#"{"model":"v-z"}"#, "[1]"] {
            assert!(
                splice(plain, 0, &Bytes::from(body), false).is_err(),
                "{body}"
            );
            assert!(spliced(plain, 0, body.as_bytes(), false).is_none());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
        #[test]
        fn a_splice_means_what_the_whole_document_path_means(
            doc in crate::probe::testing::json(),
            model in 0usize..9,
            logprobs in 0usize..5,
            task in 0usize..3,
            chosen in 0usize..2,
            force: bool,
            pretty: bool,
        ) {
            let rules = pinning_rules();
            let task = &rules.tasks[task];
            let chosen = chosen.min(task.rollout.variants.len() - 1);
            let mut doc = match doc {
                Value::Object(map) => map,
                other => {
                    let mut map = serde_json::Map::new();
                    map.insert("x".into(), other);
                    map
                }
            };
            let models = [None, Some(Value::Null), Some("gpt-4o".into()), Some("latest".into()),
                Some("v-a".into()), Some("v\"b".into()), Some("v-z".into()), Some(5.into()), Some(true.into())];
            doc.remove("model");
            if let Some(m) = models[model].clone() {
                doc.insert("model".into(), m);
            }
            let flags = [None, Some(true.into()), Some(false.into()), Some(Value::Null), Some(1.into())];
            doc.remove("logprobs");
            if let Some(f) = flags[logprobs].clone() {
                doc.insert("logprobs".into(), f);
            }
            let doc = Value::Object(doc);
            let body = if pretty { serde_json::to_vec_pretty(&doc) } else { serde_json::to_vec(&doc) };
            spliced(task, chosen, &body.unwrap(), force);
        }

        /// Damaged bodies: whatever the splice makes of one, the whole-document path agrees
        /// (`spliced` panics when one refuses what the other takes).
        #[test]
        fn a_damaged_body_is_refused_or_taken_by_both_paths_alike(
            doc in crate::probe::testing::json(),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::sample::select(&b"\"\\{}[],:0-9eE.+u \x7f\xff\xc3\xa9\x00\n"[..]),
            how in 0usize..3,
            task in 0usize..3,
        ) {
            let rules = pinning_rules();
            let task = &rules.tasks[task];
            let mut body = serde_json::to_vec(&serde_json::json!({"model": "gpt-4o", "x": doc})).unwrap();
            let i = at.index(body.len());
            match how {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                _ => { body.remove(i); }
            }
            spliced(task, 0, &body, false);
        }

        #[test]
        fn escapes_in_skipped_strings_are_refused_or_taken_by_both_paths_alike(
            escape in "\\\\u[dD][89aAbBcCdDeEfF][0-9a-fA-F]{2}(\\\\u[0-9a-fA-F]{4})?",
        ) {
            let rules = pinning_rules();
            let body = format!(r#"{{"model":"gpt-4o","x":"{escape}"}}"#);
            spliced(&rules.tasks[1], 0, body.as_bytes(), false);
        }
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
        // A body that changed length gets its own; one that did not keeps the client's.
        let (framed, ()) = Request::post("http://sidecar/v1/chat")
            .header("content-length", "5")
            .body(())
            .unwrap()
            .into_parts();
        for (body, length) in [(&b"{}"[..], "2"), (b"{\"a\"}", "5")] {
            let req = client
                .build(&upstream(""), &framed, Bytes::from_static(body))
                .unwrap();
            assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
            assert_eq!(req.headers()["content-length"], length);
        }
        let (twice, ()) = Request::post("http://sidecar/v1/chat")
            .header("content-length", "5")
            .header("content-length", "5")
            .body(())
            .unwrap()
            .into_parts();
        let req = client
            .build(&upstream(""), &twice, Bytes::from_static(b"{\"a\"}"))
            .unwrap();
        assert_eq!(req.headers().get_all("content-length").iter().count(), 1);
        let req = client
            .build(&upstream("/base"), &parts, Bytes::new())
            .unwrap();
        assert_eq!(req.uri(), "/base/v1/chat?x=1");
    }
}
