//! Match a request to its task and choose the task's variant. Pure functions.
//!
//! Sticky assignment is the contract's, so any replica or any other system computes the
//! same answer: `bucket = xxh3_64(salt ":" key) % 10000`, and variants own cumulative
//! bucket ranges in listed order.

use http::{HeaderMap, Method};
use xxhash_rust::xxh3::Xxh3;

use crate::rules::compile::BUCKETS;
use crate::rules::{Matcher, Rollout, RuleSet, Task};

/// The first task whose matcher accepts the request, with its index.
pub fn match_task<'r>(
    rules: &'r RuleSet,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<(usize, &'r Task)> {
    rules
        .tasks
        .iter()
        .enumerate()
        .find(|(_, t)| matches(&t.matcher, method, path, headers))
}

pub fn matches(m: &Matcher, method: &Method, path: &str, headers: &HeaderMap) -> bool {
    m.method.as_ref().is_none_or(|want| want == method)
        && m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
        && m.headers
            .iter()
            .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
}

/// The sticky bucket of `key` in `0..10_000`.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let mut h = Xxh3::new();
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(key);
    (h.digest() % u64::from(BUCKETS)) as u32
}

/// The variant index for a bucket: the first whose cumulative range contains it.
pub fn variant_for_bucket(rollout: &Rollout, bucket: u32) -> usize {
    rollout
        .variants
        .iter()
        .position(|v| bucket < v.bucket_end)
        .unwrap_or(0)
}

/// Choose a variant: sticky by the configured header, else uniformly at random. A variant
/// halted by its guardrail on this replica sends its users to the first variant.
pub fn choose_variant(rollout: &Rollout, headers: &HeaderMap) -> usize {
    let key = rollout
        .sticky_header
        .as_ref()
        .and_then(|h| headers.get(h))
        .map(|v| v.as_bytes());
    let b = match key {
        Some(key) => bucket(&rollout.salt, key),
        None => fastrand::u32(0..BUCKETS),
    };
    let chosen = variant_for_bucket(rollout, b);
    let halted = rollout
        .variants
        .get(chosen)
        .and_then(|v| v.guard.as_ref())
        .is_some_and(|g| g.halted());
    if halted { 0 } else { chosen }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::compile::{SourceFile, compile};

    fn rules(yaml: &str) -> RuleSet {
        compile(
            &[SourceFile {
                name: "t.yaml".into(),
                text: yaml.into(),
            }],
            None,
        )
        .unwrap()
    }

    const RULES: &str = r#"
version: 1
upstreams: { u: { url: "http://127.0.0.1:1" } }
tasks:
  - name: a
    match: { path_prefix: /v1/chat, method: post, headers: { x-task: a } }
    upstream: u
    confidence: { source: json_pointer, pointer: /c }
    threshold: 0.5
  - name: b
    match: { path_prefix: /v1/chat }
    upstream: u
    confidence: { source: json_pointer, pointer: /c }
    threshold: 0.5
    rollout:
      sticky_header: x-user-id
      variants:
        - { name: stable, version: v1, weight: 90 }
        - { name: canary, version: v2, weight: 10 }
"#;

    #[test]
    fn first_matching_task_wins() {
        let r = rules(RULES);
        let mut h = HeaderMap::new();
        let name = |m: &Method, p: &str, h: &HeaderMap| {
            match_task(&r, m, p, h).map(|(_, t)| t.name.to_string())
        };
        assert_eq!(
            name(&Method::POST, "/v1/chat/completions", &h),
            Some("b".into())
        );
        h.insert("x-task", "a".parse().unwrap());
        assert_eq!(
            name(&Method::POST, "/v1/chat/completions", &h),
            Some("a".into())
        );
        assert_eq!(
            name(&Method::GET, "/v1/chat/completions", &h),
            Some("b".into())
        );
        assert_eq!(name(&Method::POST, "/v2", &h), None);
    }

    #[test]
    fn buckets_are_cumulative_in_listed_order() {
        let r = rules(RULES);
        let rollout = &r.tasks[1].rollout;
        assert_eq!(variant_for_bucket(rollout, 0), 0);
        assert_eq!(variant_for_bucket(rollout, 8999), 0);
        assert_eq!(variant_for_bucket(rollout, 9000), 1);
        assert_eq!(variant_for_bucket(rollout, 9999), 1);
    }

    /// The worked example of the README's "Sticky assignment" section.
    #[test]
    fn readme_worked_example() {
        let raw = xxhash_rust::xxh3::xxh3_64(b"invoice-extraction:user-42");
        assert_eq!(raw, 9_059_042_385_636_543_747);
        assert_eq!(bucket("invoice-extraction", b"user-42"), 3747);
        assert_eq!(bucket("invoice-extraction", b"alice@example.com"), 7989);
    }

    #[test]
    fn bucket_is_xxh3_of_salt_colon_key() {
        let direct = xxhash_rust::xxh3::xxh3_64(b"invoice-extraction:user-42") % 10_000;
        assert_eq!(u64::from(bucket("invoice-extraction", b"user-42")), direct);
    }
}
