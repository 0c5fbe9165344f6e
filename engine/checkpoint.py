"""Write a model as a Hugging Face-format directory: `config.json` plus `model.safetensors`.

Layers that know their own checkpoint form (an `Int4Linear`'s `checkpoint_tensors()`, the
`pack-quantized` tensors of DESIGN section 5) are written in that form; everything else is the module's
state dict in `dtype`. `load_model` reads the result back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


def checkpoint_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensor name -> tensor, as stored on disk."""
    state: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules():
        own = getattr(module, "checkpoint_tensors", None)
        if own is not None:
            state.update({f"{prefix}.{k}": v for k, v in own().items()})
    covered = {name.rpartition(".")[0] for name in state}
    for name, tensor in model.state_dict().items():
        if name.rpartition(".")[0] in covered:
            continue
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[name] = tensor
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_model(model: nn.Module, out_dir: str | Path, dtype: torch.dtype | None = None,
               config_updates: dict | None = None) -> Path:
    """Write `model` (its `config.to_dict()` updated with `config_updates`) to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(model, dtype)
    config = model.config.to_dict() | (config_updates or {})
    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    if floats:
        config["torch_dtype"] = str(max(set(floats), key=floats.count)).replace("torch.", "")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out
