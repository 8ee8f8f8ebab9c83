//! The rules file as ops write it: plain serde types, `deny_unknown_fields` everywhere.
//!
//! Nothing here is used on the request path; `compile.rs` turns these into the checked
//! runtime types of `rules/mod.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Top level of one rules file. Tasks and upstreams are kept as raw YAML values so that each
/// one is deserialized on its own and every error is reported, not only the first.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub version: u32,
    #[serde(default)]
    pub upstreams: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    pub tasks: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    /// Whole-exchange deadline: send the request and read the complete response.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: String,
    #[serde(default)]
    pub model: Option<RawModel>,
    pub confidence: RawConfidence,
    pub threshold: f64,
    #[serde(default)]
    pub on_review: OnReview,
    #[serde(default)]
    pub on_missing_confidence: OnMissing,
    #[serde(default)]
    pub on_refusal: OnRefusal,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub audit_rate: f64,
    #[serde(default)]
    pub cost: Option<RawCost>,
    #[serde(default)]
    pub usage: Option<RawUsage>,
    #[serde(default)]
    pub rollout: Option<RawRollout>,
    /// JSON pointers (into request and response bodies) replaced by `"[redacted]"` before a
    /// review item is published.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Request headers copied into review items, in addition to the built-in allow-list.
    #[serde(default)]
    pub review_headers: Vec<String>,
    /// `gate` (default): a streamed answer is buffered, gated, then replayed or held.
    /// `passthrough`: streamed answers skip gating (counted in `triage_stream_passthrough_total`).
    #[serde(default)]
    pub streaming: Streaming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Streaming {
    #[default]
    Gate,
    Passthrough,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    #[serde(default)]
    pub request_field: Option<String>,
    #[serde(default)]
    pub response_field: Option<String>,
    #[serde(default)]
    pub response_header: Option<String>,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub pinned: Option<String>,
    #[serde(default)]
    pub on_mismatch: OnMismatch,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfidence {
    pub source: Source,
    #[serde(default)]
    pub pointer: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    #[serde(default)]
    pub request_logprobs: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    JsonPointer,
    Header,
    OpenaiLogprobs,
    Max,
    SoftmaxMax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    #[default]
    Mean,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnReview {
    #[default]
    Hold,
    Flag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    #[default]
    Review,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRefusal {
    #[default]
    Pass,
    Review,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMismatch {
    #[default]
    Reject,
    Review,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCost {
    #[serde(default)]
    pub prompt_per_1m: f64,
    #[serde(default)]
    pub completion_per_1m: f64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    #[serde(default)]
    pub prompt_tokens: Option<String>,
    #[serde(default)]
    pub completion_tokens: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    #[serde(default)]
    pub sticky_header: Option<String>,
    #[serde(default)]
    pub salt: Option<String>,
    pub variants: Vec<RawVariant>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariant {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub weight: f64,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub cost: Option<RawCost>,
    /// A candidate that serves nobody: it receives a copy of `shadow_rate` of the requests.
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub shadow_rate: Option<f64>,
    #[serde(default)]
    pub guard: Option<RawGuard>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    #[serde(default)]
    pub max_escalation_rate: Option<f64>,
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_window_s")]
    pub window_s: u64,
}

fn default_min_requests() -> u64 {
    200
}

fn default_window_s() -> u64 {
    600
}
