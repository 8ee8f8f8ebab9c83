//! `triage demo`: a first look in one command. It starts a simulated model server (an
//! OpenAI-style chat completion and a classifier, on 127.0.0.1:0), writes the example rules
//! with every upstream pointed at it into a temporary directory, and runs the sidecar on
//! them through `serve`'s own path (with no drain delay). Once listening it prints curl
//! lines that show a pass, a hold and a flag.
//!
//! The simulated model's confidence is steerable: a text that says "unclear" gets a low
//! confidence, one that says "clear" a high one, any other a random one spread around the
//! example thresholds; a header `x-demo-confidence: 0.3` sets it exactly.

use std::convert::Infallible;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

use triage::settings::{Cli, Command, DemoArgs, ServeArgs};

/// The example rules, built in so that the demo runs from any directory.
const EXAMPLE_RULES: &str = include_str!("../routing-rules/example.yaml");
/// The version the simulated classifier reports (the example pins it).
const CLASSIFIER_VERSION: &str = "ticket-router-2026-10-01";
/// Steers the simulated model's confidence: a number in [0, 1].
const CONFIDENCE_HEADER: &str = "x-demo-confidence";

pub fn run(args: DemoArgs) -> ExitCode {
    let model = match start_model() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: cannot start the simulated model server: {e}");
            return ExitCode::from(1);
        }
    };
    let dir = std::env::temp_dir().join(format!("triage-demo-{}", uuid::Uuid::now_v7().simple()));
    let code = match prepare(&args, &dir, model) {
        Ok(serve_args) => crate::serve(serve_args, Box::new(print_try_it)),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

/// Write the rules, check the broker, print what the demo runs, and build `serve`'s settings.
fn prepare(args: &DemoArgs, dir: &Path, model: SocketAddr) -> Result<ServeArgs, String> {
    let spool = dir.join("spool");
    std::fs::create_dir_all(&spool).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let rules_path = dir.join("rules.yaml");
    let rules = demo_rules(EXAMPLE_RULES, &format!("http://{model}"))?;
    std::fs::write(&rules_path, rules)
        .map_err(|e| format!("cannot write {}: {e}", rules_path.display()))?;
    let review = if broker_reachable(&args.amqp_url) {
        format!(
            "review items go to RabbitMQ queue {q} (look: rabbitmqadmin get queue={q} count=5, or the management UI)",
            q = args.queues.review_queue
        )
    } else {
        format!(
            "RabbitMQ is not reachable: review items go to the spool at {} (they are delivered when a broker appears)",
            spool.display()
        )
    };
    let serve_args = serve_args(args, &rules_path, &spool)?;
    println!("triage demo");
    println!(
        "  model:  a simulated model server at http://{model} (chat completions, a classifier)"
    );
    println!(
        "  rules:  {} (routing-rules/example.yaml, upstreams pointed at the simulated model; edit it and triage reloads it)",
        rules_path.display()
    );
    println!("  review: {review}");
    Ok(serve_args)
}

/// `serve`'s settings for the demo: the given flags, a spool in the temporary directory, no
/// drain delay; everything else is `serve`'s default (or its `TRIAGE_*` variable).
fn serve_args(args: &DemoArgs, rules: &Path, spool: &Path) -> Result<ServeArgs, String> {
    let flag = |name: &str, value: &dyn AsRef<std::ffi::OsStr>| {
        let mut s = OsString::from(format!("--{name}="));
        s.push(value.as_ref());
        s
    };
    let argv = vec![
        OsString::from("triage"),
        OsString::from("serve"),
        flag("rules", &rules),
        flag("spool-dir", &spool),
        flag("listen", &args.listen.to_string()),
        flag("admin-listen", &args.admin_listen.to_string()),
        flag("amqp-url", &args.amqp_url),
        flag("review-exchange", &args.queues.review_exchange),
        flag("review-queue", &args.queues.review_queue),
        flag("verdict-exchange", &args.queues.verdict_exchange),
        flag("verdict-queue", &args.queues.verdict_queue),
        flag("drain-delay-ms", &"0"),
        flag("shutdown-timeout-ms", &"2000"),
    ];
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Serve(serve),
        }) => Ok(*serve),
        Ok(_) => Err("internal: the demo's settings did not parse as serve".into()),
        Err(e) => Err(format!("bad settings: {e}")),
    }
}

