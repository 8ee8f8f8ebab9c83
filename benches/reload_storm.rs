//! Benchmark (not a test): reload time for a 1,000-task rules file, and request latency
//! during a reload storm against no reloads, interleaved in the same run.
//!
//! `cargo bench --bench reload_storm` (needs RabbitMQ on 127.0.0.1:5672, like the tests).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const TASKS: usize = 1000;
const WORKERS: usize = 8;
const PHASE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

fn rules(url: &str, threshold: f64) -> String {
    let mut s = format!("version: 1\nupstreams: {{ llm: {{ url: \"{url}\" }} }}\ntasks:\n");
    for i in 0..TASKS {
        s.push_str(&format!(
            "  - name: task-{i}\n    match: {{ path_prefix: /v1/chat/completions, method: POST, headers: {{ x-task: task-{i} }} }}\n    upstream: llm\n    model: {{ request_field: /model, response_field: /model, aliases: [gpt-4o] }}\n    confidence: {{ source: openai_logprobs }}\n    threshold: {threshold}\n    rollout:\n      sticky_header: x-user-id\n      variants:\n        - {{ name: stable, version: m, weight: 90 }}\n        - {{ name: canary, version: m2, weight: 10 }}\n"
        ));
    }
    s
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("reload_storm: a benchmark; run it with `cargo bench --bench reload_storm`");
        return;
    }
    let up = Upstream::start(|r| {
        let model = r.json()["model"].as_str().unwrap_or("m").to_string();
        Reply::json(chat_completion(&model, 0.99))
    })
    .await;
    let a = rules(&up.url(), 0.5);
    let b = rules(&up.url(), 0.6);
    let t = Arc::new(
        Triage::start_with(
            &a,
            &["--rules-poll-interval-ms", "0"],
            &[("TRIAGE_ADMIN_TOKEN", "tok"), ("TRIAGE_LOG", "warn")],
        )
        .await,
    );
    let admin = client();

    // Reload time: read + hash + compile + swap of 1,000 tasks, seen from the admin endpoint.
    let mut reloads = Vec::new();
    for i in 0..20 {
        std::fs::write(&t.rules_path, if i % 2 == 0 { &b } else { &a }).unwrap();
        let start = Instant::now();
        let r = admin
            .post(format!("{}/admin/reload", t.admin))
            .bearer_auth("tok")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        reloads.push(start.elapsed());
    }
    reloads.sort();

    // Latency, quiet vs. storm, interleaved round by round.
    let mut quiet = Vec::new();
    let mut storm = Vec::new();
    for round in 0..=ROUNDS {
        for storming in [false, true] {
            let stop = Arc::new(AtomicBool::new(false));
            let storm_task = storming.then(|| {
                let (t, stop, a, b) = (t.clone(), stop.clone(), a.clone(), b.clone());
                tokio::spawn(async move {
                    let c = client();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        std::fs::write(&t.rules_path, if i % 2 == 0 { &b } else { &a }).unwrap();
                        c.post(format!("{}/admin/reload", t.admin))
                            .bearer_auth("tok")
                            .send()
                            .await
                            .unwrap();
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    i
                })
            });
            let mut workers = Vec::new();
            for w in 0..WORKERS {
                let (t, stop) = (t.clone(), stop.clone());
                workers.push(tokio::spawn(async move {
                    let c = client();
                    let mut lat = Vec::new();
                    let mut n = w;
                    while !stop.load(Ordering::Relaxed) {
                        n += WORKERS;
                        let start = Instant::now();
                        let r = c
                            .post(format!("{}/v1/chat/completions", t.data))
                            .header("x-task", format!("task-{}", (n * 7919) % TASKS))
                            .header("x-user-id", format!("user-{n}"))
                            .body(r#"{"model":"gpt-4o","messages":[]}"#)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                        lat.push(start.elapsed());
                    }
                    lat
                }));
            }
            tokio::time::sleep(PHASE).await;
            stop.store(true, Ordering::Relaxed);
            let mut lat = Vec::new();
            for w in workers {
                lat.extend(w.await.unwrap());
            }
            let storms = match storm_task {
                Some(s) => s.await.unwrap(),
                None => 0,
            };
            if round == 0 {
                continue; // warm-up
            }
            eprintln!(
                "round {round} {}: {} requests, {storms} reloads",
                if storming { "storm" } else { "quiet" },
                lat.len()
            );
            if storming {
                storm.extend(lat)
            } else {
                quiet.extend(lat)
            }
        }
    }
    quiet.sort();
    storm.sort();
    let report = format!(
        "| measure | value |\n| --- | --- |\n\
         | reload of {TASKS} tasks (admin round trip), median | {} ms |\n\
         | reload of {TASKS} tasks, slowest of 20 | {} ms |\n\
         | requests, no reloads: count / p50 / p99 | {} / {} ms / {} ms |\n\
         | requests, reload every 100 ms: count / p50 / p99 | {} / {} ms / {} ms |\n\
         | p99 storm / p99 quiet | {:.2} |\n",
        ms(pct(&reloads, 0.5)),
        ms(*reloads.last().unwrap()),
        quiet.len(),
        ms(pct(&quiet, 0.5)),
        ms(pct(&quiet, 0.99)),
        storm.len(),
        ms(pct(&storm, 0.5)),
        ms(pct(&storm, 0.99)),
        pct(&storm, 0.99).as_secs_f64() / pct(&quiet, 0.99).as_secs_f64(),
    );
    println!("{report}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-reload-storm.md"),
        &report,
    );
}
