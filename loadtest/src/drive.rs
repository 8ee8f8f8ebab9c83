//! The load driver: hyper http1 client connections (one handshake each, keep-alive,
//! `TCP_NODELAY`), open loop at a fixed rate (coordinated omission corrected) or closed loop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Result, Size};

/// A small chat request, as a client would send it.
pub const CHAT_REQUEST: &str = r#"{"model":"gpt-4o","messages":[{"role":"system","content":"You extract invoice totals."},{"role":"user","content":"Invoice 2291: total 1,234.56 EUR, due in 30 days. What is the total?"}],"logprobs":true,"temperature":0}"#;
pub const CLASSIFY_REQUEST: &str =
    r#"{"text":"My invoice shows the wrong amount, please fix it."}"#;

#[derive(clap::Args)]
pub struct DriveArgs {
    /// Full URL, e.g. http://127.0.0.1:8080/v1/chat/completions (or /v1/classify).
    #[arg(long)]
    pub url: String,
    /// Requests per second (open loop); 0 = closed loop, each connection back to back.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Keep-alive connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Response size asked of the mock (x-size): 0.8k, 5k, 50k.
    #[arg(long, default_value = "0.8k")]
    pub size: Size,
    /// Share of answers the mock makes low-confidence (x-hold-share).
    #[arg(long, default_value_t = 0.0)]
    pub hold_share: f64,
    /// Write the review ids of 202 answers here, one a line.
    #[arg(long)]
    pub ids_out: Option<std::path::PathBuf>,
}

pub fn main(a: DriveArgs) -> Result<()> {
    crate::procs::raise_nofile_limit();
    let uri: Uri = a.url.parse().map_err(|e| format!("--url: {e}"))?;
    let out = crate::runtime()?.block_on(async move {
        let target = Target::from_uri(&uri).await?;
        let load = Load {
            target,
            size: a.size,
            hold_share: a.hold_share,
            connections: a.connections.max(1),
            rate: a.rate,
            duration: Duration::from_secs_f64(a.duration),
        };
        Ok::<_, String>(run(&load).await)
    })?;
    println!("{}", out.summary());
    if let Some(path) = a.ids_out {
        std::fs::write(&path, out.ids.join("\n")).map_err(|e| format!("{path:?}: {e}"))?;
    }
    Ok(())
}

/// Where to send: the socket address, the Host header and the request path.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    pub path: Uri,
}

impl Target {
    pub fn new(addr: SocketAddr, path: &str) -> Result<Target> {
        Ok(Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
            path: path.parse().map_err(|e| format!("{path}: {e}"))?,
        })
    }

    pub async fn from_uri(uri: &Uri) -> Result<Target> {
        let auth = uri.authority().ok_or("the URL has no host")?;
        let port = auth.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((auth.host(), port))
            .await
            .map_err(|e| format!("{auth}: {e}"))?
            .next()
            .ok_or_else(|| format!("{auth}: no address"))?;
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut t = Target::new(addr, path)?;
        t.host = HeaderValue::from_str(auth.as_str()).map_err(|e| e.to_string())?;
        Ok(t)
    }
}

pub struct Load {
    pub target: Target,
    pub size: Size,
    pub hold_share: f64,
    pub connections: usize,
    /// Requests per second; 0 (or less) = closed loop.
    pub rate: f64,
    pub duration: Duration,
}

impl Load {
    fn request(&self, body: &Bytes, share: &HeaderValue) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(body.clone()));
        *r.method_mut() = Method::POST;
        *r.uri_mut() = self.target.path.clone();
        let h = r.headers_mut();
        h.insert(HOST, self.target.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-size", HeaderValue::from_static(self.size.label()));
        h.insert("x-hold-share", share.clone());
        r
    }

    fn body(&self) -> Bytes {
        if self.target.path.path().starts_with("/v1/classify") {
            Bytes::from_static(CLASSIFY_REQUEST.as_bytes())
        } else {
            Bytes::from_static(CHAT_REQUEST.as_bytes())
        }
    }
}

