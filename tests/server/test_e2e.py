"""End-to-end: a real `inkwell-serve` on loopback serving an FP model (`tiny`) and its int4 version
(`tiny-int4`), driven with the official `openai` client and with plain httpx.

Models have random weights, so tests that look at text sample with temperature 1 and a seed (greedy
decoding of random weights repeats one token); canvases are 16-32 tokens so the file runs in about a
minute on a shared 2-core CPU.
"""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import openai
import pytest
from inkwell.engine import load_tokenizer, special_ids

from .conftest import API_KEY
from .sse import post_stream

MODELS = ["tiny", "tiny-int4"]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MESSAGES = [{"role": "user", "content": "To be, or not to be"}]
SAMPLED = {"temperature": 1.0, "seed": 11}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    return load_tokenizer(model_dirs[0])


@pytest.fixture(scope="module")
def stop_ids(model_dirs, tokenizer) -> set[int]:
    return set(special_ids(model_dirs[0], tokenizer).stop_ids)


def replay(events: list[dict], index: int, stop_ids: set[int]) -> list[int]:
    """The answer's token ids rebuilt from the commit events of one choice, cut at the first stop id."""
    canvas: dict[int, int] = {}
    for e in events:
        if e.get("inkwell") and e["choices"] and e["choices"][0]["index"] == index:
            for c in e["inkwell"]["commits"]:
                assert c["index"] not in canvas, "a position was committed twice"
                canvas[c["index"]] = c["token_id"]
    ids = []
    for i in range(len(canvas)):
        if canvas[i] in stop_ids:
            break
        ids.append(canvas[i])
    return ids


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


# ---- routes -------------------------------------------------------------------------------------------


def test_health_models_and_request_ids(server, client):
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.headers["x-request-id"]
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == set(MODELS)
    assert models["tiny-int4"].model_extra["quantization"] == "int4"
    assert models["tiny"].model_extra["quantization"] is None
    echoed = httpx.get(server.url + "/v1/models", headers=AUTH | {"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"


def test_metrics_are_prometheus_with_model_label(server, client):
    client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16)
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds", "num_requests_running", "num_requests_waiting",
                 "tokens_committed_per_step", "forward_passes_per_request"):
        assert f"inkwell:{name}" in text, name
    assert 'inkwell:e2e_request_latency_seconds_count{model_name="tiny"}' in text
    assert 'inkwell:forward_passes_per_request_sum{model_name="tiny"} ' in text


def test_index_placeholder_needs_no_key(server):
    assert httpx.get(server.url + "/").status_code == 200


# ---- chat and completions, both models, streaming and not ---------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_chat_streamed_equals_non_streamed(client, model, tokenizer):
    full = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, **SAMPLED)
    choice = full.choices[0]
    assert full.object == "chat.completion" and full.model == model
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert full.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 0 < full.usage.completion_tokens <= 24 or choice.finish_reason == "stop"

    stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True}, **SAMPLED)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


@pytest.mark.parametrize("model", MODELS)
def test_completions_streamed_equals_non_streamed(client, model):
    full = client.completions.create(model=model, prompt="Now is the winter", max_tokens=16, **SAMPLED)
    assert full.object == "text_completion" and full.choices[0].finish_reason in ("stop", "length")
    stream = client.completions.create(model=model, prompt="Now is the winter", max_tokens=16, stream=True,
                                       **SAMPLED)
    chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text


def test_fp_and_int4_are_different_models(server):
    """Same request: the int4 weights give different token probabilities than FP."""
    body = {"model": "tiny", "prompt": "All the world", "max_tokens": 16, "commit_events": True}
    conf = {}
    for model in MODELS:
        events = post_stream(server.url, "/v1/completions", body | {"model": model}, AUTH).events
        conf[model] = [c["confidence"] for e in events if e.get("inkwell") for c in e["inkwell"]["commits"]]
    assert len(conf["tiny"]) == len(conf["tiny-int4"]) == 16
    assert conf["tiny"] != conf["tiny-int4"]


# ---- the SSE wire format and commit events ----------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_commit_events_replay_to_streamed_text(server, model, tokenizer, stop_ids):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 32, "commit_events": True,
            "stream_options": {"include_usage": True}, **SAMPLED}
    s = post_stream(server.url, "/v1/chat/completions", body, AUTH)
    assert s.status == 200 and s.done and s.headers["x-request-id"]
    assert "\r" not in s.raw and s.raw.endswith("data: [DONE]\n\n")
    assert not any(line.startswith("event:") for line in s.raw.split("\n")), "no named SSE events"
    steps = [e for e in s.events if e.get("inkwell")]
    assert steps and all(set(e["inkwell"]) == {"step", "block", "commits", "masked_remaining"} for e in steps)
    assert [e["inkwell"]["step"] for e in steps] == list(range(len(steps)))
    commit = steps[0]["inkwell"]["commits"][0]
    assert set(commit) == {"index", "token_id", "text", "confidence", "margin"}
    ids = replay(s.events, 0, stop_ids)
    assert decode(tokenizer, ids) == s.text_by_choice[0]
    no_choices = [e for e in s.events if not e.get("choices")]
    assert no_choices == [s.events[-1]] and "usage" in no_choices[0]
    assert no_choices[0]["usage"]["completion_tokens"] == len(ids)


def test_n_two_gives_two_independent_choices(server, client, stop_ids, tokenizer):
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, n=2, **SAMPLED)
    assert [c.index for c in full.choices] == [0, 1]
    assert full.choices[0].message.content != full.choices[1].message.content
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 16, "n": 2, "commit_events": True, **SAMPLED}
    s = post_stream(server.url, "/v1/chat/completions", body, AUTH)
    assert set(s.finish_reasons) == {0, 1}
    for i in (0, 1):
        assert s.text_by_choice[i] == full.choices[i].message.content
        assert decode(tokenizer, replay(s.events, i, stop_ids)) == s.text_by_choice[i]


