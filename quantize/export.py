"""Write a quantized model in the DESIGN section 5 format: for each quantized Linear its `weight_packed`,
`weight_scale` and `weight_shape`, every other tensor (embeddings, norms, biases, output head) in the source
dtype, `quantization_config` with the `inkwell` block, and the source model's tokenizer and generation files;
the config is validated with compressed-tensors. The safetensors file is written one tensor at a time, each
floating-point tensor read from the source file when the `WeightSource` streams, so the export holds the
packed results and one tensor, not the model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from inkwell.engine.checkpoint import TensorEntry, write_config, write_safetensors
from inkwell.engine.loader import parse_dtype
from inkwell.engine.quant_linear import int4_checkpoint_tensors, quantization_config

from .methods import SCALE_DTYPES, PackedWeight
from .source import WeightSource

SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def checkpoint_entries(source: WeightSource, results: dict[str, PackedWeight], scale_dtype: torch.dtype,
                       dtype: torch.dtype | None) -> list[TensorEntry]:
    """What the checkpoint stores, in the model's state-dict order: a quantized layer's three int4 tensors in
    place of its `weight`, every other tensor as the source holds it (floats in `dtype` when given)."""
    entries = []
    for name, tensor in source.model.state_dict(keep_vars=True).items():
        module, _, leaf = name.rpartition(".")
        qw = results.get(module)
        if qw is not None and leaf == "weight":
            n, k = qw.weight_packed.shape[0], qw.weight_packed.shape[1] * 8
            own = int4_checkpoint_tensors(qw.weight_packed, qw.scales.to(scale_dtype), n, k)
            entries += [TensorEntry(f"{module}.{suffix}", t.dtype, tuple(t.shape), lambda t=t: t)
                        for suffix, t in own.items()]
            continue
        out = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        entries.append(TensorEntry(name, out, tuple(tensor.shape), lambda n=name, d=out: source.tensor(n, d)))
    return entries


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
    model = source.model
    config = config_groups_for(results, model.output_head_name, actorder) | {"inkwell": inkwell}
    validate_config(config)
    dtype = parse_dtype(source_dtype) if source_dtype in ("float16", "bfloat16", "float32") else None
    entries = checkpoint_entries(source, results, SCALE_DTYPES[scale_dtype], dtype)
    write_safetensors(out / "model.safetensors", entries, {"format": "pt"})
    write_config(model.config.to_dict() | {"quantization_config": config}, out, [e.dtype for e in entries])
    copy_side_files(source.path, out)
    return out
