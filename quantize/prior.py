"""FAIR-Calib Stage I: the per-position prior from FP-teacher rollouts (DESIGN section 7).

For window position i and rollouts r = 1..R of T steps, with τ_i the step committing i:
    F_i = mean_r λ0(τ_i),  λ0(t) = (T - t + 1) / T at the 1-based commit step t  *(reconstruction)*
    R_i = mean_r mean_{t <= τ_i} c̃(t, i),  c̃(t, i) = p_top1(t, i) / max_{j masked at t} p_top1(t, j)
                                                                            *(reconstruction)*
    w = norm(F) + λ1 · norm(R), norm = scale to mean 1, λ1 = 0.5, then w scaled to mean 1
                                                                            *(reconstruction)*
Ablations: `uniform` (w = 1 everywhere, no floor), `frontier` (norm(F)), `reliability` (norm(R)) and the
paper-literal `additive` accumulation w_i = Σ_r Σ_t [λ0(t) 1{i committed at t} + λ1 c̃(t, i) 1{i masked
at t}]. Positions outside the window and response positions after the teacher's first stop id get the
floor (`token_weights`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .trajectory import Trajectories

logger = logging.getLogger(__name__)
FLAT_RATIO = 1.5  # a prior whose max/min is below this is reported as (nearly) flat


def early_boost(step: torch.Tensor, steps: int) -> torch.Tensor:
    """λ0 at the 0-based commit step: (T - t + 1) / T with t = step + 1, so 1 at the first step."""
    return (steps - step).double() / steps


def relative_confidence(top1: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """c̃ [..., K]: top-1 probability over the step's maximum among masked positions (0 where unmasked).

    top1, masked: [..., K] (one state per leading index)."""
    top1 = top1.double().masked_fill(~masked, 0.0)
    peak = top1.amax(-1, keepdim=True).clamp_min(1e-12)
    return top1 / peak


def frontier_reliability(traj: Trajectories) -> tuple[torch.Tensor, torch.Tensor]:
    """F [K] and R [K] (unnormalised) from rollouts with recorded top-1 probabilities."""
    assert traj.top1 is not None, "Stage I needs the teacher's top-1 probabilities"
    steps = traj.top1.shape[1]
    f = early_boost(traj.commit_step, steps).mean(0)  # [K]
    t = torch.arange(steps)[None, :, None]  # [1, T, 1]
    masked = traj.commit_step[:, None, :] >= t  # [R, T, K]: i still masked before step t
    c = relative_confidence(traj.top1, masked)  # [R, T, K]
    r = (c.sum(1) / masked.sum(1).clamp_min(1)).mean(0)  # mean over masked steps, then rollouts
    return f, r


def additive(traj: Trajectories, lambda1: float) -> torch.Tensor:
    """The paper-literal accumulation w_i += λ0(t)·1{commit} + λ1·c̃·1{masked}, summed over rollouts."""
    assert traj.top1 is not None, "Stage I needs the teacher's top-1 probabilities"
    steps = traj.top1.shape[1]
    t = torch.arange(steps)[None, :, None]
    masked = traj.commit_step[:, None, :] >= t
    c = relative_confidence(traj.top1, masked)
    return (early_boost(traj.commit_step, steps) + lambda1 * c.sum(1)).sum(0)


def mean_one(x: torch.Tensor) -> torch.Tensor:
    return x / x.mean().clamp_min(1e-12)


@dataclass
class Prior:
    """The Stage I prior over the K window positions, with its ingredients."""

    mode: str
    weights: list[float]  # [K], mean 1
    frontier: list[float]  # F [K] (unnormalised); empty for uniform
    reliability: list[float]  # R [K]
    lambda1: float
    floor: float
    rollouts: int
    steps: int

    @property
    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.weights, dtype=torch.float64)

    def ratio(self) -> float:
        w = self.tensor
        return float(w.max() / w.min())

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Prior:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: not a Stage I prior file ({err})") from err


def build_prior(traj: Trajectories | None, mode: str, lambda1: float, floor: float, window: int) -> Prior:
    """The prior of `mode` (fair, frontier, reliability, additive, uniform) from Stage I rollouts."""
    if mode == "uniform":
        return Prior(mode, [1.0] * window, [], [], lambda1, floor, 0, 0)
    f, r = frontier_reliability(traj)
    combos = {"fair": lambda: mean_one(f) + lambda1 * mean_one(r), "frontier": lambda: mean_one(f),
              "reliability": lambda: mean_one(r), "additive": lambda: additive(traj, lambda1)}
    if mode not in combos:
        raise ValueError(f"unknown prior mode {mode!r}; allowed: {['uniform', *combos]}")
    w = mean_one(combos[mode]())
    prior = Prior(mode, w.tolist(), f.tolist(), r.tolist(), lambda1, floor, len(traj.tokens),
                  traj.top1.shape[1])
    if prior.ratio() < FLAT_RATIO:
        logger.warning("Stage I prior %r is nearly flat (max/min %.2f)%s", mode, prior.ratio(),
                       ": equal-mass λ1 makes the additive accumulation flat" if mode == "additive" else "")
    return prior


def first_stop(tokens: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """[R] index of the first stop id in each canvas [R, K] (K when there is none)."""
    if not stop_ids:
        return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
    hits = torch.isin(tokens, torch.tensor(stop_ids))
    k = tokens.shape[1]
    return torch.where(hits.any(1), hits.float().argmax(1), torch.full((tokens.shape[0],), k)).long()


def token_weights(prior: Prior, attention_mask: torch.Tensor, window_start: int, stops: torch.Tensor,
                  ) -> torch.Tensor:
    """Stage II token weights [B, L]: the prior on window positions up to the teacher's first stop id,
    the floor on every other real token, 0 on padding. A uniform prior weighs every real token 1."""
    real = attention_mask.double()
    if prior.mode == "uniform":
        return real
    w = torch.full(attention_mask.shape, prior.floor, dtype=torch.float64)
    window = prior.tensor
    k = len(window)
    for b, stop in enumerate(stops.tolist()):
        upto = min(stop + 1, k)  # the stop token keeps its prior; positions after it get the floor
        w[b, window_start : window_start + upto] = window[:upto]
    return w * real
