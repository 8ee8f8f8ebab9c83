//! Every metric triage exports: names, HELP text, buckets, and the handles the hot path uses.
//!
//! Labels come only from the rules (task, variant, reason) or from fixed sets (outcome,
//! result), never from request data, so the series count is bounded by the rules file.
//! Per-variant handles are resolved once, when rules are compiled; a request increments
//! atomics and never formats a label.

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::decide::{Outcome, Reason};

pub const REQUESTS: &str = "triage_requests_total";
pub const ESCALATIONS: &str = "triage_escalations_total";
pub const CONFIDENCE: &str = "triage_confidence";
pub const VERDICTS: &str = "triage_verdicts_total";
pub const TOKENS: &str = "triage_tokens_total";
pub const COST: &str = "triage_cost_total";
pub const UPSTREAM_DURATION: &str = "triage_upstream_duration_seconds";
pub const OVERHEAD: &str = "triage_overhead_seconds";
pub const MODEL_OVERRIDES: &str = "triage_model_overrides_total";
pub const REVIEW_PUBLISH: &str = "triage_review_publish_total";
pub const SPOOL_ITEMS: &str = "triage_spool_items";
pub const RULES_RELOADS: &str = "triage_rules_reloads_total";
pub const RULES_LAST_RELOAD_OK: &str = "triage_rules_last_reload_successful";
pub const RULES_INFO: &str = "triage_rules_info";
pub const BUILD_INFO: &str = "triage_build_info";
pub const UNROUTED: &str = "triage_unrouted_requests_total";
pub const STREAM_PASSTHROUGH: &str = "triage_stream_passthrough_total";

/// Install the Prometheus recorder; the handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CONFIDENCE.into()),
            &[
                0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(UPSTREAM_DURATION.into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(VERDICT_LATENCY.into()),
            &[
                60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 172800.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(OVERHEAD.into()),
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25,
            ],
        )?
        .install_recorder()?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for result in ["confirmed", "spooled", "failed"] {
        counter!(REVIEW_PUBLISH, "result" => result).absolute(0);
    }
    for result in ["ok", "error"] {
        counter!(RULES_RELOADS, "result" => result).absolute(0);
    }
    gauge!(SPOOL_ITEMS).set(0.0);
    counter!(VERDICTS_MALFORMED).absolute(0);
    counter!(SPOOL_ERRORS).absolute(0);
    Ok(handle)
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "Requests by task, variant and outcome (task completion rate)."
    );
    describe_counter!(
        ESCALATIONS,
        "Outputs sent to human review, by reason (escalation rate)."
    );
    describe_histogram!(
        CONFIDENCE,
        "Extracted confidence of upstream outputs (quality, drift)."
    );
    describe_counter!(
        VERDICTS,
        "Reviewer verdicts consumed from the verdict queue."
    );
    describe_counter!(TOKENS, "Tokens reported by the upstream's usage, by kind.");
    describe_gauge!(
        COST,
        "Cost of upstream calls priced from usage (only increases)."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        "Upstream call duration, request sent to body read."
    );
    describe_histogram!(
        OVERHEAD,
        "Time spent in triage itself per request, upstream excluded."
    );
    describe_counter!(
        MODEL_OVERRIDES,
        "Requests that named an allowed pinned version explicitly."
    );
    describe_counter!(REVIEW_PUBLISH, "Review item publishes by result.");
    describe_gauge!(
        SPOOL_ITEMS,
        "Review items in the local spool waiting for the broker."
    );
    describe_counter!(RULES_RELOADS, "Rules loads and reloads by result.");
    describe_gauge!(
        RULES_LAST_RELOAD_OK,
        "1 if the last rules reload succeeded, else 0."
    );
    describe_gauge!(RULES_INFO, "1 for the hash of the active rules.");
    describe_gauge!(BUILD_INFO, "1, labelled with the triage version.");
    describe_counter!(UNROUTED, "Requests that matched no task (404 no_route).");
    describe_counter!(
        STREAM_PASSTHROUGH,
        "Streamed answers released ungated (streaming: passthrough)."
    );
    describe_counter!(SPOOL_ERRORS, "Spool writes that failed (disk errors).");
    describe_histogram!(
        VERDICT_LATENCY,
        "Time from a review item's creation to its verdict."
    );
    describe_counter!(
        VERDICTS_MALFORMED,
        "Verdict messages dead-lettered as malformed."
    );
    describe_gauge!(
        ROLLOUT_HALTED,
        "1 while a guardrail stops live traffic to the variant on this replica."
    );
    describe_counter!(
        SHADOW_DROPPED,
        "Shadow copies skipped because too many were in flight."
    );
}

/// Handles for one (task, variant), resolved at compile time.
#[derive(Debug, Clone)]
pub struct VariantMetrics {
    outcomes: [Counter; Outcome::ALL.len()],
    escalations: [Counter; Reason::ALL.len()],
    pub confidence: Histogram,
    pub prompt_tokens: Counter,
    pub completion_tokens: Counter,
    pub cost: Gauge,
    pub upstream_duration: Histogram,
    pub overrides: Counter,
    pub stream_passthrough: Counter,
}

