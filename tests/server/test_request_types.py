"""Wrong JSON types are 400s naming the parameter, as OpenAI answers them, never coerced: `"n": "2"` is not
2 and `"stream": "true"` is not true. An integer is a number, so `"temperature": 1` stays valid.

The app is built without loading its models: validation runs before the handler, so a body that passes it
reaches the handler and is answered 503 (`loading`), and one that fails is a 400 at once. No model forward.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from inkwell.server.app import create_app
from inkwell.server.protocol import ChatCompletionRequest, CompletionRequest
from inkwell.server.settings import ServerSettings

MSG = [{"role": "user", "content": "hi"}]
ROUTES = {"/v1/chat/completions": {"model": "tiny", "messages": MSG},
          "/v1/completions": {"model": "tiny", "prompt": "All the world"}}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = create_app(ServerSettings(models=(("tiny", "unused"),)), engine_factory=None)
    return TestClient(app)  # no `with`: the lifespan (model loading) never runs


# (field, value, param, expected, got): sent on both routes
WRONG = [
    ("n", "2", "n", "an integer", "a string"),
    ("max_tokens", "16", "max_tokens", "an integer", "a string"),
    ("max_tokens", 16.0, "max_tokens", "an integer", "a decimal number"),
    ("seed", 1.5, "seed", "an integer", "a decimal number"),
    ("temperature", "0.5", "temperature", "a number", "a string"),
    ("top_p", [0.5], "top_p", "a number", "an array"),
    ("stream", "true", "stream", "a boolean", "a string"),
    ("stream", 1, "stream", "a boolean", "an integer"),
    ("n", True, "n", "an integer", "a boolean"),
    ("temperature", False, "temperature", "a number", "a boolean"),
    ("ignore_eos", "yes", "ignore_eos", "a boolean", "a string"),
    ("model", 5, "model", "a string", "an integer"),
    ("model", ["tiny"], "model", "a string", "an array"),
    ("model", None, "model", "a string", "null"),
    ("user", 123, "user", "a string", "an integer"),
    ("user", {"id": 1}, "user", "a string", "an object"),
    ("stop", 5, "stop", "one of a string or an array", "an integer"),
    ("stop", ["a", 5], "stop[1]", "a string", "an integer"),
    ("stop", [None], "stop[0]", "a string", "null"),
    ("stop_token_ids", ["7"], "stop_token_ids[0]", "an integer", "a string"),
    ("stop_token_ids", [7.0], "stop_token_ids[0]", "an integer", "a decimal number"),
    ("steps", "8", "steps", "an integer", "a string"),
    ("cfg_scale", "1", "cfg_scale", "a number", "a string"),
    ("stream_options", "yes", "stream_options", "an object", "a string"),
]


def _post(client: TestClient, path: str, **fields):
    return client.post(path, json=ROUTES[path] | fields)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("field,value,param,expected,got", WRONG, ids=[f"{w[0]}={w[1]!r}" for w in WRONG])
def test_wrong_types_are_400_naming_the_parameter(client, path, field, value, param, expected, got):
    fields = {field: value} | ({"stream": True} if field == "stream_options" else {})
    r = _post(client, path, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error == {"message": f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
                     "type": "invalid_request_error", "param": param, "code": "invalid_type"}


@pytest.mark.parametrize("path,fields,param,expected,got", [
    ("/v1/chat/completions", {"messages": "hi"}, "messages", "an array", "a string"),
    ("/v1/chat/completions", {"messages": [5]}, "messages[0]", "an object", "an integer"),
    ("/v1/chat/completions", {"messages": None}, "messages", "an array", "null"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "one of a string or an array", "an integer"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, "messages[0].content",
     "one of a string or an array", "null"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text", "a string", "an integer"),
    ("/v1/chat/completions", {"messages": [{"role": ["user"], "content": "a"}]}, "messages[0].role", None,
     None),
    ("/v1/chat/completions", {"max_completion_tokens": "8"}, "max_completion_tokens", "an integer",
     "a string"),
    ("/v1/completions", {"prompt": 5}, "prompt", "one of a string or an array", "an integer"),
    ("/v1/completions", {"prompt": None}, "prompt", "one of a string or an array", "null"),
    ("/v1/completions", {"prompt": [1, "2"]}, "prompt[1]", "an integer", "a string"),
    ("/v1/completions", {"prompt": [True]}, "prompt[0]", "an integer", "a boolean"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "prompt[0]", "an integer", "a string"),
    ("/v1/completions", {"suffix": 1}, "suffix", "a string", "an integer"),
    ("/v1/completions", {"suffix": ["x"]}, "suffix", "a string", "an array"),
])
def test_wrong_types_of_route_specific_fields(client, path, fields, param, expected, got):
    r = _post(client, path, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if expected is not None:  # a Literal (`role`) answers with its allowed values instead
        assert error["message"] == f"Invalid type for '{param}': expected {expected}, but got {got} instead."


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("fields", [
    {"temperature": 1}, {"top_p": 1}, {"cfg_scale": 0}, {"threshold": 1}, {"temperature": 0.5},
    {"n": None}, {"stop": None}, {"seed": None}, {"max_tokens": 16}, {"stream": False},
    {"stream": True, "stream_options": {"include_usage": True}}, {"presence_penalty": 0},
], ids=repr)
def test_right_types_pass_validation(client, path, fields):
    """An integer where a number is expected, and null for an optional field, pass validation (the handler
    answers 503 because this app loads no model)."""
    r = _post(client, path, **fields)
    assert r.status_code == 503 and r.json()["error"]["code"] == "loading", r.text


def test_integers_become_floats_and_nothing_is_coerced_in_the_models():
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "temperature": 1, "top_p": 1})
    assert type(chat.temperature) is float and type(chat.top_p) is float
    text = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2], "n": 2, "stream": True})
    assert text.prompt == [1, 2] and text.n == 2 and text.stream is True


def test_several_wrong_fields_report_one_and_unknown_nested_fields_stay_unsupported(client):
    r = _post(client, "/v1/chat/completions", n="2", stream="yes")
    assert r.json()["error"]["param"] in ("n", "stream")
    parts = [{"type": "text", "text": "a", "cache_control": {}}]
    r = _post(client, "/v1/chat/completions", messages=[{"role": "user", "content": parts}])
    assert r.status_code == 400
    error, param = r.json()["error"], "messages[0].content[0].cache_control"
    assert (error["message"], error["param"], error["code"]) == (f"unsupported: {param}", param,
                                                                 "unsupported_field")
