//! One request's life, in the order it happens:
//! match task → read body → choose variant → pin version → forward → observe
//! (refusal, version, confidence, usage) → decide → publish review → respond.
//!
//! A request loads the rules snapshot once and keeps that `Arc` to the end, so a reload never
//! changes a request midway. Shared state touched here: the rules `ArcSwap`, the upstream
//! client, the review publisher, and pre-resolved metric handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::access::AccessLogger;
use crate::amqp::Publisher;
use crate::decide::{self, Decision, Outcome};
use crate::error::{Fault, ProxyError};
use crate::observe;
use crate::review::{self, Disposition, ReviewInput};
use crate::route;
use crate::rules::raw::Streaming;
use crate::rules::{RuleSet, Task, Variant};
use crate::shadow;
use crate::spool::{Item, Spool};
use crate::upstream::{self, UpstreamClient, UpstreamResponse};

pub type Body = Full<Bytes>;

pub(crate) const X_DECISION: HeaderName = HeaderName::from_static("x-triage-decision");
const X_TASK: HeaderName = HeaderName::from_static("x-triage-task");
pub(crate) const X_VARIANT: HeaderName = HeaderName::from_static("x-triage-variant");
pub(crate) const X_CONFIDENCE: HeaderName = HeaderName::from_static("x-triage-confidence");
const X_MODEL_VERSION: HeaderName = HeaderName::from_static("x-triage-model-version");
pub(crate) const X_REVIEW_ID: HeaderName = HeaderName::from_static("x-triage-review-id");
const X_STREAM: HeaderName = HeaderName::from_static("x-triage-stream");

/// Everything the data plane shares.
pub struct State {
    pub rules: Arc<ArcSwap<RuleSet>>,

    pub upstream: UpstreamClient,
    pub publisher: Arc<Publisher>,
    pub max_body_bytes: usize,
    /// Bounds concurrent requests; beyond it the answer is a fast 503 `overloaded`.
    pub in_flight: InFlight,
    pub access_log: AccessLogger,
    /// The local spool for review items the broker cannot confirm (`None`: unusable).
    pub spool: Option<Arc<Spool>>,
    /// Set on SIGTERM: `/readyz` answers 503 while requests are still served.
    pub draining: std::sync::atomic::AtomicBool,
    /// Bounds shadow copies in flight; beyond it copies are skipped (and counted).
    pub shadow_slots: Arc<tokio::sync::Semaphore>,
}

pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let Some(_admitted) = state.in_flight.try_enter() else {
        return ProxyError::Overloaded.to_response(None);
    };
    let rules = state.rules.load_full();
    let Some((task_index, task)) =
        route::match_task(&rules, req.method(), req.uri().path(), req.headers())
    else {
        crate::metrics::unrouted();
        return ProxyError::NoRoute.to_response(None);
    };
    let mut upstream_time = Duration::ZERO;
    let call = Call {
        state: &state,
        rules: &rules,
        task_index,
        task,
    };
    let trace = state
        .access_log
        .on()
        .then(|| request_trace_id(req.headers()));
    let response = serve(&call, req, &mut upstream_time).await;
    let overhead = started.elapsed().saturating_sub(upstream_time);
    task.metrics.overhead.record(overhead.as_secs_f64());
    if let Some(trace) = trace {
        let log = &state.access_log;
        log.log(task, &response, trace.as_deref(), upstream_time, overhead);
    }
    response
}

/// Requests in flight against their cap. Nothing ever waits for room, so a counter is all
/// it takes: one atomic add on the way in and one on the way out (a semaphore's release
/// takes its waiters' lock as well).
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    max: usize,
}

/// A request counted in; counted out when dropped.
pub struct Admitted<'a>(&'a AtomicUsize);

impl InFlight {
    pub fn new(max: usize) -> Self {
        InFlight {
            count: AtomicUsize::new(0),
            max,
        }
    }

    pub fn try_enter(&self) -> Option<Admitted<'_>> {
        // Only a count: no other memory is published through it.
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Admitted(&self.count))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One request's shared context: the state and the rules snapshot it loaded.
struct Call<'c> {
    state: &'c Arc<State>,
    rules: &'c Arc<RuleSet>,
    task_index: usize,
    task: &'c Task,
}

