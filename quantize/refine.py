"""FAIR-Calib Stage II, last step: refine the per-group scales of one block with the integer codes fixed,
minimising the prior-weighted hidden-state error at the block output
    L(s) = Σ_i w_i ||h^q_i(s) - h*_i||² / Σ_i w_i
where h* is the FP teacher's output of the block (DESIGN section 7).

*(reconstruction)* The paper gives no optimiser: Adam on log-scales (s = s0·exp θ, θ = 0 at the start),
seeded mini-batches of calibration sequences, the result rounded to the scale dtype and kept only if
it lowers L on the whole calibration set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gptq import round_scales
from .methods import QuantizedWeight

Forward = Callable[[int, object, dict[str, torch.Tensor]], torch.Tensor]


def _weights(block_q: dict[str, QuantizedWeight], theta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dequantized weights, in theta's dtype, with the scales s0·exp θ."""
    out = {}
    for name, qw in block_q.items():
        s = qw.scales.to(theta[name].dtype) * theta[name].exp()  # [N, G]
        out[f"{name}.weight"] = qw.q.to(s.dtype) * s.repeat_interleave(qw.group_size, dim=1)
    return out


def _loss(forward, weights, targets, token_w, rows=None) -> torch.Tensor:
    total, norm = 0.0, 0.0
    for b in range(len(targets)):
        sel = slice(None) if rows is None else rows[b]
        if rows is not None and len(sel) == 0:
            continue
        out = forward(b, sel, weights)  # [b, L, D]
        err = (out - targets[b][sel]).pow(2).sum(-1)  # [b, L]
        total = total + (token_w[b][sel] * err).sum()
        norm += float(token_w[b][sel].sum())
    return total / max(norm, 1e-12)


def refine_scales(forward: Forward, block_q: dict[str, QuantizedWeight], targets: list[torch.Tensor],
                  token_w: list[torch.Tensor], steps: int, lr: float, batch: int, scale_dtype: torch.dtype,
                  seed: int, dtype: torch.dtype = torch.float32) -> tuple[dict[str, QuantizedWeight], dict]:
    """Refined copies of `block_q` (codes unchanged) and a report {before, after, kept}.

    `forward(b, rows, weights)` is the block's output [rows, L, D] on calibration batch b with its Linear
    weights replaced by `weights`; targets [b, L, D] and token_w [b, L] are per calibration batch. The
    optimisation runs in `dtype` (float64: the same refined scales on any machine)."""
    token_w = [w.to(dtype) for w in token_w]
    theta = {name: torch.zeros_like(qw.scales, dtype=dtype, requires_grad=True)
             for name, qw in block_q.items()}
    with torch.no_grad():
        before = float(_loss(forward, _weights(block_q, theta), targets, token_w))
    opt = torch.optim.Adam(theta.values(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    sizes = [len(t) for t in targets]
    total = sum(sizes)
    for _ in range(steps):
        pick = torch.randperm(total, generator=g)[:batch]
        rows, at = [], 0
        for n in sizes:
            rows.append((pick[(pick >= at) & (pick < at + n)] - at).sort().values)
            at += n
        opt.zero_grad()
        with torch.enable_grad():
            loss = _loss(forward, _weights(block_q, theta), targets, token_w, rows)
            loss.backward()
        opt.step()
    refined = {name: QuantizedWeight(qw.q, round_scales(qw.scales * theta[name].detach().exp().float(),
                                                        scale_dtype))
               for name, qw in block_q.items()}
    zero = {name: torch.zeros_like(qw.scales, dtype=dtype) for name, qw in refined.items()}
    with torch.no_grad():
        after = float(_loss(forward, _weights(refined, zero), targets, token_w))
    kept = after < before
    return (refined if kept else block_q), {"before": before, "after": after, "kept": kept}
