//! `triage serve` end to end: the real binary, an upstream written here, the real RabbitMQ.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

/// An upstream that answers in the shape the `x-source` request header names, with the
/// confidence the `x-want` header asks for.
fn shaped(r: &Recorded) -> Reply {
    let want: f64 = r
        .headers
        .get("x-want")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.99);
    match r.headers.get("x-source").map(String::as_str).unwrap_or("") {
        "json_pointer" => Reply::json(json!({"label": "spam", "confidence": want})),
        "header" => Reply::json(json!({"label": "spam"})).header("x-confidence", &want.to_string()),
        "openai_logprobs" => Reply::json(json!({
            "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
              "message": {"role": "assistant", "content": "yes", "refusal": null},
              "logprobs": {"content": [{"token": "yes", "logprob": want.ln()}]}}]
        })),
        "max" => {
            Reply::json(json!({"probabilities": [(1.0 - want) / 2.0, want, (1.0 - want) / 2.0]}))
        }
        // Logits [0, a, 0]: softmax max = e^a / (e^a + 2) = want  =>  a = ln(2 want / (1 - want)).
        "softmax_max" => {
            Reply::json(json!({"logits": [0.0, (2.0 * want / (1.0 - want)).ln(), 0.0]}))
        }
        other => Reply::raw(500, format!("unknown source {other}").as_bytes()),
    }
}

fn source_rules(url: &str) -> String {
    let mut tasks = String::new();
    for source in [
        "json_pointer",
        "header",
        "openai_logprobs",
        "max",
        "softmax_max",
    ] {
        let conf = match source {
            "json_pointer" => "{ source: json_pointer, pointer: /confidence }".to_string(),
            "header" => "{ source: header, header: x-confidence }".to_string(),
            "openai_logprobs" => "{ source: openai_logprobs, aggregate: mean }".to_string(),
            "max" => "{ source: max, pointer: /probabilities }".to_string(),
            _ => "{ source: softmax_max, pointer: /logits }".to_string(),
        };
        for mode in ["hold", "flag"] {
            tasks.push_str(&format!(
                "  - name: {source}-{mode}\n    match: {{ headers: {{ x-task: {source}-{mode} }} }}\n    upstream: llm\n    confidence: {conf}\n    threshold: 0.5\n    on_review: {mode}\n"
            ));
        }
    }
    format!("version: 1\nupstreams: {{ llm: {{ url: \"{url}\" }} }}\ntasks:\n{tasks}")
}

