"""`Int4Linear`: a Linear layer whose weight is int4 (DESIGN section 5), and the loader's entry point.

A layer is built once, at load, from the checkpoint tensors (`weight_packed`, `weight_scale`,
`weight_shape`), converted to the one serving layout of its device, and only that layout is kept:

| layout         | where                               | buffers                                           |
|----------------|-------------------------------------|---------------------------------------------------|
| `int4pack_cpu` | CPU, within torch's int4pack limits | uint8 [N, K/2], bf16 scales_and_zeros [K/g, N, 2] |
| `qweight`      | CUDA (Triton), or on request        | int32 qweight [K/8, N], scales [K/g, N]           |
| `dequantized`  | CPU outside the limits (logged)     | dense weight [N, K], weight_scale [N, K/g]        |

Every int4 matmul goes through the custom op `inkwell::int4_matmul`. `checkpoint_tensors()` turns the
serving layout back into the checkpoint form, which `engine.checkpoint.save_model` writes.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from inkwell.kernels import (
    check_int4_tensors,
    dequantize_int4,
    from_int4pack_cpu,
    int4_matmul,
    int4pack_unsupported,
    pack_int4,
    quantize_groups,
    to_int4pack_cpu,
)
from torch import nn

logger = logging.getLogger(__name__)

INT4_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")
Layout = Literal["auto", "int4pack_cpu", "qweight", "dequantized"]
LAYOUTS = ("auto", "int4pack_cpu", "qweight", "dequantized")
CHECKPOINT_SCALE_DTYPES = (torch.float16, torch.bfloat16)
DEFAULT_GROUP_SIZE = 128


def choose_layout(device: torch.device, n: int, k: int, group_size: int) -> tuple[str, str | None]:
    """(layout, why the layer is dequantized or None) for an [N, K] weight on `device`."""
    if device.type == "cuda":
        return "qweight", None
    if device.type == "cpu":
        reason = int4pack_unsupported(n, k, group_size)
        return ("int4pack_cpu", None) if reason is None else ("dequantized", reason)
    return "dequantized", f"no int4 kernel for device type {device.type!r}"


def int4_checkpoint_tensors(weight_packed: torch.Tensor, weight_scale: torch.Tensor, out_features: int,
                            in_features: int) -> dict[str, torch.Tensor]:
    """A layer's `pack-quantized` tensors (DESIGN section 5), by name suffix: `weight_packed` int32
    [N, K/8], `weight_scale` [N, K/g] in its checkpoint dtype, `weight_shape` int64 [N, K]."""
    return {"weight_packed": weight_packed.cpu().contiguous(),
            "weight_scale": weight_scale.cpu().contiguous(),
            "weight_shape": torch.tensor([out_features, in_features], dtype=torch.int64)}


class Int4Linear(nn.Module):
    """`forward(x [..., K]) -> [..., N]` in x's dtype, with W = q * scale stored as int4."""

    def __init__(self, weight_packed: torch.Tensor, weight_scale: torch.Tensor, group_size: int | None = None,
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", layout: Layout = "auto") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown int4 layout {layout!r}; allowed: {LAYOUTS}")
        device = torch.device(device)
        self.out_features, self.in_features, self.group_size = check_int4_tensors(
            weight_packed, weight_scale, None, group_size)
        scale_dtype = weight_scale.dtype
        self.scale_dtype = scale_dtype if scale_dtype in CHECKPOINT_SCALE_DTYPES else torch.float16
        self.layout, self.dequantized_reason = choose_layout(
            device, self.out_features, self.in_features, self.group_size)
        if layout != "auto":
            self.layout, self.dequantized_reason = layout, ("requested" if layout == "dequantized" else None)
        self.register_parameter("bias", None if bias is None else nn.Parameter(
            bias.detach().to(device=device, dtype=dtype), requires_grad=False))
        self._store(weight_packed, weight_scale, dtype, device)

    def _store(self, weight_packed: torch.Tensor, weight_scale: torch.Tensor, dtype: torch.dtype,
               device: torch.device) -> None:
        # serving buffers are not in the state dict: checkpoint_tensors() is the layer's stored form
        if self.layout == "int4pack_cpu":
            weight, scales_and_zeros = to_int4pack_cpu(weight_packed, weight_scale, self.group_size)
            self.register_buffer("weight_int4pack", weight.to(device), persistent=False)  # [N, K/2]
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(device), persistent=False)
        elif self.layout == "qweight":
            self.register_buffer("qweight", weight_packed.T.to(device).contiguous(), persistent=False)
            self.register_buffer("scales", weight_scale.T.to(device, dtype).contiguous(), persistent=False)
        else:
            weight = dequantize_int4(weight_packed, weight_scale, dtype).to(device)  # [N, K]
            self.register_buffer("weight", weight, persistent=False)
            self.register_buffer("weight_scale", weight_scale.to(device), persistent=False)
            logger.warning("int4 layer [%d x %d], group %d, dequantized at load (%s): it keeps a dense "
                           "%s weight", self.out_features, self.in_features, self.group_size,
                           self.dequantized_reason, dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = DEFAULT_GROUP_SIZE,
                    layout: Layout = "auto", scale_dtype: torch.dtype | None = None) -> Int4Linear:
        """Round-to-nearest int4 of a float `nn.Linear` (`kernels.packing.quantize_groups`).

        `scale_dtype=None` picks bf16 when the layer will serve on the CPU int4pack path (so the codes
        are rounded against the scales it computes with), fp16 otherwise."""
        w = linear.weight.detach()  # [N, K]
        if scale_dtype is None:
            auto, _ = choose_layout(w.device, w.shape[0], w.shape[1], group_size)
            scale_dtype = torch.bfloat16 if (layout if layout != "auto" else auto) == "int4pack_cpu" \
                else torch.float16
        q, scales = quantize_groups(w, group_size, scale_dtype)
        return cls(pack_int4(q), scales, group_size, linear.bias, dtype=w.dtype, device=w.device,
                   layout=layout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., K] -> [..., N]
        if self.layout == "dequantized":
            return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.layout == "int4pack_cpu":
            out = int4_matmul(x, self.weight_int4pack, self.scales_and_zeros, self.group_size)
        else:  # the kernel wants activations in the scales' dtype: cast at the layer boundary
            out = int4_matmul(x.to(self.scales.dtype), self.qweight, self.scales, self.group_size).to(x.dtype)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The layer in the `pack-quantized` checkpoint form, plus `bias` when it has one.

        `engine.checkpoint` writes these instead of the module's state dict (and skips every state-dict
        entry of this module, the bias included, hence `bias` here). Scales come back in the checkpoint
        dtype they were loaded in; on the int4pack path they hold the bf16 values the layer computes with."""
        if self.layout == "int4pack_cpu":
            weight_packed, weight_scale = from_int4pack_cpu(self.weight_int4pack.cpu(),
                                                            self.scales_and_zeros.cpu())
        elif self.layout == "qweight":
            weight_packed, weight_scale = self.qweight.T.contiguous(), self.scales.T
        else:
            weight_packed, weight_scale = self._requantize_dense(), self.weight_scale
        out = int4_checkpoint_tensors(weight_packed, weight_scale.to(self.scale_dtype), self.out_features,
                                      self.in_features)
        if self.bias is not None:
            out["bias"] = self.bias.detach()
        return out

    def _requantize_dense(self) -> torch.Tensor:
        # the dense weight is q * s rounded once to its dtype (|q| <= 8), so round(W / s) recovers q exactly
        s = self.weight_scale.float().repeat_interleave(self.group_size, dim=1)  # [N, K]
        q = torch.where(s == 0, 0.0, torch.round(self.weight.float() / s)).clamp(-8, 7)
        return pack_int4(q.to(torch.int8))

    def resident_bytes(self) -> int:
        """Bytes held by the weight in its serving layout (bias excluded)."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, layout={self.layout}")


