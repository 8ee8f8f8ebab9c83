//! What a walk of a model's answer costs through triage's probe and through the JSON
//! libraries built on SIMD, on the bodies `benches/hotpath.rs` uses (shared, not copied).
//!
//! `cd loadtest/json-libs && taskset -c 1 cargo run --release` (add
//! `RUSTFLAGS=-Ctarget-cpu=native` to let the SIMD libraries use AVX2 and beyond; the
//! default build has SSE2 only, with whatever the libraries detect at run time).
//!
//! Each line is the median of 7 batches of ~50 ms, in µs per body:
//! - `triage probe`: the walk the proxy runs for an `openai_logprobs` (or `json_pointer`)
//!   task: every logprob, the model, usage, refusal; the whole body checked.
//! - `serde_json IgnoredAny`: the same checks, nothing kept (serde_json's own skip).
//! - `serde_json Value`: the full parse (the hot-path benchmarks' baseline).
//! - `sonic_rs Value`, `sonic_rs get + each logprob`: sonic-rs's full parse, and its lazy
//!   path access (the logprobs array, then `logprob` of each element).
//! - `simd_json tape`: simd-json's cheapest full parse (it parses in place: the copy of
//!   the body it needs is included, ~1 µs at 50 KB).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../benches/bodies/mod.rs"]
#[allow(dead_code)]
mod bodies;

use std::hint::black_box;
use std::time::Instant;

use sonic_rs::JsonValueTrait;
use triage::rules::Task;
use triage::rules::compile::{SourceFile, compile};

fn main() {
    let rules = compile(
        &[SourceFile {
            name: "bench.yaml".into(),
            text: bodies::EXTRACT_RULES.into(),
        }],
        None,
    )
    .unwrap_or_else(|e| panic!("rules: {e:?}"));
    let task = |name: &str| rules.tasks.iter().find(|t| &*t.name == name).unwrap();
    let chat = task("openai_logprobs");
    let classifier = task("json_pointer");
    let cases: [(&str, Vec<u8>, &Task); 5] = [
        ("chat 0.8 KB", bodies::logprobs_body(800, 0), chat),
        ("chat 5 KB", bodies::logprobs_body(5_000, 0), chat),
        ("chat 50 KB", bodies::logprobs_body(50_000, 0), chat),
        (
            "chat 50 KB, 3 top_logprobs",
            bodies::logprobs_body(50_000, 3),
            chat,
        ),
        (
            "classifier 50 KB",
            bodies::classifier_body(50_000, &mut fastrand::Rng::with_seed(3)),
            classifier,
        ),
    ];
    for (name, body, task) in &cases {
        check(body, task);
        println!("\n{name} ({} bytes)", body.len());
        let probe = time(|| task.probe.run(body).map_or(0, |found| found.len()));
        let row = |label: &str, us: f64| {
            println!("{label:28} {us:9.2} µs  {:5.2}× the probe", us / probe);
        };
        println!("{:28} {probe:9.2} µs", "triage probe");
        row(
            "serde_json IgnoredAny",
            time(|| serde_json::from_slice::<serde::de::IgnoredAny>(body).map_or(0, |_| 1)),
        );
        row(
            "serde_json Value",
            time(|| serde_json::from_slice::<serde_json::Value>(body).map_or(0, |_| 1)),
        );
        row(
            "sonic_rs Value",
            time(|| sonic_rs::from_slice::<sonic_rs::Value>(body).map_or(0, |_| 1)),
        );
        if std::ptr::eq(*task, chat) {
            row(
                "sonic_rs get + each logprob",
                time(|| sonic_logprobs(body).0),
            );
        }
        let mut buf = body.clone();
        row(
            "simd_json tape",
            time(|| {
                buf.copy_from_slice(body);
                simd_json::to_tape(&mut buf).map_or(0, |tape| std::mem::size_of_val(&tape))
            }),
        );
    }
}

/// Every logprob of the first choice through sonic-rs's lazy access: (count, sum).
fn sonic_logprobs(body: &[u8]) -> (usize, f64) {
    let path = sonic_rs::pointer!["choices", 0, "logprobs", "content"];
    let Ok(content) = sonic_rs::get(body, &path) else {
        return (0, 0.0);
    };
    let (mut count, mut sum) = (0, 0.0);
    for item in sonic_rs::to_array_iter(content.as_raw_str()) {
        let Ok(item) = item else { return (0, 0.0) };
        if let Some(logprob) = sonic_rs::get(item.as_raw_str(), &["logprob"])
            .ok()
            .and_then(|v| v.as_f64())
        {
            count += 1;
            sum += logprob;
        }
    }
    (count, sum)
}

/// The probe and the libraries agree on the body before anything is timed.
fn check(body: &[u8], task: &Task) {
    let found = task.probe.run(body).expect("the probe walks the body");
    assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
    assert!(sonic_rs::from_slice::<sonic_rs::Value>(body).is_ok());
    let mut buf = body.to_vec();
    assert!(simd_json::to_tape(&mut buf).is_ok());
    let logprobs = found.iter().find_map(|f| match f {
        triage::probe::Found::Numbers(n) => Some(n.len()),
        _ => None,
    });
    if let Some(n) = logprobs {
        assert_eq!(sonic_logprobs(body).0, n, "sonic-rs finds every logprob");
    }
}

/// Median µs per call over 7 batches of ~50 ms.
fn time(mut f: impl FnMut() -> usize) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_millis() < 50 {
        black_box(f());
        calls += 1;
    }
    let mut batches: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                black_box(f());
            }
            t.elapsed().as_secs_f64() * 1e6 / calls as f64
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[3]
}
