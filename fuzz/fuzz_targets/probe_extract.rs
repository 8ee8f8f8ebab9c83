//! One probe with a slot for every body-reading confidence source, run on arbitrary bytes:
//! `json_pointer` (Kind::One), `openai_logprobs` mean and min (Kind::Many through
//! /choices/0/logprobs/content/*/logprob), `max` and `softmax_max` (Kind::Many over an
//! array). Never a panic; every confidence is within [0, 1]; and the probe's own scanner
//! reads every body serde_json parses and refuses every body serde_json refuses even to
//! skip (`IgnoredAny`) (differential both ways: serde_json is the reference).
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use triage::confidence::{Extractor, extract};
use triage::probe::{Found, Kind, Probe, Step, parse_pointer};
use triage::rules::raw::Aggregate;

fn steps(pointer: &str) -> Vec<Step> {
    parse_pointer(pointer).unwrap_or_else(|e| panic!("{e}"))
}

fn build() -> (Probe, Vec<Extractor>) {
    let mut probe = Probe::default();
    let mut list = Vec::new();
    // json_pointer: a top-level and a nested scalar.
    for p in ["/confidence", "/result/0/score"] {
        let slot = probe.add(&steps(p), Kind::One);
        list.push(Extractor::JsonPointer { slot });
    }
    // openai_logprobs, exactly as the compiler builds it.
    let mut lp = steps("/choices/0/logprobs/content");
    lp.push(Step::Each);
    lp.push(Step::token("logprob"));
    let slot = probe.add(&lp, Kind::Many);
    list.push(Extractor::OpenaiLogprobs {
        slot,
        aggregate: Aggregate::Mean,
    });
    list.push(Extractor::OpenaiLogprobs {
        slot,
        aggregate: Aggregate::Min,
    });
    // max and softmax_max over the same arrays (probabilities, logits, a nested one).
    for p in ["/probabilities", "/logits", "/scores/0"] {
        let mut s = steps(p);
        s.push(Step::Each);
        let slot = probe.add(&s, Kind::Many);
        list.push(Extractor::Max { slot });
        list.push(Extractor::SoftmaxMax { slot });
    }
    // The same path as a Kind::One slot too: one node holding both kinds.
    let slot = probe.add(&steps("/probabilities"), Kind::One);
    list.push(Extractor::JsonPointer { slot });
    (probe, list)
}

fuzz_target!(|data: &[u8]| {
    let (probe, list) = build();
    let found = probe.run(data).ok();
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(found.is_some(), "serde_json parses it, the probe refused it");
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(data).is_err() {
        assert!(found.is_none(), "serde_json refuses even to skip it, the probe read it");
    }
    if let Some(f) = &found {
        for cell in f {
            if let Found::Numbers(v) = cell {
                assert!(!v.is_empty(), "an empty Numbers list");
            }
        }
    }
    let headers = HeaderMap::new();
    for ex in &list {
        if let Ok(c) = extract(ex, found.as_deref(), &headers) {
            assert!((0.0..=1.0).contains(&c), "{} gave {c}", ex.source_name());
        }
    }
});
