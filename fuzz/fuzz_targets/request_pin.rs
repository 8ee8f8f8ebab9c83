//! The version pin of a request, on arbitrary bytes, checked against serde_json as the
//! reference. Whatever `pin_request` answers: never a panic. When it pins, what goes
//! upstream is one JSON object (serde_json reads it, or refuses it only for a number past
//! a double's range or half a surrogate pair, which the input carried too), its model is
//! the serving variant's version or a live version the client named, `logprobs` is `true`,
//! and every other member means what it meant in the request (or, on the whole-document
//! path, what serde_json reads back from writing it out). When the input is a JSON
//! object serde_json reads, `pin_request` refuses it only for a model version it does not
//! allow.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use triage::rules::RuleSet;
use triage::rules::compile::{SourceFile, compile};
use triage::upstream::pin_request;

const RULES: &str = r#"
version: 1
upstreams: { llm: { url: "http://127.0.0.1:1" } }
tasks:
  - name: chat
    upstream: llm
    model: { request_field: /model, aliases: [gpt-4o, latest] }
    confidence: { source: openai_logprobs, request_logprobs: true }
    threshold: 0.5
    rollout:
      variants:
        - { name: stable, version: v-a, weight: 50 }
        - { name: canary, version: "v\"b", weight: 50 }
"#;

fn rules() -> &'static RuleSet {
    static RULES_SET: OnceLock<RuleSet> = OnceLock::new();
    RULES_SET.get_or_init(|| {
        compile(
            &[SourceFile {
                name: "fuzz.yaml".into(),
                text: RULES.into(),
            }],
            None,
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
    })
}

/// The classes of JSON by its grammar that a `serde_json::Value` cannot hold.
fn unholdable(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    ["number out of range", "surrogate", "hex escape"]
        .iter()
        .any(|k| m.contains(k))
}

fuzz_target!(|data: &[u8]| {
    let Some((&chosen, body)) = data.split_first() else {
        return;
    };
    let task = &rules().tasks[0];
    let chosen = usize::from(chosen & 1);
    let input = serde_json::from_slice::<Value>(body);
    let pinned = pin_request(task, chosen, Bytes::copy_from_slice(body));
    let Ok(pinned) = pinned else {
        if let Ok(Value::Object(map)) = &input {
            let named = map.get("model").and_then(Value::as_str);
            assert!(
                !matches!(map.get("model"), None | Some(Value::Null))
                    && !matches!(named, Some("gpt-4o" | "latest" | "v-a" | "v\"b")),
                "a pinnable request was refused: {}",
                String::from_utf8_lossy(body)
            );
        }
        return;
    };
    let output = match serde_json::from_slice::<Value>(&pinned.body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => panic!("pinned into a non-object: {other}"),
        Err(e) => {
            assert!(unholdable(&e), "pinned into something serde_json refuses: {e}");
            assert!(input.as_ref().is_err_and(unholdable), "the input was readable");
            return;
        }
    };
    let versions = ["v-a", "v\"b"];
    assert_eq!(
        output.get("model").and_then(Value::as_str),
        Some(versions[pinned.variant]),
        "{}",
        String::from_utf8_lossy(&pinned.body)
    );
    assert_eq!(output.get("logprobs"), Some(&Value::Bool(true)));
    let Ok(Value::Object(mut input)) = input else {
        panic!("pinned a body serde_json does not read as an object");
    };
    let mut output = output;
    for key in ["model", "logprobs"] {
        input.remove(key);
        output.remove(key);
    }
    // The in-place edit keeps every other byte; the whole-document path (a model key with
    // escapes, say) writes the parsed document out again, and serde_json's default float
    // parse does not always read back what it wrote: the same members either way.
    let written = serde_json::to_vec(&input).unwrap_or_default();
    let round_trip = serde_json::from_slice::<serde_json::Map<String, Value>>(&written).ok();
    assert!(
        input == output || round_trip.as_ref() == Some(&output),
        "members other than model and logprobs changed"
    );
});
