"""`EvalSettings` and `run_eval`: every candidate against the FP reference, on shared FP-teacher
trajectories, under each commit order; returns the JSON-ready result (values, 95 % CIs, paired
differences, lag CCDFs). Prompts and NLL text come from the reference's `heldout/test.json` (the split
calibration never sees), or `--eval-file`.

With `--cache-dir` the expensive parts (teacher trajectories, each model's per-prompt scores) are kept on
disk under a hash of everything they depend on, so a re-run, or a run that adds candidates, computes only
what is new, and a run that dies keeps what it finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path

import torch
from inkwell.engine import load_model, load_tokenizer, special_ids
from inkwell.engine.loader import resolve_model_path
from inkwell.engine.params import REMASKING, family_of
from torch import nn
from tqdm import tqdm

from . import calibration, evaluate
from .fidelity import (
    PerPrompt,
    ProbeSummary,
    bootstrap_ci,
    ccdf,
    flip_rate,
    probe_summary,
    served_commits,
    served_horizon,
    upto_stop,
)
from .pipeline import rollout_params
from .settings import _f
from .trajectory import Trajectories

FP = "FP"


@dataclass(frozen=True)
class EvalSettings:
    prompts: int = _f(200, "held-out prompts (the bootstrap resamples these)")
    prompt_tokens: int = _f(48, "longest prompt, in tokens")
    eval_file: str | None = _f(None, "prompt/NLL text file (default: the reference's heldout/test.json)")
    orders: str = _f("low_confidence,random", "commit orders of the teacher trajectories (comma-separated)")
    gen_length: int | None = _f(None, "canvas (default: as served)")
    steps: int | None = _f(None, "denoising steps (default: as served)")
    block_length: int | None = _f(None, "semi-AR block (default: as served)")
    flip_stride: int = _f(1, "score the frontier at every this many steps (a systematic sample "
                             "of the commits; 1 = every commit)")
    probe_stride: int = _f(1, "re-mask probes every this many steps (and on the final canvas)")
    probe_positions: int = _f(0, "probed positions per prompt (0 = every served commit)")
    early_stop: bool = _f(True, "score what the served sampler commits (it stops at the first stop id); "
                                "false: every canvas position, as the reference sampler commits them")
    free_running: bool = _f(True, "also generate with each candidate and compare with the teacher")
    nll_windows: int = _f(64, "held-out windows for masked-token NLL")
    nll_length: int = _f(256, "tokens per NLL window")
    nll_ratios: str = _f("0.15,0.5,0.9", "mask ratios of the NLL (comma-separated)")
    baseline: str | None = _f(None, "candidate label the others are paired against (default: the first)")
    pairs: str | None = _f(None, "extra paired differences A:B (A minus B), comma-separated")
    bootstrap: int = _f(2000, "bootstrap resamples")
    seed: int = _f(1, "seed of prompt choice, probe sampling and NLL masks")
    batch_size: int = _f(32, "rows per forward")
    threads: int | None = _f(None, "torch CPU threads (1 is fastest on a busy CPU)")
    cache_dir: str | None = _f(None, "keep teacher trajectories and per-model scores here, keyed by weights, "
                                     "prompts and settings; a later run reuses what matches")

    def __post_init__(self) -> None:
        for order in self.order_list:
            if order not in REMASKING:
                raise ValueError(f"unknown order {order!r}; allowed: {list(REMASKING)}")
        for name in ("prompts", "prompt_tokens", "flip_stride", "probe_stride", "nll_length", "bootstrap",
                     "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def order_list(self) -> list[str]:
        return [o.strip() for o in self.orders.split(",") if o.strip()]

    def pair_list(self, labels: list[str]) -> list[tuple[str, str]]:
        """(candidate, other) pairs: every candidate but the baseline against it, then `pairs`."""
        base = self.baseline or labels[0]
        out = [(label, base) for label in labels if label != base]
        for item in (self.pairs or "").split(","):
            if item.strip():
                a, _, b = item.strip().partition(":")
                if a not in labels or b not in labels:
                    raise ValueError(f"pair {item!r}: both sides must be candidate labels {labels}")
                out.append((a, b))
        return list(dict.fromkeys(out))

    @property
    def ratio_list(self) -> list[float]:
        return [float(r) for r in self.nll_ratios.split(",") if r.strip()]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def eval_text(reference: str, model: nn.Module, s: EvalSettings):
    """(prompts, NLL token stream, stop ids, source) from held-out test text, or random tokens for a
    model without a tokenizer."""
    path = resolve_model_path(reference)
    try:
        tokenizer = load_tokenizer(reference) if path is not None else None
    except ValueError:
        tokenizer = None
    if tokenizer is None:
        c = model.config
        special = {c.mask_token_id, c.eos_token_id, c.bos_token_id, c.pad_token_id}
        vocab = getattr(c, "padded_vocab", c.vocab_size)
        prompts = calibration.random_prompts(vocab, special, s.prompts, s.prompt_tokens, s.seed + 1000)
        stream = calibration.random_prompts(vocab, special, 1, s.nll_length * 4, s.seed + 2000)[0]
        return prompts, stream, (c.eos_token_id,), "synthetic random tokens"
    source = s.eval_file or (path / "heldout" / "test.json")
    texts = calibration.read_texts(source)
    prompts = calibration.chat_prompts(texts, tokenizer, s.prompts, s.prompt_tokens, s.seed)
    stream = []
    for at in range(0, len(texts), 8):  # dialogue turns, as the model was trained on
        turns = [{"role": "user" if j % 2 == 0 else "assistant", "content": t}
                 for j, t in enumerate(texts[at : at + 8])]
        stream += calibration.chat_ids(tokenizer, turns)
    return prompts, torch.tensor(stream), special_ids(reference, tokenizer).stop_ids, str(source)


def _with_ci(x: PerPrompt, s: EvalSettings, other: PerPrompt | None = None) -> dict:
    return bootstrap_ci(x, other, s.bootstrap, s.seed)


class Memo:
    """`--cache-dir`: values (dicts of tensors) on disk under the hash of their key (a JSON-able dict of
    everything they depend on); without a directory every value is computed."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def get(self, kind: str, key: dict, make: Callable[[], dict]) -> dict[str, torch.Tensor]:
        if self.root is None:
            return make()
        path = self.root / f"{kind}-{digest(key)}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        value = make()
        partial = path.with_suffix(".partial")
        torch.save(value, partial)
        partial.replace(path)  # a killed run never leaves a truncated entry
        return value


