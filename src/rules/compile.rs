//! Check rules and compile them into a [`RuleSet`]. Collects every error, never only the first.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::de::DeserializeOwned;
use xxhash_rust::xxh3::Xxh3;

use super::raw::{self, RawFile, RawTask, RawUpstream, Source};
use super::{
    Cost, Matcher, ModelRules, ReportedVersion, RequestMember, Rollout, RuleSet, Slots, Task,
    Upstream, Variant,
};
use crate::confidence::Extractor;
use crate::decide::Policy;
use crate::guard::{Guard, GuardConfig};

use crate::metrics::{TaskMetrics, VariantMetrics};
use crate::probe::{Kind, Probe, Step, parse_pointer};

/// Buckets of the sticky assignment; weights are in hundredths of a percent.
pub const BUCKETS: u32 = 10_000;
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
const MAX_VARIANTS: usize = 100;

/// Resolves an upstream name for a key, reporting unknown names.
type UpstreamLookup<'a> = dyn Fn(&str, &str, &mut Errors) -> Option<Arc<Upstream>> + 'a;

/// One rules file's name and text.

#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A problem in the rules, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub task: Option<String>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.file)?;
        if let Some(task) = &self.task {
            write!(f, "task {task:?}: ")?;
        }
        if !self.key.is_empty() && self.key != "." {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

struct Errors<'a> {
    file: &'a str,
    task: Option<&'a str>,
    out: &'a mut Vec<RuleError>,
}

impl Errors<'_> {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.out.push(RuleError {
            file: self.file.to_owned(),
            task: self.task.map(str::to_owned),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Compile the given files (already read) into a rule set. `previous` is the running rule
