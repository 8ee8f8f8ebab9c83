//! Soak (a benchmark, not a test): a steady open-loop rate of requests, a share of them
//! held for review, while the broker is cut off every minute through a TCP fault relay.
//! Reports requests served, holds, items confirmed in the queue, items lost (must be 0),
//! and triage's peak RSS.
//!
//! `cargo bench --bench soak` — 10 minutes by default; `SOAK_SECONDS=120` for a short run.
//! Knobs: SOAK_RATE (req/s, 200), SOAK_HOLD_SHARE (0.3), SOAK_CUT_EVERY (60 s),
//! SOAK_CUT_FOR (5 s). Needs RabbitMQ on 127.0.0.1:5672, like the tests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("soak: a benchmark; run it with `cargo bench --bench soak`");
        return;
    }
    let seconds: u64 = env("SOAK_SECONDS", 600);
    let rate: u64 = env("SOAK_RATE", 200);
    let hold_share: f64 = env("SOAK_HOLD_SHARE", 0.3);
    let cut_every: u64 = env("SOAK_CUT_EVERY", 60);
    let cut_for: u64 = env("SOAK_CUT_FOR", 5);

    let relay = Relay::start("127.0.0.1:5672").await;
    let up = Upstream::start(move |_| {
        let c = if fastrand::f64() < hold_share {
            0.2
        } else {
            0.95
        };
        Reply::json(json!({"label": "invoice", "confidence": c}))
    })
    .await;
    let rules = format!(
        "version: 1\nupstreams: {{ llm: {{ url: \"{}\" }} }}\ntasks:\n  - {{ name: soak, upstream: llm, confidence: {{ source: json_pointer, pointer: /confidence }}, threshold: 0.5 }}\n",
        up.url()
    );
    let t = Triage::start_with(
        &rules,
        &["--publish-timeout-ms", "1000", "--access-log", "off"],
        &[("TRIAGE_AMQP_URL", &relay.url()), ("TRIAGE_LOG", "warn")],
    )
    .await;
    let pid = t.child.id().unwrap();

    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let held: Arc<Mutex<Vec<String>>> = Arc::default();
    let c = client();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    let mut next_cut = Duration::from_secs(cut_every);
    let mut cuts = 0;
    let mut rss_peak_sampled = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        if started.elapsed() >= next_cut {
            relay.set(CUT);
            cuts += 1;
            // Keep sending during the cut.
            let restore = tokio::time::sleep(Duration::from_secs(cut_for));
            let (statuses, held, c, data) =
                (statuses.clone(), held.clone(), c.clone(), t.data.clone());
            let during = async move {
                let mut tick =
                    tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
                let until = Instant::now() + Duration::from_secs(cut_for);
                while Instant::now() < until {
                    tick.tick().await;
                    spawn_request(&c, &data, &statuses, &held);
                }
            };
            tokio::join!(restore, during);
            relay.set(PASS);
            next_cut += Duration::from_secs(cut_every);
            continue;
        }
        spawn_request(&c, &t.data, &statuses, &held);
        if started.elapsed().as_secs().is_multiple_of(10) {
            rss_peak_sampled = rss_peak_sampled.max(proc_status_kb(pid, "VmRSS:"));
        }
    }
    // Let in-flight requests finish, then let the spool drain into the queue.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ids = held.lock().unwrap().clone();
    let broker = Broker::connect().await;
    let mut got = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for m in broker.drain(&t.names.review_queue).await {
            got.insert(m.body["review_id"].as_str().unwrap_or_default().to_string());
        }
        let missing = ids.iter().filter(|id| !got.contains(*id)).count();
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lost = ids.iter().filter(|id| !got.contains(*id)).count();
    let confirmed = ids.len() - lost;
    let peak_kb = proc_status_kb(pid, "VmHWM:");
    let spooled = t
        .metric("triage_review_publish_total", &[("result", "spooled")])
        .await;
    let statuses = statuses.lock().unwrap().clone();
    let served: u64 = statuses.values().sum();
    let report = format!(
        "| measure | value |\n| --- | --- |\n\
         | duration / rate / hold share | {seconds} s / {rate} req/s / {hold_share} |\n\
         | broker cuts | {cuts} × {cut_for} s |\n\
         | requests answered | {served} ({statuses:?}) |\n\
         | holds answered 202 | {} |\n\
         | of which spooled first | {spooled} |\n\
         | items confirmed in the queue | {confirmed} |\n\
         | items lost | {lost} |\n\
         | triage peak RSS (VmHWM) | {:.1} MB |\n",
        ids.len(),
        peak_kb.max(rss_peak_sampled) as f64 / 1024.0,
    );
    println!("{report}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench-soak.md"),
        &report,
    );
    assert_eq!(lost, 0, "review items lost");
}

fn spawn_request(
    c: &reqwest::Client,
    data: &str,
    statuses: &Arc<Mutex<BTreeMap<String, u64>>>,
    held: &Arc<Mutex<Vec<String>>>,
) {
    let (c, url, statuses, held) = (
        c.clone(),
        format!("{data}/v1/x"),
        statuses.clone(),
        held.clone(),
    );
    tokio::spawn(async move {
        let key = match c.post(url).body("{}").send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                if status == 202
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && let Some(id) = v["review_id"].as_str()
                {
                    held.lock().unwrap().push(id.to_string());
                }
                status.to_string()
            }
            Err(_) => "client error".to_string(),
        };
        *statuses.lock().unwrap().entry(key).or_default() += 1;
    });
}
