#!/usr/bin/env python3
"""Regenerate the seed corpora under fuzz/corpus/ (run from anywhere: python3 fuzz/seeds.py).

Seeds are small, hand-picked inputs: the shipped routing rules and the rules snippets of
tests/check.rs, realistic model responses and their malformed variants, pointer syntax edge
cases, and spool segments (intact, torn, corrupt). Fuzzing itself writes new inputs to a
temporary copy (scripts/fuzz.sh), never here."""
import json, os, pathlib, shutil, struct, zlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


for d in CORPUS.glob("*"):
    if d.is_dir():
        for f in d.iterdir():
            f.unlink()

# ---------------------------------------------------------------- rules_compile
VALID = """
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
"""
for p in sorted((ROOT / "routing-rules").glob("*.y*ml")):
    write("rules_compile", "shipped-" + p.stem, p.read_bytes())
write("rules_compile", "valid", VALID)
for name, (old, new) in {
    "bad-yaml": (None, "version: 1\ntasks: [ {"),
    "unknown-key": ("threshold: 0.85", "treshold: 0.85"),
    "nested-unknown-key": ("aggregate: min", "agregate: min"),
    "threshold-above-1": ("threshold: 0.85", "threshold: 1.5"),
    "negative-variant-threshold": ("threshold: 0.9", "threshold: -0.1"),
    "weights-90": ("weight: 89.99", "weight: 79.99"),
    "three-decimals": ("weight: 10.01", "weight: 10.001"),
    "unknown-upstream": ("upstream: canary", "upstream: canry"),
    "bad-source": ("openai_logprobs", "logprob"),
    "pointer-without-slash": ("request_field: /model", "request_field: model"),
    "wrong-version": ("version: 1", "version: 2"),
    "nan-threshold": ("threshold: 0.85", "threshold: .nan"),
}.items():
    write("rules_compile", name, new if old is None else VALID.replace(old, new))
write("rules_compile", "duplicates-and-errors", """
version: 1
upstreams: { u: { url: "http://127.0.0.1:1" } }
tasks:
  - { name: a, upstream: u, confidence: { source: max, pointer: /p }, threshold: 0.5 }
  - { name: a, upstream: u, confidence: { source: max, pointer: /p }, threshold: 0.5 }
  - { name: b, upstream: nope, confidence: { source: json_pointer }, threshold: 2 }
""")
write("rules_compile", "every-source", """
version: 1
upstreams: { u: { url: "http://user:pw@127.0.0.1:9/base/" } }
tasks:
  - { name: jp, upstream: u, confidence: { source: json_pointer, pointer: "/a~1b/m~0n/0" }, threshold: 0.5,
      usage: { prompt_tokens: /usage/in, completion_tokens: /usage/out }, redact: [/messages/0/content, ""],
      review_headers: [x-tenant], cost: { prompt_per_1m: 1, completion_per_1m: 2.5 } }
  - { name: hd, upstream: u, confidence: { source: header, header: x-confidence }, threshold: 0,
      model: { pinned: v1, response_header: x-model-version, on_mismatch: review }, on_review: flag,
      on_missing_confidence: reject, on_refusal: review, audit_rate: 1, paused: true }
  - { name: sm, upstream: u, match: { method: get, path_prefix: / }, confidence: { source: softmax_max, pointer: /logits }, threshold: 1 }
""")
write("rules_compile", "shadow-and-guard", """
version: 1
upstreams: { a: { url: "http://a:80" }, b: { url: "http://b:81", timeout_ms: 5 } }
tasks:
  - name: t
    upstream: a
    confidence: { source: max, pointer: /probabilities }
    threshold: 0.7
    rollout:
      salt: s1
      variants:
        - { name: v1, version: "1", weight: 50 }
        - { name: v2, version: "2", weight: 50, upstream: b, guard: { max_escalation_rate: 0.2, min_requests: 10, window_s: 60 } }
        - { name: v3, version: "3", weight: 0, shadow: true, shadow_rate: 0.25, cost: { prompt_per_1m: 0.1 } }
""")
write("rules_compile", "errors-everywhere", """
version: 1
upstreams: { "bad name": { url: "https://x" }, q: { url: "http://h/p?x=1", timeout_ms: 0 }, n: { url: "/rel" } }
tasks:
  - name: "no spaces"
    upstream: q
    match: { path_prefix: nope, method: "GE T", headers: { "bad header": "v\\n" } }
    model: { response_field: /m, response_header: x-m, aliases: [x], pinned: "" }
    confidence: { source: header, pointer: /p, aggregate: mean, request_logprobs: false }
    threshold: -1
    audit_rate: 2
    cost: { prompt_per_1m: -1, completion_per_1m: .inf }
    review_headers: [authorization, "x y"]
    redact: [nope, "/a~2"]
    rollout:
      sticky_header: "bad header"
      variants:
        - { name: s, version: x, weight: 101, shadow: true, guard: { window_s: 0 } }
        - { name: s, version: x, weight: -1, shadow_rate: 0.5 }
  - { name: e, upstream: q, confidence: { source: max, pointer: /p }, threshold: 0.5, rollout: { variants: [] } }
  - 42
""")
write("rules_compile", "anchors-and-aliases", """
version: 1
upstreams: { u: &up { url: "http://127.0.0.1:1" } }
tasks:
  - &t { name: a, upstream: u, confidence: &c { source: max, pointer: /p }, threshold: 0.5 }
  - { <<: *t, name: b }
  - { name: c, upstream: u, confidence: *c, threshold: 0.5 }
""")
write("rules_compile", "json-rules", json.dumps({
    "version": 1,
    "upstreams": {"u": {"url": "http://127.0.0.1:1"}},
    "tasks": [{"name": "j", "upstream": "u", "threshold": 0.5,
               "confidence": {"source": "json_pointer", "pointer": "/confidence"}}]}))