/// The example rules with every upstream URL replaced by `url`. The text is edited line by
/// line so that the comments stay; should that miss an upstream (a reformatted example),
/// the rules are rewritten through YAML instead.
fn demo_rules(example: &str, url: &str) -> Result<String, String> {
    let edited: String = example
        .lines()
        .map(|line| replace_url(line, url) + "\n")
        .collect();
    if upstreams_point_to(&edited, url)? {
        return Ok(edited);
    }
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(example).map_err(|e| format!("example rules: {e}"))?;
    if let Some(ups) = doc
        .get_mut("upstreams")
        .and_then(serde_yaml_ng::Value::as_mapping_mut)
    {
        for (_, up) in ups.iter_mut() {
            if let Some(m) = up.as_mapping_mut() {
                m.insert("url".into(), url.into());
            }
        }
    }
    let text = serde_yaml_ng::to_string(&doc).map_err(|e| format!("example rules: {e}"))?;
    if upstreams_point_to(&text, url)? {
        Ok(text)
    } else {
        Err("internal: cannot point the example's upstreams at the simulated model".into())
    }
}

/// `url: "…"` (quoted or not) on this line, with the value replaced.
fn replace_url(line: &str, url: &str) -> String {
    let Some(at) = line.find("url:") else {
        return line.to_string();
    };
    let (head, rest) = line.split_at(at + "url:".len());
    let value = rest.trim_start();
    let lead = &rest[..rest.len() - value.len()];
    let end = match value.chars().next() {
        Some(q @ ('"' | '\'')) => value[1..].find(q).map(|i| i + 2),
        Some(_) => Some(value.find([',', '}', ' ', '#']).unwrap_or(value.len())),
        None => None,
    };
    match end {
        Some(end) => format!("{head}{lead}\"{url}\"{}", &value[end..]),
        None => line.to_string(),
    }
}

/// Every upstream of these rules has this URL (and there is at least one).
fn upstreams_point_to(rules: &str, url: &str) -> Result<bool, String> {
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(rules).map_err(|e| format!("example rules: {e}"))?;
    let Some(ups) = doc
        .get("upstreams")
        .and_then(serde_yaml_ng::Value::as_mapping)
    else {
        return Ok(false);
    };
    Ok(!ups.is_empty()
        && ups
            .values()
            .all(|u| u.get("url").and_then(serde_yaml_ng::Value::as_str) == Some(url)))
}

// ---------------------------------------------------------------------------------------
// The broker check