/// The answer and what to count for it.
struct Answer<'t> {
    variant: &'t Variant,
    outcome: Outcome,
    response: Response<Body>,
}

async fn serve(
    call: &Call<'_>,
    req: Request<Incoming>,
    upstream_time: &mut Duration,
) -> Response<Body> {
    let task = call.task;
    let (parts, body) = req.into_parts();
    let chosen = route::choose_variant(&task.rollout, &parts.headers);
    // Compile guarantees every task at least one variant; stay panic-free regardless.
    let Some(chosen_variant) = task.rollout.variants.get(chosen) else {
        return ProxyError::NoRoute.to_response(Some(&task.name));
    };
    let answer = match run(call, chosen, chosen_variant, &parts, body, upstream_time).await {
        Ok(answer) => answer,
        Err((variant, e)) => {
            if e.fault() != Fault::Downstream
                && let Some(guard) = &variant.guard
            {
                guard.record(false, true);
            }
            let outcome = match e {
                ProxyError::UpstreamTimeout(_) => Outcome::Timeout,
                ProxyError::Upstream(_) => Outcome::UpstreamError,
                _ => Outcome::Rejected,
            };
            match e.fault() {
                Fault::Downstream => {
                    tracing::debug!(task = %task.name, code = e.code(), error = %e, "request refused")
                }
                Fault::Upstream | Fault::Internal => {
                    tracing::warn!(task = %task.name, variant = %variant.name, code = e.code(), error = %e, "request failed")
                }
            }
            let mut response = e.to_response(Some(&task.name));
            tag(response.headers_mut(), task, variant, "error");
            Answer {
                variant,
                outcome,
                response,
            }
        }
    };
    answer.variant.metrics.outcome(answer.outcome).increment(1);
    if let Some(guard) = &answer.variant.guard {
        let escalated = matches!(answer.outcome, Outcome::Held | Outcome::Flagged);
        guard.record(escalated, answer.outcome == Outcome::UpstreamError);
    }
    answer.response
}

type Failed<'t> = (&'t Variant, ProxyError);

