//! Pinned versions and staged rollout: aliases, overrides, mismatches, sticky buckets that
//! any system can compute, weight edges, shadows and guardrails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The contract's assignment, computed here independently of triage.
fn bucket(salt: &str, key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{salt}:{key}").as_bytes()) % 10_000
}

/// An upstream that reports the model it was asked for (or `x-report`, to fake a mismatch).
fn echo_model(r: &Recorded) -> Reply {
    let model = r
        .headers
        .get("x-report")
        .cloned()
        .unwrap_or_else(|| r.json()["model"].as_str().unwrap_or("").to_string());
    let c: f64 = r
        .headers
        .get("x-want")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.99);
    Reply::json(chat_completion(&model, c))
}

fn rollout_rules(url: &str, canary_url: &str, canary_weight: f64, extra: &str) -> String {
    let stable = 100.0 - canary_weight;
    format!(
        r#"
version: 1
upstreams: {{ llm: {{ url: "{url}" }}, canary: {{ url: "{canary_url}" }} }}
tasks:
  - name: review-mismatch
    match: {{ headers: {{ x-task: review-mismatch }} }}
    upstream: llm
    model: {{ request_field: /model, response_field: /model, aliases: [gpt-4o], on_mismatch: review }}
    confidence: {{ source: openai_logprobs }}
    threshold: 0.5
    rollout:
      variants:
        - {{ name: stable, version: v-a, weight: 100 }}
  - name: chat
    upstream: llm
    model: {{ request_field: /model, response_field: /model, aliases: [gpt-4o, latest] }}
    confidence: {{ source: openai_logprobs }}
    threshold: 0.5
    rollout:
      sticky_header: x-user-id
      variants:
        - {{ name: stable, version: v-a, weight: {stable} }}
        - {{ name: canary, version: v-b, weight: {canary_weight}, upstream: canary{extra} }}
"#
    )
}