def parse_quant_config(quant_config: dict | None) -> tuple[int, ...] | None:
    """The group sizes a `quantization_config` allows, or None without one. ValueError names the problem."""
    if quant_config is None:
        return None
    method, fmt = quant_config.get("quant_method"), quant_config.get("format")
    if method != "compressed-tensors":
        raise ValueError(f"quantization_config.quant_method is {method!r}; supported: 'compressed-tensors'")
    groups = quant_config.get("config_groups") or {}
    if not groups:
        raise ValueError("quantization_config has no config_groups")
    sizes = []
    for name, group in groups.items():
        weights = group.get("weights") or {}
        fmt_here = group.get("format") or fmt
        if fmt_here != "pack-quantized":
            raise ValueError(f"config group {name!r}: format {fmt_here!r}; supported: 'pack-quantized'")
        want = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group"}
        for key, value in want.items():
            if weights.get(key) != value:
                raise ValueError(f"config group {name!r}: weights.{key} is {weights.get(key)!r}; "
                                 f"supported: {value!r}")
        if weights.get("actorder") not in (None, "weight"):
            raise ValueError(f"config group {name!r}: actorder {weights.get('actorder')!r} needs g_idx; "
                             f"supported: null or 'weight'")
        if not isinstance(weights.get("group_size"), int) or weights["group_size"] <= 0:
            raise ValueError(f"config group {name!r}: group_size must be a positive int, "
                             f"got {weights.get('group_size')!r}")
        sizes.append(weights["group_size"])
    return tuple(sorted(set(sizes)))