/// What one load phase saw.
pub struct Outcome {
    /// Latency in nanoseconds.
    pub hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed at the transport (connection refused, reset, closed).
    pub errors: u64,
    /// Open loop: requests due before the end that were never sent (the target fell too
    /// far behind); recorded in the histogram with their wait so far.
    pub unsent: u64,
    /// Review ids of 202 answers.
    pub ids: Vec<String>,
    pub completed: u64,
    /// From t0 to the last answer.
    pub elapsed: Duration,
    /// Open loop: how late the driver's timer woke, worst case (driver health).
    pub timer_lag_max: Duration,
    pub timer_lag_sum: Duration,
    pub timer_wakes: u64,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            hist: new_hist(),
            statuses: BTreeMap::new(),
            errors: 0,
            unsent: 0,
            ids: Vec::new(),
            completed: 0,
            elapsed: Duration::ZERO,
            timer_lag_max: Duration::ZERO,
            timer_lag_sum: Duration::ZERO,
            timer_wakes: 0,
        }
    }

    fn merge(&mut self, o: Outcome) {
        let _ = self.hist.add(&o.hist);
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        self.unsent += o.unsent;
        self.ids.extend(o.ids);
        self.completed += o.completed;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.timer_lag_max = self.timer_lag_max.max(o.timer_lag_max);
        self.timer_lag_sum += o.timer_lag_sum;
        self.timer_wakes += o.timer_wakes;
    }

    /// Quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return f64::NAN;
        }
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    pub fn rate(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn statuses_str(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{v}×{k}"))
            .collect();
        if self.errors > 0 {
            parts.push(format!("{}×error", self.errors));
        }
        if self.unsent > 0 {
            parts.push(format!("{}×unsent", self.unsent));
        }
        parts.join(" ")
    }

    pub fn summary(&self) -> String {
        let lag = if self.timer_wakes > 0 {
            format!(
                "; timer lag mean {:.3} ms, max {:.3} ms",
                self.timer_lag_sum.as_secs_f64() * 1e3 / self.timer_wakes as f64,
                self.timer_lag_max.as_secs_f64() * 1e3
            )
        } else {
            String::new()
        };
        format!(
            "{} requests in {:.2} s = {:.0} req/s; p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; statuses: {}; review ids: {}{lag}",
            self.completed,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.hist.max() as f64 / 1e6,
            self.statuses_str(),
            self.ids.len(),
        )
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 5 min, 3 significant digits. Fixed bounds: cannot fail.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1_000, 300_000_000_000, 3).expect("constant, valid bounds")
}

