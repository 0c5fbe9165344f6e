"""`QuantizeSettings`: every hyperparameter of `inkwell-quantize` in one frozen, validated dataclass.

The command-line flags are derived from the fields (`add_arguments`), so each default is declared once,
and `to_dict()` is what the checkpoint records in `quantization_config.inkwell`. A field whose default
is `None` takes the method's default from `METHOD_DEFAULTS` (also declared once, below).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Literal, get_args

Method = Literal["rtn", "gptq", "fair-calib"]
PriorMode = Literal["fair", "uniform", "frontier", "reliability", "additive"]
CalibCanvas = Literal["clean", "masked"]
Propagate = Literal["quantized", "fp"]
KVWeighting = Literal["attention", "token"]
ScaleDtype = Literal["bfloat16", "float16"]
ComputeDtype = Literal["float32", "float64"]
CommitOrder = Literal["random", "low_confidence"]

METHODS: tuple[str, ...] = get_args(Method)
# What a method does when its switch is left at None: clipping search, scale refinement, token weights.
METHOD_DEFAULTS: dict[str, dict] = {
    "rtn": {"clip_search": False, "refine": False, "prior": "uniform"},
    "gptq": {"clip_search": False, "refine": False, "prior": "uniform"},
    "fair-calib": {"clip_search": True, "refine": True, "prior": "fair"},
}


def _f(default, help: str, choices: tuple | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class QuantizeSettings:
    method: Method = field(default=MISSING, metadata={"help": "quantization method", "choices": METHODS})
    group_size: int = _f(128, "inputs per scale; 0 = one group per row (per-channel, group = K)")
    bits: int = _f(4, "code width: 4 (the served format), or 3 for the stress regime (codes in [-4, 3] "
                      "stored in the int4 container)", (3, 4))
    scale_dtype: ScaleDtype = _f("bfloat16", "dtype of weight_scale (bf16 = what the CPU int4 path computes "
                                             "with)", get_args(ScaleDtype))
    # calibration data (quantize/calibration.py)
    calib_file: str | None = _f(None, "text or JSONL file of calibration text (default: the model's "
                                      "heldout/validation.json)")
    calib_prompts: int = _f(32, "probe / calibration prompts (Stage I rollouts and Stage II sequences)")
    prompt_tokens: int = _f(48, "longest calibration prompt, in tokens (longer speeches are skipped)")
    calib_canvas: CalibCanvas = _f("clean", "Stage II sequences: clean prompt + teacher response, or "
                                            "masked canvases (random mask ratios; the dLLM-aware GPTQ "
                                            "baseline)", get_args(CalibCanvas))
    seed: int = _f(0, "seed of prompt selection, rollout order and masks")
    gen_length: int | None = _f(None, "Stage I window K = the canvas (default: as served)")
    block_length: int | None = _f(None, "semi-AR block of the Stage I rollouts (default: as served)")
    steps: int | None = _f(None, "denoising steps of the Stage I rollouts (default: as served)")
    stage1_order: CommitOrder = _f("random", "commit order of the Stage I rollouts: random (DESIGN section "
                                             "7), or the served low_confidence (an investigation switch)",
                                   get_args(CommitOrder))
    # Stage I (quantize/prior.py)
    prior: PriorMode | None = _f(None, "token prior: fair = norm(F) + lambda1 norm(R); ablations uniform, "
                                       "frontier, reliability, additive (paper-literal)", get_args(PriorMode))
    lambda1: float = _f(0.5, "weight of the reliability term R")
    floor: float = _f(0.05, "prior outside the window and after the teacher's first stop id")
    prior_file: str | None = _f(None, "reuse a saved Stage I prior (JSON) instead of computing it")
    rollouts_file: str | None = _f(None, "reuse saved Stage I teacher rollouts (.pt, from --save-rollouts) "
                                         "made with the same prompts and diffusion settings")
    save_rollouts: bool = _f(False, "also write the Stage I teacher rollouts (stage1_rollouts.pt)")
    # Stage II (quantize/gptq.py, quantize/refine.py, quantize/driver.py)
    damp: float = _f(0.01, "GPTQ dampening, a fraction of the mean Hessian diagonal")
    gptq_block_size: int = _f(128, "GPTQ lazy batch update width (columns)")
    actorder: bool = _f(False, "process columns by decreasing Hessian diagonal ('actorder: weight'; static "
                               "groups, no g_idx)")
    kv_weighting: KVWeighting = _f("attention", "k_proj/v_proj token weights: prior-weighted attention "
                                                "received, or the token's own prior", get_args(KVWeighting))
    propagate: Propagate = _f("quantized", "inputs of block b: through the quantized blocks < b, or FP",
                              get_args(Propagate))
    clip_search: bool | None = _f(None, "search a per-group clipping ratio before GPTQ")
    clip_min: float = _f(0.7, "smallest clipping ratio tried")
    clip_grid: int = _f(16, "clipping ratios tried, from 1 down to clip_min")
    refine: bool | None = _f(None, "refine per-group scales with the codes fixed at the block output")
    refine_steps: int = _f(40, "Adam steps of the scale refinement, per block")
    refine_lr: float = _f(0.002, "Adam learning rate on log-scales")
    refine_batch: int = _f(8, "sequences per refinement step")
    batch_size: int = _f(16, "sequences per forward pass")
    compute_dtype: ComputeDtype = _f("float32", "dtype of Stage II (block forwards, attention weights, scale "
                                                "refinement): float64 gives the same codes on any CPU",
                                     get_args(ComputeDtype))

    def __post_init__(self) -> None:
        choices = {f.name: f.metadata.get("choices") for f in fields(self)}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if allowed and value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        for name in ("calib_prompts", "prompt_tokens", "gptq_block_size", "clip_grid", "refine_batch",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 0 or (self.group_size and self.group_size % 8):
            raise ValueError(f"group_size must be 0 (per channel) or a positive multiple of 8, "
                             f"got {self.group_size}")
        if not (0 < self.floor <= 1) or self.lambda1 < 0 or not (0 < self.clip_min <= 1):
            raise ValueError("floor must be in (0, 1], lambda1 >= 0, clip_min in (0, 1]")
        if self.damp <= 0 or self.refine_steps < 0 or self.refine_lr <= 0:
            raise ValueError("damp and refine_lr must be > 0, refine_steps >= 0")

    def resolved(self) -> QuantizeSettings:
        """Method defaults filled in for every field left at None."""
        defaults = METHOD_DEFAULTS[self.method]
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def group_for(self, in_features: int) -> int:
        """The group size of a layer with `in_features` inputs. ValueError if it does not divide K."""
        g = self.group_size or in_features
        if in_features % g:
            raise ValueError(f"group_size {g} does not divide in_features {in_features}; choose a divisor "
                             f"of every layer's K that is a multiple of 8 (or 0 for per-channel)")
        return g

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _bool(text: str) -> bool:
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _flag_type(f):
    t = str(f.type)
    if "bool" in t:
        return _bool
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def add_arguments(parser: argparse.ArgumentParser, cls=None) -> None:
    """One `--flag` per field of the settings dataclass `cls`, its default and help taken from the field."""
    for f in fields(cls or QuantizeSettings):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is MISSING
        help_text = f.metadata["help"]
        if not required and f.default is not None and "(default" not in help_text:
            help_text += f" (default: {f.default})"
        kwargs = {"type": _flag_type(f), "choices": f.metadata.get("choices"), "help": help_text,
                  "dest": f.name}
        if "bool" in str(f.type):
            kwargs.update(metavar="{true,false}", choices=None)
        if required:
            parser.add_argument(flag, required=True, **kwargs)
        else:
            parser.add_argument(flag, default=f.default, **kwargs)


def from_args(args: argparse.Namespace, cls=None):
    cls = cls or QuantizeSettings
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})