/// Does anything accept a TCP connection at the AMQP URL's host and port (1 s timeout)?
fn broker_reachable(url: &str) -> bool {
    let Some((host, port)) = broker_address(url) else {
        return false;
    };
    let Ok(addrs) = (host.as_str(), port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// Host and port of an `amqp://` or `amqps://` URL (default ports 5672 and 5671).
fn broker_address(url: &str) -> Option<(String, u16)> {
    let (rest, default_port) = if let Some(r) = url.strip_prefix("amqps://") {
        (r, 5671)
    } else {
        (url.strip_prefix("amqp://")?, 5672)
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        Some(p) if !p.is_empty() => p.parse().ok()?,
        _ => default_port,
    };
    let host = if host.is_empty() { "localhost" } else { host };
    Some((host.to_string(), port))
}

// ---------------------------------------------------------------------------------------
// What to try

/// After `listening …`: curl lines against the bound addresses.
fn print_try_it(data: SocketAddr, admin: SocketAddr) {
    for line in try_it(data, admin) {
        println!("{line}");
    }
}

fn try_it(data: SocketAddr, admin: SocketAddr) -> Vec<String> {
    let d = format!("http://{}", reachable(data));
    let a = format!("http://{}", reachable(admin));
    // Bodies written out by hand (json! would sort the keys); no single quotes in them.
    let chat = |text: &str| {
        let body = format!(
            r#"{{"model":"gpt-4o","messages":[{{"role":"system","content":"Extract the invoice total as JSON."}},{{"role":"user","content":{}}}]}}"#,
            Value::from(text)
        );
        format!(
            "  curl -si {d}/v1/chat/completions -H 'content-type: application/json' \
             -H 'x-task: invoice-extraction' -H 'x-user-id: alice' -d '{body}'"
        )
    };
    let classify =
        json!({"text": "Unclear: the app shows an error since the update, or was I billed twice?"});
    let requests = "grep '^triage_requests_total' | grep -v ' 0$'";
    vec![
        String::new(),
        "Try it (the simulated model is sure when the text says \"clear\", unsure when it says \"unclear\"):".into(),
        String::new(),
        "  # pass: a confident extraction is released: 200, x-triage-decision: pass".into(),
        chat("A clear scan: ACME GmbH, invoice 2026-117, total 1234.00 EUR"),
        "  # hold: an unsure one is withheld: 202 with a review_id, the output waits for a reviewer".into(),
        chat("A smudged, unclear scan: ACME GmbH, invoice 2026-118, total 1?34.00 EUR"),
        "  # flag: the classifier is unsure and its task says on_review: flag: 200, x-triage-decision: flag, a copy goes to review".into(),
        format!("  curl -si {d}/v1/classify -H 'content-type: application/json' -d '{classify}'"),
        "  # requests per task, variant and outcome (the non-zero ones); the active rules".into(),
        format!("  curl -s {a}/metrics | {requests}"),
        format!("  curl -s {a}/admin/rules"),
        String::new(),
        format!(
            "Other texts get a random confidence around the thresholds; -H '{CONFIDENCE_HEADER}: 0.6' sets it. Ctrl-C stops the demo."
        ),
    ]
}

/// A bound wildcard address is reached through the loopback address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

// ---------------------------------------------------------------------------------------
// The simulated model server

/// Bind 127.0.0.1:0 and serve the simulated model from a thread of its own (it lives as long
/// as the process).
fn start_model() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-model".into())
        .spawn(move || runtime.block_on(serve_model(listener)))?;
    Ok(addr)
}

async fn serve_model(listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the simulated model server cannot listen");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req| async move { Ok::<_, Infallible>(model(req).await) });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn model(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let steer = parts
        .headers
        .get(CONFIDENCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|c| c.is_finite());
    let body = match Limited::new(body, 1024 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST, &[], &error("unreadable body")),
    };
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    match (parts.method, parts.uri.path()) {
        (Method::POST, "/v1/chat/completions") => {
            let c = confidence(&last_user_text(&request), steer).clamp(0.01, 1.0);
            reply(StatusCode::OK, &[], &chat_completion(&request, c))
        }
        (Method::POST, "/v1/classify") => {
            let text = ["/text", "/input"]
                .iter()
                .find_map(|p| request.pointer(p).and_then(Value::as_str))
                .map_or_else(
                    || String::from_utf8_lossy(&body).into_owned(),
                    str::to_string,
                );
            let c = confidence(&text, steer);
            reply(
                StatusCode::OK,
                &[("x-model-version", CLASSIFIER_VERSION)],
                &classification(&text, c),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            &[],
            &error("the simulated model serves POST /v1/chat/completions and POST /v1/classify"),
        ),
    }
}

/// "unclear" → low, "clear" → high, else random around the example thresholds (0.7–0.9).
fn confidence(text: &str, steer: Option<f64>) -> f64 {
    if let Some(c) = steer {
        return c.clamp(0.0, 1.0);
    }
    let text = text.to_lowercase();
    if text.contains("unclear") {
        0.30 + 0.15 * fastrand::f64()
    } else if text.contains("clear") {
        0.95 + 0.04 * fastrand::f64()
    } else {
        0.55 + 0.44 * fastrand::f64()
    }
}

/// The text of the last user message (a string, or the text parts of a list).
fn last_user_text(request: &Value) -> String {
    let Some(messages) = request.get("messages").and_then(Value::as_array) else {
        return String::new();
    };
    let Some(content) = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
    else {
        return String::new();
    };
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// An OpenAI-style chat completion whose token logprobs average `ln(confidence)`; logprobs
/// only when the request asked for them (triage's `request_logprobs` does).
fn chat_completion(request: &Value, confidence: f64) -> Value {
    const TOKENS: [&str; 13] = [
        "{\"", "total", "\":", " \"", "1234", ".00", "\",", " \"", "currency", "\":", " \"", "EUR",
        "\"}",
    ];
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("demo-model");
    let mean = confidence.ln();
    // Alternating ±30 % around the mean (the odd one out at the mean): the mean is exact
    // and no logprob is positive.
    let content: Vec<Value> = TOKENS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let spread = match (i % 2, i + 1 == TOKENS.len()) {
                (_, true) => 1.0,
                (0, _) => 1.3,
                _ => 0.7,
            };
            json!({"token": t, "logprob": mean * spread, "top_logprobs": []})
        })
        .collect();
    let logprobs = if request.get("logprobs") == Some(&Value::Bool(true)) {
        json!({ "content": content })
    } else {
        Value::Null
    };
    let prompt_chars: usize = request
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    let prompt_tokens = prompt_chars.div_ceil(4) + 8;
    let completion_tokens = TOKENS.len();
    json!({
        "id": format!("chatcmpl-demo-{}", uuid::Uuid::now_v7().simple()),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": TOKENS.concat(), "refusal": null},
            "logprobs": logprobs,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    })
}

