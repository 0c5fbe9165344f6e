"""Resolve a model name and load its weights: local Hugging Face-format directories (single or sharded
safetensors), named presets, the embedded `inkwell-tiny`, and hub ids already in the local cache.

Weights go tensor by tensor from the file straight to their destination dtype and device into a model
built on the `meta` device, so the model is never held twice. Every problem (unknown `model_type`,
missing, unexpected or misshaped tensors, a corrupt file) is one `CheckpointError` naming the file and
the tensor; there is no partial load. Linear layers stored in the int4 `pack-quantized` format are
detected per layer from the tensors present and become `Int4Linear`s.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .models import PRESETS, build_model, config_from_dict
from .quant_linear import INT4_SUFFIXES, int4_linear_from_tensors

ASSETS = Path(__file__).parent / "assets"
EMBEDDED = {"inkwell-tiny": ASSETS / "inkwell-tiny", "inkwell-tiny-int4": ASSETS / "inkwell-tiny-int4"}
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64,
}
STORED_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


def check_link(path: Path) -> None:
    """A symbolic link loop or a dangling link looks like a missing file to `is_file()`: name it instead."""
    if not path.is_symlink():
        return
    try:
        path.resolve(strict=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: dangling symbolic link (its target does not exist)") from err
    except (OSError, RuntimeError) as err:  # ELOOP; Python < 3.13 raises RuntimeError for a loop
        raise CheckpointError(f"{path}: symbolic link loop") from err


def resolve_model_path(path_or_name: str | Path) -> Path | None:
    """A local directory for `path_or_name`, or None for a preset. Raises naming the id on a miss."""
    name = str(path_or_name)
    path = Path(name).expanduser()
    check_link(path)
    if path.is_dir():
        return path
    if name in PRESETS:
        return None
    if name in EMBEDDED:
        if not (EMBEDDED[name] / "config.json").is_file():
            raise FileNotFoundError(f"embedded model {name!r} is missing from the package ({EMBEDDED[name]})")
        return EMBEDDED[name]
    if path.exists():
        raise CheckpointError(f"{path}: not a model directory (expected a folder with config.json)")
    return _from_hub_cache(name)


def _from_hub_cache(repo_id: str) -> Path:
    choices = sorted([*PRESETS, *EMBEDDED])
    if repo_id.count("/") != 1:
        raise FileNotFoundError(f"model {repo_id!r} is not a local directory, a preset or embedded model "
                                f"({', '.join(choices)}) or a hub id")
    from huggingface_hub import snapshot_download  # optional dependency path, only for hub ids

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError) as err:  # LocalEntryNotFoundError (not cached), HFValidationError (bad id)
        raise FileNotFoundError(
            f"model {repo_id!r} is not a local directory and not in the local Hugging Face cache; nothing "
            f"is downloaded: fetch it on a connected machine or pass a local directory ({type(err).__name__})"
        ) from err


def read_config(path_or_name: str | Path) -> dict:
    """The `config.json` dict of a model (a preset's built-in dict for presets)."""
    path = resolve_model_path(path_or_name)
    if path is None:
        return dict(PRESETS[str(path_or_name)])
    file = path / "config.json"
    check_link(file)
    if not file.is_file():
        raise CheckpointError(f"{path}: not a model directory (no config.json)")
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: not valid JSON ({err})") from err


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; allowed: {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(path_or_name: str | Path, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """Load a model for inference. `dtype=None`: the checkpoint's dtype on a GPU, float32 on a CPU."""
    device = torch.device(device)
    path = resolve_model_path(path_or_name)
    raw = read_config(path_or_name)
    try:
        config = config_from_dict(raw)
    except ValueError as err:
        where = path / "config.json" if path is not None else f"preset {str(path_or_name)!r}"
        raise CheckpointError(f"{where}: {err}") from err
    if path is None:
        return _build_preset(config, str(path_or_name), parse_dtype(dtype) or default_dtype(raw, {}, device),
                             device)
    files, source = _weight_files(path)
    dtype = parse_dtype(dtype) or default_dtype(raw, files, device)
    with torch.device("meta"):
        model = build_model(config)
    _load_weights(model, files, source, raw.get("quantization_config"), dtype, device)
    model.name_or_path = str(path_or_name)
    return model.eval().requires_grad_(False)


def default_dtype(raw: dict, files: dict[Path, list[str] | None], device: torch.device) -> torch.dtype:
    """float32 on a CPU; elsewhere the config's `torch_dtype` (`dtype` in transformers 5), else the dtype
    the first floating-point tensor is stored in (LLaDA's config names none; its weights are bfloat16)."""
    if device.type == "cpu":
        return torch.float32
    named = str(raw.get("torch_dtype") or raw.get("dtype") or "").replace("torch.", "")
    if named in DTYPES:
        return DTYPES[named]
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                stored = [STORED_DTYPES.get(f.get_slice(name).get_dtype()) for name in f.keys()]
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{file}: corrupt or unreadable safetensors file ({err})") from err
        if any(stored):
            return next(d for d in stored if d is not None)
    return torch.float16


def _build_preset(config, name: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Deterministic weights from a seeded generator: N(0, 0.02) matrices and biases, ones for norms."""
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = build_model(config)
    for full_name, p in list(model.named_parameters()):
        module_name, _, attr = full_name.rpartition(".")
        if p.ndim > 1 or attr == "bias":
            value = torch.randn(p.shape, generator=generator) * 0.02
        else:  # norm weights
            value = torch.ones(p.shape)
        param = nn.Parameter(value.to(device=device, dtype=dtype), requires_grad=False)
        model.get_submodule(module_name)._parameters[attr] = param
    model.name_or_path = name
    return model.eval()


def _weight_files(path: Path) -> tuple[dict[Path, list[str] | None], Path]:
    """Safetensors files of a checkpoint -> the tensor names the index assigns them (None: all), and the
    file that lists the checkpoint's tensors (the index, or the single file)."""
    index = path / "model.safetensors.index.json"
    check_link(index)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{index}: unreadable shard index ({err})") from err
        files: dict[Path, list[str]] = defaultdict(list)
        for name, shard in weight_map.items():
            files[path / shard].append(name)
        for file, names in files.items():
            check_link(file)
            if not file.is_file():
                raise CheckpointError(f"{file}: shard named by {index.name} is missing "
                                      f"(it holds tensor {names[0]!r} and {len(names) - 1} more)")
        return dict(files), index
    single = path / "model.safetensors"
    check_link(single)
    if not single.is_file():
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    return {single: None}, single


def _load_weights(model: nn.Module, files: dict, source: Path, quant_config: dict | None, dtype,
                  device) -> None:
    expected = dict(model.state_dict(keep_vars=True))
    # int4 layers are built as soon as their tensors (and bias) are in, so their packed parts never pile up
    pending: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)  # int4 layer -> its tensors so far
    where: dict[str, Path] = {}
    for file, names in files.items():
        for name, tensor in _read_tensors(file, names):
            module_name, _, attr = name.rpartition(".")
            if attr in INT4_SUFFIXES:
                pending[module_name][attr], where[module_name] = tensor, file
            else:
                _assign(model, name, tensor, expected, file, dtype, device)
            if module_name in pending and _int4_ready(model, module_name, pending[module_name]):
                _assign_int4(model, module_name, pending.pop(module_name), quant_config, where[module_name],
                             dtype, device)
    # a layer stored as int4 has no `.weight`; anything else still on meta was never in the checkpoint
    _check_missing(source, [n for n, p in model.state_dict(keep_vars=True).items()
                            if p.is_meta and not (n.endswith(".weight") and n.rpartition(".")[0] in pending)])
    for module_name, parts in pending.items():  # incomplete layers: _assign_int4 names what is missing
        _assign_int4(model, module_name, parts, quant_config, where[module_name], dtype, device)


def load_tensors(model: nn.Module, path: Path, keep: Callable[[str], bool],
                 dtype: torch.dtype = torch.float32) -> None:
    """Load the float tensors of the checkpoint at `path` whose names pass `keep` into `model` (built on the
    `meta` device) on the CPU, with `load_model`'s checks: how quantization streams a model block by block."""
    files, source = _weight_files(path)
    expected = dict(model.state_dict(keep_vars=True))
    for file, names in files.items():
        for name, tensor in _read_tensors(file, names, keep):
            _assign(model, name, tensor, expected, file, dtype, torch.device("cpu"))
    _check_missing(source, [n for n, p in model.state_dict(keep_vars=True).items() if p.is_meta and keep(n)])


def _check_missing(source: Path, missing: list[str]) -> None:
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise CheckpointError(f"{source}: {len(missing)} tensor(s) the config needs are missing: {shown}")


def _int4_ready(model: nn.Module, module_name: str, parts: dict[str, torch.Tensor]) -> bool:
    """All int4 tensors of a layer are read, and its bias (if the layer has one) is loaded."""
    if any(s not in parts for s in INT4_SUFFIXES):
        return False
    try:
        bias = getattr(model.get_submodule(module_name), "bias", None)
    except AttributeError:  # not a module of this model: _assign_int4 reports it
        return True
    return bias is None or not bias.is_meta


def _read_tensors(file: Path, names: list[str] | None, keep: Callable[[str], bool] = lambda name: True):
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            stored = set(f.keys())
            for name in filter(keep, names if names is not None else sorted(stored)):
                if name not in stored:
                    raise CheckpointError(f"{file}: tensor {name!r} listed in the index is not in the file")
                yield name, f.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: corrupt or unreadable safetensors file ({err})") from err


def _assign(model, name, tensor, expected, file, dtype, device) -> None:
    target = expected.get(name)
    if target is None:
        raise CheckpointError(f"{file}: unexpected tensor {name!r} for {type(model).__name__}")
    if tuple(tensor.shape) != tuple(target.shape):
        raise CheckpointError(f"{file}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                              f"the config expects {tuple(target.shape)}")
    if not tensor.is_floating_point():
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {tensor.dtype}, expected a float type")
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attr] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)


def _assign_int4(model, module_name, parts, quant_config, file, dtype, device) -> None:
    parent_name, _, child = module_name.rpartition(".")
    try:
        linear = model.get_submodule(module_name)
    except AttributeError as err:
        raise CheckpointError(f"{file}: int4 tensors for unknown module {module_name!r}") from err
    if not isinstance(linear, nn.Linear):
        raise CheckpointError(f"{file}: int4 tensors for {module_name!r}, which is not a Linear layer")
    try:
        bias = None if linear.bias is None or linear.bias.is_meta else linear.bias
        q = int4_linear_from_tensors(parts, quant_config, linear.in_features, linear.out_features,
                                     bias=bias, dtype=dtype, device=device)
    except ValueError as err:
        raise CheckpointError(f"{file}: layer {module_name!r}: {err}") from err
    setattr(model.get_submodule(parent_name), child, q)
