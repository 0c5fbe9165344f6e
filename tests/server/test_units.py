"""Fast unit tests of the server's pieces: the wire schema, the answer text of a choice, request -> params
conversion, the exception mapping and the command line. No server, no model forward."""

from __future__ import annotations

import pytest
from fastapi.exceptions import RequestValidationError
from inkwell.engine.engine import DeadlineExceeded, QueueFull
from inkwell.server import cli
from inkwell.server.choice import ChoiceText
from inkwell.server.errors import Unavailable, to_api_error
from inkwell.server.models import ServedModel
from inkwell.server.protocol import ChatCompletionRequest, CompletionRequest
from inkwell.server.serving import diffusion_params
from inkwell.server.settings import DEFAULT_MODELS, ServerSettings
from inkwell.server.state import ServerState
from pydantic import ValidationError

MSG = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG} | fields)


# ---- protocol -----------------------------------------------------------------------------------------


def test_unknown_and_non_neutral_fields_are_rejected_by_name():
    cases = [("logprobs", True), ("presence_penalty", 0.1), ("response_format", {"type": "json"})]
    for field, value in cases:
        with pytest.raises(ValidationError) as info:
            chat(**{field: value})
        assert to_api_error(info.value).message == f"unsupported: {field}"


def test_neutral_values_and_nulls_are_accepted():
    req = chat(presence_penalty=0, frequency_penalty=0.0, logprobs=False, tools=[], top_logprobs=None)
    assert req.n == 1
    with pytest.raises(ValidationError):
        chat(presence_penalty=False)  # a bool is not the neutral number


def test_text_parts_and_lengths():
    req = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                      "text": "b"}]}],
               max_completion_tokens=7)
    assert req.messages[0].text == "ab" and req.answer_tokens == 7
    with pytest.raises(ValidationError):
        chat(max_tokens=5, max_completion_tokens=7)
    with pytest.raises(ValidationError):
        chat(stream_options={"include_usage": True})  # needs stream


def test_completion_prompt_is_text_or_token_ids():
    assert CompletionRequest(model="m", prompt=[1, 2], suffix="x").prompt == [1, 2]
    for bad in ("", [], [["a"]], ["a", "b"]):
        with pytest.raises(ValidationError):
            CompletionRequest(model="m", prompt=bad)


def test_validation_errors_become_400_not_422():
    err = to_api_error(RequestValidationError([{"type": "greater_than_equal", "loc": ("body", "temperature"),
                                                "msg": "Input should be greater than or equal to 0"}]))
    assert err.status == 400 and err.param == "temperature" and "temperature" in err.message


def test_engine_errors_map_to_429_and_504():
    full = to_api_error(QueueFull("64 waiting"))
    assert full.status == 429 and full.headers["Retry-After"] == "1"
    assert to_api_error(DeadlineExceeded("late")).status == 504
    assert to_api_error(ValueError("steps must be ...")).status == 400
    internal = to_api_error(RuntimeError("boom"))
    assert internal.status == 500 and "boom" not in internal.message


# ---- a choice's text ----------------------------------------------------------------------------------

CHARS = {i: c for i, c in enumerate("abcdefghij")}  # token i decodes to one letter
STOP = 99


def decode(ids: list[int]) -> str:
    return "".join(CHARS.get(i, "") for i in ids)


def test_text_is_released_only_from_the_contiguous_final_prefix():
    c = ChoiceText(canvas=6, max_tokens=6, stop_ids=[STOP], stop_strings=[], decode=decode)
    assert c.commit([(2, 2)]) == ""  # position 0 still masked
    assert c.commit([(0, 0)]) == "a"
    assert c.commit([(1, 1)]) == "bc"
    assert c.commit([(4, STOP), (3, 3)]) == "d" and c.finish_reason == "stop"
    assert c.completion_tokens == 4 and c.text == "abcd"


def test_max_tokens_cuts_a_rounded_canvas():
    c = ChoiceText(canvas=8, max_tokens=5, stop_ids=[STOP], stop_strings=[], decode=decode)
    assert c.commit([(i, i) for i in range(7)]) == "abcde" and c.finish_reason == "length"
    assert c.completion_tokens == 5


