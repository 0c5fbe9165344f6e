"""The int4 `pack-quantized` weight format (DESIGN section 5): pack/unpack, validation, and the per-group
symmetric quantizer shared with `inkwell.quantize`.

A Linear weight `W [N, K]` (N = out_features, K = in_features) is stored as three tensors:

    weight_packed  int32  [N, K/8]  symmetric codes q in [-8, 7], stored unsigned as u = q + 8
    weight_scale   fp16/bf16 [N, K/g]  one scale per group of g consecutive inputs
    weight_shape   int64  [2]       [N, K]

and dequantizes as `W[n, k] = q[n, k] * weight_scale[n, k // g]`.

Bit layout of one int32 word: it holds the 8 consecutive inputs k = 8j .. 8j+7 of row n, lowest bits
first, so input 8j+i sits in bits [4i, 4i+4) of `weight_packed[n, j]`:

    bit   31..28  27..24  23..20  19..16  15..12  11..8   7..4    3..0
    code  u[8j+7] u[8j+6] u[8j+5] u[8j+4] u[8j+3] u[8j+2] u[8j+1] u[8j+0]

The word is a two's-complement int32, so a word whose top nibble is >= 8 is negative. This is the layout
of `compressed_tensors`' `pack_to_int32(q, num_bits=4)`, and `weight_packed.T` ([K/8, N]) is
bit-identical to GPTQ's `qweight`.

Quantization (round to nearest, RTN): `scale = absmax(group) / 7`, `q = clamp(round(w / scale), -8, 7)`.
Dividing by 7 (not 8, nor compressed-tensors' 7.5) maps the largest magnitude exactly onto +-7, so no
weight is ever clipped and every error is at most scale/2; the price is that code -8 goes unused. An
all-zero group gets scale 1 (q = 0) so that no scale is zero.
"""

from __future__ import annotations

import torch

