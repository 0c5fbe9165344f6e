"""Tokenizer with its chat template, and the special token ids a diffusion sampler needs.

`stop_ids` (DESIGN section 3) = the eos ids of `generation_config.json` and `config.json` ∪ the
tokenizer's eos ∪ every added special token except the mask token. They are read from the checkpoint's
files, never from literals, so they also work for checkpoints that ship only `tokenizer_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .loader import read_config, resolve_model_path


@dataclass(frozen=True)
class SpecialIds:
    mask_id: int
    eos_id: int
    bos_id: int | None
    pad_id: int
    stop_ids: tuple[int, ...]


def load_tokenizer(path_or_name: str | Path) -> PreTrainedTokenizerBase:
    """The model's transformers tokenizer (fast), chat template included. Never downloads."""
    path = resolve_model_path(path_or_name)
    if path is None:
        raise ValueError(f"preset {str(path_or_name)!r} has random weights and no tokenizer; "
                         "use a model directory or 'inkwell-tiny'")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: no usable tokenizer ({err})") from err


def _read_json(path: Path | None, name: str) -> dict:
    if path is None or not (path / name).is_file():
        return {}
    return json.loads((path / name).read_text())


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def special_ids(path_or_name: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> SpecialIds:
    """Mask, eos, bos and pad ids and the stop set, from config, generation config and tokenizer."""
    path = resolve_model_path(path_or_name)
    config = read_config(path_or_name)
    generation = _read_json(path, "generation_config.json")
    tok_config = _read_json(path, "tokenizer_config.json")
    added = {int(i): t for i, t in tok_config.get("added_tokens_decoder", {}).items()}
    by_content = {t["content"]: i for i, t in added.items()}
    if tokenizer is not None:
        added |= {i: {"content": t.content, "special": t.special}
                  for i, t in tokenizer.added_tokens_decoder.items()}
        by_content |= {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}

    mask_id = config.get("mask_token_id")
    if mask_id is None and tokenizer is not None and tokenizer.mask_token_id is not None:
        mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"{path_or_name}: config.json has no mask_token_id and the tokenizer no mask token")

    eos = _ids(generation.get("eos_token_id")) + _ids(config.get("eos_token_id"))
    eos_name = tok_config.get("eos_token")
    eos_name = eos_name.get("content") if isinstance(eos_name, dict) else eos_name
    if eos_name in by_content:
        eos.append(by_content[eos_name])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    if not eos:
        raise ValueError(f"{path_or_name}: no eos_token_id in config, generation config or tokenizer")
    specials = [i for i, t in added.items() if t.get("special", False)]
    stop_ids = tuple(sorted({*eos, *specials} - {int(mask_id)}))

    bos = _ids(config.get("bos_token_id")) or _ids(generation.get("bos_token_id"))
    pad = _ids(config.get("pad_token_id"))
    return SpecialIds(mask_id=int(mask_id), eos_id=eos[0], bos_id=bos[0] if bos else None,
                      pad_id=pad[0] if pad else eos[0], stop_ids=stop_ids)
