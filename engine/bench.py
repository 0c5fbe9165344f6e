"""Sampler and engine benchmark: `python -m inkwell.engine.bench [--model NAME] [--gen-length 256] ...`

Measures, in one run on the same prompts, tokens/s, forward passes (NFE), time per forward and token
agreement with the reference mode (LLaDA's loop: low_confidence, temperature 0, no threshold, no cache)
for: the reference loop; threshold decoding; threshold + prefix cache; threshold + dual cache; and the
engine at batch sizes 1, 4, 8 (threshold + dual cache). Quality is the mean log-probability the model
gave its committed tokens. Compare ratios within one run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from .engine import Engine, EngineRequest
from .loader import load_model, resolve_model_path
from .params import DiffusionParams
from .sampler import iter_generate
from .tokenizer import load_tokenizer


@dataclass(frozen=True)
class BenchConfig:
    model: str = "inkwell-tiny"  # falls back to the tiny-llada preset when not available
    gen_length: int = 256
    block_length: int = 32
    steps: int = 0  # 0: gen_length
    threshold: float = 0.9
    prompts: int = 8
    prompt_length: int = 32
    batches: str = "1,4,8"
    dtype: str = "float32"
    threads: int = 0  # 0: torch's default
    repeats: int = 1  # rounds over every mode, interleaved; each mode keeps its fastest round


@dataclass(frozen=True)
class Measurement:
    mode: str
    answers: list[torch.Tensor]
    seconds: float  # wall clock
    cpu_seconds: float  # process CPU time (all threads): steadier than wall time on a shared machine
    forwards: int
    forward_seconds: float
    log_prob: float  # mean log-probability of the committed tokens

    @property
    def tokens(self) -> int:
        return sum(len(a) for a in self.answers)


class Timed(nn.Module):
    """Counts and times a model's forward passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner, self.config = model, model.config
        self.calls, self.seconds = 0, 0.0

    def forward(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.calls, self.seconds = self.calls + 1, self.seconds + time.perf_counter() - start
        return out


def load_bench_model(name: str, dtype: str) -> tuple[nn.Module, str]:
    try:
        return load_model(name, dtype=dtype), name
    except (FileNotFoundError, ValueError):
        return load_model("tiny-llada", dtype=dtype), "tiny-llada (random weights; inkwell-tiny unavailable)"


def make_prompts(name: str, model: nn.Module, count: int, length: int) -> list[torch.Tensor]:
    """Chat prompts from the model's held-out text when it ships some (inkwell-tiny), else seeded random
    prompts of `length` ordinary tokens (ids that are no special id of the model)."""
    heldout = _heldout_speeches(name)
    if heldout:
        tok = load_tokenizer(name)
        chats = [[{"role": "user", "content": s}] for s in heldout[:count]]
        return [torch.tensor(tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False))
                for c in chats]
    c = model.config
    specials = {i for i in (c.mask_token_id, c.eos_token_id, c.bos_token_id, c.pad_token_id) if i is not None}
    ordinary = torch.tensor([i for i in range(c.vocab_size) if i not in specials])
    g = torch.Generator().manual_seed(0)
    return [ordinary[torch.randint(0, len(ordinary), (length,), generator=g)] for _ in range(count)]


def _heldout_speeches(name: str) -> list[str]:
    """Held-out speeches of 40-200 characters shipped with a model, in file order ([] if none)."""
    try:
        path = resolve_model_path(name)
    except (FileNotFoundError, ValueError):
        return []
    file = None if path is None else path / "heldout" / "test.json"
    if file is None or not file.is_file():
        return []
    return [s for play in json.loads(file.read_text()).values() for s in play if 40 <= len(s) <= 200]


def run_sampler(mode: str, model: Timed, prompts: list[torch.Tensor], params: DiffusionParams) -> Measurement:
    model.calls, model.seconds = 0, 0.0
    answers, log_probs = [], []
    start, cpu = time.perf_counter(), time.process_time()
    for i, prompt in enumerate(prompts):
        seeded = replace(params, seed=i)
        canvas = torch.full((seeded.resolve(model.config.model_type).gen_length,), model.config.mask_token_id)
        for (event,) in iter_generate(model, prompt[None], seeded):
            for c in event.commits:
                canvas[c.index] = c.token_id
                log_probs.append(max(c.confidence, 1e-30))
        answers.append(canvas)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Measurement(mode, answers, seconds, cpu, model.calls, model.seconds, _mean_log(log_probs))