#[tokio::test(flavor = "multi_thread")]
async fn pass_hold_and_flag_for_every_confidence_source_around_the_threshold() {
    let up = Upstream::start(shaped).await;
    // One worker: the current-thread scheduler (the loadtest's and a one-CPU pod's setup).
    let t = Triage::start_with(&source_rules(&up.url()), &["--worker-threads", "1"], &[]).await;
    let c = client();
    let mut expected_reviews: HashMap<String, (String, &str)> = HashMap::new();

    for source in [
        "json_pointer",
        "header",
        "openai_logprobs",
        "max",
        "softmax_max",
    ] {
        for mode in ["hold", "flag"] {
            let task = format!("{source}-{mode}");
            for (want, passes) in [(0.5, true), (0.499, false), (0.501, true)] {
                let ctx = format!("{task} at {want}");
                let r = c
                    .post(format!("{}/v1/predict", t.data))
                    .header("x-task", &task)
                    .header("x-source", source)
                    .header("x-want", want.to_string())
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let h = r.headers().clone();
                let body = r.bytes().await.unwrap();
                let header = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
                assert_eq!(
                    header("x-triage-task").as_deref(),
                    Some(task.as_str()),
                    "{ctx}"
                );
                assert_eq!(
                    header("x-triage-variant").as_deref(),
                    Some("default"),
                    "{ctx}"
                );
                let confidence: f64 = header("x-triage-confidence").unwrap().parse().unwrap();
                assert!(
                    (confidence - want).abs() < 1e-9,
                    "{ctx}: confidence {confidence}"
                );
                let upstream_body = shaped(&up.last()).body;
                if passes {
                    assert_eq!(status, 200, "{ctx}");
                    assert_eq!(
                        header("x-triage-decision").as_deref(),
                        Some("pass"),
                        "{ctx}"
                    );
                    assert_eq!(
                        &body[..],
                        &upstream_body[..],
                        "{ctx}: body must pass byte for byte"
                    );
                    assert!(header("x-triage-review-id").is_none(), "{ctx}");
                } else if mode == "hold" {
                    assert_eq!(status, 202, "{ctx}");
                    assert_eq!(
                        header("x-triage-decision").as_deref(),
                        Some("review"),
                        "{ctx}"
                    );
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["status"], "pending_review", "{ctx}");
                    assert_eq!(v["task"], task.as_str(), "{ctx}");
                    assert_eq!(v["variant"], "default", "{ctx}");
                    assert_eq!(v["reason"], "low_confidence", "{ctx}");
                    assert_eq!(v["threshold"], 0.5, "{ctx}");
                    assert!(
                        (v["confidence"].as_f64().unwrap() - want).abs() < 1e-9,
                        "{ctx}"
                    );
                    let id = v["review_id"].as_str().unwrap().to_string();
                    assert_eq!(header("x-triage-review-id"), Some(id.clone()), "{ctx}");
                    expected_reviews.insert(id, (task.clone(), "held"));
                } else {
                    assert_eq!(status, 200, "{ctx}");
                    assert_eq!(
                        header("x-triage-decision").as_deref(),
                        Some("flag"),
                        "{ctx}"
                    );
                    assert_eq!(
                        &body[..],
                        &upstream_body[..],
                        "{ctx}: flagged output passes unchanged"
                    );
                    let id = header("x-triage-review-id").expect("flag carries a review id");
                    expected_reviews.insert(id, (task.clone(), "flagged"));
                }
            }
        }
    }

    let broker = Broker::connect().await;
    let messages = broker.drain(&t.names.review_queue).await;
    assert_eq!(
        messages.len(),
        expected_reviews.len(),
        "one review item per held or flagged output"
    );
    for m in messages {
        let id = m.body["review_id"].as_str().unwrap().to_string();
        let (task, disposition) = expected_reviews
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected review {id}"));
        assert_eq!(m.body["task"], task.as_str());
        assert_eq!(m.body["disposition"], *disposition);
        assert_eq!(m.routing_key, format!("{task}.low_confidence"));
    }
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "held")])
            .await,
        5.0
    );
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "flagged")])
            .await,
        5.0
    );
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "passed")])
            .await,
        20.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_review_message_carries_everything_a_reviewer_needs() {
    let up = Upstream::start(|_| Reply::json(chat_completion("gpt-4o-2024-08-06", 0.6))).await;
    let rules = format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{}" }} }}
tasks:
  - name: invoice-extraction
    match: {{ path_prefix: /v1/chat/completions, method: POST }}
    upstream: llm
    model: {{ request_field: /model, response_field: /model, pinned: gpt-4o-2024-08-06, aliases: [gpt-4o] }}
    confidence: {{ source: openai_logprobs, request_logprobs: true }}
    threshold: 0.85
    redact: [/messages/0/content, /choices/0/message/content]
"#,
        up.url()
    );
    let t = Triage::start(&rules).await;
    let request = json!({"model": "gpt-4o", "messages": [{"role": "system", "content": "secret prompt"}, {"role": "user", "content": "hi"}]});
    let r = client()
        .post(format!("{}/v1/chat/completions?x=1", t.data))
        .header("authorization", "Bearer sk-secret")
        .header("cookie", "session=abc")
        .header("x-request-id", "req-7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let held: serde_json::Value = r.json().await.unwrap();
    let id = held["review_id"].as_str().unwrap();
    // UUIDv7: version nibble 7.
    assert_eq!(&id[14..15], "7", "review ids are UUIDv7: {id}");

    // The upstream saw the pinned version and the logprobs request.
    let sent = up.last().json();
    assert_eq!(sent["model"], "gpt-4o-2024-08-06");
    assert_eq!(sent["logprobs"], true);

    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, WAIT)
        .await
        .expect("review item in the queue");
    assert_eq!(m.message_id.as_deref(), Some(id));
    assert_eq!(m.content_type.as_deref(), Some("application/json"));
    assert_eq!(m.delivery_mode, Some(2), "persistent");
    assert_eq!(m.routing_key, "invoice-extraction.low_confidence");
    let b = &m.body;
    assert_eq!(b["schema"], "triage.review/v1");
    assert_eq!(b["review_id"], id);
    let created = b["created_at"].as_str().unwrap();
    assert!(
        created.ends_with('Z') && created.len() == 24,
        "RFC 3339 with millis: {created}"
    );
    assert_eq!(b["task"], "invoice-extraction");
    assert_eq!(b["variant"], "default");
    assert_eq!(b["reason"], "low_confidence");
    assert_eq!(b["disposition"], "held");
    assert!((b["confidence"].as_f64().unwrap() - 0.6).abs() < 1e-9);
    assert_eq!(b["confidence_source"], "openai_logprobs");
    assert_eq!(b["threshold"], 0.85);
    assert_eq!(
        b["model"],
        json!({"pinned": "gpt-4o-2024-08-06", "reported": "gpt-4o-2024-08-06"})
    );
    assert_eq!(b["request"]["method"], "POST");
    assert_eq!(b["request"]["path"], "/v1/chat/completions");
    let headers = b["request"]["headers"].as_object().unwrap();
    assert_eq!(headers.get("x-request-id"), Some(&json!("req-7")));
    assert_eq!(
        headers.get("content-type"),
        Some(&json!("application/json"))
    );
    assert!(
        headers.get("authorization").is_none(),
        "no authorization in review items"
    );
    assert!(
        headers.get("cookie").is_none(),
        "no cookies in review items"
    );
    assert!(!m.body.to_string().contains("sk-secret"));
    assert_eq!(b["request"]["body"]["messages"][0]["content"], "[redacted]");
    assert_eq!(b["request"]["body"]["messages"][1]["content"], "hi");
    assert!(!m.body.to_string().contains("secret prompt"));
    assert_eq!(b["response"]["status"], 200);
    assert_eq!(
        b["response"]["body"]["choices"][0]["message"]["content"],
        "[redacted]"
    );
    assert_eq!(b["response"]["body"]["usage"]["prompt_tokens"], 120);
    assert_eq!(b["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

/// Review items go out in 16 KiB frames (the connection's `frame_max`): one far larger
/// than a frame must arrive whole, request and response.
#[tokio::test(flavor = "multi_thread")]
async fn a_review_item_many_frames_long_arrives_whole() {
    let text: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let answer = json!({"confidence": 0.2, "text": text});
    let up = Upstream::start({
        let answer = answer.clone();
        move |_| Reply::json(answer.clone())
    })
    .await;
    let t = Triage::start(&one_task_rules(&up.url())).await;
    let request = json!({"prompt": text.to_uppercase()});
    let r = client()
        .post(format!("{}/v1/x", t.data))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, WAIT)
        .await
        .expect("review item in the queue");
    assert_eq!(m.body["request"]["body"], request);
    assert_eq!(m.body["response"]["body"], answer);
}

/// A model server written by hand, to see its connections: it answers every request on a
/// connection with `{"confidence":0.9}` and, per `close`, keeps the connection open, closes
/// it after the answer without saying so, or answers with `connection: close`. It records
/// the connections it accepted and every request head.
async fn raw_upstream(
    close: &'static str,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (count, seen) = (accepted.clone(), heads.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                // More bytes into `buf`; false once the client has gone.
                async fn more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => false,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            true
                        }
                    }
                }
                loop {
                    // One request: the head, then content-length bytes of body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        if !more(&mut stream, &mut buf).await {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + length {
                        if !more(&mut stream, &mut buf).await {
                            return;
                        }
                    }
                    buf.drain(..head_end + length);
                    seen.lock().unwrap().push(head);
                    let body = r#"{"confidence":0.9}"#;
                    let extra = if close == "header" {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    // "header" keeps its end open: triage must close on the header alone.
                    if stream.write_all(answer.as_bytes()).await.is_err() || close == "silently" {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, heads)
}

