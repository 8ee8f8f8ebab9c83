//! Criterion benchmarks of the pure hot-path pieces: task matching and variant choice,
//! the probe + confidence extractors (against a full `serde_json::Value` parse of the same
//! body as the baseline), the streamed-body probe, the decision, and the version pin of a
//! request (against parsing the request into a `Value` and writing it out again).
//!
//! `cargo bench --bench hotpath` (a few minutes; the measurement times are kept short).
//! Bodies are generated deterministically (fixed seed), so runs are comparable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

mod bodies;

use bodies::{EXTRACT_RULES, array_body, classifier_body, logprobs_body, sized, token};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use triage::confidence;
use triage::decide::{self, Observation};
use triage::route;
use triage::rules::compile::{SourceFile, compile};
use triage::rules::{ReportedVersion, RuleSet, Task};

const PATH: &str = "/v1/chat/completions";

/// Target body sizes (bytes) and their labels; generated bodies are the smallest of their
/// shape at or above the target.
const SIZES: [(usize, &str); 3] = [(800, "0.8KB"), (5_000, "5KB"), (50_000, "50KB")];

fn rules(yaml: &str) -> RuleSet {
    compile(
        &[SourceFile {
            name: "bench.yaml".into(),
            text: yaml.into(),
        }],
        None,
    )
    .unwrap_or_else(|e| panic!("bench rules do not compile: {e:?}"))
}

fn task<'r>(rules: &'r RuleSet, name: &str) -> &'r Task {
    rules
        .tasks
        .iter()
        .find(|t| &*t.name == name)
        .unwrap_or_else(|| panic!("no task {name}"))
}

// ---------------------------------------------------------------------------------------
// Task match and variant choice
// ---------------------------------------------------------------------------------------

/// `n` tasks told apart by an `x-task` header; the request matches the last one.
fn match_rules(n: usize) -> String {
    let mut s =
        String::from("version: 1\nupstreams: { llm: { url: \"http://127.0.0.1:1\" } }\ntasks:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - name: task-{i}\n    match: {{ path_prefix: {PATH}, method: POST, headers: {{ x-task: task-{i} }} }}\n    upstream: llm\n    confidence: {{ source: openai_logprobs }}\n    threshold: 0.8\n"
        ));
    }
    s
}

