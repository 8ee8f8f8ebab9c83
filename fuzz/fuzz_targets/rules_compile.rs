//! The rules compiler must never panic, whatever the text: it reports every problem as a
//! `RuleError`. Input: UTF-8 (lossily decoded), split on NUL bytes into up to four rules
//! files, so that cross-file checks (an upstream defined twice) are reached too.
//!
//! A rule set that compiles is compiled a second time with itself as `previous` (the reload
//! path that keeps guard state), and checked for the invariants the hot path relies on.
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use triage::confidence::extract;
use triage::rules::RuleSet;
use triage::rules::compile::{BUCKETS, SourceFile, compile};

const BODY: &[u8] = br#"{"model":"m","confidence":0.5,"probabilities":[0.1,0.9],
  "choices":[{"logprobs":{"content":[{"logprob":-0.1}]},"finish_reason":"stop"}],
  "usage":{"prompt_tokens":3,"completion_tokens":4}}"#;

fn check(rules: &RuleSet) {
    for task in rules.tasks.iter() {
        assert!(
            !task.rollout.variants.is_empty(),
            "task {} has no variant",
            task.name
        );
        let mut end = 0;
        for v in task.rollout.variants.iter() {
            assert!(
                v.bucket_end >= end,
                "bucket ends go backwards in {}",
                task.name
            );
            assert!(v.bucket_end <= BUCKETS);
            end = v.bucket_end;
            assert!(
                (0.0..=1.0).contains(&v.policy.threshold),
                "threshold {}",
                v.policy.threshold
            );
            assert!((0.0..=1.0).contains(&v.policy.audit_rate));
            if let Some(rate) = v.shadow {
                assert!((0.0..=1.0).contains(&rate));
            }
        }
        assert_eq!(
            end, BUCKETS,
            "task {}: buckets do not cover 0..{BUCKETS}",
            task.name
        );
        // The compiled probe and extractor run on a response without trouble.
        let found = task.probe.run(BODY).ok();
        if let Ok(c) = extract(&task.extractor, found.as_deref(), &HeaderMap::new()) {
            assert!((0.0..=1.0).contains(&c), "confidence {c}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let files: Vec<SourceFile> = text
        .splitn(4, '\0')
        .enumerate()
        .map(|(i, t)| SourceFile {
            name: format!("rules-{i}.yaml"),
            text: t.to_owned(),
        })
        .collect();
    match compile(&files, None) {
        Ok(rules) => {
            check(&rules);
            match compile(&files, Some(&rules)) {
                Ok(again) => {
                    assert_eq!(again.hash, rules.hash);
                    assert_eq!(again.tasks.len(), rules.tasks.len());
                    check(&again);
                }
                Err(errors) => panic!("compiled once, then failed with {errors:?}"),
            }
        }
        Err(errors) => assert!(!errors.is_empty(), "Err without errors"),
    }
});
