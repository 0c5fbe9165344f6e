"""load_tokenizer and special_ids on a small model directory built here with the `tokenizers` library, and
LLaDA-8B's published tokenizer config: the chat template renders, and mask/eos/bos/pad/stop ids are derived
from the files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from inkwell.engine import load_tokenizer, special_ids
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

FIXTURES = Path(__file__).parents[1] / "fixtures"
LLADA_8B = FIXTURES / "llada-8b"
WORDS = ["hello", "world", "how", "are", "you", "user", "assistant", "system", "be", "brief"]
SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]
# LLaDA-8B-Instruct's own template (from its tokenizer_config.json)
CHAT_TEMPLATE = json.loads((LLADA_8B / "tokenizer_config.json").read_text())["chat_template"]


def write_model_dir(path: Path, mask_in_config: bool = True, bos_in_config: bool = False) -> Path:
    """A LLaDA model directory with a WordLevel tokenizer whose special tokens sit after the words."""
    path.mkdir()
    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(path / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>",
        "chat_template": CHAT_TEMPLATE,
    }))
    config = json.loads((FIXTURES / "llada-tiny" / "config.json").read_text())
    config |= {"vocab_size": 32, "embedding_size": 32, "eos_token_id": ids["<|endoftext|>"],
               "pad_token_id": ids["<|endoftext|>"], "mask_token_id": ids["<|mdm_mask|>"]}
    if not mask_in_config:
        del config["mask_token_id"]
    if bos_in_config:
        config["bos_token_id"] = ids["<|startoftext|>"]
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return write_model_dir(tmp_path / "model")


def test_chat_template_renders_and_encodes_special_tokens_as_single_ids(model_dir):
    tok = load_tokenizer(model_dir)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "  how are you \n"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nbe brief<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\nhow are you<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == [
        "<|startoftext|>", "<|start_header_id|>", "system", "<|end_header_id|>", "be", "brief", "<|eot_id|>",
        "<|start_header_id|>", "user", "<|end_header_id|>", "how", "are", "you", "<|eot_id|>",
        "<|start_header_id|>", "assistant", "<|end_header_id|>"]
    assert ids[0] == tok.bos_token_id


def test_special_ids_come_from_the_files(model_dir):
    tok = load_tokenizer(model_dir)
    ids = special_ids(model_dir, tok)
    by_name = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    assert ids.mask_id == by_name["<|mdm_mask|>"] == tok.mask_token_id
    assert ids.eos_id == by_name["<|endoftext|>"] == tok.eos_token_id
    assert ids.pad_id == by_name["<|endoftext|>"]
    # the config has no bos_token_id: the tokenizer's bos fills in
    assert ids.bos_id == by_name["<|startoftext|>"] == tok.bos_token_id
    # every special token but the mask stops generation, chat-turn tokens included
    assert set(ids.stop_ids) == set(by_name.values()) - {ids.mask_id}
    assert by_name["<|eot_id|>"] in ids.stop_ids
    # without a tokenizer object the same ids come from tokenizer.json and tokenizer_config.json
    assert special_ids(model_dir) == ids


def test_mask_id_falls_back_to_the_tokenizer(tmp_path):
    path = write_model_dir(tmp_path / "model", mask_in_config=False, bos_in_config=True)
    tok = load_tokenizer(path)
    ids = special_ids(path, tok)
    assert ids.mask_id == tok.convert_tokens_to_ids("<|mdm_mask|>")
    assert ids.mask_id not in ids.stop_ids
    assert ids.bos_id == tok.convert_tokens_to_ids("<|startoftext|>")


def test_config_and_tokenizer_disagreeing_on_the_mask_is_an_error(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    eot = load_tokenizer(model_dir).convert_tokens_to_ids("<|eot_id|>")
    (model_dir / "config.json").write_text(json.dumps(config | {"mask_token_id": eot}))
    with pytest.raises(ValueError, match=f"mask_token_id {eot} disagrees with the tokenizer's mask token id"):
        special_ids(model_dir)


def test_no_mask_anywhere_is_an_error(tmp_path):
    path = write_model_dir(tmp_path / "model", mask_in_config=False)
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    del tok_config["mask_token"]
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    with pytest.raises(ValueError, match="no mask_token_id"):
        special_ids(path, load_tokenizer(path))


def test_llada_8b_stop_ids_from_its_published_files():
    tok_config = json.loads((LLADA_8B / "tokenizer_config.json").read_text())
    by_content = {t["content"]: int(i) for i, t in tok_config["added_tokens_decoder"].items()}
    ids = special_ids(LLADA_8B)
    assert ids.mask_id == by_content["<|mdm_mask|>"] == 126336
    assert ids.eos_id == by_content["<|endoftext|>"] == 126081
    assert ids.bos_id == by_content["<|startoftext|>"] == 126080  # from generation_config.json
    assert ids.pad_id == 126081
    assert by_content["<|eot_id|>"] == 126348
    assert {126348, 126081} <= set(ids.stop_ids)
    assert 126336 not in ids.stop_ids
    assert set(ids.stop_ids) == set(by_content.values()) - {126336}


def test_directory_without_a_tokenizer_is_named(tmp_path):
    shutil.copytree(FIXTURES / "llada-tiny", tmp_path / "model")
    with pytest.raises(ValueError, match=f"{tmp_path / 'model'}: no usable tokenizer"):
        load_tokenizer(tmp_path / "model")


def test_presets_have_no_tokenizer():
    with pytest.raises(ValueError, match="preset 'tiny-llada' has random weights and no tokenizer"):
        load_tokenizer("tiny-llada")
