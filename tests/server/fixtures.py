"""Tiny served models with a real tokenizer, built in a few seconds: the `tiny-llada` preset's random
weights saved as a model directory next to a byte-level BPE tokenizer trained here (512 ids: bos 509,
eos 510, mask 511, and the chat-turn tokens of inkwell-tiny's template), and its RTN int4 version saved
in the compressed-tensors `pack-quantized` format."""

from __future__ import annotations

import json
from pathlib import Path

from inkwell.engine import load_model
from inkwell.engine.checkpoint import save_model
from inkwell.engine.quant_linear import quantize_model_rtn
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}<|assistant|>"
    "{% else %}<|user|>{% endif %}{{ message['content'] | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|user|>", "<|assistant|>", "<|eot|>", "<|bos|>", "<|eos|>", "<|mask|>"]  # ids 506..511
VOCAB = 512
CONTEXT = 512  # max_sequence_length of the fixture: small, so the context-length 400 is cheap to reach
CORPUS = """Now is the winter of our discontent made glorious summer by this sun of York; and all the
clouds that lour'd upon our house in the deep bosom of the ocean buried. To be, or not to be, that is the
question: whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune, or to
take arms against a sea of troubles. Friends, Romans, countrymen, lend me your ears; I come to bury
Caesar, not to praise him. All the world's a stage, and all the men and women merely players. Café naïve
résumé: ünïcödé wörds stay whole. 0123456789 the quick brown fox jumps over the lazy dog."""


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer)
    filler = VOCAB - len(SPECIALS) - tok.get_vocab_size()
    tok.add_tokens([f"<|unused{i}|>" for i in range(filler)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    assert tok.get_vocab_size() == VOCAB and tok.token_to_id("<|mask|>") == VOCAB - 1
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|eos|>", mask_token="<|mask|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_models(root: Path) -> tuple[Path, Path]:
    """(fp_dir, int4_dir) under `root`, both with the same tokenizer and generation config."""
    fp, int4 = root / "tiny-fp", root / "tiny-int4"
    updates = {"max_sequence_length": CONTEXT, "bos_token_id": 509, "eos_token_id": 510, "mask_token_id": 511}
    save_model(load_model("tiny-llada"), fp, config_updates=updates)
    model = load_model("tiny-llada")
    quant = quantize_model_rtn(model, group_size=32)
    save_model(model, int4, config_updates=updates | {"quantization_config": quant})
    generation = {"bos_token_id": 509, "eos_token_id": [510, 508], "pad_token_id": 510, "mask_token_id": 511,
                  "diffusion": {"gen_length": 32, "steps": 32, "block_length": 16,
                                "remasking": "low_confidence", "temperature": 0.0}}
    for path in (fp, int4):
        build_tokenizer(path)
        (path / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return fp, int4
