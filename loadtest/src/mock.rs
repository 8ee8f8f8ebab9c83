//! The mock model server: precomputed bodies, one current-thread runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{Result, Size};

/// Confidence of an answer that passes (threshold 0.85) and of one that is held.
pub const HIGH: f64 = 0.95;
pub const LOW: f64 = 0.5;
pub const MODEL: &str = "gpt-4o-2024-08-06";

#[derive(clap::Args, Clone)]
pub struct MockArgs {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Default body size when a request names none: 0.8k, 5k, 50k.
    #[arg(long, default_value = "0.8k")]
    pub size: Size,
    /// Default share of answers below the threshold when a request names none.
    #[arg(long, default_value_t = 0.0)]
    pub hold_share: f64,
    /// Default fixed delay before answering, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Reproduce the 40 ms stall (to check that the driver catches it): no `TCP_NODELAY`,
    /// and the head and the body of every answer go out in two writes.
    #[arg(long)]
    pub stall: bool,
    /// Also give every answer's confidence as an `x-confidence` header, for a triage task
    /// that reads it there (`source: header`). Such a task still walks the body (refusal,
    /// usage); with the walk taken out of a triage build, this is how
    /// `docs/performance.md` measured what triage costs without it.
    #[arg(long)]
    pub confidence_header: bool,
}

/// `bodies[endpoint][size][low]`: endpoint 0 = chat, 1 = classify.
struct State {
    bodies: [[[Bytes; 2]; 3]; 2],
    /// `x-confidence` by `low`, with `--confidence-header`.
    confidence: Option<[HeaderValue; 2]>,
    counter: AtomicU64,
    args: MockArgs,
}