def test_stop_string_cuts_before_it(client):
    base = client.completions.create(model="tiny", prompt="Friends, Romans", max_tokens=32, **SAMPLED)
    text = base.choices[0].text
    assert len(text) >= 6, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(model="tiny", prompt="Friends, Romans", max_tokens=32,
                                    stop=[stop, "\x00"], **SAMPLED)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt="Friends, Romans", max_tokens=32, stop=stop,
                                         stream=True, **SAMPLED)
    assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_suffix_is_infilled_between_prompt_and_suffix(server, tokenizer):
    """The canvas sits between prompt and suffix: the suffix is in the prompt tokens, and the model sees it
    (the first step's confidences change with the suffix)."""
    body = {"model": "tiny", "prompt": "To be, or not", "max_tokens": 16, "commit_events": True,
            "stream_options": {"include_usage": True}}
    plain = post_stream(server.url, "/v1/completions", body, AUTH)
    infill = post_stream(server.url, "/v1/completions", body | {"suffix": " that is the question"}, AUTH)
    n_suffix = len(tokenizer(" that is the question", add_special_tokens=False)["input_ids"])
    prompt_tokens = lambda s: s.events[-1]["usage"]["prompt_tokens"]
    assert prompt_tokens(infill) == prompt_tokens(plain) + n_suffix
    first = lambda s: [c["confidence"] for c in s.events[0]["inkwell"]["commits"]]
    assert first(plain) != first(infill)


def test_max_tokens_rounds_the_canvas_up_and_cuts_the_output(server, stop_ids):
    body = {"model": "tiny", "prompt": "All the world", "max_tokens": 20, "block_length": 16,
            "commit_events": True, "ignore_eos": True, **SAMPLED}
    s = post_stream(server.url, "/v1/completions", body, AUTH)
    indices = {c["index"] for e in s.events if e.get("inkwell") for c in e["inkwell"]["commits"]}
    assert max(indices) >= 20, "the canvas is rounded up to whole blocks (32)"
    assert s.finish_reasons == {0: "length"}


def test_concurrent_streams_all_complete(server, stop_ids, tokenizer):
    bodies = [{"model": MODELS[i % 2], "messages": [{"role": "user", "content": f"line {i}"}],
               "max_tokens": 16, "commit_events": True, "temperature": 1.0, "seed": i} for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streams = list(pool.map(lambda b: post_stream(server.url, "/v1/chat/completions", b, AUTH), bodies))
    for s in streams:
        assert s.status == 200 and s.done and s.finish_reasons[0] in ("stop", "length")
        assert decode(tokenizer, replay(s.events, 0, stop_ids)) == s.text_by_choice[0]
    alone = post_stream(server.url, "/v1/chat/completions", bodies[0], AUTH)
    assert replay(alone.events, 0, stop_ids) == replay(streams[0].events, 0, stop_ids)


# ---- errors in OpenAI's shape -------------------------------------------------------------------------


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def post(server, path: str, body, headers: dict | None = None, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json"} | (AUTH if headers is None else headers)
    return httpx.post(server.url + path, content=content, timeout=60, headers=headers, **kw)


@pytest.mark.parametrize("field,value", [("logprobs", True), ("presence_penalty", 0.5), ("tools", [{"x": 1}]),
                                         ("frobnicate", 1)])
def test_unsupported_fields_are_400_naming_them(server, field, value):
    body = {"model": "tiny", "messages": MESSAGES, field: value}
    err = _error(post(server, "/v1/chat/completions", body), 400)
    assert err["message"] == f"unsupported: {field}" and err["param"] == field


def test_neutral_values_of_unsupported_fields_are_accepted(client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, presence_penalty=0,
                                         frequency_penalty=0, logprobs=False)
    assert out.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("body,param", [
    ({"model": "tiny", "messages": MESSAGES, "temperature": -1}, "temperature"),  # FastAPI would say 422
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 1000}, "max_tokens"),  # beyond the context
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 32, "block_length": 8, "steps": 3}, None),
    ({"model": "tiny", "messages": MESSAGES, "remasking": "best"}, "remasking"),
    ({"model": "tiny", "messages": MESSAGES, "stop_token_ids": [511]}, "stop_token_ids"),
])
def test_bad_input_is_400(server, body, param):
    err = _error(post(server, "/v1/chat/completions", body), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_invalid_json_is_400(server):
    _error(post(server, "/v1/completions", b"{not json"), 400)
    _error(post(server, "/v1/completions", b"[1, 2]"), 400)


def test_auth_401_everywhere_but_health_and_index(server, client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        body = {"model": "tiny", "messages": MESSAGES}
        err = _error(post(server, "/v1/chat/completions", body, headers), 401)
        assert err["type"] == "authentication_error"
        assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401
        assert httpx.get(server.url + "/metrics", headers=headers).status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert API_KEY not in server.log.read_text()


def test_unknown_model_is_404(server, client):
    err = _error(post(server, "/v1/completions", {"model": "gpt-4", "prompt": "hi"}), 404)
    assert err["param"] == "model" and "tiny" in err["message"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MESSAGES)
    _error(httpx.get(server.url + "/v2/nothing", headers=AUTH), 404)


def test_oversized_body_is_413(server):
    big = {"model": "tiny", "prompt": "x" * (2 << 20)}
    _error(post(server, "/v1/completions", big), 413)

    def chunked():  # no Content-Length: the limit applies while reading
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = httpx.post(server.url + "/v1/completions", content=chunked(), timeout=60,
                   headers=AUTH | {"content-type": "application/json"})
    _error(r, 413)
