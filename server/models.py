"""The models a server serves: each loaded once with its tokenizer, special ids and diffusion defaults.

`ServedModel` is what a request resolves to by its `model` field; nothing outside the loaded set is ever
resolved (an unknown name is a 404, never a load). A model's diffusion defaults come from the `diffusion`
block of its `generation_config.json` (inkwell-tiny ships one), else from the family defaults of
`DiffusionParams.resolve`. `load_served` is slow (weights, tokenizer, one warm-up generation) and runs
off the event loop, so the port opens at once and `/health` says 503 until every model is ready.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from inkwell.engine import DiffusionParams, generate, load_model, load_tokenizer, read_config, special_ids
from inkwell.engine.loader import resolve_model_path
from torch import nn
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("inkwell.server")

DIFFUSION_KEYS = ("gen_length", "steps", "block_length", "remasking", "temperature", "top_p", "alg_temp",
                  "threshold", "cache", "cfg_scale")


@dataclass
class ServedModel:
    name: str  # the id clients send as `model`
    source: str  # the path or name it was loaded from
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    mask_id: int
    eos_id: int
    stop_ids: tuple[int, ...]
    defaults: dict = field(default_factory=dict)  # diffusion defaults from generation_config.json
    quantization: str | None = None
    created: int = 0

    @property
    def family(self) -> str:
        return str(self.model.config.model_type).lower()

    @property
    def max_length(self) -> int:
        return int(self.model.config.max_length)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def diffusion_defaults(source: str) -> dict:
    path = resolve_model_path(source)
    file = None if path is None else Path(path) / "generation_config.json"
    if file is None or not file.is_file():
        return {}
    block = json.loads(file.read_text()).get("diffusion") or {}
    return {k: v for k, v in block.items() if k in DIFFUSION_KEYS and v is not None}


def load_served(name: str, source: str, device: str = "cpu", dtype: str | None = None) -> ServedModel:
    """Load weights, tokenizer and special ids of one model, and warm it up with one short generation."""
    model = load_model(source, dtype=dtype, device=device)
    tokenizer = load_tokenizer(source)
    ids = special_ids(source, tokenizer)
    quant = read_config(source).get("quantization_config")
    served = ServedModel(name=name, source=str(source), model=model, tokenizer=tokenizer, mask_id=ids.mask_id,
                         eos_id=ids.eos_id, stop_ids=ids.stop_ids, defaults=diffusion_defaults(source),
                         quantization="int4" if quant else None, created=int(time.time()))
    warm_up(served)
    logger.info("model %r ready (from %s%s)", name, source, ", int4" if quant else "")
    return served


def warm_up(served: ServedModel) -> None:
    """One short generation, so that the first request does not pay for lazy initialisation."""
    bos = served.tokenizer.bos_token_id if served.tokenizer.bos_token_id is not None else served.eos_id
    params = DiffusionParams(gen_length=8, block_length=8, steps=2)
    generate(served.model, torch.tensor([[bos]], device=_device(served.model)), params)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
