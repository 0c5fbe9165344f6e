"""Write a quantized model in the DESIGN section 5 format: `Int4Linear` layers (written through their
`checkpoint_tensors()` by `engine.checkpoint.save_model`), `quantization_config` with the `inkwell` block,
and the source model's tokenizer and generation files, then validate the config with compressed-tensors. The
tensors that stay in floating point (embeddings, norms, biases, output head) come from the `WeightSource`,
read from the source file when it streams.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from inkwell.engine.checkpoint import save_model
from inkwell.engine.loader import parse_dtype
from inkwell.engine.quant_linear import Int4Linear, quantization_config
from torch import nn

from .methods import SCALE_DTYPES, PackedWeight
from .source import WeightSource

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def install_int4(model: nn.Module, results: dict[str, PackedWeight], scale_dtype: str) -> None:
    """Replace each quantized Linear of `model` by an `Int4Linear` holding exactly the codes and scales."""
    dtype = SCALE_DTYPES[scale_dtype]
    for name, qw in results.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        layer = Int4Linear(qw.weight_packed, qw.scales.to(dtype), qw.group_size, linear.bias,
                           dtype=torch.float32, layout="qweight")
        setattr(parent, child, layer)


def config_groups_for(results: dict[str, PackedWeight], head: str, actorder: bool) -> dict:
    """`quantization_config` (without the inkwell block): one group targeting Linear when every layer has
    the same group size, else one group per size targeting its layers by exact name (per-channel)."""
    sizes: dict[int, list[str]] = {}
    for name, qw in results.items():
        sizes.setdefault(qw.group_size, []).append(name)
    order = "weight" if actorder else None
    config = quantization_config(next(iter(sizes)), [head], order)
    if len(sizes) > 1:
        template = config["config_groups"].pop("group_0")
        for i, (size, names) in enumerate(sorted(sizes.items())):
            config["config_groups"][f"group_{i}"] = {
                "targets": sorted(names), "weights": template["weights"] | {"group_size": size}}
    return config


def validate_config(config: dict) -> None:
    """compressed-tensors' own validation of `quantization_config` (skipped if it is not installed)."""
    try:
        from compressed_tensors import QuantizationConfig
    except ImportError:  # an optional dependency: the format is ours to write either way
        return
    QuantizationConfig.model_validate(config)


def copy_side_files(source: Path | None, out: Path) -> list[str]:
    if source is None:
        return []
    copied = []
    for name in SIDE_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
            copied.append(name)
    return copied


def write_checkpoint(source: WeightSource, results: dict[str, PackedWeight], out: Path,
                     source_dtype: str | None, scale_dtype: str, actorder: bool, inkwell: dict) -> Path:
    """Write the int4 model directory `out` (model.safetensors, config.json, side files)."""
    quantized = {f"{name}.weight" for name in results}
    source.load(lambda tensor: tensor not in quantized)
    model = source.model
    install_int4(model, results, scale_dtype)
    config = config_groups_for(results, model.output_head_name, actorder) | {"inkwell": inkwell}
    validate_config(config)
    dtype = parse_dtype(source_dtype) if source_dtype in ("float16", "bfloat16", "float32") else None
    save_model(model, out, dtype=dtype, config_updates={"quantization_config": config})
    copy_side_files(source.path, out)
    return out