pub type Sender = SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1.1 connection, `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr) -> Result<Sender> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .map_err(|e| format!("handshake {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send one request and read the answer to its end: (status, review id of a 202).
pub async fn exchange(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> std::result::Result<(u16, Option<String>), hyper::Error> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let mut id = if status == 202 {
        resp.headers()
            .get("x-triage-review-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        None
    };
    let mut body = resp.into_body();
    if status == 202 && id.is_none() {
        let all = body.collect().await?.to_bytes();
        id = serde_json::from_slice::<serde_json::Value>(&all)
            .ok()
            .and_then(|v| v["review_id"].as_str().map(str::to_string));
    } else {
        while let Some(frame) = body.frame().await {
            frame?;
        }
    }
    Ok((status, id))
}

/// Run one load phase: connect every connection first, then load from t0.
pub async fn run(load: &Load) -> Outcome {
    let shared = Arc::new(Shared {
        body: load.body(),
        share: HeaderValue::from_str(&format!("{}", load.hold_share))
            .unwrap_or(HeaderValue::from_static("0")),
    });
    let mut senders = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        senders.push(connect(load.target.addr).await.ok());
    }
    let t0 = Instant::now() + Duration::from_millis(5);
    let load = Arc::new(Load {
        target: load.target.clone(),
        size: load.size,
        hold_share: load.hold_share,
        connections: load.connections,
        rate: load.rate,
        duration: load.duration,
    });
    let mut handles = Vec::with_capacity(senders.len());
    for (k, sender) in senders.into_iter().enumerate() {
        let (load, shared) = (load.clone(), shared.clone());
        handles.push(tokio::spawn(async move {
            worker(&load, &shared, k, sender, t0).await
        }));
    }
    let mut out = Outcome::new();
    for h in handles {
        if let Ok(o) = h.await {
            out.merge(o);
        }
    }
    out
}

struct Shared {
    body: Bytes,
    share: HeaderValue,
}

async fn worker(
    load: &Load,
    shared: &Shared,
    k: usize,
    mut sender: Option<Sender>,
    t0: Instant,
) -> Outcome {
    let mut out = Outcome::new();
    let end = t0 + load.duration;
    // Open loop: past this, requests still due are given up (counted, not sent).
    let give_up = end + Duration::from_secs(2);
    let open = load.rate > 0.0;
    let c = load.connections as u64;
    let due_of = |i: u64| t0 + Duration::from_secs_f64(i as f64 / load.rate);
    let mut j: u64 = 0;
    loop {
        let start = if open {
            let i = k as u64 + j * c;
            j += 1;
            let due = due_of(i);
            if due >= end {
                break;
            }
            let now = Instant::now();
            if now > give_up {
                let mut i = i;
                while due_of(i) < end {
                    out.hist
                        .saturating_record(now.duration_since(due_of(i)).as_nanos() as u64);
                    out.unsent += 1;
                    i += c;
                }
                break;
            }
            if now < due {
                // The connection is idle: wait for the due time; the timer's lateness is
                // the driver's, not the target's.
                tokio::time::sleep_until(due.into()).await;
                let woke = Instant::now();
                let lag = woke.duration_since(due);
                out.timer_lag_max = out.timer_lag_max.max(lag);
                out.timer_lag_sum += lag;
                out.timer_wakes += 1;
                woke
            } else {
                // The connection was busy past the due time: the wait counts.
                due
            }
        } else {
            let now = Instant::now();
            if now >= end {
                break;
            }
            now
        };
        if sender.is_none() {
            sender = connect(load.target.addr).await.ok();
        }
        let Some(s) = sender.as_mut() else {
            out.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match exchange(s, load.request(&shared.body, &shared.share)).await {
            Ok((status, id)) => {
                let done = Instant::now();
                out.hist
                    .saturating_record(done.duration_since(start).as_nanos() as u64);
                *out.statuses.entry(status).or_default() += 1;
                out.completed += 1;
                out.elapsed = done.duration_since(t0);
                if let Some(id) = id {
                    out.ids.push(id);
                }
            }
            Err(_) => {
                out.errors += 1;
                sender = None;
            }
        }
    }
    if out.elapsed.is_zero() {
        out.elapsed = Instant::now().duration_since(t0);
    }
    out
}

/// Open `n` connections (at most `batch` being set up at once), each sending one request
/// and then staying open and idle. Returns the senders (drop them to close) and the
/// statuses seen.
pub async fn open_idle(load: &Load, n: usize, batch: usize) -> (Vec<Sender>, Outcome) {
    let body = load.body();
    let share = HeaderValue::from_str(&format!("{}", load.hold_share))
        .unwrap_or(HeaderValue::from_static("0"));
    let mut kept = Vec::with_capacity(n);
    let mut out = Outcome::new();
    let mut left = n;
    while left > 0 {
        let now = left.min(batch.max(1));
        left -= now;
        let mut handles = Vec::with_capacity(now);
        for _ in 0..now {
            let req = load.request(&body, &share);
            let addr = load.target.addr;
            handles.push(tokio::spawn(async move {
                let mut s = connect(addr).await.ok()?;
                let r = exchange(&mut s, req).await.ok()?;
                Some((s, r))
            }));
        }
        for h in handles {
            match h.await {
                Ok(Some((s, (status, id)))) => {
                    kept.push(s);
                    *out.statuses.entry(status).or_default() += 1;
                    out.completed += 1;
                    if let Some(id) = id {
                        out.ids.push(id);
                    }
                }
                _ => out.errors += 1,
            }
        }
    }
    (kept, out)
}