async fn run<'t>(
    call: &Call<'t>,
    chosen: usize,
    chosen_variant: &'t Variant,
    parts: &request::Parts,
    body: Incoming,
    upstream_time: &mut Duration,
) -> Result<Answer<'t>, Failed<'t>> {
    let (state, task) = (call.state, call.task);
    let variants = &task.rollout.variants;

    // Read the body, capped.
    let body = read_body(body, state.max_body_bytes)
        .await
        .map_err(|e| (chosen_variant, e))?;

    // Pin the model version (may move the request to the variant it names).
    let pinned =
        upstream::pin_request(task, chosen, body.clone()).map_err(|e| (chosen_variant, e))?;
    let variant = variants.get(pinned.variant).unwrap_or(chosen_variant);
    if pinned.overridden {
        variant.metrics.overrides.increment(1);
    }
    shadow::mirror(state, call.rules, call.task_index, parts, &body);

    // Forward.
    let sent = Instant::now();
    let result = state
        .upstream
        .forward(&variant.upstream, parts, pinned.body)
        .await;
    *upstream_time = sent.elapsed();
    variant
        .metrics
        .upstream_duration
        .record(upstream_time.as_secs_f64());
    let resp = result.map_err(|e| (variant, e))?;
    if !resp.status.is_success() {
        // Passed through unchanged: SDKs parse their provider's error bodies.
        return Ok(Answer {
            variant,
            outcome: Outcome::UpstreamError,
            response: release(task, variant, resp, "error", None, None, None),
        });
    }

    // A task may let streamed answers through ungated; never silently: counted and marked.
    if task.streaming == Streaming::Passthrough && observe::is_event_stream(&resp) {
        variant.metrics.stream_passthrough.increment(1);
        let mut response = release(task, variant, resp, "pass", None, None, None);
        response
            .headers_mut()
            .insert(X_STREAM, HeaderValue::from_static("passthrough"));
        return Ok(Answer {
            variant,
            outcome: Outcome::Passed,
            response,
        });
    }

    // Observe and decide.
    let observed = observe::observe(task, variant, &resp);
    let decision = decide::decide(&variant.policy, &observed.observation(), fastrand::f64());
    let reported = observed.reported.as_deref();
    let confidence = observed.confidence;
    let confidence = confidence.ok();
    let model_version = match reported {
        Some(r) if Some(r) != variant.version.as_deref() => HeaderValue::from_str(r).ok(),
        _ => variant.version_header.clone(),
    };
    if let Decision::Reject(reason) = decision {
        let e = match reason {
            decide::Reason::VersionMismatch => ProxyError::VersionMismatch {
                pinned: variant.version.as_deref().unwrap_or_default().to_owned(),
                reported: reported.unwrap_or("(none)").to_owned(),
            },
            _ => ProxyError::BadUpstreamResponse("no usable confidence in the response".into()),
        };
        return Err((variant, e));
    }

    // Publish the review item, if any; held and flagged outputs wait for durability.
    let Some(reason) = decision.review_reason() else {
        return Ok(Answer {
            variant,
            outcome: decision.outcome(),
            response: release(
                task,
                variant,
                resp,
                decision.header(),
                confidence,
                model_version,
                None,
            ),
        });
    };
    let review_id = uuid::Uuid::now_v7().to_string();
    let disposition = match decision {
        Decision::Hold(_) => Disposition::Held,
        Decision::Flag(_) => Disposition::Flagged,
        _ => Disposition::Released,
    };
    let payload = review::encode(&ReviewInput {
        review_id: &review_id,
        task,
        variant,
        reason,
        disposition,
        confidence,
        reported_version: reported,
        request: parts,
        request_body: &body,
        response_status: resp.status.as_u16(),
        response_body: &resp.body,
        response_walked_json: observed.walked_json,
        trace_id: &trace_id(&parts.headers, &review_id),
    });
    let routing_key = review::routing_key(&task.name, reason);

    if disposition == Disposition::Released {
        // An audit sample never delays or fails the response it samples.
        let state = state.clone();
        let counter = variant.metrics.escalation(reason).clone();
        let item = Item {
            routing_key,
            review_id,
            payload,
        };
        tokio::spawn(async move {
            if review::make_durable(&state.publisher, state.spool.as_deref(), item)
                .await
                .is_ok()
            {
                counter.increment(1);
            }
        });
        return Ok(Answer {
            variant,
            outcome: decision.outcome(),
            response: release(
                task,
                variant,
                resp,
                decision.header(),
                confidence,
                model_version,
                None,
            ),
        });
    }

    let item = Item {
        routing_key,
        review_id: review_id.clone(),
        payload,
    };
    // Boxed: the publish and spool future (about 1.9 KB of state) would otherwise sit in
    // every request's future, and only held and flagged outputs await it.
    let durable = Box::pin(review::make_durable(
        &state.publisher,
        state.spool.as_deref(),
        item,
    ))
    .await
    .map_err(|e| (variant, ProxyError::ReviewUnavailable(e)))?;
    variant.metrics.escalation(reason).increment(1);
    tracing::debug!(task = %task.name, variant = %variant.name, review_id, reason = reason.as_str(), ?durable, "review item durable");

    let response = match disposition {
        Disposition::Flagged => release(
            task,
            variant,
            resp,
            "flag",
            confidence,
            model_version,
            Some(&review_id),
        ),
        _ => held(task, variant, reason, confidence, model_version, &review_id),
    };
    Ok(Answer {
        variant,
        outcome: decision.outcome(),
        response,
    })
}

/// Read the request body into one buffer, capped at `limit`. An oversized body is drained
/// (within bounds) before the 413 goes out: closing on unread bytes makes the kernel send a
/// reset, and the client would lose the answer that explains it.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ProxyError> {
    match crate::body::read(&mut body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(crate::body::Error::TooLarge) => {
            drain(&mut body).await;
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(crate::body::Error::Read(e)) => Err(ProxyError::BadRequestBody(e.to_string())),
    }
}

/// Read and discard what is left of a body, up to 64 MiB and 5 s.
async fn drain(body: &mut Incoming) {
    const MAX: u64 = 64 * 1024 * 1024;
    // What the request's `content-length` says is left (hyper keeps count).
    if hyper::body::Body::size_hint(&*body)
        .exact()
        .is_some_and(|left| left > MAX)
    {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > MAX {
                break;
            }
        }
    })
    .await;
}

