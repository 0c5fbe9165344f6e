"""The CPU int4 path: torch's `_weight_int4pack_mm_for_cpu` on weights converted once at load.

Layout (found by experiment with torch 2.13; the tests pin it):
- weight: `_convert_weight_to_int4pack_for_cpu(u, inner_k_tiles)` takes the unsigned codes
  `u = q + 8` as int32 [N, K] and returns uint8 [N, K/2] in a blocked order that depends on N and on
  the CPU's instruction set (on AVX512: blocks of 64 outputs when N % 64 == 0, else of 32, two outputs
  per byte); `inner_k_tiles` is ignored on CPU.
- scales and zeros: `scales_and_zeros` [K/g, N, 2] in the activation dtype, `[..., 0]` the scale and
  `[..., 1]` the zero; the op computes `W = (u - 8) * scale + zero`. A symmetric checkpoint therefore
  maps onto it with zero = 0 and the codes unchanged: `(q + 8 - 8) * scale = q * scale`.
- activations: bf16 is the fast case (fp32 and fp16 run, far slower), so the layer casts to the
  scales' dtype (bf16) at its boundary and back.
Limits (the layer dequantizes once at load outside them): group size in {32, 64, 128, 256},
N a multiple of 16, K a multiple of the group size.
"""

from __future__ import annotations

import torch

from .packing import OFFSET, pack_int4, unpack_int4

GROUP_SIZES = (32, 64, 128, 256)
N_MULTIPLE = 16
INNER_K_TILES = 2  # required by the op's signature; the CPU kernel ignores it


def int4pack_unsupported(n: int, k: int, group_size: int) -> str | None:
    """Why an [N, K] weight with `group_size` cannot use the CPU int4pack path, or None if it can."""
    if group_size not in GROUP_SIZES:
        return f"group size {group_size} is not one of {GROUP_SIZES}"
    if n % N_MULTIPLE:
        return f"out_features {n} is not a multiple of {N_MULTIPLE}"
    if k % group_size:
        return f"in_features {k} is not a multiple of the group size {group_size}"
    return None


def to_int4pack_cpu(weight_packed: torch.Tensor, weight_scale: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Checkpoint layout -> (weight uint8 [N, K/2] in the op's order, scales_and_zeros [K/g, N, 2])."""
    q = unpack_int4(weight_packed.cpu())  # [N, K]
    n, k = q.shape
    reason = int4pack_unsupported(n, k, group_size)
    if reason is not None:
        raise ValueError(f"the CPU int4pack path cannot hold this layer: {reason}")
    weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32) + OFFSET, INNER_K_TILES)
    scale = weight_scale.detach().cpu().to(dtype).T  # [K/g, N]
    scales_and_zeros = torch.stack([scale, torch.zeros_like(scale)], dim=-1).contiguous()  # [K/g, N, 2]
    return weight, scales_and_zeros


def from_int4pack_cpu(weight: torch.Tensor,
                      scales_and_zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `to_int4pack_cpu`: -> (weight_packed int32 [N, K/8], weight_scale [N, K/g]).

    The op's nibble order depends on the CPU's instruction set, so it is not hard-coded: it is found by
    converting probe matrices whose codes spell out, 4 bits at a time, each element's flat index."""
    n, k = weight.shape[0], weight.shape[1] * 2
    if bool(scales_and_zeros[..., 1].ne(0).any()):
        raise ValueError("scales_and_zeros has nonzero zeros: not a symmetric int4 layer")
    source = _int4pack_source_index(n, k)  # flat [N*K] index of the element held by each nibble
    nibbles = torch.stack([weight & 0xF, weight >> 4], dim=-1).reshape(-1)
    u = torch.empty(n * k, dtype=torch.uint8)
    u[source] = nibbles
    q = (u.to(torch.int16) - OFFSET).to(torch.int8).view(n, k)
    return pack_int4(q), scales_and_zeros[..., 0].T.contiguous()


def _int4pack_source_index(n: int, k: int) -> torch.Tensor:
    flat = torch.arange(n * k, dtype=torch.int64)
    source = torch.zeros(n * k, dtype=torch.int64)
    digit = 0
    while 16**digit < n * k:
        probe = ((flat >> (4 * digit)) & 0xF).to(torch.int32).view(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, INNER_K_TILES)
        nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        source |= nibbles << (4 * digit)
        digit += 1
    if n * k > 1 and not torch.equal(torch.sort(source).values, flat):
        raise AssertionError("torch's int4pack layout is not a permutation of the inputs")
    return source


def int4pack_mm_cpu(x: torch.Tensor, weight: torch.Tensor, scales_and_zeros: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    """x [M, K] (any float dtype; computed in the scales' dtype, bf16) @ W.T -> [M, N] in x's dtype."""
    if x.ndim != 2 or x.shape[1] != weight.shape[1] * 2:
        raise ValueError(f"x must be [M, {weight.shape[1] * 2}], got {tuple(x.shape)}")
    if weight.dtype != torch.uint8 or scales_and_zeros.ndim != 3 or scales_and_zeros.shape[1:] != (
            weight.shape[0], 2):
        raise ValueError(f"not an int4pack CPU layout: weight {weight.dtype} {tuple(weight.shape)}, "
                         f"scales_and_zeros {tuple(scales_and_zeros.shape)}")
    xc = x.to(scales_and_zeros.dtype).contiguous()
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(xc, weight, group_size, scales_and_zeros)
    return out.to(x.dtype)