/// A ticket classification whose largest class probability is `confidence` (at least 1/4:
/// four classes), the label picked by keywords.
fn classification(text: &str, confidence: f64) -> Value {
    const LABELS: [&str; 4] = ["billing", "technical", "account", "other"];
    let text = text.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let label = if has(&["error", "crash", "bug", "update", "slow"]) {
        1
    } else if has(&["invoice", "bill", "refund", "charge", "payment"]) {
        0
    } else if has(&["password", "login", "account", "email"]) {
        2
    } else {
        3
    };
    let top = confidence.clamp(0.25, 1.0);
    let rest = (1.0 - top) / (LABELS.len() - 1) as f64;
    let round = |p: f64| (p * 10_000.0).round() / 10_000.0;
    let probabilities: Vec<f64> = (0..LABELS.len())
        .map(|i| round(if i == label { top } else { rest }))
        .collect();
    json!({"label": LABELS[label], "labels": LABELS, "probabilities": probabilities})
}

fn error(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error"}})
}

fn reply(status: StatusCode, headers: &[(&str, &str)], body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
            h.insert(k, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_upstream_points_at_the_model() {
        let url = "http://127.0.0.1:4321";
        let rules = demo_rules(EXAMPLE_RULES, url).unwrap();
        assert!(upstreams_point_to(&rules, url).unwrap());
        assert!(rules.contains("# Example routing rules"), "comments kept");
        assert!(!rules.contains("127.0.0.1:800"));
    }

    #[test]
    fn falls_back_to_yaml_when_the_text_edit_misses() {
        let url = "http://127.0.0.1:4321";
        let odd = "version: 1\nupstreams:\n  a:\n    url:\n      http://x:1\ntasks: []\n";
        let rules = demo_rules(odd, url).unwrap();
        assert!(upstreams_point_to(&rules, url).unwrap());
    }

    #[test]
    fn replaces_quoted_and_bare_urls() {
        let u = "http://h:1";
        assert_eq!(
            replace_url(r#"  llm: { url: "http://a:8000", timeout_ms: 3 }"#, u),
            r#"  llm: { url: "http://h:1", timeout_ms: 3 }"#
        );
        assert_eq!(
            replace_url("    url: http://a:8000 # c", u),
            r#"    url: "http://h:1" # c"#
        );
        assert_eq!(replace_url("no url here", u), "no url here");
    }

    #[test]
    fn printed_bodies_are_json() {
        let addr: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let lines = try_it(addr, addr);
        let curls: Vec<&String> = lines.iter().filter(|l| l.contains("curl -si")).collect();
        assert_eq!(curls.len(), 3);
        for l in curls {
            assert!(l.contains("http://127.0.0.1:8080/"), "{l}");
            let body = l.split(" -d '").nth(1).unwrap().trim_end_matches('\'');
            let v: Value = serde_json::from_str(body).unwrap();
            assert!(v.is_object(), "{l}");
        }
    }

    #[test]
    fn broker_addresses() {
        let a = |u: &str| broker_address(u);
        assert_eq!(
            a("amqp://guest:guest@127.0.0.1:5672/%2f"),
            Some(("127.0.0.1".into(), 5672))
        );
        assert_eq!(
            a("amqps://u:p@mq.example"),
            Some(("mq.example".into(), 5671))
        );
        assert_eq!(a("amqp://[::1]:5673/v"), Some(("::1".into(), 5673)));
        assert_eq!(a("amqp://"), Some(("localhost".into(), 5672)));
        assert_eq!(a("http://x"), None);
    }

    #[test]
    fn steering() {
        for _ in 0..100 {
            assert!(confidence("an Unclear scan", None) < 0.7);
            assert!(confidence("a clear scan", None) > 0.9);
            let c = confidence("anything", None);
            assert!((0.55..1.0).contains(&c));
        }
        assert_eq!(confidence("a clear scan", Some(0.3)), 0.3);
    }

    #[test]
    fn completion_carries_the_confidence() {
        let req = json!({"model": "m-1", "logprobs": true,
            "messages": [{"role": "user", "content": "x"}]});
        let out = chat_completion(&req, 0.62);
        assert_eq!(out["model"], "m-1");
        let lps: Vec<f64> = out["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect();
        assert!(lps.iter().all(|l| *l <= 0.0));
        let mean = lps.iter().sum::<f64>() / lps.len() as f64;
        assert!((mean.exp() - 0.62).abs() < 1e-9);
        let without = chat_completion(&json!({"model": "m"}), 0.9);
        assert!(without["choices"][0]["logprobs"].is_null());
    }

    #[test]
    fn classification_max_is_the_confidence() {
        let out = classification("my invoice is wrong", 0.4);
        assert_eq!(out["label"], "billing");
        let ps: Vec<f64> = out["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(ps.iter().cloned().fold(0.0, f64::max), 0.4);
        assert!((ps.iter().sum::<f64>() - 1.0).abs() < 1e-3);
    }
}
