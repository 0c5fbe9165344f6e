"""Write a model as a Hugging Face-format directory: `config.json` plus `model.safetensors`.

Layers that know their own checkpoint form (an `Int4Linear`'s `checkpoint_tensors()`, the
`pack-quantized` tensors of DESIGN section 5) are written in that form; everything else is the module's
state dict in `dtype`. `load_model` reads the result back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

# safetensors' names of the dtypes a checkpoint holds
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int64: "I64", torch.int32: "I32", torch.int16: "I16",
                      torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


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
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_config(model.config.to_dict() | (config_updates or {}), out, [t.dtype for t in state.values()])
    return out


def write_config(config: dict, out: Path, dtypes: Sequence[torch.dtype]) -> None:
    """`out/config.json`, its `torch_dtype` the most common floating-point dtype of the stored tensors."""
    floats = [d for d in dtypes if d.is_floating_point]
    if floats:
        config = config | {"torch_dtype": str(max(set(floats), key=floats.count)).replace("torch.", "")}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: its name, dtype and shape up front, its values made only when written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]


def write_safetensors(path: str | Path, entries: Sequence[TensorEntry], metadata: dict[str, str]) -> None:
    """Write a safetensors file one tensor at a time: the header (8-byte little-endian length, JSON padded
    to 8 bytes) from the entries' dtypes and shapes, then each tensor's bytes in entry order, so that only
    the tensor being written is in memory. `safetensors.safe_open` reads the result like any other file."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        size = e.dtype.itemsize * int(torch.Size(e.shape).numel())
        header[e.name] = {"dtype": SAFETENSORS_DTYPES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for e in entries:
            tensor = e.produce().detach().cpu().contiguous()
            if tensor.dtype != e.dtype or tuple(tensor.shape) != tuple(e.shape):
                raise ValueError(f"{e.name}: made {tensor.dtype} {tuple(tensor.shape)}, declared {e.dtype} "
                                 f"{tuple(e.shape)}")
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