def digest(key) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def fingerprint(model: nn.Module) -> str:
    """Hash of a model's config and weights: the same checkpoint under any label or path is one model.
    `quantization_config` is left out: the weights are scored dequantized, and what the quantizer
    recorded there (the paths of its inputs among it) does not change them."""
    config = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


# what a model's scores depend on besides the teacher's trajectories and the model (free-running
# agreement is its own entry: switching it on or off never invalidates the probes and flips)
SCORE_SETTINGS = ("seed", "flip_stride", "probe_stride", "probe_positions")


def _pp(x: PerPrompt) -> torch.Tensor:
    return torch.stack([x.num, x.den])


def _order(ref, cands, ids: dict, prompts, stops, order: str, reference: str, s: EvalSettings,
           memo: Memo) -> dict:
    params = rollout_params(resolve_model_path(reference), s, order).resolve(ref.config.model_type)
    # early stop as served: nothing after the served horizon is scored; off: the whole canvas is
    stops = tuple(stops) if s.early_stop else ()
    teacher_key = {"model": ids.get(FP), "prompts": digest([p.tolist() for p in prompts]),
                   "params": params.to_dict(), "stops": stops, "batch_size": s.batch_size}

    def teacher() -> dict[str, torch.Tensor]:
        t = evaluate.rollouts(ref, prompts, params, s.batch_size, desc=f"teacher ({order})", stop_ids=stops)
        return {"tokens": t.tokens, "commit_step": t.commit_step, "steps": torch.tensor(t.steps)}

    kept = memo.get("teacher", teacher_key, teacher)
    traj = Trajectories(list(prompts), kept["tokens"], kept["commit_step"], None, int(kept["steps"]),
                        ref.config.mask_token_id)
    canvas = evaluate.make_canvas(ref, prompts)
    counted = served_commits(traj.commit_step, traj.tokens, stops)
    scored = counted & (traj.commit_step % s.flip_stride == 0)
    chosen = evaluate.sample_positions(counted, s.probe_positions, s.seed)
    grid = evaluate.probe_steps(served_horizon(traj.commit_step, traj.tokens, stops) + 1, s.probe_stride)
    text = upto_stop(traj.tokens, stops)

    def scores(label: str, model: nn.Module) -> dict[str, torch.Tensor]:
        agree = evaluate.probes(model, traj, canvas, chosen, grid, s.batch_size, f"probes {label}")
        p = probe_summary(agree, grid, traj.commit_step)
        out = {"mean_disagree": _pp(p.mean_disagree), "never_agree": _pp(p.never_agree), "lags": p.lags}
        if label == FP:
            return out
        argmax = evaluate.frontier_argmax(model, traj, canvas, s.batch_size, f"frontier {label}", scored)
        out["flip"] = _pp(flip_rate(argmax != traj.tokens, scored))
        return out

    def free(label: str, model: nn.Module) -> dict[str, torch.Tensor]:
        own = evaluate.free_running(model, prompts, params, s.batch_size, f"free-running {label}", stops)
        same = (own == traj.tokens) & text
        return {"free": _pp(PerPrompt(same.sum(1).double(), text.sum(1).double()))}

    raw: dict[str, dict] = {}
    for label, model in tqdm([(FP, ref), *cands.items()], desc=f"models ({order})", unit="model"):
        key = {"teacher": teacher_key, "model": ids.get(label), "fp": label == FP,
               **{k: getattr(s, k) for k in SCORE_SETTINGS}}
        v = memo.get("scores", key, partial(scores, label, model))
        raw[label] = {"probe": ProbeSummary(PerPrompt(*v["mean_disagree"]), PerPrompt(*v["never_agree"]),
                                            v["lags"])}
        if label == FP:
            continue
        raw[label]["flip"] = PerPrompt(*v["flip"])
        if s.free_running:
            own_key = {"teacher": teacher_key, "model": ids.get(label)}
            raw[label]["free"] = PerPrompt(*memo.get("free", own_key, partial(free, label, model))["free"])
    return {"params": params.to_dict(), "commits": int(counted.sum()), "scored_commits": int(scored.sum()),
            "probed_positions": int(chosen.sum()), "probe_states": int((grid >= 0).sum()),
            **_summarise(raw, cands, traj.steps, s)}