# NUL separates files: an upstream defined in two files, a task using one from another.
write("rules_compile", "two-files",
      "version: 1\nupstreams: { u: { url: \"http://a\" } }\n\0"
      "version: 1\nupstreams: { u: { url: \"http://b\" } }\n"
      "tasks: [ { name: t, upstream: u, confidence: { source: max, pointer: /p }, threshold: 0.5 } ]\n")
write("rules_compile", "empty", "")
write("rules_compile", "not-a-mapping", "- 1\n- [2, {3: 4}]\n")

# ---------------------------------------------------------------- probe_extract
def openai(logprobs, **extra):
    body = {
        "id": "chatcmpl-123", "object": "chat.completion", "created": 1730000000,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Total: 1,234.50 EUR", "refusal": None},
            "logprobs": {"content": [
                {"token": t, "logprob": lp, "bytes": list(t.encode()),
                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}]}
                for t, lp in logprobs], "refusal": None},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 42, "completion_tokens": len(logprobs), "total_tokens": 42 + len(logprobs)},
        "system_fingerprint": "fp_abc",
    }
    body.update(extra)
    return json.dumps(body, indent=1)

write("probe_extract", "openai-logprobs", openai([("Total", -0.0001), (":", -1.2e-05), (" 1", -0.31), (",", -2.5)]))
write("probe_extract", "openai-certain", openai([("yes", 0.0), ("!", -0.0)]))
write("probe_extract", "openai-positive-logprob", openai([("a", 0.5)]))
write("probe_extract", "openai-null-logprobs",
      json.dumps({"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                             "logprobs": None, "finish_reason": "length"}]}))
write("probe_extract", "openai-refusal",
      json.dumps({"choices": [{"message": {"refusal": "I can't help with that."},
                               "logprobs": {"content": []}, "finish_reason": "stop"}]}))
write("probe_extract", "openai-string-logprob",
      '{"choices":[{"logprobs":{"content":[{"logprob":"-0.1"},{"logprob":-0.2}]}}]}')
write("probe_extract", "openai-two-choices",
      '{"choices":[{"logprobs":{"content":[{"logprob":-0.1}]}},{"logprobs":{"content":[{"logprob":-9e9}]}}]}')
write("probe_extract", "openai-huge-negative", '{"choices":[{"logprobs":{"content":[{"logprob":-1e308},{"logprob":-1.7976931348623157e308}]}}]}')
write("probe_extract", "openai-truncated", openai([("a", -0.1)])[:200])
write("probe_extract", "classifier-probabilities",
      '{"label":"billing","probabilities":[0.05,0.8,0.15],"model":"ticket-router-2026-10-01","confidence":0.8}')
write("probe_extract", "classifier-logits", '{"logits":[2.0,1.0,0.1,-3.5e2],"scores":[[0.2,0.8],[1]]}')
write("probe_extract", "classifier-big-logits", '{"logits":[1000,1000,-1e300,1.5e308]}')
write("probe_extract", "classifier-out-of-range", '{"probabilities":[-0.5,1.2],"confidence":1.0000001}')
write("probe_extract", "classifier-mixed", '{"probabilities":[0.1,null,true,"0.9",{"p":1},[0.5]]}')
write("probe_extract", "classifier-empty", '{"probabilities":[],"logits":{},"confidence":null}')
write("probe_extract", "integers", '{"confidence":1,"probabilities":[0,1,18446744073709551615,-9223372036854775808]}')
write("probe_extract", "nested-score", '{"result":[{"score":0.93,"label":"ok"}],"confidence":"0.9"}')
write("probe_extract", "escapes-and-dupes",
      '{"conf\\u0069dence":0.3,"confidence":0.4,"confidence":0.2,"\\ud83d\\ude00":1}')
write("probe_extract", "trailing-garbage", '{"confidence":0.5} x')
write("probe_extract", "deep-nesting", "[" * 200 + "]" * 200)
write("probe_extract", "number-overflow", '{"confidence":1e400}')
write("probe_extract", "not-json", "<html>502 Bad Gateway</html>")
write("probe_extract", "bom-and-space", b"\xef\xbb\xbf {\"confidence\":0.5}")

# ---------------------------------------------------------------- header_extract
for i, v in enumerate(["0.9", " 1 ", "0", "1.0", "-0", "NaN", "inf", "-inf", "high", "-0.1", "1.01",
                       "1e-400", "0x1p-1", "+.5", "5e-1", "\t0.25\t", "0.9, 0.8", "", "\x80\xff"]):
    write("header_extract", f"value-{i:02}", v.encode("latin-1"))

# ---------------------------------------------------------------- confidence_math
def f64s(*xs):
    return b"".join(struct.pack("<d", x) for x in xs)

write("confidence_math", "logprobs", f64s(-0.1, -0.3, -2.5))
write("confidence_math", "probabilities", f64s(0.2, 0.8, 0.0))
write("confidence_math", "logits-huge", f64s(1000.0, 1000.0, -1e300))
write("confidence_math", "specials", f64s(float("nan"), float("inf"), float("-inf"), -0.0, 5e-324))
write("confidence_math", "neg-inf-only", f64s(float("-inf")))
write("confidence_math", "max-min", f64s(1.7976931348623157e308, -1.7976931348623157e308))
write("confidence_math", "empty", b"")

# ---------------------------------------------------------------- pointer_parse
for name, data in {
    "empty": "",
    "root-slash": "/",
    "logprobs": "/choices/0/logprobs/content\0" + openai([("a", -0.1)]),
    "escapes": "/a~1b/m~0n\0{\"a/b\":{\"m~n\":[0.5,0.6]}}",
    "bad-escape": "/a~2",
    "trailing-tilde": "/a~",
    "no-slash": "model",
    "leading-zero": "/01\0{\"01\":1}",
    "index": "/1\0[0,[0.1,0.2]]",
    "huge-index": "/99999999999999999999999\0[1]",
    "empty-tokens": "//\0{\"\":{\"\":[1]}}",
    "unicode": "/\u00e9\u6f22/\U0001f600\0{\"\u00e9\u6f22\":{\"\U0001f600\":[1]}}",
    "dash": "/-\0[1,2]",
}.items():
    write("pointer_parse", name, data)

# ---------------------------------------------------------------- spool_records
def frame(p):
    return struct.pack("<II", len(p), zlib.crc32(p)) + p

def item(rk, rid, payload):
    return struct.pack("<H", len(rk)) + rk + struct.pack("<H", len(rid)) + rid + payload

one = frame(item(b"review.invoice-extraction", b"0190f5b2-7c1e-7000-8000-000000000001", b'{"confidence":0.42}'))
two = one + frame(item(b"review.t", b"id-2", b"{}"))
write("spool_records", "empty", b"")
write("spool_records", "one", one)
write("spool_records", "two", two)
write("spool_records", "empty-record", frame(b""))
write("spool_records", "torn-header", two + one[:5])
write("spool_records", "torn-payload", two + one[:-3])
write("spool_records", "bad-crc", one[:4] + b"\0\0\0\0" + one[8:] + one)
write("spool_records", "huge-length", struct.pack("<II", 0xFFFFFFFF, 0) + b"abc")
write("spool_records", "zeros", b"\0" * 24)

# ---------------------------------------------------------------- request_pin
# The first byte picks the rollout's variant (its low bit); the rest is the request body.
for name, body in {
    "alias": '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
    "pinned": '{"model":"v-a","logprobs":false,"temperature":0.2}',
    "override": '{"model":"v\\"b","messages":[]}',
    "missing": '{"messages":[{"role":"user","content":"caf\u00e9 \\u00e9"}],"n":1.0e2}',
    "null": '{ "model" : null , "logprobs" : 1 }',
    "empty": '{}',
    "duplicate": '{"model":"x","model":"latest"}',
    "escaped-key": '{"mod\\u0065l":"gpt-4o"}',
    "unknown": '{"model":"v-z"}',
    "number": '{"model":5}',
    "nested": '{"a":{"model":"gpt-4o","logprobs":true},"b":[{"model":1}]}',
    "big-number": '{"model":"gpt-4o","x":1e999}',
    "surrogate": '{"model":"gpt-4o","x":"\\ud800"}',
    "array": '[{"model":"gpt-4o"}]',
}.items():
    for chosen in (0, 1):
        write("request_pin", f"{name}-{chosen}", bytes([chosen]) + body.encode())
