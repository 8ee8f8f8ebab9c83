"""A real client through triage: the official `openai` Python SDK, unchanged, with its
base_url pointed at triage. Driven by tests/openai_sdk.rs.

    openai_client.py BASE_URL SCENARIO

BASE_URL is triage's data plane with the API prefix (e.g. http://127.0.0.1:PORT/v1).
SCENARIO is one of: pass, stream_pass, hold, stream_hold, refusal. The user message
steers the test upstream: "unclear" -> low confidence, "refuse" -> a refusal.

Prints exactly one JSON line on stdout (what the SDK surfaced) and exits 0; an assertion
that fails or an exception the SDK raised exits non-zero with a traceback on stderr.
"""

import json
import sys

import openai

MODEL = "gpt-4o"  # an alias: triage pins it


def messages(text):
    return [{"role": "user", "content": text}]


def triage_headers(headers):
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-triage-")}


def scenario_pass(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("What is the total?")
    )
    completion = raw.parse()
    return {
        "status": raw.status_code,
        "content": completion.choices[0].message.content,
        "model": completion.model,
        "finish_reason": completion.choices[0].finish_reason,
        "logprobs": [t.logprob for t in completion.choices[0].logprobs.content],
        "decision": raw.headers.get("x-triage-decision"),
        "headers": triage_headers(raw.headers),
    }


def consume_stream(stream):
    """Iterate a `Stream[ChatCompletionChunk]` as any SDK user would."""
    deltas, refusals, chunks, finish = [], [], 0, None
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            if choice.delta.content is not None:
                deltas.append(choice.delta.content)
            if getattr(choice.delta, "refusal", None) is not None:
                refusals.append(choice.delta.refusal)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return {"deltas": deltas, "refusal_deltas": refusals, "chunks": chunks, "finish_reason": finish}


def scenario_stream_pass(client):
    # The plain call a streaming caller writes; the HTTP response is on `stream.response`.
    stream = client.chat.completions.create(
        model=MODEL, messages=messages("What is the total?"), stream=True
    )
    out = consume_stream(stream)
    out.update(
        status=stream.response.status_code,
        content_type=stream.response.headers.get("content-type"),
        content="".join(out["deltas"]),
        decision=stream.response.headers.get("x-triage-decision"),
        headers=triage_headers(stream.response.headers),
    )
    return out


def scenario_hold(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("This one is unclear.")
    )
    body = raw.http_response.json()
    # What a caller that ignores the status gets (plain `create()` returns the same object as
    # `.parse()`): a ChatCompletion built without validation. `choices` is None, so reading
    # an output fails loudly; the 202's fields are there as extra attributes.
    completion = raw.parse()
    try:
        naive = {"content": completion.choices[0].message.content}
    except Exception as exc:  # noqa: BLE001 - we report what the SDK does
        naive = {"error": type(exc).__name__}
    naive["review_id_attr"] = getattr(completion, "review_id", None)
    naive["status_attr"] = getattr(completion, "status", None)
    return {
        "status": raw.status_code,
        "body": body,
        "decision": raw.headers.get("x-triage-decision"),
        "headers": triage_headers(raw.headers),
        "naive_parse": naive,
    }


def scenario_stream_hold(client):
    # The plain streaming call. The SDK never looks at the status of a 2xx stream or at its
    # content type: it feeds the body to its SSE decoder. Read the body first (so it can be
    # shown), then iterate the Stream as a caller would; it iterates the same bytes.
    stream = client.chat.completions.create(
        model=MODEL, messages=messages("This one is unclear."), stream=True
    )
    response = stream.response
    raw = response.read()
    out = consume_stream(stream)
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    out.update(
        status=response.status_code,
        content_type=response.headers.get("content-type"),
        body=body,
        decision=response.headers.get("x-triage-decision"),
        headers=triage_headers(response.headers),
    )
    assert out["deltas"] == [], f"withheld output reached the client: {out['deltas']!r}"
    assert out["chunks"] == 0, f"the SDK yielded {out['chunks']} chunks for a held stream"
    return out


def scenario_refusal(client):
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages("Please refuse this.")
    )
    completion = raw.parse()
    message = completion.choices[0].message
    return {
        "status": raw.status_code,
        "refusal": message.refusal,
        "content": message.content,
        "decision": raw.headers.get("x-triage-decision"),
        "headers": triage_headers(raw.headers),
    }


SCENARIOS = {
    "pass": scenario_pass,
    "stream_pass": scenario_stream_pass,
    "hold": scenario_hold,
    "stream_hold": scenario_stream_hold,
    "refusal": scenario_refusal,
}


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        sys.exit(f"usage: {sys.argv[0]} BASE_URL {{{'|'.join(SCENARIOS)}}}")
    base_url, name = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=30.0)
    out = SCENARIOS[name](client)
    out["scenario"] = name
    out["sdk_version"] = openai.__version__
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
