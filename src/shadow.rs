//! Shadow variants: a candidate that serves nobody gets a copy of a share of the requests.
//! Its output is never returned; its confidence, decision, tokens and version checks are
//! counted under its own variant label (no review item is published for it), so it can be
//! judged on real traffic first. Fire and forget: a slow or failing shadow never delays or
//! fails the live answer, and at most `--max-shadow-in-flight` copies run at once.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, request};

use crate::decide;
use crate::error::ProxyError;
use crate::metrics;
use crate::observe;
use crate::proxy::State;
use crate::rules::RuleSet;
use crate::upstream;

/// Copy the request to the task's shadow variants, each with its `shadow_rate`.
pub fn mirror(
    state: &Arc<State>,
    rules: &Arc<RuleSet>,
    task_index: usize,
    parts: &request::Parts,
    body: &Bytes,
) {
    let Some(task) = rules.tasks.get(task_index) else {
        return;
    };
    for (index, variant) in task.rollout.variants.iter().enumerate() {
        let Some(rate) = variant.shadow else { continue };
        if fastrand::f64() >= rate {
            continue;
        }
        let Ok(permit) = state.shadow_slots.clone().try_acquire_owned() else {
            metrics::shadow_dropped();
            continue;
        };
        let Ok(pinned) = upstream::pin_to(task, index, body.clone()) else {
            continue;
        };
        let mut copy = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.clone());
        if let Some(headers) = copy.headers_mut() {
            *headers = parts.headers.clone();
        }
        let Ok(copy) = copy.body(()) else { continue };
        let (copy, ()) = copy.into_parts();
        let (state, rules) = (state.clone(), rules.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(task) = rules.tasks.get(task_index) else {
                return;
            };
            let Some(variant) = task.rollout.variants.get(index) else {
                return;
            };
            let sent = Instant::now();
            let result = state
                .upstream
                .forward(&variant.upstream, &copy, pinned)
                .await;
            variant
                .metrics
                .upstream_duration
                .record(sent.elapsed().as_secs_f64());
            let outcome = match result {
                Err(ProxyError::UpstreamTimeout(_)) => decide::Outcome::Timeout,
                Err(_) => decide::Outcome::UpstreamError,
                Ok(resp) if !resp.status.is_success() => decide::Outcome::UpstreamError,
                Ok(resp) => {
                    let observed = observe::observe(task, variant, &resp);
                    let decision =
                        decide::decide(&variant.policy, &observed.observation(), fastrand::f64());
                    if let Some(reason) = decision.review_reason() {
                        variant.metrics.escalation(reason).increment(1);
                    }
                    decision.outcome()
                }
            };
            variant.metrics.outcome(outcome).increment(1);
        });
    }
}
