//! Real clients work unchanged: the official `openai` Python SDK (tests/sdk/openai_client.py,
//! installed into .venv/ by scripts/setup-python.sh) with its base_url pointed at triage,
//! against a mock OpenAI upstream and the real RabbitMQ.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const PINNED: &str = "gpt-4o-2024-08-06";
/// The tokens of a streamed answer (the last one is multi-byte on purpose).
const STREAM_TOKENS: [&str; 6] = ["The", " total", " is", " 42", ".00", " €"];
/// The tokens of a streamed answer that triage must withhold.
const WITHHELD_TOKENS: [&str; 4] = ["WITHHELD", "-secret", "-answer", "-7731"];
const REFUSAL: &str = "I'm sorry, I can't help with that.";

// ---------------------------------------------------------------------------------------
// The mock OpenAI upstream: the user message steers it ("unclear" → confidence 0.3,
// "refuse" → a refusal, else 0.97); `"stream": true` gets server-sent events.

fn user_text(req: &Value) -> String {
    req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn openai_upstream(r: &Recorded) -> Reply {
    let req = r.json();
    if r.path != "/v1/chat/completions" {
        let mut reply = Reply::json(json!({"error": {"message": format!("no route {}", r.path),
            "type": "invalid_request_error", "code": null}}));
        reply.status = 404;
        return reply;
    }
    let model = req["model"].as_str().unwrap_or("unknown").to_string();
    let text = user_text(&req);
    let streamed = req["stream"] == true;
    match (streamed, text.as_str()) {
        (false, t) if t.contains("refuse") => Reply::json(refusal_completion(&model)),
        (false, t) if t.contains("unclear") => Reply::json(chat_completion(&model, 0.3)),
        (false, _) => Reply::json(chat_completion(&model, 0.97)),
        (true, t) if t.contains("unclear") => sse_reply(&sse_body(&model, &WITHHELD_TOKENS, 0.3)),
        (true, _) => sse_reply(&sse_body(&model, &STREAM_TOKENS, 0.97)),
    }
}

fn refusal_completion(model: &str) -> Value {
    json!({
        "id": "chatcmpl-refuse", "object": "chat.completion", "created": 1_700_000_000,
        "model": model, "system_fingerprint": "fp_test",
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": REFUSAL},
            "logprobs": {"content": null, "refusal": [
                {"token": "I'm", "logprob": -0.01, "top_logprobs": []},
                {"token": " sorry", "logprob": -0.02, "top_logprobs": []}
            ]}
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
    })
}

/// One `chat.completion.chunk` event.
fn chunk(model: &str, delta: Value, logprobs: Value, finish: Value) -> String {
    let c = json!({
        "id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "system_fingerprint": "fp_test", "service_tier": "default",
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    });
    format!("data: {c}\n\n")
}

/// A stream as OpenAI sends it: a role chunk (empty content, empty logprobs), one chunk per
/// token with its logprob, a final chunk with `finish_reason: stop`, then `[DONE]`.
fn sse_body(model: &str, tokens: &[&str], confidence: f64) -> Vec<u8> {
    let lp = confidence.ln();
    let mut out = chunk(
        model,
        json!({"role": "assistant", "content": "", "refusal": null}),
        json!({"content": [], "refusal": null}),
        Value::Null,
    );
    for t in tokens {
        out.push_str(&chunk(
            model,
            json!({"content": t}),
            json!({"content": [{"token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []}],
                   "refusal": null}),
            Value::Null,
        ));
    }
    out.push_str(&chunk(model, json!({}), Value::Null, json!("stop")));
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

fn sse_reply(body: &[u8]) -> Reply {
    Reply::raw(200, body).header("content-type", "text/event-stream; charset=utf-8")
}

fn rules(url: &str) -> String {
    format!(
        r#"
version: 1
upstreams: {{ openai: {{ url: "{url}" }} }}
tasks:
  - name: chat
    match: {{ path_prefix: /v1/chat/completions }}
    upstream: openai
    model: {{ request_field: /model, pinned: {PINNED}, aliases: [gpt-4o] }}
    confidence: {{ source: openai_logprobs, request_logprobs: true }}
    threshold: 0.8
"#
    )
}

// ---------------------------------------------------------------------------------------
// The Python client

fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-python.sh (installs the openai SDK into .venv/)",
        py.display()
    );
    py
}

/// Run one scenario of tests/sdk/openai_client.py against triage; its one JSON line.
async fn sdk(t: &Triage, scenario: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let run = tokio::process::Command::new(python())
        .arg(&script)
        .arg(format!("{}/v1", t.data))
        .arg(scenario)
        // The SDK reads these; a developer's own settings must not steer the test.
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_ORG_ID")
        .env_remove("OPENAI_PROJECT_ID")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap_or_else(|_| panic!("the python client ({scenario}) did not finish in 90 s"))
        .expect("run .venv/bin/python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'openai'"),
        "the openai SDK is not installed in .venv/: run scripts/setup-python.sh"
    );
    assert!(
        out.status.success(),
        "the python client ({scenario}) failed: {}\nstdout: {stdout}\nstderr: {stderr}\ntriage: {}",
        out.status,
        t.stderr()
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("the python client printed no JSON line ({e}): {stdout}"))
}

async fn setup() -> (Upstream, Triage) {
    let up = Upstream::start(openai_upstream).await;
    let t = Triage::start(&rules(&up.url())).await;
    (up, t)
}

/// The request reached the upstream pinned, with logprobs requested, as the SDK sent it.
fn assert_forwarded(up: &Upstream, stream: bool) {
    let sent = up.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    let body = sent.json();
    assert_eq!(body["model"], PINNED, "the alias was pinned");
    assert_eq!(body["logprobs"], true, "logprobs were requested");
    assert_eq!(body["stream"] == true, stream);
    assert!(
        sent.headers
            .get("user-agent")
            .is_some_and(|ua| ua.starts_with("OpenAI/Python")),
        "the SDK's own request reached the upstream: {:?}",
        sent.headers.get("user-agent")
    );
}

// ---------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread")]
async fn sdk_non_streaming_pass_gets_the_upstream_completion() {
    let (up, t) = setup().await;
    let out = sdk(&t, "pass").await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["decision"], "pass", "{out}");
    let sent = chat_completion(PINNED, 0.97);
    assert_eq!(
        out["content"], sent["choices"][0]["message"]["content"],
        "{out}"
    );
    assert_eq!(out["model"], PINNED, "{out}");
    assert_eq!(out["finish_reason"], "stop", "{out}");
    assert_eq!(out["logprobs"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(out["headers"]["x-triage-task"], "chat", "{out}");
    assert_eq!(out["headers"]["x-triage-variant"], "default", "{out}");
    let c: f64 = out["headers"]["x-triage-confidence"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((c - 0.97).abs() < 1e-6, "{out}");
    assert_forwarded(&up, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_streaming_pass_gets_every_delta() {
    let (up, t) = setup().await;
    let out = sdk(&t, "stream_pass").await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["decision"], "pass", "{out}");
    assert!(
        out["content_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{out}"
    );
    // The role chunk carries "" as content; the SDK hands it over like the rest.
    let mut expected = vec![""];
    expected.extend(STREAM_TOKENS);
    assert_eq!(out["deltas"], json!(expected), "{out}");
    assert_eq!(out["content"], STREAM_TOKENS.concat(), "{out}");
    assert_eq!(out["chunks"], STREAM_TOKENS.len() + 2, "{out}");
    assert_eq!(out["finish_reason"], "stop", "{out}");
    let c: f64 = out["headers"]["x-triage-confidence"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((c - 0.97).abs() < 1e-6, "{out}");
    assert_forwarded(&up, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_held_request_surfaces_the_202_with_a_review_id() {
    let (up, t) = setup().await;
    let out = sdk(&t, "hold").await;
    assert_eq!(out["status"], 202, "{out}");
    assert_eq!(out["decision"], "review", "{out}");
    let body = &out["body"];
    assert_eq!(body["status"], "pending_review", "{out}");
    assert_eq!(body["task"], "chat", "{out}");
    assert_eq!(body["variant"], "default", "{out}");
    assert_eq!(body["reason"], "low_confidence", "{out}");
    assert_eq!(body["threshold"], 0.8, "{out}");
    assert!(
        (body["confidence"].as_f64().unwrap() - 0.3).abs() < 1e-6,
        "{out}"
    );
    let review_id = body["review_id"].as_str().expect("a review_id").to_string();
    assert_eq!(out["headers"]["x-triage-review-id"], review_id.as_str());
    // A caller that ignores the status gets an error reading `.choices[0]`, never an output;
    // the 202's fields are attributes of the object the SDK returns.
    assert_eq!(out["naive_parse"]["error"], "TypeError", "{out}");
    assert_eq!(
        out["naive_parse"]["review_id_attr"],
        review_id.as_str(),
        "{out}"
    );
    assert_eq!(out["naive_parse"]["status_attr"], "pending_review", "{out}");
    assert_forwarded(&up, false);

    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, Duration::from_secs(5))
        .await
        .expect("the held output in the review queue");
    assert_eq!(m.body["review_id"], review_id.as_str());
    assert_eq!(m.message_id.as_deref(), Some(review_id.as_str()));
    assert_eq!(m.body["disposition"], "held");
    assert_eq!(m.body["reason"], "low_confidence");
    assert_eq!(
        m.body["request"]["body"]["model"], "gpt-4o",
        "as the SDK sent it"
    );
    assert_eq!(
        m.body["response"]["body"]["choices"][0]["message"]["content"],
        "total: 42.00"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_refusal_reaches_the_client() {
    let (up, t) = setup().await;
    let out = sdk(&t, "refusal").await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["decision"], "refused", "{out}");
    assert_eq!(out["refusal"], REFUSAL, "{out}");
    assert_eq!(out["content"], Value::Null, "{out}");
    assert_forwarded(&up, false);
}

#[tokio::test(flavor = "multi_thread")]
async fn sdk_streaming_hold_receives_not_a_single_event_of_the_withheld_output() {
    let (up, t) = setup().await;
    let out = sdk(&t, "stream_hold").await;
    // The python client itself asserts that no chunk was yielded; check it here too.
    assert_eq!(out["status"], 202, "{out}");
    assert_eq!(out["decision"], "review", "{out}");
    assert_eq!(out["chunks"], 0, "{out}");
    assert_eq!(out["deltas"], json!([]), "{out}");
    assert_eq!(out["refusal_deltas"], json!([]), "{out}");
    let text = out.to_string();
    for token in WITHHELD_TOKENS {
        assert!(!text.contains(token), "withheld output leaked: {out}");
    }
    assert!(!text.contains("data:"), "an event leaked: {out}");
    let body = &out["body"];
    assert_eq!(body["status"], "pending_review", "{out}");
    assert_eq!(body["reason"], "low_confidence", "{out}");
    let review_id = body["review_id"].as_str().expect("a review_id").to_string();
    assert_forwarded(&up, true);

    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, Duration::from_secs(5))
        .await
        .expect("the held stream in the review queue");
    assert_eq!(m.body["review_id"], review_id.as_str());
    let reviewed = m.body["response"]["body"].as_str().unwrap_or_default();
    assert!(
        WITHHELD_TOKENS.iter().all(|tok| reviewed.contains(tok)),
        "the reviewer gets the whole stream: {reviewed}"
    );
}