impl VariantMetrics {
    pub fn new(task: &str, variant: &str) -> Self {
        let labels = [("task", task.to_owned()), ("variant", variant.to_owned())];
        let outcome = |o: Outcome| {
            let c = counter!(REQUESTS, &labels_with(&labels, "outcome", o.as_str()));
            c.absolute(0);
            c
        };
        let escalation = |r: Reason| {
            let c = counter!(ESCALATIONS, &labels_with(&labels, "reason", r.as_str()));
            c.absolute(0);
            c
        };
        // Verdict series exist at zero from the start, so Prometheus sees their first count.
        for reason in Reason::ALL {
            for verdict in ["approved", "corrected", "rejected"] {
                let mut l = labels_with(&labels, "reason", reason.as_str()).to_vec();
                l.push(("verdict", verdict.to_owned()));
                counter!(VERDICTS, &l).absolute(0);
            }
        }
        VariantMetrics {
            outcomes: Outcome::ALL.map(outcome),
            escalations: Reason::ALL.map(escalation),
            confidence: histogram!(CONFIDENCE, &labels),
            prompt_tokens: counter!(TOKENS, &labels_with(&labels, "kind", "prompt")),
            completion_tokens: counter!(TOKENS, &labels_with(&labels, "kind", "completion")),
            cost: gauge!(COST, &labels),
            upstream_duration: histogram!(UPSTREAM_DURATION, &labels),
            overrides: counter!(MODEL_OVERRIDES, &labels),
            stream_passthrough: counter!(STREAM_PASSTHROUGH, &labels),
        }
    }

    pub fn outcome(&self, outcome: Outcome) -> &Counter {
        &self.outcomes[outcome as usize]
    }

    pub fn escalation(&self, reason: Reason) -> &Counter {
        &self.escalations[reason as usize]
    }
}

fn labels_with(
    base: &[(&'static str, String); 2],
    key: &'static str,
    value: &'static str,
) -> [(&'static str, String); 3] {
    [base[0].clone(), base[1].clone(), (key, value.to_owned())]
}

/// Handles for one task.
#[derive(Debug, Clone)]
pub struct TaskMetrics {
    pub overhead: Histogram,
}

impl TaskMetrics {
    pub fn new(task: &str) -> Self {
        TaskMetrics {
            overhead: histogram!(OVERHEAD, "task" => task.to_owned()),
        }
    }
}

pub fn review_published(result: &'static str) {
    counter!(REVIEW_PUBLISH, "result" => result).increment(1);
}

pub fn unrouted() {
    counter!(UNROUTED).increment(1);
}

/// A rules load or reload succeeded: count it and publish the active hash.
pub fn rules_loaded(hash: &str) {
    counter!(RULES_RELOADS, "result" => "ok").increment(1);
    gauge!(RULES_LAST_RELOAD_OK).set(1.0);
    gauge!(RULES_INFO, "hash" => hash.to_owned()).set(1.0);
}

/// New rules replaced `old_hash`.
pub fn rules_swapped(old_hash: &str, new_hash: &str) {
    gauge!(RULES_INFO, "hash" => old_hash.to_owned()).set(0.0);
    rules_loaded(new_hash);
}

/// A reload was refused; the running rules stay.
pub fn rules_reload_failed() {
    counter!(RULES_RELOADS, "result" => "error").increment(1);
    gauge!(RULES_LAST_RELOAD_OK).set(0.0);
}

pub const ROLLOUT_HALTED: &str = "triage_rollout_halted";
pub const SHADOW_DROPPED: &str = "triage_shadow_dropped_total";

/// The 0/1 gauge of a guarded variant.
pub fn rollout_halted(task: &str, variant: &str) -> Gauge {
    gauge!(ROLLOUT_HALTED, "task" => task.to_owned(), "variant" => variant.to_owned())
}

/// A shadow copy skipped because too many were in flight.
pub fn shadow_dropped() {
    counter!(SHADOW_DROPPED).increment(1);
}

pub const VERDICT_LATENCY: &str = "triage_verdict_latency_seconds";
pub const VERDICTS_MALFORMED: &str = "triage_verdicts_malformed_total";

/// One reviewer verdict, counted once.
pub fn verdict(
    task: &str,
    variant: &str,
    reason: &'static str,
    verdict: &'static str,
    latency: Option<f64>,
) {
    counter!(VERDICTS, "task" => task.to_owned(), "variant" => variant.to_owned(), "reason" => reason, "verdict" => verdict)
        .increment(1);
    if let Some(seconds) = latency {
        histogram!(VERDICT_LATENCY, "task" => task.to_owned()).record(seconds);
    }
}

pub fn verdict_malformed() {
    counter!(VERDICTS_MALFORMED).increment(1);
}

pub const SPOOL_ERRORS: &str = "triage_spool_errors_total";

pub fn spool_items(n: u64) {
    gauge!(SPOOL_ITEMS).set(n as f64);
}

pub fn spool_error() {
    counter!(SPOOL_ERRORS).increment(1);
}