def test_stop_strings_are_held_back_and_cut():
    c = ChoiceText(canvas=8, max_tokens=8, stop_ids=[], stop_strings=["cde"], decode=decode)
    assert c.commit([(0, 0), (1, 1), (2, 2)]) == "ab"  # "c" may begin "cde": held
    assert c.commit([(3, 3)]) == ""
    assert c.commit([(4, 4)]) == "" and c.finish_reason == "stop" and c.text == "ab"
    c = ChoiceText(canvas=4, max_tokens=4, stop_ids=[], stop_strings=["cx"], decode=decode)
    assert c.commit([(0, 0), (1, 1), (2, 2)]) == "ab"
    assert c.commit([(3, 3)]) == "cd" and c.finish_reason == "length"  # "c" released once it cannot stop


# ---- request -> DiffusionParams -----------------------------------------------------------------------


class _Config:
    model_type = "llada"
    max_length = 512


class _Model:
    config = _Config()


def served(defaults: dict | None = None) -> ServedModel:
    return ServedModel(name="m", source="m", model=_Model(), tokenizer=None, mask_id=511, eos_id=510,
                       stop_ids=(510,), defaults=defaults or {})


def test_defaults_are_rounded_not_rejected():
    p = diffusion_params(chat(max_tokens=20), 20, served())
    assert (p.gen_length, p.block_length, p.steps, p.remasking) == (32, 32, 32, "low_confidence")
    p = diffusion_params(chat(max_tokens=20, block_length=8), 20, served())
    assert (p.gen_length, p.steps) == (24, 24)
    p = diffusion_params(chat(max_tokens=64, steps=3), 64, served())  # default block_length 32: 2 blocks
    assert (p.gen_length, p.steps) == (64, 4)
    p = diffusion_params(chat(), None, served({"gen_length": 64, "steps": 32, "block_length": 16,
                                               "temperature": 0.5}))
    assert (p.gen_length, p.steps, p.block_length, p.temperature) == (64, 32, 16, 0.5)
    assert diffusion_params(chat(temperature=0), None, served({"temperature": 0.5})).temperature == 0


def test_explicit_inconsistent_values_are_rejected():
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        diffusion_params(chat(max_tokens=32, block_length=8, steps=3), 32, served())
    with pytest.raises(ValueError, match="alg_temp"):
        diffusion_params(chat(remasking="low_confidence", alg_temp=0.5), None, served())


def test_a_model_that_fails_to_load_is_a_503_naming_the_reason(tmp_path):
    state = ServerState(ServerSettings(models=(("m", str(tmp_path / "missing")),)), engine_factory=None)
    state._load_all()
    assert state.phase == "failed"
    with pytest.raises(Unavailable) as info:
        state.model("m")
    assert info.value.status == 503 and "missing" in info.value.message and info.value.code == "load_failed"


# ---- command line ------------------------------------------------------------------------------------


def test_cli_flags_come_from_the_settings(monkeypatch):
    monkeypatch.setenv("INKWELL_API_KEY", "from-env")
    s = cli.settings_from_args(["--model", "a=tiny-llada", "--model", "b=/x", "--port", "9000",
                                "--request-timeout", "2.5", "--max-tokens-per-batch", "4096"])
    assert s.models == (("a", "tiny-llada"), ("b", "/x")) and s.port == 9000 and s.request_timeout == 2.5
    assert s.api_key == "from-env" and s.max_tokens_per_batch == 4096 and s.cors_origins == ()
    assert cli.settings_from_args(["--api-key", "flag"]).api_key == "flag"
    assert cli.settings_from_args([]).models == DEFAULT_MODELS
    with pytest.raises(ValueError):
        ServerSettings(models=(("a", "x"), ("a", "y")))


def test_default_models_missing_is_a_clear_error(monkeypatch, capsys):
    def missing(name):
        raise FileNotFoundError(name)

    monkeypatch.setattr("inkwell.engine.loader.resolve_model_path", missing)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "inkwell-tiny-int4" in err and "--model NAME=PATH_OR_NAME" in err
    assert cli.main(["--model", "bad="]) == 2
