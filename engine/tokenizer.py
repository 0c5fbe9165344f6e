"""Tokenizer with its chat template, and the special token ids a diffusion sampler needs.

`stop_ids` (DESIGN section 3) = the eos ids of `generation_config.json` and `config.json` ∪ the
tokenizer's eos ∪ every added special token except the mask token. They are read from the checkpoint's
files, never from literals, so they also work for checkpoints that ship only `tokenizer_config.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .loader import read_config, resolve_model_path

if TYPE_CHECKING:  # transformers takes seconds to import: only load_tokenizer needs it
    from transformers import PreTrainedTokenizerBase


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
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # A plain fast tokenizer is loaded by its class: AutoTokenizer would also read config.json and warn
    # that transformers does not know model_type 'llada'.
    named = _read_json(path, "tokenizer_config.json").get("tokenizer_class")
    plain = named in ("PreTrainedTokenizerFast", "TokenizersBackend")  # the same class in transformers 5
    cls = PreTrainedTokenizerFast if plain else AutoTokenizer
    try:
        return cls.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: no usable tokenizer ({err})") from err


def _read_json(path: Path | None, name: str) -> dict:
    if path is None or not (path / name).is_file():
        return {}
    try:
        return json.loads((path / name).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path / name}: not valid JSON ({err})") from err


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _added_tokens(path: Path | None, tokenizer: PreTrainedTokenizerBase | None) -> dict[int, dict]:
    """id -> {"content", "special"} for the added tokens of tokenizer.json, tokenizer_config.json and the
    tokenizer object (checkpoints keep them in one or the other)."""
    added = {int(t["id"]): t for t in _read_json(path, "tokenizer.json").get("added_tokens", [])}
    decoder = _read_json(path, "tokenizer_config.json").get("added_tokens_decoder", {})
    added |= {int(i): t for i, t in decoder.items()}
    if tokenizer is not None:
        added |= {i: {"content": t.content, "special": t.special}
                  for i, t in tokenizer.added_tokens_decoder.items()}
    return added


def _token_id(role: str, tok_config: dict, by_content: dict[str, int],
              tokenizer: PreTrainedTokenizerBase | None) -> list[int]:
    """The id of the tokenizer's `role` token ("eos", "bos", "pad", "mask"), or [] when it has none."""
    if tokenizer is not None and getattr(tokenizer, f"{role}_token_id", None) is not None:
        return [int(getattr(tokenizer, f"{role}_token_id"))]
    name = tok_config.get(f"{role}_token")
    name = name.get("content") if isinstance(name, dict) else name
    return [by_content[name]] if name in by_content else []


def special_ids(path_or_name: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> SpecialIds:
    """Mask, eos, bos and pad ids and the stop set, from config, generation config and tokenizer.

    The config's ids come first; the tokenizer fills what the config leaves out. A config and tokenizer
    that disagree on the mask token are an error: the sampler would write one and stop at the other.
    """
    path = resolve_model_path(path_or_name)
    config = read_config(path_or_name)
    generation = _read_json(path, "generation_config.json")
    tok_config = _read_json(path, "tokenizer_config.json")
    added = _added_tokens(path, tokenizer)
    by_content = {t["content"]: i for i, t in added.items()}
    tok = {role: _token_id(role, tok_config, by_content, tokenizer) for role in ("mask", "eos", "bos", "pad")}

    mask = _ids(config.get("mask_token_id")) or tok["mask"]
    if not mask:
        raise ValueError(f"{path_or_name}: config.json has no mask_token_id and the tokenizer no mask token")
    if tok["mask"] and tok["mask"] != mask[:1]:
        raise ValueError(f"{path_or_name}: config.json mask_token_id {mask[0]} disagrees with the "
                         f"tokenizer's mask token id {tok['mask'][0]}")
    eos = _ids(generation.get("eos_token_id")) + _ids(config.get("eos_token_id")) + tok["eos"]
    if not eos:
        raise ValueError(f"{path_or_name}: no eos_token_id in config, generation config or tokenizer")
    specials = [i for i, t in added.items() if t.get("special", False)]
    stop_ids = tuple(sorted({*eos, *specials} - {mask[0]}))
    bos = _ids(config.get("bos_token_id")) or _ids(generation.get("bos_token_id")) or tok["bos"]
    pad = _ids(config.get("pad_token_id")) or tok["pad"] or eos
    return SpecialIds(mask_id=mask[0], eos_id=eos[0], bos_id=bos[0] if bos else None, pad_id=pad[0],
                      stop_ids=stop_ids)