PACK_FACTOR = 8  # int4 values per int32 word
QMIN, QMAX = -8, 7
OFFSET = 8  # stored code u = q + OFFSET, in 0..15
SCALE_DIVISOR = 7.0  # scale = absmax / SCALE_DIVISOR (see module docstring)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SHIFTS = tuple(4 * i for i in range(PACK_FACTOR))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Symmetric codes `q` int8 [N, K] in [-8, 7] -> `weight_packed` int32 [N, K/8]."""
    if q.dtype != torch.int8:
        raise ValueError(f"pack_int4 expects int8 codes, got {q.dtype}")
    if q.ndim != 2 or q.shape[1] % PACK_FACTOR:
        raise ValueError(f"pack_int4 expects a 2-d [N, K] tensor with K a multiple of 8, "
                         f"got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
        raise ValueError(f"int4 codes must lie in [{QMIN}, {QMAX}], got [{int(q.min())}, {int(q.max())}]")
    u = (q.to(torch.int64) + OFFSET).view(q.shape[0], -1, PACK_FACTOR)  # [N, K/8, 8]
    shifts = torch.tensor(_SHIFTS, dtype=torch.int64, device=q.device)
    words = (u << shifts).sum(dim=-1)  # [N, K/8], in [0, 2**32): distinct nibbles, so sum == bitwise or
    words = torch.where(words >= 2**31, words - 2**32, words)  # reinterpret as two's-complement int32
    return words.to(torch.int32)


def unpack_int4(weight_packed: torch.Tensor) -> torch.Tensor:
    """`weight_packed` int32 [N, K/8] -> symmetric codes int8 [N, K] in [-8, 7]."""
    if weight_packed.dtype != torch.int32:
        raise ValueError(f"weight_packed must be int32, got {weight_packed.dtype}")
    if weight_packed.ndim != 2:
        raise ValueError(f"weight_packed must be 2-d [N, K/8], got shape {tuple(weight_packed.shape)}")
    shifts = torch.tensor(_SHIFTS, dtype=torch.int32, device=weight_packed.device)
    u = (weight_packed.unsqueeze(-1) >> shifts) & 0xF  # [N, K/8, 8]; & 0xF undoes the sign extension
    return (u - OFFSET).to(torch.int8).reshape(weight_packed.shape[0], -1)


def group_scales(w: torch.Tensor, group_size: int, scale_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """RTN scales `absmax / 7` of `w [N, K]` per group of `group_size` inputs -> [N, K/g] in `scale_dtype`."""
    n, k = _check_weight(w, group_size)
    absmax = w.detach().float().abs().view(n, k // group_size, group_size).amax(dim=-1)  # [N, K/g]
    scales = torch.where(absmax > 0, absmax / SCALE_DIVISOR, torch.ones_like(absmax))
    return scales.to(scale_dtype)


def quantize_with_scales(w: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes int8 [N, K] of `w [N, K]` for given per-group `scales [N, K/g]`: clamp(round(w / s), -8, 7).

    Divides by the scales as stored (after their rounding to fp16/bf16), in float32, as compressed-tensors'
    `quantize` does, so the codes are those its compressor would write for the same scales."""
    n, k = _check_weight(w, group_size)
    if tuple(scales.shape) != (n, k // group_size):
        raise ValueError(f"scales must have shape {(n, k // group_size)}, got {tuple(scales.shape)}")
    s = scales.float().repeat_interleave(group_size, dim=1)  # [N, K]
    return torch.round(w.detach().float() / s).clamp_(QMIN, QMAX).to(torch.int8)


def quantize_groups(w: torch.Tensor, group_size: int,
                    scale_dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group symmetric RTN of `w [N, K]` -> (codes int8 [N, K], scales [N, K/g] in `scale_dtype`)."""
    scales = group_scales(w, group_size, scale_dtype)
    return quantize_with_scales(w, scales, group_size), scales


def _check_weight(w: torch.Tensor, group_size: int) -> tuple[int, int]:
    if w.ndim != 2:
        raise ValueError(f"expected a 2-d weight [N, K], got shape {tuple(w.shape)}")
    n, k = w.shape
    if group_size <= 0 or group_size % PACK_FACTOR or k % group_size:
        raise ValueError(f"group_size must be a positive multiple of 8 dividing in_features {k}, "
                         f"got {group_size}")
    return n, k


def check_int4_tensors(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                       weight_shape: torch.Tensor | None = None,
                       group_size: int | None = None) -> tuple[int, int, int]:
    """Validate the three checkpoint tensors of one layer; return (N, K, group_size).

    Raises ValueError naming the tensor and what is wrong with it. `group_size=None` infers it from
    the shapes (K / number of scale columns)."""
    if weight_packed.dtype != torch.int32:
        raise ValueError(f"weight_packed must be int32, got {weight_packed.dtype}")
    if weight_packed.ndim != 2:
        raise ValueError(f"weight_packed must be 2-d [N, K/8], got shape {tuple(weight_packed.shape)}")
    n, k = weight_packed.shape[0], weight_packed.shape[1] * PACK_FACTOR
    if weight_shape is not None:
        if weight_shape.dtype not in (torch.int64, torch.int32) or tuple(weight_shape.shape) != (2,):
            raise ValueError(f"weight_shape must be an int64 tensor of 2 elements [N, K], got "
                             f"{weight_shape.dtype} of shape {tuple(weight_shape.shape)}")
        if tuple(int(v) for v in weight_shape) != (n, k):
            raise ValueError(f"weight_shape says {[int(v) for v in weight_shape]} but weight_packed "
                             f"{tuple(weight_packed.shape)} holds [N, K] = [{n}, {k}] "
                             "(K must be a multiple of 8)")
    if weight_scale.dtype not in SCALE_DTYPES:
        raise ValueError(f"weight_scale must be float16, bfloat16 or float32, got {weight_scale.dtype}")
    if weight_scale.ndim != 2 or weight_scale.shape[0] != n or weight_scale.shape[1] == 0:
        raise ValueError(f"weight_scale must be 2-d [N, K/group_size] with N = {n}, "
                         f"got shape {tuple(weight_scale.shape)}")
    groups = weight_scale.shape[1]
    if group_size is None:
        if k % groups:
            raise ValueError(f"weight_scale has {groups} groups, which do not divide in_features {k}")
        group_size = k // groups
    if group_size <= 0 or k % group_size or k // group_size != groups:
        whole = group_size > 0 and k % group_size == 0
        need = f"{k // group_size} groups" if whole else "a whole number of groups"
        raise ValueError(f"group_size {group_size} does not fit: in_features {k} needs {need}, "
                         f"weight_scale has {groups}")
    if not bool(torch.isfinite(weight_scale).all()):
        raise ValueError("weight_scale contains inf or NaN")
    return n, k, group_size