fn request_headers(task: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer sk-bench-0000000000000000"),
    );
    h.insert(
        "user-agent",
        HeaderValue::from_static("OpenAI/Python 1.54.0"),
    );
    h.insert(
        "x-request-id",
        HeaderValue::from_static("0192d7c4-9b1e-7000-8000-000000000000"),
    );
    h.insert("x-user-id", HeaderValue::from_static("user-42"));
    h.insert("x-task", HeaderValue::from_str(task).unwrap());
    h
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match_task");
    for n in [1usize, 10, 100] {
        let rs = rules(&match_rules(n));
        let headers = request_headers(&format!("task-{}", n - 1));
        let (i, _) = route::match_task(&rs, &Method::POST, PATH, &headers).unwrap();
        assert_eq!(
            i,
            n - 1,
            "the request must match the last task (worst case)"
        );
        g.bench_with_input(BenchmarkId::new("last_of", n), &n, |b, _| {
            b.iter(|| {
                route::match_task(
                    black_box(&rs),
                    &Method::POST,
                    black_box(PATH),
                    black_box(&headers),
                )
            })
        });
    }
    g.finish();

    let rs = rules(
        "version: 1
upstreams: { llm: { url: \"http://127.0.0.1:1\" } }
tasks:
  - name: chat
    match: { path_prefix: /v1/chat/completions }
    upstream: llm
    confidence: { source: openai_logprobs }
    threshold: 0.8
    rollout:
      sticky_header: x-user-id
      variants:
        - { name: stable, version: m-1, weight: 80 }
        - { name: canary, version: m-2, weight: 15 }
        - { name: candidate, version: m-3, weight: 5 }
",
    );
    let t = task(&rs, "chat");
    let headers = request_headers("chat");
    let mut g = c.benchmark_group("route_variant");
    g.bench_function("choose_variant_sticky", |b| {
        b.iter(|| route::choose_variant(black_box(&t.rollout), black_box(&headers)))
    });
    g.bench_function("bucket", |b| {
        b.iter(|| route::bucket(black_box("chat"), black_box(b"user-42")))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Confidence extraction: probe.run + confidence::extract, against a full Value parse
// ---------------------------------------------------------------------------------------

fn body_for(extractor: &str, target: usize) -> Vec<u8> {
    match extractor {
        "json_pointer" | "header" => classifier_body(target, &mut fastrand::Rng::with_seed(3)),
        "openai_logprobs" => logprobs_body(target, 0),
        "openai_logprobs_top3" => logprobs_body(target, 3),
        "max" => array_body(target, "probabilities", |r| r.f64() * 0.01),
        "softmax_max" => array_body(target, "logits", |r| r.f64() * 20.0 - 10.0),
        other => panic!("unknown extractor {other}"),
    }
}

/// What the proxy runs on a buffered body: the probe, then the extractor.
fn probe_and_extract(
    t: &Task,
    body: &[u8],
    headers: &HeaderMap,
) -> Result<f64, confidence::Missing> {
    let found = t.probe.run(body).ok();
    confidence::extract(&t.extractor, found.as_deref(), headers)
}

fn bench_extract(c: &mut Criterion) {
    let rs = rules(EXTRACT_RULES);
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert("content-type", HeaderValue::from_static("application/json"));
    resp_headers.insert("x-confidence", HeaderValue::from_static("0.9312"));

    for name in [
        "json_pointer",
        "openai_logprobs",
        "openai_logprobs_top3",
        "max",
        "softmax_max",
        "header",
    ] {
        // The same task, on tokens that carry three alternatives each.
        let t = task(&rs, name.trim_end_matches("_top3"));
        let mut g = c.benchmark_group(format!("extract_{name}"));
        for (target, label) in SIZES {
            let body = body_for(name, target);
            // The bench measures the success path: the body must be JSON with a usable
            // confidence, and the model slot must be found.
            serde_json::from_slice::<serde_json::Value>(&body).expect("generated body is JSON");
            let conf = probe_and_extract(t, &body, &resp_headers)
                .unwrap_or_else(|m| panic!("{name} {label}: no confidence ({m:?})"));
            assert!((0.0..=1.0).contains(&conf));
            let found = t.probe.run(&body).unwrap();
            let Some(ReportedVersion::Field(model)) = t.model.response else {
                panic!("{name}: no model slot")
            };
            assert!(
                found[model].as_str().is_some(),
                "{name} {label}: model not found"
            );

            g.throughput(Throughput::Bytes(body.len() as u64));
            g.bench_with_input(
                BenchmarkId::new("probe_extract", label),
                &body,
                |b, body| {
                    b.iter(|| probe_and_extract(t, black_box(body), black_box(&resp_headers)))
                },
            );
            g.bench_with_input(
                BenchmarkId::new("baseline_value", label),
                &body,
                |b, body| {
                    b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(body)).unwrap())
                },
            );
            if target == 50_000 {
                // The extractor alone on what the probe found: probe_extract minus this is
                // the walk.
                g.bench_with_input(
                    BenchmarkId::new("extract_only", label),
                    &found,
                    |b, found| {
                        b.iter(|| {
                            confidence::extract(&t.extractor, Some(black_box(found)), &resp_headers)
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

// ---------------------------------------------------------------------------------------
// Streamed (server-sent events) bodies
// ---------------------------------------------------------------------------------------

/// A streamed chat completion: one chunk per token with its logprob, a final chunk with
/// `finish_reason`, a usage chunk, then `[DONE]`.
fn sse_body(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(5);
    let head = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_fc9f1d7035","choices":["#;
    let mut s = String::new();
    s.push_str(&format!(
        "data: {head}{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":{{\"content\":[],\"refusal\":null}},\"finish_reason\":null}}]}}\n\n"
    ));
    for i in 0..n {
        let tok = token(i, &mut rng);
        let bytes: Vec<String> = tok.bytes().map(|b| b.to_string()).collect();
        s.push_str(&format!(
            "data: {head}{{\"index\":0,\"delta\":{{\"content\":\"{tok}\"}},\"logprobs\":{{\"content\":[{{\"token\":\"{tok}\",\"logprob\":{:.6},\"bytes\":[{}],\"top_logprobs\":[]}}],\"refusal\":null}},\"finish_reason\":null}}]}}\n\n",
            -rng.f64() * 0.05,
            bytes.join(",")
        ));
    }
    s.push_str(&format!(
        "data: {head}{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}]}}\n\n"
    ));
    s.push_str(&format!(
        "data: {head}],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
        19 + n
    ));
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// The naive alternative: every event parsed into a full `Value`.
fn sse_baseline(body: &[u8]) -> usize {
    let mut parsed = 0;
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
            black_box(v);
            parsed += 1;
        }
    }
    parsed
}

fn bench_stream(c: &mut Criterion) {
    let rs = rules(EXTRACT_RULES);
    let t = task(&rs, "openai_logprobs");
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("stream_openai_logprobs");
    for (target, label) in SIZES {
        let body = sized(target, sse_body);
        let found = t.probe.run_events(&body).unwrap();
        let conf = confidence::extract(&t.extractor, Some(&found), &headers)
            .unwrap_or_else(|m| panic!("stream {label}: no confidence ({m:?})"));
        assert!((0.0..=1.0).contains(&conf));
        assert_eq!(found[t.slots.finish_reason.unwrap()].as_str(), Some("stop"));
        assert!(found[t.slots.completion_tokens.unwrap()].as_f64().is_some());
        assert!(sse_baseline(&body) >= 3);

        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("run_events_extract", label),
            &body,
            |b, body| {
                b.iter(|| {
                    let found = t.probe.run_events(black_box(body)).ok();
                    confidence::extract(&t.extractor, found.as_deref(), &headers)
                })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("baseline_value", label),
            &body,
            |b, body| b.iter(|| sse_baseline(black_box(body))),
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Version pin
// ---------------------------------------------------------------------------------------

const PIN_RULES: &str = r#"
version: 1
upstreams: { llm: { url: "http://127.0.0.1:1" } }
tasks:
  - name: chat
    upstream: llm
    model: { request_field: /model, aliases: [gpt-4o] }
    confidence: { source: openai_logprobs, request_logprobs: true }
    threshold: 0.8
    rollout:
      variants:
        - { name: stable, version: gpt-4o-2024-08-06, weight: 100 }
"#;

/// A chat request of about `target` bytes: a system prompt and user turns of prose,
/// naming the `gpt-4o` alias.
fn chat_request(target: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    let words = [
        "the",
        "model",
        "answer",
        "review",
        "queue",
        "confidence",
        "token",
        "sidecar",
    ];
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    while serde_json::to_vec(&messages).unwrap().len() < target {
        let text: Vec<&str> = (0..40).map(|_| words[rng.usize(..words.len())]).collect();
        messages.push(serde_json::json!({"role": "user", "content": text.join(" ")}));
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": 256,
    }))
    .unwrap()
}

fn bench_pin(c: &mut Criterion) {
    let rs = rules(PIN_RULES);
    let task = task(&rs, "chat");
    let mut g = c.benchmark_group("pin_request");
    for (target, label) in SIZES {
        let body = bytes::Bytes::from(chat_request(target));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("splice", label), &body, |b, body| {
            b.iter(|| triage::upstream::pin_request(task, 0, black_box(body.clone())).unwrap())
        });
        g.bench_with_input(
            BenchmarkId::new("value_baseline", label),
            &body,
            |b, body| {
                b.iter(|| {
                    let doc: serde_json::Value = serde_json::from_slice(black_box(body)).unwrap();
                    serde_json::to_vec(&doc).unwrap()
                })
            },
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Decision
// ---------------------------------------------------------------------------------------

fn bench_decide(c: &mut Criterion) {
    let rs = rules(EXTRACT_RULES);
    let policy = task(&rs, "openai_logprobs").rollout.variants[0].policy;
    let obs = Observation {
        refusal: false,
        version_mismatch: false,
        confidence: Ok(0.91),
    };
    c.bench_function("decide", |b| {
        b.iter(|| decide::decide(black_box(&policy), black_box(&obs), black_box(0.5)))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30)
}

criterion_group! {
    name = hotpath;
    config = config();
    targets = bench_route, bench_extract, bench_stream, bench_decide, bench_pin
}
criterion_main!(hotpath);
