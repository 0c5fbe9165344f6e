"""`DiffusionParams`: every knob of the diffusion sampler (DESIGN section 4) in one frozen, validated
dataclass, and `resolve`, which fills the model family's defaults and rounds defaults that do not fit.

A field left at `None` means "the default": `gen_length` the model default (128), `steps` = `gen_length`,
`block_length` 32 for LLaDA and `gen_length` for Dream, `remasking` `low_confidence` for LLaDA and
`entropy` for Dream. Explicit values that cannot work together raise `ValueError` naming the allowed
values; defaults that do not fit are rounded by `resolve` (the canvas is padded up to a multiple of
`block_length`, `steps` rounded up to a multiple of the number of blocks), never rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

Remasking = Literal["low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin"]
CacheMode = Literal["none", "prefix", "dual"]
Family = Literal["llada", "dream"]

REMASKING: tuple[str, ...] = get_args(Remasking)
CACHE_MODES: tuple[str, ...] = get_args(CacheMode)
LLADA_ALGORITHMS = ("low_confidence", "random")  # LLaDA's generate(): Gumbel-max tokens, fixed schedule
DREAM_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy", "origin")  # Dream's diffusion_generate
RANKED_DREAM_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy")  # those alg_temp applies to
DEFAULT_GEN_LENGTH = 128
FAMILY_DEFAULTS: dict[str, dict] = {
    "llada": {"block_length": 32, "remasking": "low_confidence"},
    "dream": {"block_length": None, "remasking": "entropy"},  # None: one block over the whole canvas
}


def _check_int(name: str, value, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} or None (default), got {value!r}")


def _check_float(name: str, value, low: float, high: float, low_open: bool, allowed: str) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class DiffusionParams:
    gen_length: int | None = None
    steps: int | None = None
    block_length: int | None = None
    remasking: Remasking | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3
    threshold: float | None = None
    cache: CacheMode = "none"
    cfg_scale: float = 0.0
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        self._check_ranges()
        self._check_combinations()

    def _check_ranges(self) -> None:
        for name in ("gen_length", "steps", "block_length", "top_k"):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if self.remasking is not None and self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {list(REMASKING)}, got {self.remasking!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {list(CACHE_MODES)}, got {self.cache!r}")
        _check_float("temperature", self.temperature, 0.0, math.inf, False, "a finite number >= 0")
        _check_float("top_p", self.top_p, 0.0, 1.0, True, "in (0, 1] or None")
        _check_float("alg_temp", self.alg_temp, 0.0, math.inf, True, "a number > 0 or None")
        _check_float("eps", self.eps, 0.0, 1.0, True, "in (0, 1)")
        if self.eps >= 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps!r}")
        _check_float("threshold", self.threshold, 0.0, 1.0, True, "in (0, 1] or None")
        _check_float("cfg_scale", self.cfg_scale, 0.0, math.inf, False, "a finite number >= 0")
        for name in ("logits_eos_inf", "confidence_eos_eot_inf"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def _check_combinations(self) -> None:
        """Explicit values that cannot work together (defaults are fitted later by `resolve`)."""
        g, b, s = self.gen_length, self.block_length, self.steps
        if g is not None and b is not None:
            if b > g or g % b:
                raise ValueError(f"block_length {b} must divide gen_length {g}; allowed block_length values: "
                                 f"{[d for d in range(1, g + 1) if g % d == 0]}")
            if s is not None and s % (g // b):
                raise ValueError(f"steps {s} must be a multiple of the number of blocks {g // b} "
                                 f"(gen_length {g} / block_length {b}); e.g. {_round_up(s, g // b)}")
        ranked = self.remasking is None or self.remasking in RANKED_DREAM_ALGORITHMS  # None: resolved later
        if self.alg_temp is not None and not ranked:
            raise ValueError(f"alg_temp applies only to remasking in {list(RANKED_DREAM_ALGORITHMS)}, "
                             f"got remasking={self.remasking!r}")
        if self.threshold is not None and self.remasking == "origin":
            raise ValueError(f"threshold needs a ranked remasking, one of "
                             f"{[r for r in REMASKING if r != 'origin']}; 'origin' commits at random")
        if self.threshold is not None and self.alg_temp is not None:
            raise ValueError("threshold and alg_temp both choose the commit set; set only one of them")

    @property
    def num_blocks(self) -> int:
        assert self.gen_length is not None and self.block_length is not None, "call resolve() first"
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        assert self.steps is not None, "call resolve() first"
        return self.steps // self.num_blocks

    @property
    def is_resolved(self) -> bool:
        return None not in (self.gen_length, self.steps, self.block_length, self.remasking)

    def resolve(self, family: Family | str, default_gen_length: int = DEFAULT_GEN_LENGTH) -> DiffusionParams:
        """Concrete params for a model family ('llada' or 'dream', or a config's `model_type`).

        Defaults are filled and rounded to fit: `gen_length` (the canvas) is padded up to a multiple of
        `block_length`, and `steps` rounded up to a multiple of the number of blocks.
        """
        defaults = FAMILY_DEFAULTS[family_of(family)]
        gen_length = self.gen_length or default_gen_length
        block_length = self.block_length or defaults["block_length"] or gen_length
        gen_length = _round_up(gen_length, block_length)
        num_blocks = gen_length // block_length
        steps = _round_up(self.steps or gen_length, num_blocks)
        return replace(self, gen_length=gen_length, block_length=block_length, steps=steps,
                       remasking=self.remasking or defaults["remasking"])

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def family_of(name: str) -> Family:
    """'llada' or 'dream' from a family name or a config's `model_type` ('llada', 'Dream')."""
    key = str(name).lower()
    if key not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown model family {name!r}; allowed: {sorted(FAMILY_DEFAULTS)}")
    return key  # type: ignore[return-value]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
