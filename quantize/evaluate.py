"""Running the fidelity evaluation: FP-teacher trajectories, candidates scored on the teacher's states,
re-mask probes, masked-token NLL and free-running agreement (DESIGN section 7; metrics in fidelity.py).

Every model is scored in float32 with dense dequantized weights (`dequantized`): the kernel path is
tested elsewhere, and this makes the stress regime's 3-bit checkpoints scorable the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from inkwell.engine.params import DiffusionParams, family_of
from inkwell.engine.quant_linear import Int4Linear
from inkwell.kernels import dequantize_int4
from torch import nn
from tqdm import tqdm

from . import arch
from .fidelity import NOT_PROBED
from .trajectory import Trajectories, left_pad, rollouts


def dequantized(model: nn.Module) -> nn.Module:
    """Replace every `Int4Linear` by a float32 `nn.Linear` holding q * scale, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Int4Linear):
            t = module.checkpoint_tensors()
            linear = nn.Linear(module.in_features, module.out_features, bias="bias" in t)
            linear.weight = nn.Parameter(dequantize_int4(t["weight_packed"], t["weight_scale"]),
                                         requires_grad=False)
            if "bias" in t:
                linear.bias = nn.Parameter(t["bias"].float(), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model.float().eval().requires_grad_(False)


@dataclass
class Canvas:
    """Prompts left-padded once; `ids(state)` appends a canvas state [R, K]."""

    prompt_ids: torch.Tensor  # [R, P]
    prompt_mask: torch.Tensor  # [R, P]
    shift: int  # 1 for Dream (position i-1 predicts token i)

    def ids(self, state: torch.Tensor, rows=slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([self.prompt_ids[rows], state], dim=1)
        mask = torch.cat([self.prompt_mask[rows], torch.ones_like(state)], dim=1)
        return ids, mask

    def aligned(self, index: torch.Tensor) -> torch.Tensor:
        """Sequence position whose logits predict canvas index `index`."""
        return self.prompt_ids.shape[1] + index - self.shift


def make_canvas(model: nn.Module, prompts: list[torch.Tensor]) -> Canvas:
    pad = model.config.eos_token_id if model.config.eos_token_id is not None else 0
    ids, mask = left_pad(prompts, pad)
    return Canvas(ids, mask, 1 if family_of(model.config.model_type) == "dream" else 0)


def _argmax(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    logits = logits.clone()
    logits[..., model.config.mask_token_id] = -torch.inf  # the mask token is never a candidate
    return logits.argmax(-1)


@torch.no_grad()
def frontier_argmax(model: nn.Module, traj: Trajectories, canvas: Canvas, batch_size: int,
                    desc: str, scored: torch.Tensor) -> torch.Tensor:
    """[R, K]: the model's argmax at each `scored` [R, K] commit, on the teacher's state at its commit step
    (-1 elsewhere). Only rows with a scored commit at a step are run."""
    out = torch.full_like(traj.tokens, -1)
    k = traj.tokens.shape[1]
    for t in tqdm(range(traj.steps), desc=desc, unit="step", leave=False):
        now = scored & (traj.commit_step == t)  # [R, K]
        rows = now.any(1).nonzero()[:, 0]
        for at in range(0, len(rows), batch_size):
            r = rows[at : at + batch_size]
            ids, mask = canvas.ids(traj.state(t)[r], r)
            logits = arch.logits_at(model, ids, mask, canvas.aligned(torch.arange(k)).expand(len(ids), k))
            hit = now[r]
            sub = out[r]
            sub[hit] = _argmax(model, logits)[hit]
            out[r] = sub
    return out


def probe_steps(until: torch.Tensor, stride: int) -> torch.Tensor:
    """Probe steps [R, S] (state before step s): every `stride` steps before each row's last state
    `until[r]` (its final served canvas), then `until[r]` itself; -1 pads rows with fewer steps."""
    rows = [sorted({*range(stride, int(u), stride), int(u)}) for u in until.tolist()]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (width - len(r)) for r in rows])


@torch.no_grad()
def probes(model: nn.Module, traj: Trajectories, canvas: Canvas, chosen: torch.Tensor, grid: torch.Tensor,
           batch_size: int, desc: str) -> torch.Tensor:
    """Re-mask probes [R, K, S] (1 agree, 0 disagree, -1 not probed) of the `chosen` [R, K] positions at
    the probe steps `grid` [R, S] (-1: none)."""
    r_n, k = traj.tokens.shape
    agree = torch.full((r_n, k, grid.shape[1]), NOT_PROBED, dtype=torch.int8)
    for si in tqdm(range(grid.shape[1]), desc=desc, unit="probe step", leave=False):
        s = grid[:, si]  # [R]
        state = traj.state(s)
        live = chosen & (traj.commit_step < s[:, None]) & (s[:, None] >= 0)
        pairs = live.nonzero()  # [n, 2]: (row, position) committed before the row's probe step
        for at in range(0, len(pairs), batch_size):
            r, i = pairs[at : at + batch_size].unbind(1)
            probe = state[r].clone()
            probe[torch.arange(len(r)), i] = traj.mask_id  # i alone back to [MASK]
            ids, mask = canvas.ids(probe, r)
            token = _argmax(model, arch.logits_at(model, ids, mask, canvas.aligned(i)))
            agree[r, i, si] = (token == traj.tokens[r, i]).to(torch.int8)
    return agree


def sample_positions(counted: torch.Tensor, per_prompt: int, seed: int) -> torch.Tensor:
    """[R, K] bool: up to `per_prompt` of each prompt's counted positions (0 = all), seeded."""
    if per_prompt <= 0:
        return counted.clone()
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(counted.shape, generator=g).masked_fill(~counted, 2.0)
    ranks = keys.argsort(1).argsort(1)
    return counted & (ranks < per_prompt)


def free_running(model: nn.Module, prompts: list[torch.Tensor], params: DiffusionParams, batch_size: int,
                 desc: str, stop_ids: tuple[int, ...]) -> torch.Tensor:
    """The model's own greedy final canvases [R, K], stopping early at `stop_ids` (none: never)."""
    return rollouts(model, prompts, params, batch_size, keep_top1=False, desc=desc, stop_ids=stop_ids).tokens


@torch.no_grad()
def masked_nll(model: nn.Module, windows: torch.Tensor, masks: torch.Tensor, batch_size: int,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window (sum of NLL over masked tokens, masked count) for windows [W, L] and masks [W, L]."""
    shift = 1 if family_of(model.config.model_type) == "dream" else 0
    nll, count = torch.zeros(len(windows), dtype=torch.float64), masks.sum(1).double()
    for at in range(0, len(windows), batch_size):
        x, m = windows[at : at + batch_size], masks[at : at + batch_size]
        noisy = torch.where(m, torch.full_like(x, model.config.mask_token_id), x)
        logits = model(noisy).float()  # [b, L, V]
        if shift:  # Dream: position i-1 predicts token i; the first token is never masked
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # [b, L]
        nll[at : at + batch_size] = (ce * m).sum(1).double()
    return nll, count


def nll_masks(windows: torch.Tensor, ratio: float, seed: int, dream: bool) -> torch.Tensor:
    m = torch.rand(windows.shape, generator=torch.Generator().manual_seed(seed)) < ratio
    if dream:
        m[:, 0] = False
    m[torch.arange(len(m)), torch.randint(1, windows.shape[1], (len(m),),
                                          generator=torch.Generator().manual_seed(seed + 1))] = True
    return m
