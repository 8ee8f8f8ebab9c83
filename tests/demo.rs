//! `triage demo`: the real binary, the curl lines it prints sent as printed (parsed here and
//! sent with reqwest), a pass, a hold and a flag; then SIGINT and a clean exit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use common::{AMQP_URL, Names, bin};

/// One printed `curl` line: method, URL, headers, body.
#[derive(Debug)]
struct Curl {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// Shell words: whitespace-separated, single and double quotes group (no escapes needed:
/// the demo prints none).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {line}");
    if in_word {
        out.push(cur);
    }
    out
}

fn parse_curl(line: &str) -> Curl {
    let w = words(line);
    assert_eq!(w[0], "curl", "{line}");
    let mut curl = Curl {
        method: String::new(),
        url: String::new(),
        headers: vec![],
        body: None,
    };
    let mut i = 1;
    while i < w.len() {
        match w[i].as_str() {
            "-H" | "--header" => {
                let (k, v) = w[i + 1].split_once(':').expect("header with a colon");
                curl.headers.push((k.trim().into(), v.trim().into()));
                i += 1;
            }
            "-d" | "--data" | "--data-raw" => {
                curl.body = Some(w[i + 1].clone());
                i += 1;
            }
            "-X" | "--request" => {
                curl.method = w[i + 1].clone();
                i += 1;
            }
            "|" => break,
            flag if flag.starts_with('-') => {}
            url => curl.url = url.into(),
        }
        i += 1;
    }
    if curl.method.is_empty() {
        curl.method = if curl.body.is_some() { "POST" } else { "GET" }.into();
    }
    assert!(curl.url.starts_with("http://"), "no URL in {line}");
    curl
}

