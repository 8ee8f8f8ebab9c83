//! Streamed (server-sent events) completions: gated from the chunks' logprobs, then
//! replayed as they came, held, or flagged; or passed through ungated when a task says so.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use common::*;
use serde_json::json;

/// An OpenAI-style stream: one chunk per token, each with its logprob, then `[DONE]`.
fn sse(confidence: f64, refusal: bool) -> Vec<u8> {
    let lp = confidence.ln();
    let mut out = String::new();
    for (i, token) in ["The", " total", " is", " 42"].iter().enumerate() {
        let delta = if refusal && i == 0 {
            json!({"refusal": "I can't help with that."})
        } else {
            json!({"content": token})
        };
        let chunk = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": delta, "finish_reason": null,
                         "logprobs": {"content": [{"token": token, "logprob": lp, "top_logprobs": []}]}}]});
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 4, "total_tokens": 54}});
    out.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    out.into_bytes()
}

fn upstream(r: &Recorded) -> Reply {
    let c: f64 = r
        .headers
        .get("x-want")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.95);
    let refusal = r.headers.contains_key("x-refuse");
    let mut reply = Reply::raw(200, &sse(c, refusal));
    reply.headers.push((
        "content-type".into(),
        "text/event-stream; charset=utf-8".into(),
    ));
    reply
}

fn rules(url: &str) -> String {
    format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{url}" }} }}
tasks:
  - name: passthrough
    match: {{ headers: {{ x-task: passthrough }} }}
    upstream: llm
    confidence: {{ source: openai_logprobs }}
    threshold: 0.8
    streaming: passthrough
  - name: flagged
    match: {{ headers: {{ x-task: flagged }} }}
    upstream: llm
    confidence: {{ source: openai_logprobs }}
    threshold: 0.8
    on_review: flag
  - name: chat
    upstream: llm
    model: {{ request_field: /model, response_field: /model, pinned: gpt-4o-2024-08-06, aliases: [gpt-4o] }}
    confidence: {{ source: openai_logprobs, request_logprobs: true }}
    threshold: 0.8
    cost: {{ prompt_per_1m: 1000000, completion_per_1m: 0 }}
"#
    )
}

async fn stream(
    t: &Triage,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client()
        .post(format!("{}/v1/chat/completions", t.data))
        .json(&json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "total?"}]}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (
        r.status().as_u16(),
        r.headers().clone(),
        r.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confident_stream_is_replayed_as_it_came() {
    let up = Upstream::start(upstream).await;
    let t = Triage::start(&rules(&up.url())).await;
    let (status, h, body) = stream(&t, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, sse(0.95, false), "events replayed byte for byte");
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(h["x-triage-decision"], "pass");
    let c: f64 = h["x-triage-confidence"].to_str().unwrap().parse().unwrap();
    assert!(
        (c - 0.95).abs() < 1e-9,
        "confidence from the chunks' logprobs: {c}"
    );
    assert_eq!(h["x-triage-model-version"], "gpt-4o-2024-08-06");
    let sent = up.last().json();
    assert_eq!(sent["model"], "gpt-4o-2024-08-06");
    assert_eq!(sent["logprobs"], true);
    assert_eq!(sent["stream"], true);
    // Usage from the final chunk is priced.
    assert_eq!(
        t.metric(
            "triage_tokens_total",
            &[("task", "chat"), ("kind", "prompt")]
        )
        .await,
        50.0
    );
    assert_eq!(
        t.metric("triage_cost_total", &[("task", "chat")]).await,
        50.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_stream_never_sends_a_single_event_of_the_withheld_output() {
    let up = Upstream::start(upstream).await;
    let t = Triage::start(&rules(&up.url())).await;
    let (status, h, body) = stream(&t, &[("x-want", "0.5")]).await;
    assert_eq!(status, 202);
    assert_eq!(h["content-type"], "application/json");
    let text = String::from_utf8(body).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Nothing of the output: only the pending-review fields, and none of the output's
    // text outside the review id (a UUID's hex digits may well contain "42").
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "confidence",
            "reason",
            "review_id",
            "status",
            "task",
            "threshold",
            "variant"
        ]
    );
    let rest = text.replace(v["review_id"].as_str().unwrap(), "");
    assert!(
        !rest.contains("data:") && !rest.contains(" total") && !rest.contains("42"),
        "withheld output leaked: {text}"
    );
    assert_eq!(v["status"], "pending_review");
    assert_eq!(v["reason"], "low_confidence");
    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.body["review_id"], v["review_id"]);
    assert!(
        m.body["response"]["body"]
            .as_str()
            .unwrap()
            .contains("data: [DONE]"),
        "the reviewer gets the whole stream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flagged_streams_refusals_and_passthrough() {
    let up = Upstream::start(upstream).await;
    let t = Triage::start(&rules(&up.url())).await;

    let (status, h, body) = stream(&t, &[("x-want", "0.5"), ("x-task", "flagged")]).await;
    assert_eq!(status, 200);
    assert_eq!(h["x-triage-decision"], "flag");
    assert!(h.contains_key("x-triage-review-id"));
    assert_eq!(body, sse(0.5, false));

    let (status, h, body) = stream(&t, &[("x-refuse", "1")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        h["x-triage-decision"], "refused",
        "a refusal in a delta is recognised"
    );
    assert_eq!(body, sse(0.95, true));

    let (status, h, body) = stream(&t, &[("x-want", "0.1"), ("x-task", "passthrough")]).await;
    assert_eq!(status, 200, "passthrough streams are not gated");
    assert_eq!(h["x-triage-stream"], "passthrough");
    assert_eq!(h["x-triage-decision"], "pass");
    assert!(h.get("x-triage-confidence").is_none());
    assert_eq!(body, sse(0.1, false));
    assert_eq!(
        t.metric(
            "triage_stream_passthrough_total",
            &[("task", "passthrough")]
        )
        .await,
        1.0
    );
}
