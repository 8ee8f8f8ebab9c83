//! Test harness: the real `triage` binary on port 0, a model upstream written here, and the
//! real RabbitMQ with names unique to each test (deleted when the fixture drops).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

// ---------------------------------------------------------------------------------------
// The model upstream

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
}

impl Reply {
    pub fn json(v: serde_json::Value) -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&v).unwrap(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &[u8]) -> Self {
        Reply {
            status,
            headers: vec![],
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn last(&self) -> Recorded {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// An HTTP/1.1 upstream answering every request with `handler`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let rec = Recorded {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body,
                            };
                            recorded.lock().unwrap().push(rec.clone());
                            let reply = handler(&rec);
                            if !reply.delay.is_zero() {
                                tokio::time::sleep(reply.delay).await;
                            }
                            let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
                            *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(
                                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, requests }
    }
}

/// An "upstream" that accepts connections and closes them without answering.
pub async fn closing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
            drop(stream);
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// Model responses

/// Rules with one catch-all task `t` on upstream `url`: confidence at `/confidence`, 0.5.
pub fn one_task_rules(url: &str) -> String {
    format!(
        "version: 1\nupstreams: {{ llm: {{ url: \"{url}\" }} }}\ntasks:\n  - {{ name: t, upstream: llm, confidence: {{ source: json_pointer, pointer: /confidence }}, threshold: 0.5 }}\n"
    )
}

/// An OpenAI-style chat completion whose token logprobs all equal `ln(confidence)`.
pub fn chat_completion(model: &str, confidence: f64) -> serde_json::Value {
    let lp = confidence.ln();
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "total: 42.00", "refusal": null},
            "logprobs": {"content": [
                {"token": "total", "logprob": lp, "top_logprobs": []},
                {"token": ":", "logprob": lp, "top_logprobs": []},
                {"token": " 42", "logprob": lp, "top_logprobs": []}
            ]}
        }],
        "usage": {"prompt_tokens": 120, "completion_tokens": 3, "total_tokens": 123}
    })
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

/// Exchange and queue names unique to one test; deleted when dropped.
pub struct Names {
    pub review_exchange: String,
    pub review_queue: String,
    pub verdict_exchange: String,
    pub verdict_queue: String,
}

impl Names {
    pub fn unique() -> Names {
        let id = uuid::Uuid::now_v7().simple().to_string();
        Names {
            review_exchange: format!("test.{id}.review"),
            review_queue: format!("test.{id}.review"),
            verdict_exchange: format!("test.{id}.verdicts"),
            verdict_queue: format!("test.{id}.verdicts.metrics"),
        }
    }

    /// The same names again (each copy deletes them when dropped; deleting twice is fine).
    pub fn same(&self) -> Names {
        Names {
            review_exchange: self.review_exchange.clone(),
            review_queue: self.review_queue.clone(),
            verdict_exchange: self.verdict_exchange.clone(),
            verdict_queue: self.verdict_queue.clone(),
        }
    }

    pub fn args(&self) -> Vec<String> {
        vec![
            "--review-exchange".into(),
            self.review_exchange.clone(),
            "--review-queue".into(),
            self.review_queue.clone(),
            "--verdict-exchange".into(),
            self.verdict_exchange.clone(),
            "--verdict-queue".into(),
            self.verdict_queue.clone(),
        ]
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let queues = [
            self.review_queue.clone(),
            format!("{}.dead", self.review_queue),
            self.verdict_queue.clone(),
            format!("{}.dead", self.verdict_queue),
        ];
        let exchanges = [
            self.review_exchange.clone(),
            format!("{}.dead", self.review_exchange),
            self.verdict_exchange.clone(),
            format!("{}.dead", self.verdict_exchange),
        ];
        // Drop may run inside a runtime: clean up from a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
                else {
                    return;
                };
                for q in queues {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                for e in exchanges {
                    if let Ok(ch) = conn.create_channel().await {
                        let _ = ch
                            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                            .await;
                    }
                }
                let _ = conn.close(200, "test cleanup".into()).await;
            });
        })
        .join();
    }
}

pub struct Broker {
    pub conn: Connection,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub routing_key: String,
    pub body: serde_json::Value,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
}

