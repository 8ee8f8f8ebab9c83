//! Deterministic response bodies (fixed seeds) of the shapes the hot-path benchmarks walk:
//! classifier answers, OpenAI chat completions with logprobs, number arrays; and the tasks
//! whose probes walk them. Shared by `benches/hotpath.rs` and `loadtest/json-libs`.

/// One task per extractor, each with the slots the proxy's probe has: confidence, refusal
/// (message and delta), finish_reason, usage, and the reported model.
pub const EXTRACT_RULES: &str = r#"version: 1
upstreams: { llm: { url: "http://127.0.0.1:1" } }
tasks:
  - name: json_pointer
    upstream: llm
    model: { response_field: /model, pinned: clf-1 }
    confidence: { source: json_pointer, pointer: /confidence }
    threshold: 0.8
  - name: openai_logprobs
    upstream: llm
    model: { response_field: /model, pinned: gpt-4o-2024-08-06 }
    confidence: { source: openai_logprobs, aggregate: mean }
    threshold: 0.8
  - name: max
    upstream: llm
    model: { response_field: /model, pinned: clf-1 }
    confidence: { source: max, pointer: /probabilities }
    threshold: 0.8
  - name: softmax_max
    upstream: llm
    model: { response_field: /model, pinned: clf-1 }
    confidence: { source: softmax_max, pointer: /logits }
    threshold: 0.8
  - name: header
    upstream: llm
    model: { response_field: /model, pinned: clf-1 }
    confidence: { source: header, header: x-confidence }
    threshold: 0.8
"#;

pub const WORDS: [&str; 16] = [
    "invoice",
    "total",
    "amount",
    "due",
    "the",
    "customer",
    "paid",
    "net",
    "thirty",
    "days",
    "account",
    "number",
    "reference",
    "supplier",
    "date",
    "tax",
];

/// A classifier-like body: `/confidence` last, after padding fields (worst case for a walk
/// that must skip everything before it).
pub fn classifier_body(target: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let head =
        r#"{"id":"req-0192d7c4","object":"classification","model":"clf-1","label":"invoice","#;
    let tail = r#"],"usage":{"prompt_tokens":412,"completion_tokens":1,"total_tokens":413},"confidence":0.9312}"#;
    let mut s = String::from(head);
    s.push_str(r#""scores":["#);
    let mut i = 0;
    while s.len() + tail.len() < target {
        if i > 0 {
            s.push(',');
        }
        let w = WORDS[rng.usize(..WORDS.len())];
        s.push_str(&format!(
            r#"{{"label":"{w}_{i}","score":{:.6},"evidence":"{w} {} {}","span":[{},{}]}}"#,
            rng.f64() * 0.05,
            WORDS[rng.usize(..WORDS.len())],
            WORDS[rng.usize(..WORDS.len())],
            rng.u32(0..4000),
            rng.u32(0..4000),
        ));
        i += 1;
    }
    s.push_str(tail);
    s.into_bytes()
}

/// An OpenAI chat.completion with `n` logprob tokens, each with `top` alternatives
/// (`top_logprobs`). With alternatives, logprobs print at full precision (up to 17
/// significant digits, as the API sends them), else with six decimals.
pub fn chat_completion(n: usize, top: usize, rng: &mut fastrand::Rng) -> String {
    let mut content = String::new();
    let mut tokens = String::new();
    for i in 0..n {
        let tok = token(i, rng);
        content.push_str(&tok);
        if i > 0 {
            tokens.push(',');
        }
        let entry = |tok: &str, rng: &mut fastrand::Rng| {
            let bytes: Vec<String> = tok.bytes().map(|b| b.to_string()).collect();
            let logprob = -rng.f64() * 0.05;
            let logprob = if top == 0 {
                format!("{logprob:.6}")
            } else {
                format!("{logprob}")
            };
            format!(
                r#""token":"{tok}","logprob":{logprob},"bytes":[{}]"#,
                bytes.join(",")
            )
        };
        let alternatives: Vec<String> = (0..top)
            .map(|_| {
                let alt = format!(" {}", WORDS[rng.usize(..WORDS.len())]);
                format!("{{{}}}", entry(&alt, rng))
            })
            .collect();
        tokens.push_str(&format!(
            r#"{{{},"top_logprobs":[{}]}}"#,
            entry(&tok, rng),
            alternatives.join(",")
        ));
    }
    format!(
        r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":{{"content":[{tokens}],"refusal":null}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":19,"completion_tokens":{n},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#,
        19 + n
    )
}

/// The smallest `make(n)` at or above `target` bytes (bodies grow monotonically with `n`).
pub fn sized(target: usize, make: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let (mut lo, mut hi) = (1usize, 1usize);
    while make(hi).len() < target {
        lo = hi;
        hi *= 2;
    }
    while lo < hi {
        let mid = (lo + hi) / 2;
        if make(mid).len() < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    make(hi)
}

pub fn logprobs_body(target: usize, top: usize) -> Vec<u8> {
    sized(target, |n| {
        chat_completion(n, top, &mut fastrand::Rng::with_seed(7)).into_bytes()
    })
}

/// `{"model":…, "<field>":[n numbers], "usage":…}`.
pub fn array_body(target: usize, field: &str, number: fn(&mut fastrand::Rng) -> f64) -> Vec<u8> {
    sized(target, |n| {
        let mut rng = fastrand::Rng::with_seed(11);
        let values: Vec<String> = (0..n).map(|_| format!("{:.6}", number(&mut rng))).collect();
        format!(
            r#"{{"id":"req-0192d7c4","object":"classification","model":"clf-1","{field}":[{}],"usage":{{"prompt_tokens":412,"completion_tokens":1,"total_tokens":413}}}}"#,
            values.join(",")
        )
        .into_bytes()
    })
}

/// The `i`th token of a completion: a word, with a leading space after the first.
pub fn token(i: usize, rng: &mut fastrand::Rng) -> String {
    let word = WORDS[rng.usize(..WORDS.len())];
    if i == 0 {
        word.to_owned()
    } else {
        format!(" {word}")
    }
}