async fn post(
    c: &reqwest::Client,
    t: &Triage,
    user: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = c
        .post(format!("{}/v1/chat/completions", t.data))
        .header("x-user-id", user)
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn key_in(range: std::ops::Range<u64>) -> String {
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| range.contains(&bucket("chat", k)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_are_pinned_explicit_versions_override_and_unknown_ones_are_refused() {
    let up = Upstream::start(echo_model).await;
    let canary = Upstream::start(echo_model).await;
    let t = Triage::start(&rollout_rules(&up.url(), &canary.url(), 10.0, "")).await;
    let c = client();
    let stable_user = key_in(0..9000);
    let canary_user = key_in(9000..10_000);

    for (alias, user, variant, version, upstream) in [
        ("gpt-4o", &stable_user, "stable", "v-a", &up),
        ("latest", &canary_user, "canary", "v-b", &canary),
    ] {
        let r = post(&c, &t, user, json!({"model": alias, "messages": []}), &[]).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-triage-variant"], variant);
        assert_eq!(r.headers()["x-triage-model-version"], version);
        assert_eq!(
            upstream.last().json()["model"],
            version,
            "the alias is rewritten to the pinned version"
        );
    }
    // No model at all: pinned too.
    let r = post(&c, &t, &stable_user, json!({"messages": []}), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().json()["model"], "v-a");

    // An explicit pinned version is served by its variant, whatever the bucket says.
    let r = post(&c, &t, &stable_user, json!({"model": "v-b"}), &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-triage-variant"], "canary");
    assert_eq!(canary.last().json()["model"], "v-b");
    assert_eq!(
        t.metric(
            "triage_model_overrides_total",
            &[("task", "chat"), ("variant", "canary")]
        )
        .await,
        1.0
    );

    let r = post(
        &c,
        &t,
        &stable_user,
        json!({"model": "gpt-4o-2099-01-01"}),
        &[],
    )
    .await;
    assert_eq!(r.status(), 422);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_version_not_allowed");
    assert_eq!(v["error"]["task"], "chat");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_from_another_version_is_rejected_or_reviewed() {
    let up = Upstream::start(echo_model).await;
    let t = Triage::start(&rollout_rules(&up.url(), &up.url(), 10.0, "")).await;
    let c = client();
    let user = key_in(0..9000);
    let r = post(
        &c,
        &t,
        &user,
        json!({"model": "gpt-4o"}),
        &[("x-report", "v-z")],
    )
    .await;
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-triage-decision"], "error");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "version_mismatch");
    assert!(v["error"]["message"].as_str().unwrap().contains("v-z"));

    let r = post(
        &c,
        &t,
        &user,
        json!({"model": "gpt-4o"}),
        &[("x-report", "v-z"), ("x-task", "review-mismatch")],
    )
    .await;
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["reason"], "version_mismatch");
    let m = Broker::connect()
        .await
        .next(&t.names.review_queue, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(m.routing_key, "review-mismatch.version_mismatch");
    assert_eq!(m.body["model"], json!({"pinned": "v-a", "reported": "v-z"}));
    assert_eq!(m.body["variant"], "stable");
}

/// Send `keys` through triage with a few concurrent clients; the variant each got.
async fn assign(t: &Triage, keys: &[String]) -> HashMap<String, String> {
    let chunks: Vec<Vec<String>> = keys
        .chunks(keys.len().div_ceil(16))
        .map(|c| c.to_vec())
        .collect();
    let mut handles = Vec::new();
    for chunk in chunks {
        let data = t.data.clone();
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for k in chunk {
                let r = c
                    .post(format!("{data}/v1/chat/completions"))
                    .header("x-user-id", &k)
                    .body(r#"{"model":"gpt-4o"}"#)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                out.push((
                    k,
                    r.headers()["x-triage-variant"]
                        .to_str()
                        .unwrap()
                        .to_string(),
                ));
            }
            out
        }));
    }
    let mut all = HashMap::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_assignment_is_the_contracts_on_every_replica_and_growth_keeps_canary_users() {
    let up = Upstream::start(echo_model).await;
    let t = Triage::start_with(
        &rollout_rules(&up.url(), &up.url(), 10.0, ""),
        &[],
        &[("TRIAGE_ADMIN_TOKEN", "tok")],
    )
    .await;
    let keys: Vec<String> = (0..10_000).map(|i| format!("customer-{i}")).collect();
    let first = assign(&t, &keys).await;

    let canary: Vec<&String> = keys.iter().filter(|k| first[*k] == "canary").collect();
    let share = canary.len() as f64 / keys.len() as f64;
    assert!(
        (share - 0.10).abs() <= 0.015,
        "canary share {share} outside 10 % ± 1.5 points"
    );
    for k in &keys {
        let expected = if bucket("chat", k) < 9000 {
            "stable"
        } else {
            "canary"
        };
        assert_eq!(
            first[k], expected,
            "{k}: triage must agree with xxh3(salt:key) % 10000"
        );
    }

    // A second, separately started replica assigns the same.
    let other = Triage::start(&rollout_rules(&up.url(), &up.url(), 10.0, "")).await;
    let sample: Vec<String> = keys.iter().step_by(5).cloned().collect();
    let second = assign(&other, &sample).await;
    for k in &sample {
        assert_eq!(second[k], first[k], "{k} moved between replicas");
    }

    // Grow the candidate from 10 to 25 %: it keeps every user it had.
    std::fs::write(&t.rules_path, rollout_rules(&up.url(), &up.url(), 25.0, "")).unwrap();
    let r = client()
        .post(format!("{}/admin/reload", t.admin))
        .bearer_auth("tok")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let canary_keys: Vec<String> = canary.iter().map(|k| (*k).clone()).collect();
    let after = assign(&t, &canary_keys).await;
    assert!(
        canary_keys.iter().all(|k| after[k] == "canary"),
        "a canary user moved away when the canary grew"
    );
    let sample: Vec<String> = keys.iter().take(4000).cloned().collect();
    let grown = assign(&t, &sample).await;
    let share = grown.values().filter(|v| *v == "canary").count() as f64 / sample.len() as f64;
    assert!(
        (share - 0.25).abs() <= 0.025,
        "canary share after growth {share}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_of_zero_and_one_hundred() {
    let up = Upstream::start(echo_model).await;
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for (canary_weight, only) in [(0.0, "stable"), (100.0, "canary")] {
        let t = Triage::start(&rollout_rules(&up.url(), &up.url(), canary_weight, "")).await;
        let got = assign(&t, &keys).await;
        assert!(
            got.values().all(|v| v == only),
            "weight {canary_weight}: {got:?}"
        );
        // Without the sticky header the bucket is random, but a 0 % arm still gets nobody.
        for _ in 0..50 {
            let r = client()
                .post(format!("{}/v1/chat/completions", t.data))
                .body(r#"{"model":"gpt-4o"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.headers()["x-triage-variant"], only);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_or_failing_shadow_never_touches_the_live_answer_but_is_measured() {
    let live = Upstream::start(echo_model).await;
    let slow = Upstream::start(|r| echo_model(r).delay(Duration::from_secs(2))).await;
    let failing = Upstream::start(|_| Reply::raw(500, b"boom")).await;
    let healthy = Upstream::start(|r| {
        let mut reply = echo_model(r);
        reply.body = serde_json::to_vec(&chat_completion("v-good", 0.2)).unwrap();
        reply
    })
    .await;
    let rules = format!(
        r#"
version: 1
upstreams:
  live: {{ url: "{}" }}
  slow: {{ url: "{}", timeout_ms: 300 }}
  failing: {{ url: "{}" }}
  healthy: {{ url: "{}" }}
tasks:
  - name: chat
    upstream: live
    model: {{ request_field: /model, response_field: /model, aliases: [gpt-4o] }}
    confidence: {{ source: openai_logprobs }}
    threshold: 0.5
    rollout:
      variants:
        - {{ name: stable, version: v-a, weight: 100 }}
        - {{ name: slow, version: v-slow, weight: 0, shadow: true, upstream: slow }}
        - {{ name: failing, version: v-fail, weight: 0, shadow: true, upstream: failing }}
        - {{ name: good, version: v-good, weight: 0, shadow: true, shadow_rate: 1.0, upstream: healthy }}
"#,
        live.url(),
        slow.url(),
        failing.url(),
        healthy.url()
    );
    let t = Triage::start(&rules).await;
    let c = client();
    for _ in 0..10 {
        let started = Instant::now();
        let r = c
            .post(format!("{}/v1/chat/completions", t.data))
            .body(r#"{"model":"gpt-4o"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-triage-variant"], "stable");
        assert_eq!(r.headers()["x-triage-decision"], "pass");
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "the live answer waited for a shadow"
        );
    }
    // Shadows finish on their own time.
    let deadline = Instant::now() + Duration::from_secs(10);
    while t
        .metric(
            "triage_requests_total",
            &[("variant", "slow"), ("outcome", "timeout")],
        )
        .await
        < 10.0
    {
        assert!(
            Instant::now() < deadline,
            "slow shadow not measured:\n{}",
            t.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("variant", "failing"), ("outcome", "upstream_error")]
        )
        .await,
        10.0
    );
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("variant", "good"), ("outcome", "held")]
        )
        .await,
        10.0,
        "would-be decisions"
    );
    assert_eq!(
        t.metric("triage_confidence_count", &[("variant", "good")])
            .await,
        10.0
    );
    assert_eq!(
        t.metric(
            "triage_tokens_total",
            &[("variant", "good"), ("kind", "prompt")]
        )
        .await,
        1200.0
    );
    assert_eq!(
        healthy.last().json()["model"],
        "v-good",
        "the shadow copy is pinned to the shadow's version"
    );
    assert_eq!(
        t.metric(
            "triage_requests_total",
            &[("variant", "stable"), ("outcome", "passed")]
        )
        .await,
        10.0
    );
    let queued = Broker::connect().await.drain(&t.names.review_queue).await;
    assert!(
        queued.is_empty(),
        "shadow outputs are never sent to reviewers: {queued:?}"
    );

    // A shadow's version cannot be requested: it serves nobody.
    let r = c
        .post(format!("{}/v1/chat/completions", t.data))
        .body(r#"{"model":"v-good"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guardrail_halts_a_bad_canary_after_min_requests_and_a_weight_change_clears_it() {
    let stable = Upstream::start(echo_model).await;
    let canary = Upstream::start(|r| {
        let model = r.json()["model"].as_str().unwrap_or("").to_string();
        Reply::json(chat_completion(&model, 0.1))
    })
    .await;
    let guard = ", guard: { max_escalation_rate: 0.5, min_requests: 20, window_s: 600 }";
    let t = Triage::start_with(
        &rollout_rules(&stable.url(), &canary.url(), 10.0, guard),
        &[],
        &[("TRIAGE_ADMIN_TOKEN", "tok")],
    )
    .await;
    let c = client();
    let canary_users: Vec<String> = (0..)
        .map(|i| format!("u{i}"))
        .filter(|k| bucket("chat", k) >= 9000)
        .take(30)
        .collect();
    let halted = || {
        t.metric(
            "triage_rollout_halted",
            &[("task", "chat"), ("variant", "canary")],
        )
    };

    for (i, user) in canary_users.iter().take(20).enumerate() {
        assert_eq!(halted().await, 0.0, "halted before min_requests ({i})");
        let r = post(&c, &t, user, json!({"model": "gpt-4o"}), &[]).await;
        assert_eq!(r.status(), 202, "the canary's low confidence is held");
        assert_eq!(r.headers()["x-triage-variant"], "canary");
    }
    assert_eq!(halted().await, 1.0, "20 escalations out of 20 breach 0.5");
    assert!(t.logged("rollout halted").await);
    for user in &canary_users[20..] {
        let r = post(&c, &t, user, json!({"model": "gpt-4o"}), &[]).await;
        assert_eq!(
            r.status(),
            200,
            "canary users fall back to stable on this replica"
        );
        assert_eq!(r.headers()["x-triage-variant"], "stable");
    }
    let shown: serde_json::Value = reqwest::get(format!("{}/admin/rules", t.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["tasks"][1]["variants"][1]["guard"]["halted"], true);

    // A reload that leaves the canary's weight alone keeps the halt…
    let reload = |rules: String| {
        let (c, t) = (&c, &t);
        async move {
            std::fs::write(&t.rules_path, rules).unwrap();
            let r = c
                .post(format!("{}/admin/reload", t.admin))
                .bearer_auth("tok")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    reload(
        rollout_rules(&stable.url(), &canary.url(), 10.0, guard)
            .replace("threshold: 0.5\n    rollout", "threshold: 0.4\n    rollout"),
    )
    .await;
    assert_eq!(halted().await, 1.0);
    let r = post(&c, &t, &canary_users[0], json!({"model": "gpt-4o"}), &[]).await;
    assert_eq!(r.headers()["x-triage-variant"], "stable");

    // …a weight change clears it.
    reload(rollout_rules(&stable.url(), &canary.url(), 12.0, guard)).await;
    assert_eq!(halted().await, 0.0);
    let r = post(&c, &t, &canary_users[0], json!({"model": "gpt-4o"}), &[]).await;
    assert_eq!(r.headers()["x-triage-variant"], "canary");
}
