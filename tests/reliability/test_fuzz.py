"""Hostile input: ~100 schemathesis cases from the server's own OpenAPI schema (the 1,000-case run is
`python -m tests.reliability.fuzz`, see RELIABILITY.md), then hand-written cases no schema generator
produces: invalid UTF-8 and lone surrogates, huge and negative numbers, unknown fields, wrong types, empty
messages, 10 MB bodies and prompts longer than the context. Never a 5xx; every error in OpenAI's shape."""

from __future__ import annotations

import json

import httpx
import pytest

from .conftest import API_KEY
from .fuzz import MAX_STREAM_EVENTS, capped, check, load_schema, problems, request_components, run_fuzz

AUTH = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
MSG = [{"role": "user", "content": "To be, or not to be"}]


def test_schemathesis_cases_get_no_5xx_and_openai_errors(keyed_server):
    report = run_fuzz(keyed_server.url, cases=100, api_key=API_KEY, seed=10)
    assert report.failures == []
    assert report.calls >= 100
    assert report.statuses[200] >= 10 and report.statuses[400] >= 10, report.statuses  # both kinds happened
    assert not any(status >= 500 for status in report.statuses)


def test_only_request_schemas_are_capped_so_200_bodies_are_checked_as_published(keyed_server):
    raw = httpx.get(keyed_server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    requests = request_components(raw)
    assert {"ChatCompletionRequest", "CompletionRequest"} <= requests
    assert not requests & {"ChatCompletionResponse", "CompletionResponse", "ChatMessageOut", "ErrorResponse"}
    schemas = capped(raw, ["tiny"])["components"]["schemas"]
    assert "maxLength" not in schemas["ChatMessageOut"]["properties"]["content"]
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["tiny"]


def test_long_streams_are_read_to_their_end(keyed_server):
    """The 1,000-case run's one "stream without [DONE]" was the client's: schemathesis stops reading an event
    stream after 20 events by default, and a stream with more (here `n: 2` with `commit_events`, about 40)
    then looks cut: with that default the same symptom shows. The fuzzer reads the stream to `[DONE]`, and
    reports a stream the client cuts short as such."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = chat(n=2, stream=True, commit_events=True, steps=16, seed=3)
    for cap in (20, MAX_STREAM_EVENTS):
        case = load_schema(keyed_server.url, headers, cap)["/v1/chat/completions"]["POST"].Case(
            body=body, media_type="application/json")
        response, found = check(case, keyed_server.url, headers, timeout=120)
        data = [line for line in response.text.split("\n") if line.startswith("data: ")]
        if cap == 20:
            assert response.stream_cut_short and len(data) == 20 and data[-1] != "data: [DONE]"
            sse = {"x-request-id": "-", "content-type": "text/event-stream"}
            assert problems(200, sse, response.text) == ["stream does not end with data: [DONE]"]
            assert found == ["the client stopped reading the stream before its end (the request timeout)"]
        else:
            assert not response.stream_cut_short and found == [], found
            assert len(data) > 20 and data[-1] == "data: [DONE]"


def raw(body: dict | str | bytes) -> bytes:
    return body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": MSG, "max_tokens": 16} | fields


def text(**fields) -> dict:
    return {"model": "tiny-int4", "prompt": "All the world", "max_tokens": 16} | fields


CASES = {
    # invalid UTF-8 bytes, and JSON escapes of lone surrogates (valid JSON, not text; were 500s)
    "utf8-prompt": ("/v1/completions", b'{"model": "tiny", "prompt": "\xff\xfe\xfa"}', 400),
    "utf8-message": ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", '
                     b'"content": "\xc3\x28"}]}', 400),
    "surrogate-prompt": ("/v1/completions", '{"model": "tiny", "prompt": "a\\ud800"}', 400),
    "surrogate-message": ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", '
                          '"content": "\\udfff"}]}', 400),
    "surrogate-part": ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", '
                       '"content": [{"type": "text", "text": "\\udfff"}]}]}', 400),
    "surrogate-stop": ("/v1/completions", '{"model": "tiny", "prompt": "a", "stop": ["\\ud800"]}', 400),
    "surrogate-suffix": ("/v1/completions", '{"model": "tiny", "prompt": "a", "suffix": "\\ud800"}', 400),
    # huge numbers
    "huge-max-tokens": ("/v1/chat/completions", chat(max_tokens=10**30), 400),
    "huge-steps": ("/v1/completions", text(steps=10**12), 400),  # was a MemoryError 500
    "huge-block": ("/v1/completions", text(block_length=10**12), 400),
    "huge-seed": ("/v1/completions", text(seed=2**64), 400),
    "huge-n": ("/v1/chat/completions", chat(n=10**6), 400),
    "huge-token-id": ("/v1/completions", text(prompt=[10**40]), 400),
    "huge-stop-id": ("/v1/completions", text(stop_token_ids=[10**20]), 400),
    "inf-temperature": ("/v1/completions", b'{"model": "tiny", "prompt": "a", "temperature": 1e999}', 400),
    "nan-temperature": ("/v1/completions", b'{"model": "tiny", "prompt": "a", "temperature": NaN}', 400),
    "inf-cfg": ("/v1/completions", b'{"model": "tiny", "prompt": "a", "cfg_scale": Infinity}', 400),
    "tiny-alg-temp": ("/v1/completions", text(remasking="entropy", alg_temp=1e-320), 200),  # was a NaN 500
    "tiny-alg-temp-32": ("/v1/completions", text(remasking="maskgit_plus", alg_temp=1e-40), 200),
    "huge-temperature": ("/v1/completions", text(temperature=1e308, seed=1), 200),
    # negative numbers
    "negative-max-tokens": ("/v1/chat/completions", chat(max_tokens=-5), 400),
    "negative-n": ("/v1/chat/completions", chat(n=-1), 400),
    "negative-seed": ("/v1/completions", text(seed=-1), 400),
    "negative-temperature": ("/v1/completions", text(temperature=-0.5), 400),
    "negative-top-p": ("/v1/completions", text(top_p=-0.5), 400),
    "zero-steps": ("/v1/completions", text(steps=0), 400),
    "negative-token-id": ("/v1/completions", text(prompt=[-1]), 400),
    # unknown fields, at the top and nested
    "unknown-top": ("/v1/chat/completions", chat(frobnicate=1), 400),
    "unknown-nested": ("/v1/chat/completions", chat(stream=True, stream_options={"frob": 1}), 400),
    "unknown-in-message": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "a", "x": 1}]),
                           400),
    # wrong types
    "model-int": ("/v1/completions", text(model=5), 400),
    "messages-string": ("/v1/chat/completions", chat(messages="hi"), 400),
    "prompt-object": ("/v1/completions", text(prompt={"a": 1}), 400),
    "max-tokens-string": ("/v1/completions", text(max_tokens="ten"), 400),
    "stop-int": ("/v1/completions", text(stop=5), 400),
    "n-string": ("/v1/chat/completions", chat(n="2"), 400),  # was coerced to 2 (pydantic's lax mode)
    "stream-string": ("/v1/completions", text(stream="true"), 400),
    "max-tokens-float": ("/v1/completions", text(max_tokens=16.0), 400),
    "temperature-string": ("/v1/chat/completions", chat(temperature="0.5"), 400),
    "temperature-int": ("/v1/chat/completions", chat(temperature=1, seed=1), 200),  # an integer is a number
    "model-null": ("/v1/completions", text(model=None), 400),
    "prompt-ids-bool": ("/v1/completions", text(prompt=[True]), 400),
    "role-unknown": ("/v1/chat/completions", chat(messages=[{"role": "robot", "content": "a"}]), 400),
    "body-array": ("/v1/completions", b"[1, 2, 3]", 400),
    "body-null": ("/v1/completions", b"null", 400),
    "body-truncated": ("/v1/completions", b'{"model": "tiny", "prompt": "a"', 400),
    # empty
    "empty-body": ("/v1/completions", b"", 400),
    "empty-object": ("/v1/chat/completions", b"{}", 400),
    "empty-messages": ("/v1/chat/completions", chat(messages=[]), 400),
    "empty-message": ("/v1/chat/completions", chat(messages=[{}]), 400),
    "empty-prompt": ("/v1/completions", text(prompt=""), 400),
    "empty-prompt-ids": ("/v1/completions", text(prompt=[]), 400),
    "empty-content": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": ""}]), 200),
    "empty-content-parts": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": []}]), 200),
    # longer than the fixture models' 512-token context
    "long-prompt": ("/v1/completions", text(prompt="word " * 5000), 400),
    "long-prompt-ids": ("/v1/completions", text(prompt=list(range(1, 500))), 400),
    "long-message": ("/v1/chat/completions", chat(messages=[{"role": "user", "content": "word " * 5000}]),
                     400),
    "long-suffix": ("/v1/completions", text(suffix="word " * 5000), 400),
}


@pytest.mark.parametrize("path,body,status", CASES.values(), ids=CASES.keys())
def test_hand_written_hostile_input(keyed_server, path, body, status):
    r = httpx.post(keyed_server.url + path, content=raw(body), headers=AUTH, timeout=120)
    assert r.status_code == status, r.text[:300]
    schema = httpx.get(keyed_server.url + "/openapi.json", headers=AUTH, timeout=30).json()
    assert problems(r.status_code, r.headers, r.text, schema["paths"][path]["post"]["responses"]) == []


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_prompt_beyond_the_context_names_the_lengths(keyed_server, path):
    body = text(prompt="word " * 600) if path == "/v1/completions" else chat(
        messages=[{"role": "user", "content": "word " * 600}])
    error = httpx.post(keyed_server.url + path, json=body, headers=AUTH, timeout=60).json()["error"]
    assert error["code"] == "context_length_exceeded" and "context length 512" in error["message"]


def test_ten_megabyte_bodies_are_413_with_and_without_content_length(keyed_server):
    big = b'{"model": "tiny", "prompt": "' + b"x" * (10 << 20) + b'"}'
    r = httpx.post(keyed_server.url + "/v1/completions", content=big, headers=AUTH, timeout=120)
    assert r.status_code == 413 and problems(r.status_code, r.headers, r.text) == []

    def chunked():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    r = httpx.post(keyed_server.url + "/v1/completions", content=chunked(), headers=AUTH, timeout=120)
    assert r.status_code == 413 and problems(r.status_code, r.headers, r.text) == []
    after = httpx.post(keyed_server.url + "/v1/completions", json=text(), headers=AUTH, timeout=60)
    assert after.status_code == 200
