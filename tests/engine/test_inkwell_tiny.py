"""The embedded default model `inkwell-tiny`: ships in the package, loads offline, chats and stops."""

import json

import pytest
import torch
from inkwell.engine import DiffusionParams, generate, load_model, load_tokenizer, special_ids
from inkwell.engine.loader import resolve_model_path


@pytest.fixture(scope="module")
def tiny():
    return load_model("inkwell-tiny"), load_tokenizer("inkwell-tiny")


def test_ships_inside_the_package_with_its_card_and_small():
    path = resolve_model_path("inkwell-tiny")
    assert "inkwell" in str(path) and (path / "MODEL_CARD.md").is_file()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "heldout/test.json", "training_curve.png"):
        assert (path / name).is_file(), name
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) < 25 * 2**20
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llada" and config["d_model"] % 128 == 0
    assert config["mlp_hidden_size"] % 128 == 0 and config["torch_dtype"] == "float16"


def test_loads_offline_as_float32_on_cpu(tiny):
    model, _ = tiny
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_tokenizer_round_trips_text_and_has_the_special_tokens(tiny):
    _, tok = tiny
    text = "Now is the winter of our discontent\nMade glorious summer by this sun of York;"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    ids = special_ids("inkwell-tiny", tok)
    assert ids.mask_id == tok.mask_token_id not in ids.stop_ids
    eot = tok.convert_tokens_to_ids("<|eot|>")
    assert {tok.eos_token_id, eot} <= set(ids.stop_ids)


def test_chat_template_renders_turns(tiny):
    _, tok = tiny
    text = tok.apply_chat_template([{"role": "user", "content": "Who's there?"},
                                    {"role": "assistant", "content": "Nay, answer me."},
                                    {"role": "user", "content": " Long live the king! "}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == ("<|bos|><|user|>Who's there?<|eot|><|assistant|>Nay, answer me.<|eot|>"
                    "<|user|>Long live the king!<|eot|><|assistant|>")


def test_short_chat_generation_writes_english_and_stops(tiny):
    model, tok = tiny
    stops = set(special_ids("inkwell-tiny", tok).stop_ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Where is Duncan's body?"}],
                                     add_generation_prompt=True, return_dict=False)
    shipped = json.loads((resolve_model_path("inkwell-tiny") / "generation_config.json").read_text())
    params = DiffusionParams(**shipped["diffusion"], seed=0)  # the default settings the server uses
    answer = generate(model, torch.tensor([prompt]), params, stop_ids=tuple(stops),
                      eos_id=tok.eos_token_id)
    answer = answer[0, len(prompt):].tolist()
    first_stop = next(i for i, t in enumerate(answer) if t in stops)  # the model ends its reply
    text = tok.decode(answer[:first_stop])
    assert 0 < first_stop < params.gen_length  # a non-empty reply that ends before the canvas is full
    assert sum(c.isalpha() for c in text) > 0.6 * len(text.replace(" ", ""))  # words, not punctuation
