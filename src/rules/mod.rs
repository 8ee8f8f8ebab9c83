//! Routing rules: load → validate → compile → swap. The control plane's half of the rules.
//!
//! `raw` is what ops write; `compile` checks all of it (every error, with file, task and
//! key) and builds the immutable [`RuleSet`] the hot path reads: matchers with parsed
//! header names, probes with parsed JSON pointers, variants with bucket ranges and metric
//! handles. A request loads one `Arc<RuleSet>` and uses it to the end.

pub mod compile;
pub mod load;
pub mod raw;
pub mod reload;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};

use crate::confidence::Extractor;
use crate::guard::Guard;

use crate::decide::Policy;
use crate::metrics::{TaskMetrics, VariantMetrics};
use crate::probe::Probe;

/// The active rules. Immutable once built.
#[derive(Debug)]
pub struct RuleSet {
    pub tasks: Box<[Task]>,
    /// Hex xxh3-128 of the source files (names and contents).
    pub hash: String,
    pub loaded_at: SystemTime,
    /// The rules as loaded, for `GET /admin/rules`.
    pub source: serde_json::Value,
}

/// An upstream model server. Shared by every task (and rule set) that names it unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Upstream {
    pub name: Arc<str>,
    pub authority: http::uri::Authority,
    /// The `host` header sent upstream: the host, and the port unless it is 80.
    pub host: http::HeaderValue,
    /// Path prefix of the upstream URL, without a trailing slash ("" for none).
    pub base_path: Box<str>,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct Task {
    pub name: Arc<str>,
    /// `name` as a ready header value (`x-triage-task`), shared, never re-encoded.
    pub name_header: HeaderValue,
    pub matcher: Matcher,
    pub model: ModelRules,
    pub extractor: Extractor,
    pub request_logprobs: bool,
    /// Every response pointer the task reads, walked in one pass.
    pub probe: Probe,
    pub slots: Slots,
    pub rollout: Rollout,
    /// JSON pointers redacted from request and response bodies in review items.
    pub redact: Box<[String]>,
    /// Request headers copied into review items.
    pub review_headers: Box<[HeaderName]>,
    pub metrics: TaskMetrics,
    /// Streamed (server-sent events) answers: gated like any other, or passed through.
    pub streaming: raw::Streaming,
}

#[derive(Debug, Default)]
pub struct Matcher {
    pub path_prefix: Option<Box<str>>,
    pub method: Option<Method>,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
}

#[derive(Debug, Default)]
pub struct ModelRules {
    /// JSON pointer of the model field in the request body.
    pub request_field: Option<String>,
    /// `request_field` when it names a member of the top-level object (other than
    /// `logprobs`): the field the request is edited in place at.
    pub request_member: Option<RequestMember>,
    pub response: Option<ReportedVersion>,
    pub aliases: Box<[String]>,
}

#[derive(Debug)]
pub struct RequestMember {
    pub key: Box<str>,
    /// `"key":` in JSON, ready to open a new member with.
    pub opening: Box<[u8]>,
}

#[derive(Debug)]
pub enum ReportedVersion {
    /// Probe slot of `model.response_field`.
    Field(usize),
    Header(HeaderName),
}

/// Probe slots the response phase reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct Slots {
    pub refusal: Option<usize>,
    /// `choices[0].delta.refusal` of a streamed chunk.
    pub delta_refusal: Option<usize>,
    pub finish_reason: Option<usize>,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
}

#[derive(Debug)]
pub struct Rollout {
    pub sticky_header: Option<HeaderName>,
    pub salt: Box<str>,
    pub variants: Box<[Variant]>,
}

#[derive(Debug)]
pub struct Variant {
    pub name: Arc<str>,
    /// `name` as a ready header value (`x-triage-variant`).
    pub name_header: HeaderValue,
    /// The pinned model version; `None` when the task pins nothing.
    pub version: Option<Arc<str>>,
    /// `version` as a ready header value (`x-triage-model-version`); `None` also when the
    /// version is not a valid header value.
    pub version_header: Option<HeaderValue>,
    /// `version` as a JSON string, quotes and escapes included (the request's model value).
    pub version_json: Option<Box<[u8]>>,
    /// Exclusive end of this variant's cumulative bucket range (0..=10_000).
    pub bucket_end: u32,
    pub upstream: Arc<Upstream>,
    pub policy: Policy,
    pub cost: Cost,
    pub metrics: VariantMetrics,
    /// Share of requests copied to this variant when it is a shadow; `None` for live ones.
    pub shadow: Option<f64>,
    pub guard: Option<Arc<Guard>>,
}

impl Variant {
    /// Its weight in buckets (hundredths of a percent).
    pub fn buckets(&self, previous_end: u32) -> u32 {
        self.bucket_end - previous_end
    }
}

impl Task {
    pub fn paused(&self) -> bool {
        self.rollout.variants.iter().any(|v| v.policy.paused)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Cost {
    pub prompt_per_1m: f64,
    pub completion_per_1m: f64,
}

impl Cost {
    pub fn price(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.prompt_per_1m
            + completion_tokens as f64 * self.completion_per_1m)
            / 1e6
    }
}
