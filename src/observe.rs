//! What the response says: refusal markers, the reported model version, the confidence,
//! token usage. One probe pass over the body; records the per-variant quality and cost
//! metrics. Shared by live requests and shadow copies.

use crate::confidence::{self, Missing};
use crate::decide::Observation;
use crate::probe::Found;
use crate::rules::{ReportedVersion, Task, Variant};
use crate::upstream::UpstreamResponse;

#[derive(Debug)]
pub struct Observed {
    pub refusal: bool,
    /// The version the response reports, when the task checks one.
    pub reported: Option<Box<str>>,
    pub version_mismatch: bool,
    pub confidence: Result<f64, Missing>,
    /// Whether the body passed the probe's JSON checks as one document; `None` when it was
    /// not walked as one (no probe, or a stream). Saves the review item a second scan.
    pub walked_json: Option<bool>,
}

impl Observed {
    pub fn observation(&self) -> Observation {
        Observation {
            refusal: self.refusal,
            version_mismatch: self.version_mismatch,
            confidence: self.confidence,
        }
    }
}

/// Whether the upstream answered with server-sent events (a streamed completion).
pub fn is_event_stream(resp: &UpstreamResponse) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"))
}

pub fn observe(task: &Task, variant: &Variant, resp: &UpstreamResponse) -> Observed {
    let (found, walked_json) = if task.probe.is_empty() {
        (None, None)
    } else if is_event_stream(resp) {
        (task.probe.run_events(&resp.body).ok(), None)
    } else {
        let found = task.probe.run(&resp.body).ok();
        let walked = found.is_some();
        (found, Some(walked))
    };
    let found = found.as_deref();
    let slot = |s: Option<usize>| s.and_then(|s| found?.get(s));
    let non_empty = |s: Option<usize>| {
        slot(s)
            .and_then(Found::as_str)
            .is_some_and(|s| !s.is_empty())
    };

    let refusal = non_empty(task.slots.refusal)
        || non_empty(task.slots.delta_refusal)
        || slot(task.slots.finish_reason).and_then(Found::as_str) == Some("content_filter");

    let reported = match &task.model.response {
        Some(ReportedVersion::Field(s)) => slot(Some(*s)).and_then(Found::as_str),
        Some(ReportedVersion::Header(h)) => resp.headers.get(h).and_then(|v| v.to_str().ok()),
        None => None,
    };
    let version_mismatch = task.model.response.is_some()
        && variant
            .version
            .as_deref()
            .is_some_and(|pinned| reported != Some(pinned));

    let confidence = confidence::extract(&task.extractor, found, &resp.headers);
    match confidence {
        Ok(c) => variant.metrics.confidence.record(c),
        Err(missing) => {
            tracing::debug!(task = %task.name, variant = %variant.name, missing = missing.as_str(), "no usable confidence")
        }
    }

    let tokens = |s| {
        slot(s)
            .and_then(Found::as_f64)
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map_or(0, |n| n as u64)
    };
    let (prompt, completion) = (
        tokens(task.slots.prompt_tokens),
        tokens(task.slots.completion_tokens),
    );
    if prompt + completion > 0 {
        variant.metrics.prompt_tokens.increment(prompt);
        variant.metrics.completion_tokens.increment(completion);
        variant
            .metrics
            .cost
            .increment(variant.cost.price(prompt, completion));
    }

    Observed {
        refusal,
        reported: reported.map(Into::into),
        version_mismatch,
        confidence,
        walked_json,
    }
}