impl Broker {
    pub async fn connect() -> Broker {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        Broker { conn }
    }

    /// Take the next message from `queue`, waiting up to `wait`.
    pub async fn next(&self, queue: &str, wait: Duration) -> Option<Message> {
        let mut own = None;
        let mut ch = self.channel(&mut own).await;
        let deadline = Instant::now() + wait;
        loop {
            // A missing queue closes the channel (404): open another for the next try.
            if !ch.status().connected() {
                ch = self.channel(&mut own).await;
            }
            if let Ok(Some(m)) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
            {
                let d = m.delivery;
                let p = &d.properties;
                return Some(Message {
                    routing_key: d.routing_key.to_string(),
                    body: serde_json::from_slice(&d.data).unwrap_or(serde_json::Value::Null),
                    message_id: p.message_id().as_ref().map(|s| s.to_string()),
                    content_type: p.content_type().as_ref().map(|s| s.to_string()),
                    delivery_mode: *p.delivery_mode(),
                });
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A channel on the shared connection, or on a fresh one when the broker has closed it:
    /// RabbitMQ closes the whole connection, not only the channel, when `basic.get` meets a
    /// queue that another client is still creating (`internal_error: noproc`).
    async fn channel(&self, own: &mut Option<Connection>) -> lapin::Channel {
        let conn = own.as_ref().unwrap_or(&self.conn);
        if let Ok(ch) = conn.create_channel().await {
            return ch;
        }
        let fresh = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        let ch = fresh.create_channel().await.expect("a channel");
        *own = Some(fresh);
        ch
    }

    /// Every message currently in `queue` (waits briefly for stragglers).
    pub async fn drain(&self, queue: &str) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.next(queue, Duration::from_millis(300)).await {
            out.push(m);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// The triage process

pub struct Triage {
    pub child: Child,
    pub data: String,
    pub admin: String,
    pub names: Names,
    pub dir: tempfile::TempDir,
    pub rules_path: PathBuf,
    pub stderr_path: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_triage")
}

impl Triage {
    /// Start triage with `rules` and wait until it is ready (broker connected).
    pub async fn start(rules: &str) -> Triage {
        Self::start_with(rules, &[], &[]).await
    }

    pub async fn start_with(rules: &str, args: &[&str], env: &[(&str, &str)]) -> Triage {
        let t = Self::spawn(rules, args, env).await;
        t.wait_ready().await;
        t
    }

    /// Start with `--rules` pointing at `path` (a file or directory the test laid out).
    pub async fn start_with_rules_path(path: &std::path::Path, args: &[&str]) -> Triage {
        let mut all = vec!["--rules", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let t = Self::spawn("version: 1\n", &all, &[]).await;
        t.wait_ready().await;
        t
    }

    /// Start on the exchanges and queues of another instance (a second replica, a restart).
    pub async fn start_with_names(rules: &str, names: &Names) -> Triage {
        let t = Self::spawn_named(rules, &[], &[], names.same()).await;
        t.wait_ready().await;
        t
    }

    /// Start without waiting for readiness.
    pub async fn spawn(rules: &str, args: &[&str], env: &[(&str, &str)]) -> Triage {
        Self::spawn_named(rules, args, env, Names::unique()).await
    }

    pub async fn spawn_named(
        rules: &str,
        args: &[&str],
        env: &[(&str, &str)],
        names: Names,
    ) -> Triage {
        let dir = tempfile::tempdir().unwrap();
        let rules_path = dir.path().join("rules.yaml");
        std::fs::write(&rules_path, rules).unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        if !args.contains(&"--rules") {
            cmd.arg("--rules").arg(&rules_path);
        }
        if !args.contains(&"--spool-dir") {
            cmd.arg("--spool-dir").arg(dir.path().join("spool"));
        }
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(names.args())
            .args(args)
            .env("TRIAGE_AMQP_URL", AMQP_URL)
            .env("TRIAGE_LOG", "triage=debug,info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start triage");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("triage printed no listening line in time")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "triage exited: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            });
        let (data, admin) = parse_listening(&line);
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Triage {
            child,
            data: format!("http://{data}"),
            admin: format!("http://{admin}"),
            names,
            dir,
            rules_path,
            stderr_path,
        }
    }

    /// Ready, with the broker connected and the topology declared (not only the spool).
    pub async fn wait_ready(&self) {
        self.wait_readyz(true).await
    }

    /// `/readyz` is 200: the review path is durable (broker or spool).
    pub async fn wait_durable(&self) {
        self.wait_readyz(false).await
    }

    async fn wait_readyz(&self, broker: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((200, v)) = self.try_readyz().await
                && (!broker || v["review_path"]["broker"] == true)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "triage not ready in time: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        self.try_readyz().await.expect("/readyz answers with JSON")
    }

    async fn try_readyz(&self) -> Option<(u16, serde_json::Value)> {
        let r = reqwest::get(format!("{}/readyz", self.admin)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.ok()?))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `POST /v1/x` with the body `{}`: the route of [`one_task_rules`].
    pub async fn post_empty(&self, c: &reqwest::Client) -> reqwest::Response {
        c.post(format!("{}/v1/x", self.data))
            .body("{}")
            .send()
            .await
            .unwrap()
    }

    /// Whether `text` reaches triage's stderr within 5 s: log lines are written by a
    /// background thread (within 50 ms; warnings and errors at once).
    pub async fn logged(&self, text: &str) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !self.stderr().contains(text) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample on `/metrics`, e.g. `triage_requests_total{task="a",…}`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

pub fn parse_listening(line: &str) -> (String, String) {
    let mut data = None;
    let mut admin = None;
    for part in line.trim().split(' ') {
        if let Some(v) = part.strip_prefix("data=") {
            data = Some(v.to_string());
        }
        if let Some(v) = part.strip_prefix("admin=") {
            admin = Some(v.to_string());
        }
    }
    assert!(
        line.starts_with("listening "),
        "unexpected first line: {line}"
    );
    (data.unwrap(), admin.unwrap())
}

/// Sum of the samples of `name` whose labels include all of `labels` (0 when none).
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if ok { value.parse::<f64>().ok() } else { None }
        })
        .sum()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// A TCP fault relay between triage and RabbitMQ.

pub const PASS: u8 = 0;
pub const CUT: u8 = 1; // existing connections closed, new ones closed at once
pub const BLACKHOLE: u8 = 2; // connections accepted, nothing forwarded either way

pub struct Relay {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    changed: watch::Sender<u8>,
}

impl Relay {
    pub async fn start(target: &str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(PASS));
        let (changed, _) = watch::channel(PASS);
        let target = target.to_string();
        let (m, tx) = (mode.clone(), changed.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mode = m.load(Ordering::SeqCst);
                if mode == CUT {
                    drop(client);
                    continue;
                }
                let rx = tx.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    if mode == BLACKHOLE {
                        // Hold the socket, forward nothing, until the mode changes; then drop.
                        let mut rx = rx;
                        let _ = rx.changed().await;
                        drop(client);
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    pipe(client, server, rx).await;
                });
            }
        });
        Relay {
            addr,
            mode,
            changed,
        }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        let _ = self.changed.send(mode);
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }
}

/// Copy both ways until either side closes or the relay stops passing.
async fn pipe(mut a: TcpStream, mut b: TcpStream, mut rx: watch::Receiver<u8>) {
    let (mut ar, mut aw) = a.split();
    let (mut br, mut bw) = b.split();
    let mut abuf = vec![0u8; 16 * 1024];
    let mut bbuf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = ar.read(&mut abuf) => match n { Ok(0) | Err(_) => return, Ok(n) => if bw.write_all(&abuf[..n]).await.is_err() { return } },
            n = br.read(&mut bbuf) => match n { Ok(0) | Err(_) => return, Ok(n) => if aw.write_all(&bbuf[..n]).await.is_err() { return } },
            _ = rx.changed() => {
                let mode = *rx.borrow();
                match mode {
                    PASS => continue,
                    BLACKHOLE => {
                        // Stop forwarding; keep the sockets open until the next change.
                        let _ = rx.changed().await;
                        return;
                    }
                    _ => return,
                }
            }
        }
    }
}