pub fn main(args: MockArgs) -> Result<()> {
    crate::procs::raise_nofile_limit();
    let state = Arc::new(State {
        bodies: build_bodies(),
        confidence: if args.confidence_header {
            Some(confidence_headers()?)
        } else {
            None
        },
        counter: AtomicU64::new(0),
        args: args.clone(),
    });
    crate::runtime()?.block_on(async move {
        let listener = crate::listen(args.listen).await?;
        loop {
            let stream = crate::accept(&listener).await;
            let _ = stream.set_nodelay(!state.args.stall);
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> std::result::Result<Response<MockBody>, Infallible> {
    let endpoint = match req.uri().path() {
        "/v1/chat/completions" => 0,
        "/v1/classify" => 1,
        _ => {
            let mut r = Response::new(MockBody::new(
                Bytes::from_static(b"{\"error\":\"not found\"}"),
                false,
            ));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Ok(r);
        }
    };
    let param = |header: &str, query: &str| -> Option<String> {
        if let Some(v) = req.headers().get(header).and_then(|v| v.to_str().ok()) {
            return Some(v.to_string());
        }
        req.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == query)
                .map(|(_, v)| v.to_string())
        })
    };
    let size = param("x-size", "size")
        .and_then(|s| Size::parse(&s))
        .unwrap_or(state.args.size);
    let share = param("x-hold-share", "hold")
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(state.args.hold_share)
        .clamp(0.0, 1.0);
    let delay = param("x-delay-ms", "delay_ms")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(state.args.delay_ms);
    // Read the request to its end so the connection stays reusable.
    let mut body = req.into_body();
    while let Some(Ok(_)) = body.frame().await {}

    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let low = is_low(n, share);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let bytes = state.bodies[endpoint][size.index()][usize::from(low)].clone();
    let mut r = Response::new(MockBody::new(bytes, state.args.stall));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(values) = &state.confidence {
        r.headers_mut()
            .insert("x-confidence", values[usize::from(low)].clone());
    }
    if endpoint == 1 {
        r.headers_mut().insert(
            "x-model-version",
            HeaderValue::from_static("ticket-router-2026-10-01"),
        );
    }
    Ok(r)
}

/// The whole body in one frame; with `split`, the first poll is pending, so hyper flushes
/// the head on its own and the body follows in a second write.
pub struct MockBody {
    bytes: Option<Bytes>,
    split: bool,
}

impl MockBody {
    fn new(bytes: Bytes, split: bool) -> MockBody {
        MockBody {
            bytes: Some(bytes),
            split,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        if self.split {
            self.split = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(self.bytes.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
}

/// Request n (0-based) is below the threshold when the running count of low answers,
/// floor((n+1)·share), steps up: exactly `share` of every run of requests, evenly spread
/// (0.1: requests 9, 19, 29, …; 1.0: all; 0: none).
pub fn is_low(n: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    if share >= 1.0 {
        return true;
    }
    ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
}

fn build_bodies() -> [[[Bytes; 2]; 3]; 2] {
    let one = |endpoint: usize, size: Size, low: bool| -> Bytes {
        let conf = if low { LOW } else { HIGH };
        let build = |n: usize| {
            if endpoint == 0 {
                chat_body(n, conf)
            } else {
                classify_body(n, conf)
            }
        };
        // The smallest padding that reaches the size: double, then bisect.
        let want = size.bytes();
        let mut hi = 2;
        while build(hi).len() < want {
            hi *= 2;
        }
        let mut lo = hi / 2;
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if build(mid).len() < want {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let n = hi;
        Bytes::from(build(n))
    };
    let sizes =
        |endpoint: usize| Size::ALL.map(|s| [one(endpoint, s, false), one(endpoint, s, true)]);
    [sizes(0), sizes(1)]
}

/// The confidences of [`build_bodies`] as `x-confidence` values: `[HIGH, LOW]`.
fn confidence_headers() -> Result<[HeaderValue; 2]> {
    let value = |c: f64| HeaderValue::try_from(c.to_string()).map_err(|e| e.to_string());
    Ok([value(HIGH)?, value(LOW)?])
}

const WORDS: [&str; 12] = [
    "The", " invoice", " total", " is", " 1", ",", "234", ".", "56", " EUR", ",", " due",
];

/// An OpenAI chat.completion with `n` tokens, each with a logprob; the mean logprob is
/// ln(conf), so `openai_logprobs` with `aggregate: mean` yields `conf`.
fn chat_body(n: usize, conf: f64) -> Vec<u8> {
    let mean = conf.ln();
    let mut content = String::new();
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        let w = WORDS[i % WORDS.len()];
        content.push_str(w);
        // Alternate around the mean (pairs cancel; an odd last one sits on the mean).
        let lp = if i + 1 == n && n % 2 == 1 {
            mean
        } else if i % 2 == 0 {
            mean * 0.5
        } else {
            mean * 1.5
        };
        tokens.push(format!(
            r#"{{"token":{},"logprob":{lp},"bytes":{},"top_logprobs":[]}}"#,
            json!(w),
            json!(w.as_bytes())
        ));
    }
    // Written by hand to keep OpenAI's key order (serde_json's map would sort the keys).
    format!(
        r#"{{"id":"chatcmpl-loadtest","object":"chat.completion","created":1763900000,"model":"{MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":{},"refusal":null}},"logprobs":{{"content":[{}],"refusal":null}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":24,"completion_tokens":{n},"total_tokens":{}}},"system_fingerprint":"fp_loadtest"}}"#,
        json!(content),
        tokens.join(","),
        n + 24
    )
    .into_bytes()
}

/// A classifier answer with `n` classes; the largest probability is `conf`.
fn classify_body(n: usize, conf: f64) -> Vec<u8> {
    let n = n.max(2);
    let rest = (1.0 - conf) / (n - 1) as f64;
    let mut probs = vec![rest; n];
    probs[0] = conf;
    format!(
        r#"{{"label":"billing","probabilities":{},"model":"ticket-router-2026-10-01"}}"#,
        json!(probs)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_exact_and_spread() {
        let lows: Vec<u64> = (0..30).filter(|&n| is_low(n, 0.1)).collect();
        assert_eq!(lows, vec![9, 19, 29]);
        assert_eq!((0..1000).filter(|&n| is_low(n, 0.25)).count(), 250);
        assert!((0..100).all(|n| is_low(n, 1.0)));
        assert!(!(0..100).any(|n| is_low(n, 0.0)));
    }

    #[test]
    fn confidence_headers_say_what_the_bodies_say() {
        let read = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.parse::<f64>().ok());
        let headers = confidence_headers().map(|[high, low]| (read(&high), read(&low)));
        assert_eq!(headers, Ok((Some(HIGH), Some(LOW))));
    }

    #[test]
    fn bodies_have_their_sizes_and_confidences() {
        let b = build_bodies();
        for (e, per_endpoint) in b.iter().enumerate() {
            for s in Size::ALL {
                for (low, body) in per_endpoint[s.index()].iter().enumerate() {
                    let len = body.len();
                    assert!(
                        len >= s.bytes() && len < s.bytes() + 400,
                        "endpoint {e} {s:?}: {len}"
                    );
                    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                    let conf = if e == 0 {
                        let lps: Vec<f64> = v["choices"][0]["logprobs"]["content"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|t| t["logprob"].as_f64()).collect())
                            .unwrap_or_default();
                        (lps.iter().sum::<f64>() / lps.len() as f64).exp()
                    } else {
                        v["probabilities"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|p| p.as_f64()).fold(0.0, f64::max))
                            .unwrap_or_default()
                    };
                    let want = if low == 1 { LOW } else { HIGH };
                    assert!((conf - want).abs() < 1e-9, "{e} {s:?} {low}: {conf}");
                }
            }
        }
    }
}
