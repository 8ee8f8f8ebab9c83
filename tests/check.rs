//! `triage check` and start-up validation: exit codes and messages that say where.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_types
)]

mod common;

use std::process::Command;

fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(common::bin())
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

const VALID: &str = r#"
version: 1
upstreams:
  llm: { url: "http://127.0.0.1:8000", timeout_ms: 30000 }
  canary: { url: "http://127.0.0.1:8001" }
tasks:
  - name: invoice-extraction
    match: { path_prefix: /v1/chat/completions, method: POST, headers: { x-task: invoice } }
    upstream: llm
    model: { request_field: /model, response_field: /model, aliases: [gpt-4o], on_mismatch: review }
    confidence: { source: openai_logprobs, aggregate: min, request_logprobs: true }
    threshold: 0.85
    rollout:
      sticky_header: x-user-id
      variants:
        - { name: stable, version: a, weight: 89.99 }
        - { name: canary, version: b, weight: 10.01, upstream: canary, threshold: 0.9 }
"#;

#[test]
fn the_shipped_examples_and_a_valid_file_pass() {
    let (code, out) = check(VALID);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 task(s), 2 variant(s)"), "{out}");
    let out = Command::new(common::bin())
        .args(["check", "routing-rules"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_kind_of_error_is_reported_with_where_it_is() {
    let cases: &[(&str, &str, &str)] = &[
        ("bad yaml", "version: 1\ntasks: [ {", "not valid YAML"),
        (
            "unknown key",
            &VALID.replace("threshold: 0.85", "treshold: 0.85"),
            "task \"invoice-extraction\": treshold: unknown field `treshold`",
        ),
        (
            "nested unknown key",
            &VALID.replace("aggregate: min", "agregate: min"),
            "task \"invoice-extraction\": confidence.agregate: unknown field `agregate`",
        ),
        (
            "threshold above 1",
            &VALID.replace("threshold: 0.85", "threshold: 1.5"),
            "task \"invoice-extraction\": threshold: 1.5 is outside [0, 1]",
        ),
        (
            "negative variant threshold",
            &VALID.replace("threshold: 0.9", "threshold: -0.1"),
            "rollout.variants[1].threshold: -0.1 is outside [0, 1]",
        ),
        (
            "weights summing to 90",
            &VALID.replace("weight: 89.99", "weight: 79.99"),
            "rollout.variants: weights sum to 90, expected 100",
        ),
        (
            "weights summing to 99.99",
            &VALID.replace("weight: 10.01", "weight: 10"),
            "weights sum to 99.99, expected 100",
        ),
        (
            "three decimals",
            &VALID.replace("weight: 10.01", "weight: 10.001"),
            "has more than two decimals",
        ),
        (
            "unknown upstream",
            &VALID.replace("upstream: canary", "upstream: canry"),
            "rollout.variants[1].upstream: unknown upstream \"canry\"",
        ),
        (
            "bad source",
            &VALID.replace("openai_logprobs", "logprob"),
            "unknown variant `logprob`",
        ),
        (
            "pointer without slash",
            &VALID.replace("request_field: /model", "request_field: model"),
            "model.request_field: JSON pointer \"model\" must start with '/'",
        ),
        (
            "wrong version",
            &VALID.replace("version: 1", "version: 2"),
            "unsupported version 2",
        ),
    ];
    for (what, yaml, expected) in cases {
        let (code, out) = check(yaml);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(
            out.contains(expected),
            "{what}: expected {expected:?} in:\n{out}"
        );
        assert!(out.contains("rules.yaml"), "{what}: names the file:\n{out}");
    }
}

#[test]
fn duplicate_tasks_and_several_errors_are_all_reported() {
    let yaml = r#"
version: 1
upstreams: { u: { url: "http://127.0.0.1:1" } }
tasks:
  - { name: a, upstream: u, confidence: { source: max, pointer: /p }, threshold: 0.5 }
  - { name: a, upstream: u, confidence: { source: max, pointer: /p }, threshold: 0.5 }
  - { name: b, upstream: nope, confidence: { source: json_pointer }, threshold: 2 }
"#;
    let (code, out) = check(yaml);
    assert_eq!(code, 1);
    for expected in [
        "task \"a\": name: duplicate task name",
        "task \"b\": upstream: unknown upstream \"nope\"",
        "task \"b\": confidence.pointer: source json_pointer needs confidence.pointer",
        "task \"b\": threshold: 2 is outside [0, 1]",
        "4 error(s)",
    ] {
        assert!(out.contains(expected), "expected {expected:?} in:\n{out}");
    }
}

#[test]
fn serve_refuses_bad_rules_and_bad_flags_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.yaml");
    std::fs::write(&path, VALID.replace("threshold: 0.85", "threshold: 7")).unwrap();
    let out = Command::new(common::bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--rules",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("threshold: 7 is outside [0, 1]"));

    let out = Command::new(common::bin())
        .args(["serve", "--rules"])
        .arg(&path)
        .args(["--listen", "nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let out = Command::new(common::bin())
        .args(["serve", "--rules", "/nonexistent/rules.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rules.yaml"));
}

/// Found by fuzzing (fuzz/regressions/rules_compile/weights-overflow.yaml.gz): a YAML alias
/// expanded into ~430,000 variants overflowed the weight sum. Now bounded, and fast.
#[test]
fn an_alias_expanded_into_a_huge_rollout_is_refused_quickly() {
    let mut aliases = String::from("[&v {name: v, version: x, weight: 100}");
    for _ in 0..200 {
        aliases.push_str(", *v");
    }
    aliases.push(']');
    let yaml = format!(
        "version: 1\nupstreams: {{u: {{url: \"http://h\"}}}}\ntasks:\n- {{name: t, upstream: u, threshold: 0.5, confidence: {{source: max, pointer: /p}}, rollout: {{variants: {aliases}}}}}\n"
    );
    let started = std::time::Instant::now();
    let (code, out) = check(&yaml);
    assert_eq!(code, 1);
    assert!(out.contains("201 variants; at most 100"), "{out}");
    assert!(out.contains("1 error(s)"), "{out}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
