"""Token proposals and commit choices for one row's current block: the remasking algorithms of LLaDA
(`low_confidence`, `random`) and Dream (`maskgit_plus`, `topk_margin`, `entropy`, `origin`), their commit
schedules, and Fast-dLLM's confidence threshold. Everything here works on one row's block logits in
float64 and draws randomness only from that row's `torch.Generator`.

The mask token is never a candidate: it is excluded from the choice of token, while LLaDA's confidence
stays the softmax probability over the full vocabulary, as its reference `generate()` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .params import LLADA_ALGORITHMS, DiffusionParams

DEMOTE = 1e9  # confidence_eos_eot_inf: stop-id candidates rank below every other masked position


@dataclass(frozen=True)
class Proposal:
    """Per block position: the candidate token and how it ranks. All tensors are [n]."""

    token: torch.Tensor  # long: the candidate token
    prob: torch.Tensor  # the model's probability of the candidate (softmax of the guided logits)
    margin: torch.Tensor  # top-1 minus top-2 probability of that distribution
    score: torch.Tensor  # the remasking algorithm's ranking score; higher commits first


def add_gumbel_noise(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Gumbel-max sampling as in LLaDA: argmax(exp(l) / (-log u)^T) samples softmax(l / T).

    Low-precision Gumbel-max lowers generation quality for masked diffusion models (arXiv:2409.02908),
    hence float64 noise.
    """
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    return logits.exp() / (-torch.log(noise)) ** temperature


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the `top_k` largest logits per row, the rest -inf. logits: [n, V]."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, -torch.inf)


def top_p_filter(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches `top_p` (always the
    most likely one). logits: [n, V]."""
    if top_p is None or top_p >= 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative > top_p
    remove[:, 1:] = remove[:, :-1].clone()  # shift right: keep the token that crosses top_p
    remove[:, 0] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), -torch.inf)


def _without(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    out = logits.clone()
    out[:, token_ids] = -torch.inf
    return out


def _llada_candidates(logits, params, generator, mask_id, probs):
    """LLaDA's generate(): Gumbel-max token; confidence = softmax probability of it, or uniform noise."""
    filtered = top_p_filter(top_k_filter(_without(logits, [mask_id]), params.top_k), params.top_p)
    token = add_gumbel_noise(filtered, params.temperature, generator).argmax(-1)  # [n]
    if params.remasking == "random":
        return token, torch.rand(token.shape, dtype=torch.float64, generator=generator, device=token.device)
    return token, probs.gather(-1, token[:, None])[:, 0]


def _dream_candidates(logits, params, generator, mask_id):
    """Dream's sample_tokens(): temperature, top-p, top-k, then a categorical draw (argmax at T = 0)."""
    scaled = logits / params.temperature if params.temperature > 0 else logits
    scaled = top_k_filter(top_p_filter(_without(scaled, [mask_id]), params.top_p), params.top_k)
    dist = scaled.softmax(-1)  # [n, V]
    if params.temperature > 0:
        token = torch.multinomial(dist, 1, generator=generator)[:, 0]
    else:
        token = dist.argmax(-1)
    if params.remasking == "topk_margin":
        top2 = dist.topk(2, dim=-1).values
        return token, top2[:, 0] - top2[:, 1]
    if params.remasking == "entropy":
        return token, (dist * torch.log(dist + 1e-10)).sum(-1)  # negative entropy
    return token, dist.gather(-1, token[:, None])[:, 0]  # maskgit_plus (origin ignores the score)


def propose(logits: torch.Tensor, params: DiffusionParams, generator: torch.Generator, mask_id: int,
            eos_id: int, stop_ids: tuple[int, ...]) -> Proposal:
    """Candidates for one row's block. logits: [n, V] (guided, aligned), any float dtype."""
    logits = logits.to(torch.float64)
    if params.logits_eos_inf:
        logits = _without(logits, [eos_id])
    probs = logits.softmax(-1)  # [n, V]
    if params.remasking in LLADA_ALGORITHMS:
        token, score = _llada_candidates(logits, params, generator, mask_id, probs)
    else:
        token, score = _dream_candidates(logits, params, generator, mask_id)
    if params.confidence_eos_eot_inf:
        stops = torch.tensor(sorted({eos_id, *stop_ids}), device=token.device)
        score = torch.where(torch.isin(token, stops), score - DEMOTE, score)
    top2 = probs.topk(2, dim=-1).values
    return Proposal(token=token, prob=probs.gather(-1, token[:, None])[:, 0], margin=top2[:, 0] - top2[:, 1],
                    score=score)


def llada_schedule(mask_count: int, steps: int) -> list[int]:
    """LLaDA's per-block transfer counts: its linear noise schedule (paper Eq. 8) moves the same expected
    number of tokens at every step: `mask_count // steps` each, the remainder to the first steps."""
    base, remainder = divmod(mask_count, steps)
    return [base + 1] * remainder + [base] * (steps - remainder)


def dream_timesteps(steps: int, eps: float) -> torch.Tensor:
    """Dream's timesteps `linspace(1, eps, steps + 1)` (float32, as Dream computes them)."""
    return torch.linspace(1, eps, steps + 1)


def dream_transfer_probability(step: int, steps: int, eps: float) -> float:
    """Fraction of masked positions Dream commits at `step`: 1 - s/t, and everything at the last step."""
    if step >= steps - 1:
        return 1.0
    t = dream_timesteps(steps, eps)
    return float(1 - t[step + 1] / t[step])


def dream_count(masked: int, step: int, steps: int, eps: float) -> int:
    """Dream's commit count `int(n * (1 - s/t))` for this row's `masked` positions (float32 like Dream)."""
    if step >= steps - 1:
        return masked
    t = dream_timesteps(steps, eps)
    return int(torch.tensor(float(masked)) * (1 - t[step + 1] / t[step]))


def choose_top(proposal: Proposal, masked: torch.Tensor, count: int, alg_temp: float | None,
               generator: torch.Generator) -> torch.Tensor:
    """Indices of `count` masked positions: the best scores, or (Dream's alg_temp) a draw without
    replacement from softmax(score / alg_temp). masked: [n] bool."""
    count = min(count, int(masked.sum()))
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=masked.device)
    score = proposal.score.masked_fill(~masked, -torch.inf)
    if alg_temp is None:
        return score.topk(count).indices
    weights = F.softmax(score / alg_temp, dim=-1)
    if not bool(torch.isfinite(weights).all()) or int((weights > 0).sum()) < count:
        # alg_temp so small that the weights overflow (NaN) or underflow to fewer than `count` non-zero
        # ones: the draw's limit as alg_temp -> 0 is the best `count` scores
        return score.topk(count).indices
    return torch.multinomial(weights, count, replacement=False, generator=generator)


def choose_threshold(proposal: Proposal, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fast-dLLM parallel decoding: the best-ranked masked position plus every masked position whose
    probability reaches `threshold` (arXiv:2505.22618, Sec. 3.3)."""
    best = proposal.score.masked_fill(~masked, -torch.inf).argmax()
    chosen = masked & (proposal.prob >= threshold)
    chosen[best] = True
    return chosen.nonzero()[:, 0]


def choose_origin(masked: torch.Tensor, p_transfer: float, generator: torch.Generator) -> torch.Tensor:
    """Dream's `origin`: each masked position is committed independently with probability 1 - s/t."""
    draw = torch.rand(masked.shape, dtype=torch.float64, generator=generator, device=masked.device)
    return (masked & (draw < p_transfer)).nonzero()[:, 0]