def run_engine(batch: int, model: Timed, prompts: list[torch.Tensor], params: DiffusionParams) -> Measurement:
    model.calls, model.seconds = 0, 0.0
    requests = [EngineRequest(f"b{batch}-{i}", "bench", p.tolist(), params, seed=i)
                for i, p in enumerate(prompts)]
    log_probs: list[float] = []
    on_event = lambda i, event: log_probs.extend(max(c.confidence, 1e-30) for c in event.commits)
    start, cpu = time.perf_counter(), time.process_time()
    with Engine({"bench": model}, max_batch=batch) as engine:
        results = engine.generate(requests, on_event=on_event)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Measurement(f"engine batch {batch} (threshold + dual)", [r.answer for r in results], seconds, cpu,
                       model.calls, model.seconds, _mean_log(log_probs))


def _mean_log(probs: list[float]) -> float:
    return float(torch.tensor(probs, dtype=torch.float64).log().mean()) if probs else float("nan")


def agreement(answers: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    same = sum(int((a == r).sum()) for a, r in zip(answers, reference, strict=True))
    return same / sum(len(r) for r in reference)


def table(results: list[Measurement], reference: Measurement) -> str:
    base, base_cpu = reference.tokens / reference.seconds, reference.tokens / reference.cpu_seconds
    lines = ["| mode | tokens/s (wall) | × ref | tokens per CPU-s | × ref | NFE | ms per forward | agreement "
             "| mean log p |", "|---|---|---|---|---|---|---|---|---|"]
    for m in results:
        rate, cpu_rate = m.tokens / m.seconds, m.tokens / m.cpu_seconds
        per_forward = 1000 * m.forward_seconds / max(m.forwards, 1)
        lines.append(f"| {m.mode} | {rate:.1f} | {rate / base:.2f} | {cpu_rate:.1f} | "
                     f"{cpu_rate / base_cpu:.2f} | {m.forwards} | {per_forward:.2f} | "
                     f"{agreement(m.answers, reference.answers):.1%} | {m.log_prob:.3f} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(BenchConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return BenchConfig(**vars(parser.parse_args(argv)))


def best(a: Measurement | None, b: Measurement) -> Measurement:
    """The faster of two rounds of one mode (noise on a shared machine only ever adds time)."""
    if a is None:
        return b
    return replace(b, seconds=min(a.seconds, b.seconds), cpu_seconds=min(a.cpu_seconds, b.cpu_seconds),
                   forward_seconds=min(a.forward_seconds, b.forward_seconds))


def modes(cfg: BenchConfig, model: Timed, prompts: list[torch.Tensor]) -> list[Callable[[], Measurement]]:
    plain = DiffusionParams(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps or None,
                            remasking="low_confidence")
    fast = replace(plain, threshold=cfg.threshold)
    sampler = lambda mode, params: lambda: run_sampler(mode, model, prompts, params)
    engine = lambda batch: lambda: run_engine(batch, model, prompts, replace(fast, cache="dual"))
    return [sampler("reference loop", plain), sampler(f"threshold {cfg.threshold}", fast),
            sampler("threshold + prefix cache", replace(fast, cache="prefix")),
            sampler("threshold + dual cache", replace(fast, cache="dual")),
            *(engine(int(b)) for b in cfg.batches.split(","))]


def main(argv: Sequence[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, label = load_bench_model(cfg.model, cfg.dtype)
    timed = Timed(model)
    prompts = make_prompts(label, model, cfg.prompts, cfg.prompt_length)
    warm_up = DiffusionParams(gen_length=cfg.block_length, block_length=cfg.block_length, cache="dual")
    run_sampler("warm-up", timed, prompts[:1], warm_up)
    runs = modes(cfg, timed, prompts)
    results: list[Measurement | None] = [None] * len(runs)
    for _ in range(cfg.repeats):
        results = [best(previous, run()) for previous, run in zip(results, runs, strict=True)]
    steps = DiffusionParams(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps or None)
    print(f"model {label}, {cfg.dtype}, {torch.get_num_threads()} threads, {cfg.prompts} prompts of "
          f"{cfg.prompt_length} tokens, gen_length {cfg.gen_length}, block_length {cfg.block_length}, "
          f"steps {steps.resolve(model.config.model_type).steps}, best of {cfg.repeats}")
    print(table(results, results[0]))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