async fn send(client: &reqwest::Client, c: &Curl) -> reqwest::Response {
    let mut req = client.request(c.method.parse().unwrap(), &c.url);
    for (k, v) in &c.headers {
        req = req.header(k, v);
    }
    if let Some(body) = &c.body {
        req = req.body(body.clone());
    }
    req.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_prints_curl_lines_that_pass_hold_and_flag_then_stops_on_sigint() {
    let names = Names::unique();
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(names.args())
        .env("TRIAGE_AMQP_URL", AMQP_URL)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start triage demo");
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // Read until the admin lines (the last curl lines) are printed.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("/admin/rules");
            printed.push(line);
            if done {
                return;
            }
        }
        panic!("triage demo exited early: {printed:#?}\n{}", stderr());
    })
    .await;
    assert!(
        read.is_ok(),
        "no curl lines in time: {printed:#?}\n{}",
        stderr()
    );
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let text = printed.join("\n");
    assert!(
        text.contains(&format!(
            "review items go to RabbitMQ queue {}",
            names.review_queue
        )),
        "the broker is up, so the demo must say it uses the queue:\n{text}"
    );
    let listening = printed
        .iter()
        .find(|l| l.starts_with("listening "))
        .expect("a listening line");
    let (data, admin) = common::parse_listening(listening);

    // Each `# pass|hold|flag: …` comment is followed by its curl line.
    let curl_after = |kind: &str| -> Curl {
        let at = printed
            .iter()
            .position(|l| l.trim_start().starts_with(&format!("# {kind}:")))
            .unwrap_or_else(|| panic!("no `# {kind}:` line in\n{text}"));
        let line = printed[at + 1].trim();
        assert!(line.starts_with("curl -si "), "{line}");
        parse_curl(line)
    };
    let (pass, hold, flag) = (curl_after("pass"), curl_after("hold"), curl_after("flag"));
    for c in [&pass, &hold, &flag] {
        assert!(
            c.url.starts_with(&format!("http://{data}/")),
            "{c:?} is not against {data}"
        );
    }
    assert!(
        printed
            .iter()
            .any(|l| l.contains(&format!("curl -s http://{admin}/metrics | grep"))),
        "{text}"
    );
    assert!(
        printed
            .iter()
            .any(|l| l.trim() == format!("curl -s http://{admin}/admin/rules")),
        "{text}"
    );

    let client = common::client();

    let r = send(&client, &pass).await;
    assert_eq!(r.status(), 200, "pass: {}", stderr());
    assert_eq!(header(&r, "x-triage-decision"), "pass");
    assert_eq!(header(&r, "x-triage-task"), "invoice-extraction");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["model"].as_str().unwrap().starts_with("gpt-4o-20"),
        "the pinned version answered: {v}"
    );

    let r = send(&client, &hold).await;
    assert_eq!(r.status(), 202, "hold: {}", stderr());
    assert_eq!(header(&r, "x-triage-decision"), "review");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "pending_review", "{v}");
    assert_eq!(v["reason"], "low_confidence", "{v}");
    assert!(
        !v["review_id"].as_str().unwrap_or_default().is_empty(),
        "{v}"
    );

    let r = send(&client, &flag).await;
    assert_eq!(r.status(), 200, "flag: {}", stderr());
    assert_eq!(header(&r, "x-triage-decision"), "flag");
    assert_eq!(header(&r, "x-triage-task"), "ticket-routing");
    assert!(!header(&r, "x-triage-review-id").is_empty());
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["probabilities"].is_array(), "{v}");

    // The held and the flagged items reached the test's own review queue: at once, or from
    // the spool once the review path has connected (on a busy machine the demo's first
    // requests can come before its broker connection).
    let broker = common::Broker::connect().await;
    let mut items = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while items.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(m) = broker
            .next(&names.review_queue, Duration::from_millis(500))
            .await
        {
            items.push(m);
        }
    }
    items.extend(broker.drain(&names.review_queue).await);
    let mut reasons: Vec<String> = items
        .iter()
        .filter(|m| m.body["reason"] == "low_confidence")
        .map(|m| m.routing_key.clone())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invoice-extraction.low_confidence",
            "ticket-routing.low_confidence"
        ],
        "{items:#?}"
    );

    // The admin lines work too.
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_value(
            &metrics,
            "triage_requests_total",
            &[("task", "ticket-routing"), ("outcome", "flagged")]
        ),
        1.0
    );
    let rules = client
        .get(format!("http://{admin}/admin/rules"))
        .send()
        .await
        .unwrap();
    assert_eq!(rules.status(), 200);

    // Ctrl-C: a clean exit, quickly (no drain delay).
    let pid = child.id().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .unwrap_or_else(|_| panic!("demo still running 5 s after SIGINT: {}", stderr()))
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", stderr());
    // The demo's temporary directory (rules, spool) is gone.
    let rules_line = printed
        .iter()
        .find_map(|l| l.trim().strip_prefix("rules:"))
        .expect("a rules: line");
    let rules_file = std::path::Path::new(rules_line.split_whitespace().next().unwrap());
    assert!(rules_file.ends_with("rules.yaml"), "{rules_line}");
    assert!(!rules_file.parent().unwrap().exists(), "{rules_line}");
    drop(names);
}

#[test]
fn curl_lines_parse() {
    let c = parse_curl(
        r#"curl -si http://127.0.0.1:1/v1/x -H 'content-type: application/json' -H 'x-a: b c' -d '{"k": "v w"}'"#,
    );
    assert_eq!(c.method, "POST");
    assert_eq!(c.url, "http://127.0.0.1:1/v1/x");
    assert_eq!(
        c.headers,
        [
            ("content-type".to_string(), "application/json".to_string()),
            ("x-a".to_string(), "b c".to_string())
        ]
    );
    assert_eq!(c.body.as_deref(), Some(r#"{"k": "v w"}"#));
    let g = parse_curl("curl -s http://127.0.0.1:2/admin/rules");
    assert_eq!(g.method, "GET");
    assert!(g.body.is_none());
}