/// The trace id for review items: W3C `traceparent`'s trace id, else `x-request-id`, else
/// the review id.
fn trace_id(headers: &HeaderMap, review_id: &str) -> String {
    request_trace_id(headers).unwrap_or_else(|| review_id.to_owned())
}

fn request_trace_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| id.len() == 32)
        .or_else(|| headers.get("x-request-id").and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

fn tag(headers: &mut HeaderMap, task: &Task, variant: &Variant, decision: &'static str) {
    headers.insert(X_DECISION, HeaderValue::from_static(decision));
    headers.insert(X_TASK, task.name_header.clone());
    headers.insert(X_VARIANT, variant.name_header.clone());
}

fn tag_observed(
    headers: &mut HeaderMap,
    confidence: Option<f64>,
    version: Option<HeaderValue>,
    review_id: Option<&str>,
) {
    if let Some(v) = confidence.and_then(confidence_header) {
        headers.insert(X_CONFIDENCE, v);
    }
    if let Some(v) = version {
        headers.insert(X_MODEL_VERSION, v);
    }
    if let Some(v) = review_id.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(X_REVIEW_ID, v);
    }
}

/// A confidence as `Display` writes it (shortest round-trip, never an exponent), formatted
/// on the stack: the usual `0.9512294245007141` is one copy into the header, not a `String`
/// and a copy of it. A longer one (a tiny confidence written out in full) takes the heap.
fn confidence_header(c: f64) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 32];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    if write!(cursor, "{c}").is_ok() {
        let len = usize::try_from(cursor.position()).ok()?;
        return HeaderValue::from_bytes(buf.get(..len)?).ok();
    }
    HeaderValue::from_str(&c.to_string()).ok()
}

/// The upstream's response, byte for byte, plus the `x-triage-*` headers.
fn release(
    task: &Task,
    variant: &Variant,
    resp: UpstreamResponse,
    decision: &'static str,
    confidence: Option<f64>,
    version: Option<HeaderValue>,
    review_id: Option<&str>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(resp.body));
    *response.status_mut() = resp.status;
    *response.headers_mut() = resp.headers;
    let headers = response.headers_mut();
    tag(headers, task, variant, decision);
    tag_observed(headers, confidence, version, review_id);
    response
}

/// 202: the output is withheld until a reviewer decides.
fn held(
    task: &Task,
    variant: &Variant,
    reason: decide::Reason,
    confidence: Option<f64>,
    version: Option<HeaderValue>,
    review_id: &str,
) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct Pending<'a> {
        status: &'static str,
        review_id: &'a str,
        task: &'a str,
        variant: &'a str,
        reason: &'static str,
        confidence: Option<f64>,
        threshold: f64,
    }
    let body = serde_json::to_vec(&Pending {
        status: "pending_review",
        review_id,
        task: &task.name,
        variant: &variant.name,
        reason: reason.as_str(),
        confidence,
        threshold: variant.policy.threshold,
    })
    .unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    tag(headers, task, variant, "review");
    tag_observed(headers, confidence, version, Some(review_id));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confidence_header_reads_as_display_writes_it() {
        for c in [0.0, 1.0, 0.5, 0.951_229_424_500_714_1, 1e-7, 1e-300, -0.25] {
            let header = confidence_header(c).unwrap();
            assert_eq!(header.to_str().unwrap(), c.to_string(), "{c}");
            assert_eq!(header.to_str().unwrap().parse::<f64>().unwrap(), c);
        }
    }

    #[test]
    fn in_flight_admits_up_to_its_cap_and_counts_out_on_drop() {
        let in_flight = InFlight::new(2);
        let (a, b) = (in_flight.try_enter(), in_flight.try_enter());
        assert!(a.is_some() && b.is_some());
        assert!(in_flight.try_enter().is_none(), "a third is refused");
        assert!(
            in_flight.try_enter().is_none(),
            "and a refusal leaves no count behind"
        );
        drop(a);
        assert!(
            in_flight.try_enter().is_some(),
            "room again once one leaves"
        );
    }
}
