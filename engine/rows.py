"""One generation row's state and its denoising step: the canvas, the semi-autoregressive block it is
in, its schedule, generator, cache group and incremental detokenizer. `Row.apply` takes the row's
aligned block logits from a (batched) forward and commits tokens, returning the step's `StepEvent`.

Rows never look at each other: a row's step depends only on its own logits and generator, so a request
gives the same output batched or alone (DESIGN section 4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from .detok import Decode, IncrementalDetokenizer
from .params import LLADA_ALGORITHMS, DiffusionParams
from .remasking import (
    Proposal,
    choose_origin,
    choose_threshold,
    choose_top,
    dream_count,
    dream_transfer_probability,
    llada_schedule,
    propose,
)

if TYPE_CHECKING:
    from .cache_groups import CacheGroup


@dataclass(frozen=True)
class Commit:
    index: int  # 0-based position within the answer canvas
    token_id: int
    text: str  # the token's own text (a convenience; the canvas is defined by token ids)
    confidence: float  # the model's probability of the committed token
    margin: float  # top-1 minus top-2 probability at that position


@dataclass(frozen=True)
class StepEvent:
    step: int  # the row's denoising step, 0-based
    block: int  # the semi-autoregressive block this step worked on
    commits: tuple[Commit, ...]
    masked_remaining: int  # answer positions still masked after this step
    final_text: str  # newly final contiguous text (never splits a character)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RowIds:
    mask_id: int
    eos_id: int
    stop_ids: tuple[int, ...] = ()  # early stop at the first committed one; () disables early stop


@dataclass(eq=False)
class Row:
    tokens: torch.Tensor  # [len] long: prompt (with any left padding) + canvas + suffix
    attn: torch.Tensor  # [len] long, 1 = real token
    prompt_len: int  # where the canvas starts
    params: DiffusionParams  # resolved
    generator: torch.Generator
    ids: RowIds
    shift: int  # 1 for Dream (position i-1 predicts token i), 0 for LLaDA
    decode: Decode | None = None
    block: int = 0
    step_in_block: int = 0
    step: int = 0
    nfe: int = 0
    done: bool = False
    group: CacheGroup | None = None  # holds this row's keys/values within a block
    schedule: list[int] = field(default_factory=list)
    final_upto: int = 0
    detok: IncrementalDetokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.detok = IncrementalDetokenizer(self.decode)

    @property
    def answer(self) -> torch.Tensor:  # [gen_length] view of the canvas
        return self.tokens[self.prompt_len : self.prompt_len + self.params.gen_length]

    def block_span(self) -> tuple[int, int]:
        start = self.prompt_len + self.block * self.params.block_length
        return start, start + self.params.block_length

    def sequences(self) -> list[torch.Tensor]:
        """Token rows this row adds to a forward: itself, and the unconditional copy under CFG."""
        if self.params.cfg_scale == 0:
            return [self.tokens]
        uncond = self.tokens.clone()
        uncond[: self.prompt_len] = self.ids.mask_id  # prompt masked (padding stays out of attention)
        uncond[self.prompt_len + self.params.gen_length :] = self.ids.mask_id  # suffix too
        return [self.tokens, uncond]

    def apply(self, logits: torch.Tensor) -> StepEvent:
        """One denoising step from this row's block logits [block_length, V] (guided and aligned)."""
        start, end = self.block_span()
        masked = self.tokens[start:end] == self.ids.mask_id  # [n]
        if self.step_in_block == 0:
            self.schedule = llada_schedule(int(masked.sum()), self.params.steps_per_block)
        proposal = propose(logits, self.params, self.generator, self.ids.mask_id, self.ids.eos_id,
                           self.ids.stop_ids)
        chosen = self._choose(proposal, masked)
        self.tokens[start + chosen] = proposal.token[chosen]
        commits = self._commits(proposal, chosen, start)
        event_step, event_block = self.step, self.block
        self.step += 1
        self.step_in_block += 1
        self._advance(end)
        final_text = self._final_text()
        masked_remaining = int((self.answer == self.ids.mask_id).sum())
        return StepEvent(step=event_step, block=event_block, commits=commits,
                         masked_remaining=masked_remaining, final_text=final_text)

    def _choose(self, proposal: Proposal, masked: torch.Tensor) -> torch.Tensor:
        p, i, steps = self.params, self.step_in_block, self.params.steps_per_block
        if p.threshold is not None:
            if i == steps - 1:  # the cap: the block's last step commits what remains
                return masked.nonzero()[:, 0]
            return choose_threshold(proposal, masked, p.threshold)
        if p.remasking == "origin":
            return choose_origin(masked, dream_transfer_probability(i, steps, p.eps), self.generator)
        if p.remasking in LLADA_ALGORITHMS:
            count = self.schedule[i]
        else:
            count = dream_count(int(masked.sum()), i, steps, p.eps)
        return choose_top(proposal, masked, count, p.alg_temp, self.generator)

    def _commits(self, proposal: Proposal, chosen: torch.Tensor, start: int) -> tuple[Commit, ...]:
        order = chosen.sort().values.tolist()
        tokens = proposal.token[order].tolist()
        probs, margins = proposal.prob[order].tolist(), proposal.margin[order].tolist()
        return tuple(
            Commit(index=start + j - self.prompt_len, token_id=t, text=self._text(t), confidence=c, margin=m)
            for j, t, c, m in zip(order, tokens, probs, margins, strict=True)
        )

    def _text(self, token_id: int) -> str:
        return self.decode([token_id]) if self.decode is not None else ""

    def _advance(self, end: int) -> None:
        """Move to the next block when this one is finished; finish the row after the last block or at
        an early stop."""
        block_left = bool((self.tokens[end - self.params.block_length : end] == self.ids.mask_id).any())
        if self.step_in_block >= self.params.steps_per_block or not block_left:
            self.block += 1
            self.step_in_block = 0
            self.release()
        if self.block == self.params.num_blocks or self._early_stop():
            self.done = True
            self.release()

    def _first_stop(self) -> int | None:
        """Answer index of the first committed stop id, or None."""
        if not self.ids.stop_ids:
            return None
        hits = torch.isin(self.answer, torch.tensor(self.ids.stop_ids, device=self.tokens.device))
        first = hits.nonzero()
        return int(first[0, 0]) if len(first) else None

    def _early_stop(self) -> bool:
        """Everything before the first committed stop id is committed: fill the rest with eos."""
        stop = self._first_stop()
        if stop is None or bool((self.answer[:stop] == self.ids.mask_id).any()):
            return False
        tail = self.answer[stop + 1 :]
        tail[tail == self.ids.mask_id] = self.ids.eos_id
        return True

    def _final_text(self) -> str:
        answer = self.answer
        masked = (answer == self.ids.mask_id).nonzero()
        final = int(masked[0, 0]) if len(masked) else len(answer)
        stop = self._first_stop()
        if stop is not None:
            final = min(final, stop)
        text = ""
        if final > self.final_upto:
            text = self.detok.push(answer[self.final_upto : final].tolist())
            self.final_upto = final
        return text + self.detok.flush() if self.done else text

    def release(self) -> None:
        """Leave the cache group (at a block boundary, when finished, cancelled or failed)."""
        if self.group is not None:
            self.group.leave(self)
