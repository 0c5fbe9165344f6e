"""The fidelity metrics of DESIGN section 7 as pure functions over recorded trajectories and probes, and
the paired bootstrap. Every metric is kept per prompt as (numerator, denominator) so that differences
between models are paired (same prompts, same states) and resampled over prompts.

Shapes: R prompts, K canvas positions, S probe steps.
- flips [R, K] bool: the candidate's argmax at i differs from the teacher's commit, on the teacher's
  state at i's commit step; `counted` [R, K] marks the commits that are scored.
- probe agreement [R, K, S] int8: 1 agree, 0 disagree, -1 not probed (state before i's commit, or i not
  sampled); probe s re-masks i alone on the teacher's state before step `probe_steps[r, s]` ([S] when
  every row shares the steps) *(reconstruction)*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NOT_PROBED = -1


@dataclass
class PerPrompt:
    """A ratio metric kept per prompt: value = Σ num / Σ den."""

    num: torch.Tensor  # [R] float64
    den: torch.Tensor  # [R] float64

    @property
    def value(self) -> float:
        den = float(self.den.sum())
        return float(self.num.sum()) / den if den else math.nan

    def at(self, rows: torch.Tensor) -> torch.Tensor:
        """Values for bootstrap resamples: rows [n_boot, R] -> [n_boot]."""
        return self.num[rows].sum(-1) / self.den[rows].sum(-1).clamp_min(1e-12)


def flip_rate(flips: torch.Tensor, counted: torch.Tensor) -> PerPrompt:
    return PerPrompt((flips & counted).sum(1).double(), counted.sum(1).double())


def upto_stop(tokens: torch.Tensor, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """[R, K] bool: positions up to and including each canvas's first stop id (all when none)."""
    k = tokens.shape[1]
    stop = torch.full((len(tokens),), k - 1)
    if stop_ids:
        hits = torch.isin(tokens, torch.tensor(stop_ids))
        stop = torch.where(hits.any(1), hits.float().argmax(1).long(), stop)
    return torch.arange(k)[None, :] <= stop[:, None]


def served_horizon(commit_step: torch.Tensor, tokens: torch.Tensor,
                   stop_ids: tuple[int, ...]) -> torch.Tensor:
    """[R] the step t* at which the served sampler (early stop on) stops on the teacher's trajectory: every
    position up to the first stop id is committed then."""
    return commit_step.masked_fill(~upto_stop(tokens, stop_ids), -1).amax(1)


def served_commits(commit_step: torch.Tensor, tokens: torch.Tensor,
                   stop_ids: tuple[int, ...]) -> torch.Tensor:
    """[R, K] bool: the commits the served sampler makes on the teacher's trajectory (steps <= t*)."""
    return commit_step <= served_horizon(commit_step, tokens, stop_ids)[:, None]


@dataclass
class ProbeSummary:
    mean_disagree: PerPrompt  # mean over probed i of the fraction of later probes that disagree
    never_agree: PerPrompt  # fraction of probed i whose probes never agree
    lags: torch.Tensor  # [n_probed] float: stability lag in steps (inf: the last probe still disagrees)


def probe_summary(agree: torch.Tensor, probe_steps: torch.Tensor, commit_step: torch.Tensor) -> ProbeSummary:
    """Post-commit mismatch and stability lag from re-mask probes (see the module docstring).

    Stability lag of i = s* - (τ_i + 1), s* the first probe step from which every later probe agrees
    (probe step τ_i + 1 is the first state after the commit), inf if the last probe disagrees."""
    valid = agree != NOT_PROBED  # [R, K, S]
    probed = valid.any(-1)  # [R, K]
    n_valid = valid.sum(-1).clamp_min(1).double()
    disagree = (agree == 0) & valid
    frac = disagree.sum(-1).double() / n_valid
    mean_disagree = PerPrompt((frac * probed).sum(1), probed.sum(1).double())
    never = probed & ~((agree == 1) & valid).any(-1)
    never_agree = PerPrompt(never.sum(1).double(), probed.sum(1).double())
    s = torch.arange(agree.shape[-1])
    last_bad = torch.where(disagree, s, torch.full_like(s, -1)).amax(-1)  # [R, K]
    last_valid = torch.where(valid, s, torch.full_like(s, -1)).amax(-1)
    first_valid = torch.where(valid, s, torch.full_like(s, agree.shape[-1])).amin(-1)
    settle = torch.where(last_bad >= 0, last_bad + 1, first_valid)  # index of s*
    steps = probe_steps.expand(agree.shape[0], -1).double()  # [R, S]
    lag = steps.gather(1, settle.clamp(max=steps.shape[1] - 1)) - (commit_step.double() + 1)
    lag = torch.where(last_bad == last_valid, torch.full_like(lag, math.inf), lag)
    return ProbeSummary(mean_disagree, never_agree, lag[probed])


def ccdf(lags: torch.Tensor, horizon: int) -> tuple[list[int], list[float]]:
    """P(lag > x) for x = 0..horizon (inf lags count as larger than everything)."""
    xs = list(range(horizon + 1))
    n = max(len(lags), 1)
    return xs, [float((lags > x).sum()) / n for x in xs]


def bootstrap_ci(a: PerPrompt, b: PerPrompt | None = None, n_boot: int = 2000, seed: int = 0,
                 ) -> dict[str, float]:
    """Value of a (minus b when given, paired over the same prompts) with a percentile bootstrap 95 % CI
    resampling prompts."""
    rows = torch.randint(len(a.num), (n_boot, len(a.num)), generator=torch.Generator().manual_seed(seed))
    stat = a.at(rows) - (b.at(rows) if b is not None else 0)
    point = a.value - (b.value if b is not None else 0.0)
    lo, hi = torch.quantile(stat.float(), torch.tensor([0.025, 0.975])).tolist()
    return {"value": point, "low": lo, "high": hi}