/// Connections to the model server are kept and reused; one the server closed while it sat
/// idle is replaced without the client seeing an error; `connection: close` is honoured.
#[tokio::test(flavor = "multi_thread")]
async fn connections_to_the_model_are_reused_and_closed_ones_replaced() {
    let c = client();
    for (close, expect_connections) in [("open", 1), ("silently", 8), ("header", 8)] {
        let (addr, accepted, heads) = raw_upstream(close).await;
        let t = Triage::start(&one_task_rules(&format!("http://{addr}"))).await;
        for i in 0..8 {
            let r = t.post_empty(&c).await;
            assert_eq!(r.status(), 200, "{close}: request {i}");
            assert_eq!(r.text().await.unwrap(), r#"{"confidence":0.9}"#);
            // Time for the connection's end to be seen, as it would be between requests
            // in production.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            expect_connections,
            "{close}: connections the model server accepted"
        );
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 8);
        // Origin form, and the upstream's own authority as the host.
        assert!(
            heads[0].starts_with("post /v1/x http/1.1\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[0].contains(&format!("host: {addr}\r\n")),
            "{}",
            heads[0]
        );
    }
}

fn missing_rules(url: &str) -> String {
    format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{url}" }} }}
tasks:
  - name: strict
    match: {{ headers: {{ x-task: strict }} }}
    upstream: llm
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
    on_missing_confidence: reject
  - name: gated
    upstream: llm
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_nan_string_negative_and_out_of_range_confidences_are_never_released() {
    let up = Upstream::start(|r| {
        let body: &[u8] = match r.headers.get("x-case").map(String::as_str).unwrap_or("") {
            "missing" => br#"{"label":"x"}"#,
            "nan" => br#"{"label":"x","confidence":NaN}"#,
            "string" => br#"{"label":"x","confidence":"0.9"}"#,
            "null" => br#"{"label":"x","confidence":null}"#,
            "negative" => br#"{"label":"x","confidence":-0.2}"#,
            "above-one" => br#"{"label":"x","confidence":1.5}"#,
            "not-json" => b"<html>model crashed</html>",
            _ => br#"{"confidence":0.9}"#,
        };
        Reply::raw(200, body).header("content-type", "application/json")
    })
    .await;
    let t = Triage::start(&missing_rules(&up.url())).await;
    let c = client();
    let broker = Broker::connect().await;
    for case in [
        "missing",
        "nan",
        "string",
        "null",
        "negative",
        "above-one",
        "not-json",
    ] {
        let r = c
            .post(format!("{}/v1/x", t.data))
            .header("x-case", case)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{case}: held for review");
        assert_eq!(r.headers()["x-triage-decision"], "review", "{case}");
        assert!(r.headers().get("x-triage-confidence").is_none(), "{case}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["reason"], "missing_confidence", "{case}");
        assert_eq!(v["confidence"], serde_json::Value::Null, "{case}");
        let m = broker
            .next(&t.names.review_queue, WAIT)
            .await
            .expect("item");
        assert_eq!(m.body["review_id"], v["review_id"], "{case}");
        assert_eq!(m.routing_key, "gated.missing_confidence");
        if case == "not-json" {
            assert_eq!(
                m.body["response"]["body"], "<html>model crashed</html>",
                "non-JSON bodies travel as strings"
            );
        }

        let r = c
            .post(format!("{}/v1/x", t.data))
            .header("x-case", case)
            .header("x-task", "strict")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502, "{case}: on_missing_confidence reject");
        assert_eq!(r.headers()["x-triage-decision"], "error");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_upstream_response", "{case}");
        assert_eq!(v["error"]["task"], "strict");
    }
    assert_eq!(
        t.metric(
            "triage_escalations_total",
            &[("task", "gated"), ("reason", "missing_confidence")]
        )
        .await,
        7.0
    );
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("task", "strict"), ("outcome", "rejected")]
        )
        .await,
        7.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_errors_and_timeouts() {
    let up = Upstream::start(|r| match r.path.as_str() {
        "/v1/500" => Reply::raw(
            500,
            br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        )
        .header("content-type", "application/json")
        .header("x-upstream", "kept"),
        "/v1/400" => Reply::raw(
            400,
            br#"{"error":{"message":"bad model","code":"model_not_found"}}"#,
        ),
        "/v1/slow" => Reply::json(json!({"confidence": 0.99})).delay(Duration::from_secs(3)),
        _ => Reply::json(json!({"confidence": 0.99})),
    })
    .await;
    let closing = closing_upstream().await;
    let rules = format!(
        r#"
version: 1
upstreams:
  llm: {{ url: "{}", timeout_ms: 500 }}
  broken: {{ url: "http://{closing}" }}
  nothing: {{ url: "http://127.0.0.1:9" }}
tasks:
  - name: closes
    match: {{ path_prefix: /v1/closes }}
    upstream: broken
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
  - name: refused
    match: {{ path_prefix: /v1/refused }}
    upstream: nothing
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
  - name: t
    upstream: llm
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
"#,
        up.url()
    );
    // One worker: timeouts and connect errors on the current-thread scheduler too.
    let t = Triage::start_with(&rules, &["--worker-threads", "1"], &[]).await;
    let c = client();

    for (path, status, code) in [
        ("/v1/closes", 502, "upstream_error"),
        ("/v1/refused", 502, "upstream_error"),
        ("/v1/slow", 504, "upstream_timeout"),
    ] {
        let started = std::time::Instant::now();
        let r = c
            .post(format!("{}{path}", t.data))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["x-triage-decision"], "error");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        if path == "/v1/slow" {
            assert!(
                started.elapsed() < Duration::from_millis(2500),
                "the timeout cut the wait"
            );
        }
    }

    for (path, status, body) in [
        (
            "/v1/500",
            500,
            &br#"{"error":{"message":"overloaded","type":"server_error"}}"#[..],
        ),
        (
            "/v1/400",
            400,
            &br#"{"error":{"message":"bad model","code":"model_not_found"}}"#[..],
        ),
    ] {
        let r = c
            .post(format!("{}{path}", t.data))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path} passes through");
        assert_eq!(r.headers()["x-triage-decision"], "error");
        assert_eq!(r.headers()["x-triage-task"], "t");
        if path == "/v1/500" {
            assert_eq!(r.headers()["x-upstream"], "kept");
        }
        assert_eq!(
            &r.bytes().await.unwrap()[..],
            body,
            "{path}: body unchanged"
        );
    }
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("task", "t"), ("outcome", "timeout")]
        )
        .await,
        1.0
    );
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("task", "t"), ("outcome", "upstream_error")]
        )
        .await,
        2.0
    );
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("task", "closes"), ("outcome", "upstream_error")]
        )
        .await,
        1.0
    );

    // Still serving.
    let r = c
        .post(format!("{}/v1/ok", t.data))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_under_both_on_refusal_settings() {
    let up = Upstream::start(|r| {
        let mut body = chat_completion("m", 0.99);
        if r.headers.contains_key("x-content-filter") {
            body["choices"][0]["finish_reason"] = json!("content_filter");
        } else {
            body["choices"][0]["message"]["refusal"] = json!("I can't help with that.");
            body["choices"][0]["message"]["content"] = serde_json::Value::Null;
        }
        Reply::json(body)
    })
    .await;
    let rules = format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{}" }} }}
tasks:
  - name: review-refusals
    match: {{ headers: {{ x-task: review }} }}
    upstream: llm
    confidence: {{ source: openai_logprobs }}
    threshold: 0.5
    on_refusal: review
  - name: pass-refusals
    upstream: llm
    confidence: {{ source: openai_logprobs }}
    threshold: 0.5
"#,
        up.url()
    );
    let t = Triage::start(&rules).await;
    let c = client();
    for filter in [false, true] {
        let mut req = c.post(format!("{}/v1/chat/completions", t.data)).body("{}");
        if filter {
            req = req.header("x-content-filter", "1");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-triage-decision"], "refused");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["id"], "chatcmpl-1",
            "the refusal reaches the caller as the model sent it"
        );

        let mut req = c
            .post(format!("{}/v1/chat/completions", t.data))
            .header("x-task", "review")
            .body("{}");
        if filter {
            req = req.header("x-content-filter", "1");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["reason"], "refusal");
        let m = Broker::connect()
            .await
            .next(&t.names.review_queue, WAIT)
            .await
            .unwrap();
        assert_eq!(m.routing_key, "review-refusals.refusal");
        assert_eq!(m.body["review_id"], v["review_id"]);
    }
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "refused")])
            .await,
        4.0
    );
    assert_eq!(
        t.metric("triage_escalations_total", &[("reason", "refusal")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_20_mib_body_is_refused_with_413_while_the_sidecar_keeps_serving() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.99}))).await;
    let rules = one_task_rules(&up.url());
    // One worker: the slow 20 MiB upload must not hold up the other requests on that thread.
    let t = Triage::start_with(&rules, &["--worker-threads", "1"], &[]).await;
    let c = client();
    let big = vec![b'a'; 20 * 1024 * 1024];
    let data = t.data.clone();
    let big_req = tokio::spawn({
        let c = c.clone();
        async move { c.post(format!("{data}/v1/x")).body(big).send().await }
    });
    // Meanwhile, ordinary requests are served.
    for _ in 0..20 {
        let r = t.post_empty(&c).await;
        assert_eq!(r.status(), 200);
    }
    let r = big_req
        .await
        .unwrap()
        .expect("the client gets an answer, not a reset");
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    assert_eq!(v["error"]["task"], "t");

    // Chunked (no content-length) is capped too.
    let stream = futures_util::stream::iter(
        (0..21).map(|_| Ok::<_, std::io::Error>(vec![b'b'; 1024 * 1024])),
    );
    let r = c
        .post(format!("{}/v1/x", t.data))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(up.count(), 20, "nothing oversized reached the upstream");
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_refuses_the_publish_gives_503_never_202() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.1}))).await;
    let rules = one_task_rules(&up.url());
    // No usable spool: the broker is the only way to make a hold durable.
    let t = Triage::start_with(&rules, &["--spool-dir", "/dev/null/spool"], &[]).await;
    let c = client();
    let broker = Broker::connect().await;
    let ch = broker.conn.create_channel().await.unwrap();

    // The queue is gone: the mandatory publish comes back unroutable.
    ch.queue_delete(t.names.review_queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-triage-decision"], "error");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "review_unavailable");
    assert!(
        !v.to_string().contains("0.1"),
        "the low-confidence output is not in the answer"
    );

    // The exchange is gone: the broker closes the channel.
    ch.exchange_delete(t.names.review_exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "review_unavailable");

    assert_eq!(
        t.metric("triage_review_publish_total", &[("result", "failed")])
            .await,
        2.0
    );
    assert_eq!(
        t.metric("triage_requests_total", &[("outcome", "held")])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_invalid_json_and_unknown_versions_are_json_errors() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.9, "model": "v1"}))).await;
    let rules = format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{}" }} }}
