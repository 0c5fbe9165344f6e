"""Per-weight quantizers on `W [N, K]` with per-group symmetric scales: round-to-nearest, the per-group
clipping search, and GPTQ (Frantar et al. 2022, arXiv:2210.17323, Algorithm 1: Cholesky form of the
inverse Hessian, dampening, lazy batch updates; optional act-order with static groups).

Scales follow `inkwell.kernels.packing`: `scale = absmax / qmax` (qmax = 7 for 4 bits, so no weight is
clipped), rounded to the checkpoint's scale dtype *before* the codes are chosen, so that the codes are
those of the stored scales. For bits = 4 `rtn` equals `kernels.packing.quantize_groups` (tested).
"""

from __future__ import annotations

import torch


def code_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def round_scales(scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales as they will be stored (float32 values of `dtype`), zeros replaced by 1."""
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    return scales.to(dtype).float()


def absmax_scales(w: torch.Tensor, group_size: int, bits: int, dtype: torch.dtype,
                  ratio: torch.Tensor | float = 1.0) -> torch.Tensor:
    """[N, K/g] scales `ratio * absmax / qmax` of w [N, K], rounded to `dtype`."""
    n, k = w.shape
    absmax = w.float().abs().view(n, k // group_size, group_size).amax(-1)  # [N, G]
    return round_scales(absmax * ratio / code_range(bits)[1], dtype)


def codes(w: torch.Tensor, scales: torch.Tensor, bits: int) -> torch.Tensor:
    """clamp(round(w / s), qmin, qmax) as int8 for w [N, K] and per-group scales [N, G]."""
    lo, hi = code_range(bits)
    s = scales.float().repeat_interleave(w.shape[1] // scales.shape[1], dim=1)
    return torch.round(w.float() / s).clamp_(lo, hi).to(torch.int8)


def dequantize(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return q.float() * scales.float().repeat_interleave(q.shape[1] // scales.shape[1], dim=1)


def rtn(w: torch.Tensor, group_size: int, bits: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (codes int8 [N, K], scales [N, G])."""
    scales = absmax_scales(w, group_size, bits, dtype)
    return codes(w, scales, bits), scales


def clip_search(w: torch.Tensor, hessian: torch.Tensor, group_size: int, bits: int, dtype: torch.dtype,
                clip_min: float, grid: int) -> torch.Tensor:
    """Per-group scales [N, G] choosing, for each group, the clipping ratio α in linspace(1, clip_min, grid)
    minimising the group's output error eᵀ H_gg e, e = w_g - Q_α(w_g) (the weighted Hessian's diagonal
    blocks; AWQ-style clipping, arXiv:2306.00978, with GPTQ's proxy loss). Errors are float64, so near
    ties between ratios fall the same way on any machine."""
    n, k = w.shape
    groups = k // group_size
    h_blocks = torch.stack([hessian[i:i + group_size, i:i + group_size]
                            for i in range(0, k, group_size)]).double()  # [G, g, g]
    best_err = torch.full((n, groups), torch.inf, dtype=torch.float64)
    best = absmax_scales(w, group_size, bits, dtype)
    for ratio in torch.linspace(1.0, clip_min, grid).tolist():
        scales = absmax_scales(w, group_size, bits, dtype, ratio)
        e = (w.double() - dequantize(codes(w, scales, bits), scales).double()).view(n, groups, group_size)
        err = torch.einsum("ngi,gij,ngj->ng", e, h_blocks, e)  # [N, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, scales, best)
    return best


def _inverse_hessian(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag H)·I)^-1 (GPTQ's numerically stable form)."""
    h = hessian.double().clone()
    h += damp * h.diagonal().mean() * torch.eye(len(h), dtype=h.dtype)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq(w: torch.Tensor, hessian: torch.Tensor, group_size: int, bits: int, dtype: torch.dtype, damp: float,
         block_size: int, actorder: bool = False,
         scales: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ of w [N, K] with Hessian [K, K] -> (codes int8 [N, K], scales [N, G]).

    Without `scales`, each group's scale is the absmax of its GPTQ-updated weights when the group is
    reached (the reference implementation); with `scales` (clipping search) or with `actorder` the scales
    are fixed before the sweep ("static groups"), so groups stay contiguous and no g_idx is needed."""
    n, k = w.shape
    w = w.double().clone()
    hessian = hessian.double().clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    w[:, dead] = 0.0
    if scales is None and actorder:
        scales = absmax_scales(w, group_size, bits, dtype)
    perm = torch.argsort(hessian.diagonal(), descending=True) if actorder else torch.arange(k)
    w, hessian = w[:, perm], hessian[perm][:, perm]
    hinv = _inverse_hessian(hessian, damp)
    group_of = perm // group_size  # [K] the (unpermuted) group of each permuted column
    out_scales = scales.clone() if scales is not None else torch.zeros(n, k // group_size)
    q = torch.zeros(n, k, dtype=torch.int8)
    lo, hi = code_range(bits)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, err1 = w[:, i1:i2].clone(), torch.zeros(n, i2 - i1, dtype=w.dtype)
        for i in range(i2 - i1):
            col, g = i1 + i, int(group_of[i1 + i])
            if scales is None and col % group_size == 0:  # lazy: the group's scale from updated weights
                chunk = torch.cat([w1[:, i:], w[:, i2:]], dim=1)[:, :group_size]
                out_scales[:, g] = absmax_scales(chunk.float(), group_size, bits, dtype)[:, 0]
            s = out_scales[:, g].double()
            qc = torch.round(w1[:, i] / s).clamp(lo, hi)
            q[:, col] = qc.to(torch.int8)
            err = (w1[:, i] - qc * s) / hinv[col, col]
            w1[:, i:] -= err[:, None] * hinv[col, col:i2][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of the remaining columns
    inverse = torch.argsort(perm)
    return q[:, inverse], out_scales
