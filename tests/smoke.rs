mod common;
use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn smoke() {
    let up = Upstream::start(|r| {
        let c: f64 = r
            .headers
            .get("x-c")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0.99);
        Reply::json(chat_completion("gpt-4o-2024-08-06", c))
    })
    .await;
    let rules = format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{}" }} }}
tasks:
  - name: chat
    upstream: llm
    model: {{ request_field: /model, response_field: /model, pinned: gpt-4o-2024-08-06, aliases: [gpt-4o] }}
    confidence: {{ source: openai_logprobs, request_logprobs: true }}
    threshold: 0.85
"#,
        up.url()
    );
    let t = Triage::start(&rules).await;
    let c = client();
    let r = c
        .post(format!("{}/v1/chat/completions", t.data))
        .header("x-c", "0.9")
        .body(r#"{"model":"gpt-4o","messages":[]}"#)
        .send()
        .await
        .unwrap();
    println!("{:?}", r.headers());
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().json()["model"], "gpt-4o-2024-08-06");
    let r = c
        .post(format!("{}/v1/chat/completions", t.data))
        .header("x-c", "0.5")
        .body(r#"{"model":"gpt-4o","messages":[]}"#)
        .send()
        .await
        .unwrap();
    println!("{:?}", r.headers());
    let status = r.status();
    println!("{}", r.text().await.unwrap());
    assert_eq!(status, 202);
    let b = Broker::connect().await;
    let m = b
        .next(&t.names.review_queue, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    println!("{m:?}");
    println!("{}", t.metrics().await);
}