def _summarise(raw: dict, cands: dict, horizon: int, s: EvalSettings) -> dict:
    baseline = s.baseline or next(iter(cands))
    models, paired, floor = {}, [], {}
    for label, r in raw.items():
        p = r["probe"]
        never_settles = float(torch.isinf(p.lags).double().mean()) if len(p.lags) else 0.0
        models[label] = {"mean_disagree": _with_ci(p.mean_disagree, s),
                         "never_agree": _with_ci(p.never_agree, s),
                         "lag_ccdf": ccdf(p.lags, horizon)[1], "lag_never_settles": never_settles}
        for key, name in (("flip", "flip_rate"), ("free", "free_running_agreement")):
            if key in r:
                models[label][name] = _with_ci(r[key], s)
        if label != FP:
            floor[label] = {"mean_disagree": _with_ci(p.mean_disagree, s, raw[FP]["probe"].mean_disagree),
                            "never_agree": _with_ci(p.never_agree, s, raw[FP]["probe"].never_agree)}
    for a, b in s.pair_list(list(cands)):
        ra, rb = raw[a], raw[b]
        diff = {"candidate": a, "minus": b,
                "mean_disagree": _with_ci(ra["probe"].mean_disagree, s, rb["probe"].mean_disagree),
                "never_agree": _with_ci(ra["probe"].never_agree, s, rb["probe"].never_agree),
                "flip_rate": _with_ci(ra["flip"], s, rb["flip"])}
        if "free" in ra:
            diff["free_running_agreement"] = _with_ci(ra["free"], s, rb["free"])
        paired.append(diff)
    return {"models": models, "minus_fp_floor": floor, "baseline": baseline, "paired": paired}


def _masked_nll(model: nn.Module, windows: torch.Tensor, masks: torch.Tensor, s: EvalSettings) -> dict:
    num, den = evaluate.masked_nll(model, windows, masks, s.batch_size)
    return {"num": num, "den": den}


def _nll(ref, cands, ids: dict, stream: torch.Tensor, s: EvalSettings, memo: Memo) -> dict:
    g = torch.Generator().manual_seed(s.seed)
    length = min(s.nll_length, len(stream) - 1)
    starts = torch.randint(0, len(stream) - length, (s.nll_windows,), generator=g)
    windows = torch.stack([stream[a : a + length] for a in starts.tolist()])
    dream = family_of(ref.config.model_type) == "dream"
    out = {}
    for ratio in s.ratio_list:
        masks = evaluate.nll_masks(windows, ratio, s.seed, dream)
        key = {"windows": digest(windows.tolist()), "ratio": ratio, "seed": s.seed, "dream": dream,
               "batch_size": s.batch_size}
        per = {}
        for label, m in [(FP, ref), *cands.items()]:
            v = memo.get("nll", {**key, "model": ids.get(label)}, partial(_masked_nll, m, windows, masks, s))
            per[label] = PerPrompt(v["num"], v["den"])
        out[str(ratio)] = {
            "models": {label: _with_ci(v, s) for label, v in per.items()},
            "minus_fp": {label: _with_ci(v, s, per[FP]) for label, v in per.items() if label != FP},
            "paired": [{"candidate": a, "minus": b, **_with_ci(per[a], s, per[b])}
                       for a, b in s.pair_list(list(cands))]}
    return {"windows": s.nll_windows, "length": length, "ratios": out}


def run_eval(reference: str, candidates: dict[str, str], s: EvalSettings) -> dict:
    """The full evaluation of `candidates` ({label: path}) against `reference`."""
    ref = load_model(reference, dtype=torch.float32)
    cands = {label: evaluate.dequantized(load_model(path, dtype=torch.float32))
             for label, path in candidates.items()}
    if s.baseline is not None and s.baseline not in cands:
        raise ValueError(f"baseline {s.baseline!r} is not a candidate label; labels: {list(cands)}")
    s.pair_list(list(cands))  # a bad --pairs fails before any work
    prompts, stream, stops, source = eval_text(reference, ref, s)
    memo = Memo(s.cache_dir)
    # model identities key the cache; without one nothing is hashed
    ids = {label: fingerprint(m) for label, m in [(FP, ref), *cands.items()]} if memo.root else {}
    result = {"reference": reference, "candidates": candidates, "settings": s.to_dict(), "text": source,
              "prompts": len(prompts), "stop_ids": list(stops), "orders": {}}
    for order in s.order_list:
        result["orders"][order] = _order(ref, cands, ids, prompts, stops, order, reference, s, memo)
    result["nll"] = _nll(ref, cands, ids, stream, s, memo)
    return result