/// set, whose per-variant guard state is kept where a variant is unchanged.
pub fn compile(
    files: &[SourceFile],
    previous: Option<&RuleSet>,
) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut upstreams: BTreeMap<String, (String, RawUpstream)> = BTreeMap::new();
    let mut tasks: Vec<(String, RawTask)> = Vec::new();

    for file in files {
        let mut err = Errors {
            file: &file.name,
            task: None,
            out: &mut errors,
        };
        let value: serde_yaml_ng::Value = match serde_yaml_ng::from_str(&file.text) {
            Ok(v) => v,
            Err(e) => {
                err.push("", format!("not valid YAML: {e}"));
                continue;
            }
        };
        let parsed: RawFile = match typed(value) {
            Ok(f) => f,
            Err((key, message)) => {
                err.push(key, message);
                continue;
            }
        };
        if parsed.version != 1 {
            err.push(
                "version",
                format!("unsupported version {}, expected 1", parsed.version),
            );
        }
        for (name, value) in parsed.upstreams {
            let key = format!("upstreams.{name}");
            match typed::<RawUpstream>(value) {
                Err((k, m)) => err.push(join_key(&key, &k), m),
                Ok(u) => {
                    if let Some((other, _)) = upstreams.get(&name) {
                        err.push(key, format!("upstream {name:?} is also defined in {other}"));
                    } else {
                        upstreams.insert(name, (file.name.clone(), u));
                    }
                }
            }
        }
        for (i, value) in parsed.tasks.into_iter().enumerate() {
            let name = value
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_owned);
            match typed::<RawTask>(value) {
                Ok(t) => tasks.push((file.name.clone(), t)),
                Err((k, m)) => {
                    let label = name.unwrap_or_else(|| format!("tasks[{i}]"));
                    Errors {
                        file: &file.name,
                        task: Some(&label),
                        out: &mut errors,
                    }
                    .push(k, m);
                }
            }
        }
    }
    if files.is_empty() {
        errors.push(RuleError {
            file: String::new(),
            task: None,
            key: String::new(),
            message: "no rules files found (.yaml, .yml or .json)".into(),
        });
    }

    let mut compiled_upstreams = BTreeMap::new();
    for (name, (file, u)) in &upstreams {
        let mut err = Errors {
            file,
            task: None,
            out: &mut errors,
        };
        if let Some(up) = compile_upstream(name, u, &mut err) {
            compiled_upstreams.insert(name.clone(), Arc::new(up));
        }
    }

    let mut seen = HashSet::new();
    let mut compiled = Vec::with_capacity(tasks.len());
    for (file, raw) in &tasks {
        let mut err = Errors {
            file,
            task: Some(&raw.name),
            out: &mut errors,
        };
        if !seen.insert(raw.name.as_str()) {
            err.push("name", "duplicate task name");
        }
        // Upstreams that failed to compile were reported already; don't report them twice.
        let known = |n: &str| upstreams.contains_key(n);
        let previous = previous.and_then(|p| p.tasks.iter().find(|t| *t.name == raw.name));
        if let Some(task) = compile_task(raw, &compiled_upstreams, &known, previous, &mut err) {
            compiled.push(task);
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    let source = serde_json::json!({
        "files": files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        "upstreams": upstreams
            .iter()
            .map(|(k, (_, u))| (k.clone(), RawUpstream { url: display_url(&u.url), ..u.clone() }))
            .collect::<BTreeMap<_, _>>(),

        "tasks": tasks.iter().map(|(_, t)| t).collect::<Vec<_>>(),
    });
    Ok(RuleSet {
        tasks: compiled.into(),
        hash: hash_sources(files),
        loaded_at: SystemTime::now(),
        source,
    })
}

/// The content hash of a set of rules files: hex xxh3-128 over names and texts. Reloads
/// compare it, not mtimes (a kubelet ConfigMap swap keeps the mtime of the visible name).
pub fn hash_sources(files: &[SourceFile]) -> String {
    let mut hasher = Xxh3::new();
    for file in files {
        hasher.update(file.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(file.text.as_bytes());
        hasher.update(&[0]);
    }
    format!("{:032x}", hasher.digest128())
}

/// An upstream URL for display: any `user:password@` is masked.
fn display_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn typed<T: DeserializeOwned>(value: serde_yaml_ng::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| (e.path().to_string(), e.inner().to_string()))
}

fn join_key(base: &str, inner: &str) -> String {
    if inner.is_empty() || inner == "." {
        base.to_owned()
    } else {
        format!("{base}.{inner}")
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn compile_upstream(name: &str, raw: &RawUpstream, err: &mut Errors) -> Option<Upstream> {
    let key = format!("upstreams.{name}");
    if !valid_name(name) {
        err.push(&key, "upstream names use letters, digits, '-' and '_'");
    }
    let uri: Uri = match raw.url.parse() {
        Ok(u) => u,
        Err(e) => {
            err.push(
                format!("{key}.url"),
                format!("{:?} is not a URL: {e}", raw.url),
            );
            return None;
        }
    };
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        err.push(
            format!("{key}.url"),
            format!("{:?} needs a scheme and a host", raw.url),
        );
        return None;
    };
    if scheme != &http::uri::Scheme::HTTP {
        err.push(format!("{key}.url"), "only http:// upstreams are supported");
        return None;
    }
    if uri.query().is_some() {
        err.push(format!("{key}.url"), "an upstream URL cannot have a query");
    }
    let host = match authority.port_u16() {
        None | Some(80) => authority.host().to_owned(),
        Some(port) => format!("{}:{port}", authority.host()),
    };
    let Ok(host) = http::HeaderValue::try_from(host) else {
        err.push(format!("{key}.url"), "the host is not a valid host header");
        return None;
    };
    let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
    if timeout_ms == 0 {
        err.push(format!("{key}.timeout_ms"), "must be greater than 0");
    }
    Some(Upstream {
        name: name.into(),
        authority: authority.clone(),
        host,
        base_path: uri.path().trim_end_matches('/').into(),
        timeout: Duration::from_millis(timeout_ms),
    })
}

/// `s` as a JSON string, quotes and escapes included.
fn json_string(s: &str) -> Box<[u8]> {
    serde_json::to_vec(s).unwrap_or_default().into()
}

/// The top-level member a request-field pointer names, if that is all it names. `logprobs`
/// is left out: `request_logprobs` edits that member.
fn request_member(pointer: &str) -> Option<RequestMember> {
    let steps = parse_pointer(pointer).ok()?;
    let [Step::Token { key, .. }] = &steps[..] else {
        return None;
    };
    if &**key == "logprobs" {
        return None;
    }
    let mut opening = json_string(key).into_vec();
    opening.push(b':');
    Some(RequestMember {
        key: key.clone(),
        opening: opening.into(),
    })
}

fn unit_interval(value: f64, key: &str, err: &mut Errors) {
    if !(0.0..=1.0).contains(&value) {
        err.push(key, format!("{value} is outside [0, 1]"));
    }
}

fn pointer(p: &str, key: &str, err: &mut Errors) -> Option<Vec<Step>> {
    parse_pointer(p).map_err(|m| err.push(key, m)).ok()
}

fn header_name(h: &str, key: &str, err: &mut Errors) -> Option<HeaderName> {
    HeaderName::from_bytes(h.as_bytes())
        .map_err(|_| err.push(key, format!("{h:?} is not a valid header name")))
        .ok()
}

fn cost(raw: Option<raw::RawCost>, key: &str, err: &mut Errors) -> Cost {
    let c = raw.unwrap_or_default();
    for (v, k) in [
        (c.prompt_per_1m, "prompt_per_1m"),
        (c.completion_per_1m, "completion_per_1m"),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            err.push(
                format!("{key}.{k}"),
                format!("{v} must be a non-negative number"),
            );
        }
    }
    Cost {
        prompt_per_1m: c.prompt_per_1m,
        completion_per_1m: c.completion_per_1m,
    }
}

fn compile_task(
    raw: &RawTask,
    upstreams: &BTreeMap<String, Arc<Upstream>>,
    known: &dyn Fn(&str) -> bool,
    previous: Option<&Task>,
    err: &mut Errors,
) -> Option<Task> {
    let errors_before = err.out.len();
    if !valid_name(&raw.name) {
        err.push(
            "name",
            "task names use letters, digits, '-' and '_' (they are routing keys)",
        );
    }
    let upstream = |name: &str, key: &str, err: &mut Errors| -> Option<Arc<Upstream>> {
        match upstreams.get(name) {
            Some(u) => Some(u.clone()),
            None => {
                if !known(name) {
                    err.push(key, format!("unknown upstream {name:?}"));
                }
                None
            }
        }
    };

    // match
    let m = &raw.matcher;
    if let Some(p) = &m.path_prefix
        && !p.starts_with('/')
    {
        err.push("match.path_prefix", format!("{p:?} must start with '/'"));
    }
    let method = m.method.as_deref().and_then(|s| {
        Method::from_bytes(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| err.push("match.method", format!("{s:?} is not an HTTP method")))
            .ok()
    });
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let key = format!("match.headers.{name}");
        let n = header_name(name, &key, err);
        let v = HeaderValue::from_str(value)
            .map_err(|_| err.push(&key, format!("{value:?} is not a valid header value")))
            .ok();
        if let (Some(n), Some(v)) = (n, v) {
            headers.push((n, v));
        }
    }
    let task_upstream = upstream(&raw.upstream, "upstream", err);

    // confidence
    let mut probe = Probe::default();
    let c = &raw.confidence;
    let needs = |field: &str, present: bool, err: &mut Errors| {
        if !present {
            err.push(
                format!("confidence.{field}"),
                format!("source {} needs confidence.{field}", source_name(c.source)),
            );
        }
    };
    let forbid = |field: &str, present: bool, err: &mut Errors| {
        if present {
            err.push(
                format!("confidence.{field}"),
                format!("not used by source {}", source_name(c.source)),
            );
        }
    };
    if c.source != Source::OpenaiLogprobs {
        forbid("aggregate", c.aggregate.is_some(), err);
        forbid("request_logprobs", c.request_logprobs.is_some(), err);
    }
    if c.source != Source::Header {
        forbid("header", c.header.is_some(), err);
    }
    let pointer_steps = |err: &mut Errors| {
        needs("pointer", c.pointer.is_some(), err);
        c.pointer
            .as_deref()
            .and_then(|p| pointer(p, "confidence.pointer", err))
    };
    let extractor = match c.source {
        Source::JsonPointer => pointer_steps(err).map(|s| Extractor::JsonPointer {
            slot: probe.add(&s, Kind::One),
        }),
        Source::Max | Source::SoftmaxMax => pointer_steps(err).map(|mut s| {
            s.push(Step::Each);
            let slot = probe.add(&s, Kind::Many);
            if c.source == Source::Max {
                Extractor::Max { slot }
            } else {
                Extractor::SoftmaxMax { slot }
            }
        }),
        Source::Header => {
            forbid("pointer", c.pointer.is_some(), err);
            needs("header", c.header.is_some(), err);
            c.header
                .as_deref()
                .and_then(|h| header_name(h, "confidence.header", err))
                .map(|name| Extractor::Header { name })
        }
        Source::OpenaiLogprobs => {
            forbid("pointer", c.pointer.is_some(), err);
            let steps = [
                Step::token("choices"),
                Step::token("0"),
                Step::token("logprobs"),
                Step::token("content"),
                Step::Each,
                Step::token("logprob"),
            ];
            Some(Extractor::OpenaiLogprobs {
                slot: probe.add(&steps, Kind::Many),
                aggregate: c.aggregate.unwrap_or_default(),
            })
        }
    };
    let refusal = ["choices", "0", "message", "refusal"].map(Step::token);
    let finish = ["choices", "0", "finish_reason"].map(Step::token);
    let usage = raw.usage.clone().unwrap_or_default();
    let usage_slot =
        |p: Option<&str>, default: &str, key: &str, probe: &mut Probe, err: &mut Errors| {
            pointer(p.unwrap_or(default), key, err).map(|s| probe.add(&s, Kind::One))
        };
    let delta_refusal = ["choices", "0", "delta", "refusal"].map(Step::token);
    let mut slots = Slots {
        refusal: Some(probe.add(&refusal, Kind::One)),
        delta_refusal: Some(probe.add(&delta_refusal, Kind::One)),
        finish_reason: Some(probe.add(&finish, Kind::One)),
        ..Slots::default()
    };
    slots.prompt_tokens = usage_slot(
        usage.prompt_tokens.as_deref(),
        "/usage/prompt_tokens",
        "usage.prompt_tokens",
        &mut probe,
        err,
    );
    slots.completion_tokens = usage_slot(
        usage.completion_tokens.as_deref(),
        "/usage/completion_tokens",
        "usage.completion_tokens",
        &mut probe,
        err,
    );

    // model
    let model = raw.model.clone().unwrap_or_default();
    if let Some(p) = &model.request_field {
        pointer(p, "model.request_field", err);
    }
    if !model.aliases.is_empty() && model.request_field.is_none() {
        err.push("model.aliases", "aliases need model.request_field");
    }
    let response = match (&model.response_field, &model.response_header) {
        (Some(_), Some(_)) => {
            err.push("model", "set response_field or response_header, not both");
            None
        }
        (Some(p), None) => pointer(p, "model.response_field", err)
            .map(|s| ReportedVersion::Field(probe.add(&s, Kind::One))),
        (None, Some(h)) => {
            header_name(h, "model.response_header", err).map(ReportedVersion::Header)
        }
        (None, None) => None,
    };

    // policy
    if raw.threshold.is_nan() {
        err.push("threshold", "must be a number");
    }
    unit_interval(raw.threshold, "threshold", err);
    unit_interval(raw.audit_rate, "audit_rate", err);
    let policy = Policy {
        threshold: raw.threshold,
        on_review: raw.on_review,
        on_missing: raw.on_missing_confidence,
        on_refusal: raw.on_refusal,
        on_mismatch: model.on_mismatch,
        paused: raw.paused,
        audit_rate: raw.audit_rate,
    };
    let task_cost = cost(raw.cost, "cost", err);

    // variants
    let variants = match (&raw.rollout, &model.pinned) {
        (Some(_), Some(_)) => {
            err.push("model.pinned", "use model.pinned or rollout, not both");
            Vec::new()
        }
        (None, pinned) => {
            if let Some(p) = pinned
                && p.is_empty()
            {
                err.push("model.pinned", "must not be empty");
            }
            if pinned.is_none() && !model.aliases.is_empty() {
                err.push(
                    "model.aliases",
                    "aliases need a pinned version (model.pinned or rollout)",
                );
            }
            match &task_upstream {
                Some(up) => vec![Variant {
                    name: "default".into(),
                    name_header: HeaderValue::from_static("default"),
                    version: pinned.as_deref().map(Arc::from),
                    version_header: pinned
                        .as_deref()
                        .and_then(|v| HeaderValue::from_str(v).ok()),
                    version_json: pinned.as_deref().map(json_string),
                    bucket_end: BUCKETS,
                    upstream: up.clone(),
                    policy,
                    cost: task_cost,
                    metrics: VariantMetrics::new(&raw.name, "default"),
                    shadow: None,
                    guard: None,
                }],
                None => Vec::new(),
            }
        }
        (Some(r), None) => compile_variants(
            raw,
            r,
            TaskDefaults {
                policy: &policy,
                cost: task_cost,
                upstream: task_upstream.as_ref(),
            },
            &upstream,
            previous,
            err,
        ),
    };
    let sticky_header = raw
        .rollout
        .as_ref()
        .and_then(|r| r.sticky_header.as_deref())
        .and_then(|h| header_name(h, "rollout.sticky_header", err));
    let salt = raw
        .rollout
        .as_ref()
        .and_then(|r| r.salt.clone())
        .unwrap_or_else(|| raw.name.clone());

    for (i, p) in raw.redact.iter().enumerate() {
        pointer(p, &format!("redact[{i}]"), err);
    }
    let mut review_headers: Vec<HeaderName> =
        ["content-type", "user-agent", "x-request-id", "traceparent"]
            .into_iter()
            .map(HeaderName::from_static)
            .collect();
    for (i, h) in raw.review_headers.iter().enumerate() {
        if let Some(n) = header_name(h, &format!("review_headers[{i}]"), err) {
            review_headers.push(n);
        }
    }
    review_headers.extend(headers.iter().map(|(n, _)| n.clone()));
    review_headers.extend(sticky_header.iter().cloned());
    review_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    review_headers.dedup();
    if review_headers
        .iter()
        .any(|h| *h == http::header::AUTHORIZATION || *h == http::header::COOKIE)
    {
        err.push(
            "review_headers",
            "authorization and cookie headers are never copied to review",
        );
    }

    if err.out.len() > errors_before || variants.is_empty() {
        return None;
    }
    let extractor = extractor?;
    Some(Task {
        name: raw.name.as_str().into(),
        name_header: header_value(&raw.name),
        matcher: Matcher {
            path_prefix: m.path_prefix.as_deref().map(Into::into),
            method,
            headers: headers.into(),
        },
        model: ModelRules {
            request_member: model.request_field.as_deref().and_then(request_member),
            request_field: model.request_field.clone(),
            response,
            aliases: model.aliases.clone().into(),
        },
        request_logprobs: c.request_logprobs.unwrap_or(false),
        extractor,
        probe,
        slots,
        rollout: Rollout {
            sticky_header,
            salt: salt.into(),
            variants: variants.into(),
        },
        redact: raw.redact.clone().into(),
        review_headers: review_headers.into(),
        metrics: TaskMetrics::new(&raw.name),
        streaming: raw.streaming,
    })
}

