//! Nothing lost, nothing released unreviewed: broker cuts and blackholes through a TCP
//! fault relay, a full queue, kill -9 with a spool, a full or broken spool, SIGTERM under
//! load, slow and hostile clients, an endless upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn low_confidence_upstream() -> Upstream {
    Upstream::start(|_| Reply::json(json!({"answer": "maybe", "confidence": 0.1}))).await
}

/// Holds from `workers` clients until `stop`; returns every review id answered with 202 and
/// the slowest answer. Any answer that is not a 202 fails the test.
async fn hold_load(t: &Triage, workers: usize, stop: Arc<AtomicBool>) -> (Vec<String>, Duration) {
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (data, stop) = (t.data.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let c = client();
            let mut ids = Vec::new();
            let mut slowest = Duration::ZERO;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = c
                    .post(format!("{data}/v1/x"))
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                slowest = slowest.max(started.elapsed());
                let status = r.status();
                let body = r.text().await.unwrap();
                assert_ne!(status, 200, "a low-confidence output was released: {body}");
                assert_eq!(status, 202, "{body}");
                assert!(!body.contains("maybe"), "the held output leaked: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                ids.push(v["review_id"].as_str().unwrap().to_string());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ids, slowest)
        }));
    }
    let mut ids = Vec::new();
    let mut slowest = Duration::ZERO;
    for h in handles {
        let (i, s) = h.await.unwrap();
        ids.extend(i);
        slowest = slowest.max(s);
    }
    (ids, slowest)
}

