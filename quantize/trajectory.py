"""FP-teacher trajectories, recorded from the engine's own sampler (never a fork of it).

A `Recorder` wraps the model callable that `iter_generate` steps: it passes every forward through and
keeps, per call, the canvas state it was given and the teacher's top-1 probability at every canvas
position. With early stop off, every row takes every step, so call t of the recorder is the state
before denoising step t. The commit step of each position comes from the `StepEvent`s. Together they
give the full state sequence: `state_t[i] = tokens[i] if commit_step[i] < t else mask_id`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from inkwell.engine.params import DiffusionParams, family_of
from inkwell.engine.sampler import iter_generate
from torch import nn
from tqdm import tqdm


@dataclass
class Trajectories:
    """Teacher rollouts of R prompts over a canvas of K positions in T steps."""

    prompts: list[torch.Tensor]  # R prompts, each [P_r] long (unpadded)
    tokens: torch.Tensor  # [R, K] long: the final canvas
    commit_step: torch.Tensor  # [R, K] long: the 0-based step committing each position
    top1: torch.Tensor | None  # [R, T, K] float: teacher top-1 probability (mask excluded) before step t
    steps: int
    mask_id: int

    def state(self, t: int | torch.Tensor) -> torch.Tensor:
        """The canvases [R, K] before step t (an int, or one step per row [R])."""
        t = t[:, None] if isinstance(t, torch.Tensor) else t
        return torch.where(self.commit_step < t, self.tokens, torch.full_like(self.tokens, self.mask_id))

    def masked_at(self, t: int) -> torch.Tensor:
        """[R, K] bool: positions still masked before step t."""
        return self.commit_step >= t


class Recorder(nn.Module):
    """A model callable that records the canvas and the top-1 probabilities of every forward."""

    def __init__(self, model: nn.Module, gen_length: int, keep_top1: bool) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.gen_length = gen_length
        self.shift = 1 if family_of(model.config.model_type) == "dream" else 0
        self.keep_top1 = keep_top1
        self.top1: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None, kv_cache=None, start=0):
        assert kv_cache is None and start == 0, "record with cache='none'"
        logits = self.inner(input_ids, attention_mask=attention_mask)  # [S, L, V]
        if self.keep_top1:
            k, s = self.gen_length, self.shift
            canvas = logits[:, logits.shape[1] - k - s : logits.shape[1] - s].float()  # [S, K, V]
            probs = canvas.softmax(-1)
            probs[..., self.config.mask_token_id] = 0  # the mask token is never a candidate
            self.top1.append(probs.amax(-1))  # [S, K]
        return logits


def left_pad(prompts: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [R, P] right-aligned, attention mask [R, P]."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):] = p
        mask[r, length - len(p):] = 1
    return ids, mask


@torch.no_grad()
def rollouts(model: nn.Module, prompts: list[torch.Tensor], params: DiffusionParams, batch_size: int = 16,
             keep_top1: bool = False, desc: str = "teacher rollouts", stop_ids: tuple[int, ...] = ()
             ) -> Trajectories:
    """Greedy rollouts of `prompts` under `params` (temperature 0). Early stop is off unless `stop_ids` are
    given; then positions never committed hold eos and have commit step `steps`."""
    params = params.resolve(model.config.model_type)
    k, steps = params.gen_length, params.steps
    pad_id = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    tokens, commit_step, top1 = [], [], []
    bar = tqdm(total=len(prompts) * steps, desc=desc, unit="step", leave=False)
    for at in range(0, len(prompts), batch_size):
        chunk = prompts[at : at + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        recorder = Recorder(model, k, keep_top1)
        when = torch.full((len(chunk), k), -1, dtype=torch.long)
        final = torch.full((len(chunk), k), model.config.mask_token_id, dtype=torch.long)
        taken = 0
        for events in iter_generate(recorder, ids, params, attention_mask=mask, stop_ids=stop_ids):
            taken += 1
            for r, event in enumerate(events):
                for c in event.commits if event is not None else ():
                    when[r, c.index], final[r, c.index] = event.step, c.token_id
            bar.update(len(chunk))
        assert stop_ids or bool((when >= 0).all()), "every position is committed when early stop is off"
        steps = taken  # a block whose schedule ends with empty steps finishes early
        final[when < 0] = pad_id if model.config.eos_token_id is None else model.config.eos_token_id
        when[when < 0] = params.steps
        tokens.append(final)
        commit_step.append(when)
        if keep_top1:
            top1.append(torch.stack(recorder.top1, dim=1))  # [r, T, K]
    bar.close()
    return Trajectories(prompts=list(prompts), tokens=torch.cat(tokens), commit_step=torch.cat(commit_step),
                        top1=torch.cat(top1) if keep_top1 else None, steps=steps,
                        mask_id=model.config.mask_token_id)