/// What a variant inherits from its task.
#[derive(Clone, Copy)]
struct TaskDefaults<'a> {
    policy: &'a Policy,
    cost: Cost,
    upstream: Option<&'a Arc<Upstream>>,
}

fn compile_variants(
    raw: &RawTask,
    rollout: &raw::RawRollout,
    defaults: TaskDefaults<'_>,
    upstream: &UpstreamLookup,
    previous: Option<&Task>,
    err: &mut Errors,
) -> Vec<Variant> {
    let TaskDefaults {
        policy,
        cost: task_cost,
        upstream: task_upstream,
    } = defaults;
    if rollout.variants.is_empty() {
        err.push("rollout.variants", "needs at least one variant");
        return Vec::new();
    }
    // A bound for the sake of the hot path and of readable errors (a YAML alias can expand
    // one line into hundreds of thousands of variants; fuzzing found that).
    if rollout.variants.len() > MAX_VARIANTS {
        err.push(
            "rollout.variants",
            format!(
                "{} variants; at most {MAX_VARIANTS}",
                rollout.variants.len()
            ),
        );
        return Vec::new();
    }
    let mut names = HashSet::new();
    let mut versions = HashSet::new();
    let mut total: u32 = 0;
    let mut out = Vec::new();
    for (i, v) in rollout.variants.iter().enumerate() {
        let key = format!("rollout.variants[{i}]");
        if !valid_name(&v.name) {
            err.push(
                format!("{key}.name"),
                "variant names use letters, digits, '-' and '_'",
            );
        }
        if !names.insert(v.name.as_str()) {
            err.push(
                format!("{key}.name"),
                format!("duplicate variant {:?}", v.name),
            );
        }
        if v.version.is_empty() {
            err.push(format!("{key}.version"), "must not be empty");
        } else if !versions.insert(v.version.as_str()) {
            err.push(
                format!("{key}.version"),
                format!("version {:?} is pinned twice", v.version),
            );
        }
        if raw
            .model
            .as_ref()
            .is_some_and(|m| m.aliases.contains(&v.version))
        {
            err.push(
                format!("{key}.version"),
                format!("{:?} is also an alias", v.version),
            );
        }
        let basis_points = v.weight * 100.0;
        if !(0.0..=100.0).contains(&v.weight) {
            err.push(
                format!("{key}.weight"),
                format!("{} is outside [0, 100]", v.weight),
            );
        } else if (basis_points - basis_points.round()).abs() > 1e-6 {
            err.push(
                format!("{key}.weight"),
                format!("{} has more than two decimals", v.weight),
            );
        }
        let bp = basis_points.round().clamp(0.0, f64::from(BUCKETS)) as u32;
        total = total.saturating_add(bp);
        if let Some(t) = v.threshold {
            unit_interval(t, &format!("{key}.threshold"), err);
        }
        let threshold = v.threshold.unwrap_or(policy.threshold);
        let up = match &v.upstream {
            Some(name) => upstream(name, &format!("{key}.upstream"), err),
            None => task_upstream.cloned(),
        };
        let cost = match v.cost {
            Some(c) => cost(Some(c), &format!("{key}.cost"), err),
            None => task_cost,
        };
        let shadow = if v.shadow {
            if bp != 0 {
                err.push(
                    format!("{key}.weight"),
                    "a shadow variant serves nobody: its weight must be 0",
                );
            }
            if i == 0 {
                err.push(
                    format!("{key}.shadow"),
                    "the first variant is the fallback; it cannot be a shadow",
                );
            }
            let rate = v.shadow_rate.unwrap_or(1.0);
            unit_interval(rate, &format!("{key}.shadow_rate"), err);
            Some(rate)
        } else {
            if v.shadow_rate.is_some() {
                err.push(format!("{key}.shadow_rate"), "only for shadow variants");
            }
            None
        };
        let guard_config = v.guard.map(|g| {
            if i == 0 {
                err.push(
                    format!("{key}.guard"),
                    "the first variant is the fallback; it cannot be halted",
                );
            }
            for (value, k) in [
                (g.max_escalation_rate, "max_escalation_rate"),
                (g.max_error_rate, "max_error_rate"),
            ] {
                if let Some(value) = value {
                    unit_interval(value, &format!("{key}.guard.{k}"), err);
                }
            }
            if g.max_escalation_rate.is_none() && g.max_error_rate.is_none() {
                err.push(
                    format!("{key}.guard"),
                    "set max_escalation_rate, max_error_rate or both",
                );
            }
            if g.window_s == 0 {
                err.push(format!("{key}.guard.window_s"), "must be greater than 0");
            }
            GuardConfig {
                max_escalation_rate: g.max_escalation_rate,
                max_error_rate: g.max_error_rate,
                min_requests: g.min_requests,
                window: Duration::from_secs(g.window_s),
            }
        });
        // A reload that keeps this variant's weight and guard keeps its state (and halt);
        // a changed weight starts afresh, which is how ops clear a halt.
        let guard = guard_config.map(|config| {
            let kept = previous.and_then(|p| {
                let mut start = 0;
                p.rollout.variants.iter().find_map(|pv| {
                    let weight = pv.buckets(start);
                    start = pv.bucket_end;
                    (pv.name.as_ref() == v.name && weight == bp)
                        .then_some(pv.guard.as_ref())
                        .flatten()
                        .filter(|g| g.config == config)
                        .cloned()
                })
            });
            kept.unwrap_or_else(|| {
                Arc::new(Guard::new(
                    &raw.name,
                    &v.name,
                    config,
                    crate::metrics::rollout_halted(&raw.name, &v.name),
                ))
            })
        });
        if let Some(up) = up {
            out.push(Variant {
                name: v.name.as_str().into(),
                name_header: header_value(&v.name),
                version: Some(v.version.as_str().into()),
                version_header: HeaderValue::from_str(&v.version).ok(),
                version_json: Some(json_string(&v.version)),
                bucket_end: total.min(BUCKETS),
                upstream: up,
                policy: Policy {
                    threshold,
                    ..*policy
                },
                cost,
                metrics: VariantMetrics::new(&raw.name, &v.name),
                shadow,
                guard,
            });
        }
    }
    if total != BUCKETS {
        err.push(
            "rollout.variants",
            format!("weights sum to {}, expected 100", f64::from(total) / 100.0),
        );
    }
    out
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::JsonPointer => "json_pointer",
        Source::Header => "header",
        Source::OpenaiLogprobs => "openai_logprobs",
        Source::Max => "max",
        Source::SoftmaxMax => "softmax_max",
    }
}

/// A validated name (letters, digits, '-', '_') as a header value. An invalid one can only
/// come with a reported error, so the rule set is never built with the placeholder.
fn header_value(name: &str) -> HeaderValue {
    HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}