tasks:
  - name: pinned
    match: {{ path_prefix: /v1/chat, method: POST }}
    upstream: llm
    model: {{ request_field: /model, pinned: v1, aliases: [latest] }}
    confidence: {{ source: json_pointer, pointer: /confidence }}
    threshold: 0.5
"#,
        up.url()
    );
    let t = Triage::start(&rules).await;
    let c = client();
    let r = c.get(format!("{}/v1/chat", t.data)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_route");

    let r = c
        .post(format!("{}/v1/chat", t.data))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    assert_eq!(v["error"]["task"], "pinned");

    let r = c
        .post(format!("{}/v1/chat", t.data))
        .body(r#"{"model":"gpt-5"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_version_not_allowed");

    for body in [r#"{"model":"latest"}"#, r#"{}"#, r#"{"model":"v1"}"#] {
        let r = c
            .post(format!("{}/v1/chat", t.data))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{body}");
        assert_eq!(r.headers()["x-triage-model-version"], "v1");
        assert_eq!(up.last().json()["model"], "v1", "{body}");
    }
    assert_eq!(up.count(), 3, "refused requests never reach the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_clients_are_served() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.9}))).await;
    let rules = one_task_rules(&up.url());
    let t = Triage::start(&rules).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = t.post_empty(&c).await;
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-triage-decision"], "pass");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_past_the_in_flight_cap_get_a_fast_503_and_room_comes_back() {
    let up = Upstream::start(|r| {
        let reply = Reply::json(json!({"confidence": 0.9}));
        match r.path.as_str() {
            "/slow" => reply.delay(Duration::from_millis(1500)),
            _ => reply,
        }
    })
    .await;
    let t = Triage::start_with(&one_task_rules(&up.url()), &["--max-in-flight", "2"], &[]).await;
    let c = client();
    let post = |path: &'static str| {
        let (c, url) = (c.clone(), format!("{}{path}", t.data));
        tokio::spawn(async move { c.post(url).body("{}").send().await.unwrap() })
    };

    let held = [post("/slow"), post("/slow")];
    // Both are in flight once the upstream has seen them.
    while up.count() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let r = post("/fast").await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "refused without waiting for room"
    );
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(up.count(), 2, "the refused request never went upstream");

    for h in held {
        assert_eq!(h.await.unwrap().status(), 200);
    }
    let r = post("/fast").await.unwrap();
    assert_eq!(r.status(), 200, "the two that finished made room");
    assert_eq!(r.headers()["x-triage-decision"], "pass");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_read_whole_up_to_the_response_cap_and_refused_past_it() {
    // Bodies of many frames: 200 KB fits under the 256 KiB cap, 300 KB does not.
    let answer = |size: usize| {
        let pad = "x".repeat(size);
        serde_json::to_vec(&json!({"confidence": 0.9, "pad": pad})).unwrap()
    };
    let (fits, too_big) = (answer(200_000), answer(300_000));
    let fits_body = fits.clone();
    let up = Upstream::start(move |r| {
        let body = if r.path == "/fits" { &fits } else { &too_big };
        Reply::raw(200, body).header("content-type", "application/json")
    })
    .await;
    let t = Triage::start_with(
        &one_task_rules(&up.url()),
        &["--max-response-bytes", "262144"],
        &[],
    )
    .await;
    let c = client();

    let r = c
        .post(format!("{}/fits", t.data))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-triage-decision"], "pass");
    assert_eq!(r.headers()["content-length"], fits_body.len().to_string());
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &fits_body[..],
        "byte for byte"
    );

    let r = c
        .post(format!("{}/big", t.data))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_upstream_response");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("262144")),
        "{v}"
    );
}