/// Drain the review queue until every id in `want` has arrived (duplicates allowed).
async fn all_delivered(t: &Triage, want: &[String], within: Duration) {
    let broker = Broker::connect().await;
    let mut got = HashSet::new();
    let deadline = Instant::now() + within;
    let want: HashSet<&String> = want.iter().collect();
    loop {
        for m in broker.drain(&t.names.review_queue).await {
            got.insert(m.body["review_id"].as_str().unwrap().to_string());
        }
        let missing = want.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} answered-202 items never reached the queue\n{}",
            want.len(),
            t.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn through_relay(relay: &Relay, up: &Upstream, extra: &[&str]) -> Triage {
    let mut args = vec!["--publish-timeout-ms", "1000"];
    args.extend_from_slice(extra);
    Triage::start_with(
        &one_task_rules(&up.url()),
        &args,
        &[("TRIAGE_AMQP_URL", &relay.url())],
    )
    .await
}

/// Holds under load through the relay; at 0.8 s the relay goes to `mode` for `fault`, then
/// back to passing for 1.5 s. Returns the triage instance, every 202 id, the slowest answer.
async fn holds_through_a_fault(mode: u8, fault: Duration) -> (Triage, Vec<String>, Duration) {
    let relay = Relay::start("127.0.0.1:5672").await;
    let up = low_confidence_upstream().await;
    let t = through_relay(&relay, &up, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = hold_load(&t, 4, stop.clone());
    let faults = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        relay.set(mode);
        tokio::time::sleep(fault).await;
        relay.set(PASS);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let ((ids, slowest), ()) = tokio::join!(load, faults);
    assert!(ids.len() > 50, "too little load: {}", ids.len());
    (t, ids, slowest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_cut_during_holds_loses_nothing() {
    let (t, ids, _) = holds_through_a_fault(CUT, Duration::from_secs(3)).await;
    assert!(
        t.metric("triage_review_publish_total", &[("result", "spooled")])
            .await
            > 0.0,
        "the cut must have spooled holds"
    );
    all_delivered(&t, &ids, Duration::from_secs(30)).await;
    assert_eq!(
        t.metric("triage_review_publish_total", &[("result", "failed")])
            .await,
        0.0
    );
}

/// Poll `/readyz` until the review path's broker flag reads `want`.
async fn broker_flag_becomes(t: &Triage, want: bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (_, v) = t.readyz().await;
        if v["review_path"]["broker"] == want {
            return;
        }
        assert!(Instant::now() < deadline, "broker still not {want}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_triage_notices_the_broker_go_and_come_back() {
    let relay = Relay::start("127.0.0.1:5672").await;
    let up = low_confidence_upstream().await;
    let t = through_relay(&relay, &up, &[]).await;
    // No request, so no publish: the supervisor must notice on its own.
    relay.set(CUT);
    broker_flag_becomes(&t, false, Duration::from_secs(5)).await;
    relay.set(PASS);
    broker_flag_becomes(&t, true, Duration::from_secs(20)).await;
    let r = t.post_empty(&client()).await;
    assert_eq!(r.status(), 202, "a hold goes to the broker again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_broker_never_makes_a_request_wait_past_the_publish_timeout() {
    let (t, ids, slowest) = holds_through_a_fault(BLACKHOLE, Duration::from_secs(4)).await;
    // Publish timeout 1 s; the rest is the upstream call, the spool's fsync and scheduling.
    assert!(
        slowest < Duration::from_millis(2500),
        "a request waited {slowest:?}"
    );
    all_delivered(&t, &ids, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_that_rejects_publishes_gets_spool_then_deliver_never_a_lost_202() {
    let up = low_confidence_upstream().await;
    let names = Names::unique();
    // The operator's queue: at most 3 messages, new ones refused (nacked) when full.
    let broker = Broker::connect().await;
    let ch = broker.conn.create_channel().await.unwrap();
    ch.exchange_declare(
        names.review_exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(3));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    ch.queue_declare(
        names.review_queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        names.review_queue.as_str().into(),
        names.review_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let t = Triage::spawn_named(&one_task_rules(&up.url()), &[], &[], names).await;
    t.wait_ready().await;
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let r = t.post_empty(&c).await;
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(status == 202 || status == 503, "{status}: {v}");
        if status == 202 {
            ids.push(v["review_id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(ids.len(), 8, "with a spool, every refused item is kept");
    assert!(
        t.metric("triage_review_publish_total", &[("result", "spooled")])
            .await
            >= 5.0,
        "the broker refused at least 5"
    );
    // Reviewers work the queue down; the spool delivers the rest as room appears.
    all_delivered(&t, &ids, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_spooled_holds_then_restart_delivers_them_all() {
    let up = low_confidence_upstream().await;
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().to_str().unwrap();
    let names = Names::unique();
    // No broker reachable: holds are spooled.
    let mut first = Triage::spawn_named(
        &one_task_rules(&up.url()),
        &["--spool-dir", spool],
        &[("TRIAGE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")],
        names.same(),
    )
    .await;
    first.wait_durable().await;
    let c = client();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = first.post_empty(&c).await;
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["review_id"].as_str().unwrap().to_string());
    }
    let (_, ready) = first.readyz().await;
    assert_eq!(ready["review_path"]["broker"], false);
    assert_eq!(ready["review_path"]["spool"]["items"], 20);
    assert_eq!(first.metric("triage_spool_items", &[]).await, 20.0);
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();

    let second = Triage::spawn_named(
        &one_task_rules(&up.url()),
        &["--spool-dir", spool],
        &[],
        names,
    )
    .await;
    second.wait_ready().await;
    all_delivered(&second, &ids, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.metric("triage_spool_items", &[]).await != 0.0 {
        assert!(Instant::now() < deadline, "spool not emptied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<_> = std::fs::read_dir(spool)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.path().extension().is_some_and(|x| x == "spool") && e.metadata().unwrap().len() > 0
        })
        .collect();
    assert!(left.is_empty(), "delivered segments are deleted: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_fails_closed_and_a_broken_one_shows_in_readyz_and_metrics() {
    let up = low_confidence_upstream().await;
    let no_broker = [("TRIAGE_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")];
    let t = Triage::spawn(
        &one_task_rules(&up.url()),
        &["--spool-max-bytes", "4000"],
        &no_broker,
    )
    .await;
    t.wait_durable().await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = t.post_empty(&c).await;
        let status = r.status().as_u16();
        if status == 503 {
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "review_unavailable");
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&202) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert!(!statuses.contains(&200));
    let first_503 = statuses.iter().position(|s| *s == 503).unwrap();
    assert!(
        statuses[first_503..].iter().all(|s| *s == 503),
        "once full, it stays closed: {statuses:?}"
    );
    let (status, ready) = t.readyz().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["review_path"]["spool"]["available"], false);

    // A spool that cannot write: the segment it would create is a directory.
    let t = Triage::spawn(&one_task_rules(&up.url()), &[], &no_broker).await;
    t.wait_durable().await;
    std::fs::create_dir(
        t.dir
            .path()
            .join("spool")
            .join("00000000000000000001.spool"),
    )
    .unwrap();
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 503);
    assert_eq!(t.metric("triage_spool_errors_total", &[]).await, 1.0);
    let (status, ready) = t.readyz().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["review_path"]["spool"]["writable"], false);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_fails_no_request_accepted_before_the_drain_ended() {
    let up = Upstream::start(|_| {
        Reply::json(json!({"confidence": 0.9})).delay(Duration::from_millis(150))
    })
    .await;
    let t = Triage::start_with(
        &one_task_rules(&up.url()),
        &["--drain-delay-ms", "1000", "--shutdown-timeout-ms", "5000"],
        &[],
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    // Set when SIGTERM is sent: requests started before sigterm + drain delay must succeed.
    let drain_ends: Arc<std::sync::OnceLock<Instant>> = Arc::new(std::sync::OnceLock::new());
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (data, stop, drain_ends) = (t.data.clone(), stop.clone(), drain_ends.clone());
        workers.push(tokio::spawn(async move {
            // A new connection per request, so "accepted" is unambiguous.
            let c = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut ok, mut refused) = (0, 0);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match c.post(format!("{data}/v1/x")).body("{}").send().await {
                    Ok(r) => {
                        assert_eq!(r.status(), 200, "an accepted request failed");
                        r.bytes().await.expect("an accepted request was cut off");
                        ok += 1;
                    }
                    Err(e) => {
                        // Only after the drain: the listener is closed (refused), or the
                        // kernel resets connections still in its accept backlog.
                        let after_drain = drain_ends
                            .get()
                            .is_some_and(|end| started + Duration::from_millis(50) >= *end);
                        assert!(
                            after_drain,
                            "a request started before the drain ended failed: {e:?}"
                        );
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (ok, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = t.child.id().unwrap();
    let sent = Instant::now();
    drain_ends.set(sent + Duration::from_millis(1000)).unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // During the drain delay: not ready, still serving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, ready) = t.readyz().await;
    assert_eq!(status, 503);
    assert_eq!(ready["draining"], true);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for w in workers {
        let (o, r) = w.await.unwrap();
        ok += o;
        refused += r;
    }
    assert!(ok > 20, "{ok} served");
    assert!(refused > 0, "the listener closed after the drain");
    let mut t = t;
    let exit = tokio::time::timeout(Duration::from_secs(10), t.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(sent.elapsed() >= Duration::from_millis(1000));
}

async fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_hostile_clients_get_clear_errors_and_others_are_served() {
    let endless = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endless_addr = endless.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = endless.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await;
                let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
                while s.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.9}))).await;
    let rules = format!(
        "version: 1\nupstreams: {{ llm: {{ url: \"{}\" }}, endless: {{ url: \"http://{endless_addr}\", timeout_ms: 3000 }} }}\ntasks:\n  - {{ name: endless, match: {{ path_prefix: /endless }}, upstream: endless, confidence: {{ source: json_pointer, pointer: /confidence }}, threshold: 0.5 }}\n  - {{ name: t, upstream: llm, model: {{ request_field: /model, pinned: v1 }}, confidence: {{ source: json_pointer, pointer: /confidence }}, threshold: 0.5 }}\n",
        up.url()
    );
    let t = Triage::start_with(
        &rules,
        &[
            "--header-read-timeout-ms",
            "1000",
            "--max-response-bytes",
            "1048576",
        ],
        &[],
    )
    .await;
    let addr = t.data.trim_start_matches("http://").to_string();
    let c = client();

    // Slowloris: 50 connections dribbling a request head, and 20 that send nothing at all.
    let mut slow = Vec::new();
    for i in 0..70 {
        let addr = addr.clone();
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            if i < 50 {
                let _ = s.write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\n").await;
                for _ in 0..40 {
                    if s.write_all(b"x-a: b\r\n").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf)).await;
            (i, started.elapsed())
        }));
    }
    for _ in 0..20 {
        let started = Instant::now();
        let r = t.post_empty(&c).await;
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "slow clients delayed others"
        );
    }
    for h in slow {
        let (i, held) = h.await.unwrap();
        assert!(
            held < Duration::from_millis(3000),
            "slow client {i} was kept {held:?}"
        );
    }

    // 10,000 headers and a 1 MB header: 431, and nothing reaches the upstream.
    let before = up.count();
    let mut many = String::from("POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n{}");
    assert!(
        raw(&addr, many.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    let huge = format!(
        "POST /v1/x HTTP/1.1\r\nhost: x\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "a".repeat(1 << 20)
    );
    assert!(
        raw(&addr, huge.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    assert_eq!(up.count(), before);

    // Invalid UTF-8 in a header value and in a body the task must rewrite.
    let mut bad =
        b"POST /v1/x HTTP/1.1\r\nhost: x\r\nx-note: \xff\xfe\r\ncontent-length: 4\r\n\r\n".to_vec();
    bad.extend_from_slice(b"{\"\xff\"");
    let answer = raw(&addr, &bad).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid_json"), "{answer}");

    // A truncated chunked body: the client gives up mid-chunk.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"POST /v1/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{\"a\":",
    )
    .await
    .unwrap();
    drop(s);

    // An upstream that never stops sending: a clear 502, within the cap.
    let r = c
        .post(format!("{}/endless", t.data))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_upstream_response");

    // And the sidecar is still serving.
    let r = t.post_empty(&c).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_idle_keep_alive_connections_without_waiting_out_the_grace() {
    let up = Upstream::start(|_| Reply::json(json!({"confidence": 0.9}))).await;
    let t = Triage::start_with(
        &one_task_rules(&up.url()),
        &["--drain-delay-ms", "0", "--shutdown-timeout-ms", "20000"],
        &[],
    )
    .await;
    // One request on a keep-alive connection, which then sits idle.
    let addr = t.data.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    let pid = t.child.id().unwrap();
    let sent = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // The idle connection is closed by triage, not held until the grace runs out.
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was not closed: {closed:?}"
    );
    let mut t = t;
    let exit = tokio::time::timeout(Duration::from_secs(10), t.child.wait())
        .await
        .expect("triage exited before its 20 s shutdown timeout")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(sent.elapsed() < Duration::from_secs(10));
}
