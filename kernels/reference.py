"""The pure-torch int4 matmul: dequantize the `pack-quantized` weight, then `F.linear`.

This is the readable specification of what every int4 path computes, the oracle the Triton kernel and
the CPU path are tested against, and the fallback where neither applies. The weight is dequantized in
the activation dtype: `W = (q * scale)` computed exactly in float32, then rounded once to `x.dtype`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .packing import unpack_int4


def dequantize_int4(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`weight_packed` int32 [N, K/8], `weight_scale` [N, K/g] -> W [N, K] in `dtype`."""
    q = unpack_int4(weight_packed)  # [N, K] int8
    n, k = q.shape
    groups = weight_scale.shape[-1]
    if weight_scale.shape != (n, groups) or groups == 0 or k % groups:
        raise ValueError(f"weight_scale of shape {tuple(weight_scale.shape)} does not fit "
                         f"a [{n}, {k}] weight")
    scale = weight_scale.float().repeat_interleave(k // groups, dim=1)  # [N, K]
    return (q.float() * scale).to(dtype)  # |q| <= 8: the float32 product is exact


def int4_matmul_reference(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] @ W.T (+ bias) -> [..., N] in x's dtype, W from the checkpoint layout."""
    w = dequantize_int4(weight_packed, weight_scale, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