def int4_linear_from_tensors(parts: dict[str, torch.Tensor], quant_config: dict | None, in_features: int,
                             out_features: int, bias: torch.Tensor | None, dtype: torch.dtype,
                             device: torch.device) -> nn.Module:
    """The loader's entry point: one layer's int4 tensors -> `Int4Linear`. ValueError names the problem."""
    missing = [s for s in INT4_SUFFIXES if s not in parts]
    if missing:
        raise ValueError(f"int4 layer is missing {', '.join(missing)} (has {', '.join(sorted(parts))})")
    sizes = parse_quant_config(quant_config)
    only = sizes[0] if sizes and len(sizes) == 1 else None  # several groups: infer from the shapes
    packed, scale, shape = (parts[s] for s in INT4_SUFFIXES)
    n, k, group_size = check_int4_tensors(packed, scale, shape, only)
    if sizes and group_size not in sizes:
        raise ValueError(f"weight_scale implies group size {group_size}, quantization_config allows {sizes}")
    if (n, k) != (out_features, in_features):
        raise ValueError(f"int4 weight is [{n}, {k}] but the model expects [{out_features}, {in_features}]")
    return Int4Linear(packed, scale, group_size, bias, dtype=dtype, device=device)


def quantization_config(group_size: int, ignore: list[str], actorder: str | None = None) -> dict:
    """The `config.json` `quantization_config` of DESIGN section 5 (without the `inkwell` block)."""
    return {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": group_size,
            "actorder": actorder}}},
        "ignore": list(ignore),
    }


def quantize_model_rtn(model: nn.Module, group_size: int = DEFAULT_GROUP_SIZE,
                       skip: tuple[str, ...] | None = None, layout: Layout = "auto") -> dict:
    """Replace every `nn.Linear` but `skip` (default: the output head) by its RTN `Int4Linear`, in place.

    Returns the `quantization_config` to save with the model."""
    skip = (model.output_head_name,) if skip is None else tuple(skip)
    targets = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in skip]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, Int4Linear.from_linear(getattr(parent, child), group_size, layout))
    return quantization_config(group_size, [s for s in skip if s])


def resident_weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of weights held in memory: `int4` (int4 layouts, scales included), `dequantized` (int4 layers
    kept dense), `float` (every other parameter and buffer), and `total`. Shared tensors count once."""
    seen: set[int] = set()
    report = {"int4": 0, "dequantized": 0, "float": 0}
    for module in model.modules():
        kind = "float"
        if isinstance(module, Int4Linear):
            kind = "dequantized" if module.layout == "dequantized" else "int4"
        for name, t in [*module.named_buffers(recurse=False), *module.named_parameters(recurse=False)]:
            if t.data_ptr() in seen or t.is_meta:
                continue
            seen.add(t.data_ptr())
            report["float" if name == "bias" else kind] += t.numel() * t.element_size()
    report["total"] = sum(report.values())
    return report
