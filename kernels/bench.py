"""Benchmark the int4 matmul against the FP matmul on the same shapes, side by side in one run.

    python -m inkwell.kernels.bench [--shapes llada,tiny] [--m 1,16,32,64,256] [--group-size 128]

On a GPU: the int4 path (Triton) against fp16 `F.linear` (cuBLAS). On a CPU: the int4 path (torch's
int4pack kernel, including the layer's cast of float32 activations to bf16 and back) against bf16 and
float32 `F.linear`. Ratios are FP time / int4 time (> 1: int4 is faster). Memory is the int4 layout's
bytes (codes, scales and zeros) over the fp16 weight's bytes. The candidates of one (shape, M) are
timed interleaved, call by call, and each time is the minimum over the calls after a warm-up: on a
shared machine the minimum is the cost of the call itself, the median includes other processes'
time slices. Compare ratios, not absolute times across runs (DESIGN section 11).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cpu_int4 import to_int4pack_cpu
from .ops import int4_matmul
from .packing import pack_int4, quantize_groups

# weight shapes [N = out_features, K = in_features]
SHAPES: dict[str, list[tuple[str, int, int]]] = {
    "llada": [("LLaDA-8B q/k/v/o", 4096, 4096), ("LLaDA-8B ff_proj/up_proj", 12288, 4096),
              ("LLaDA-8B ff_out", 4096, 12288)],
    # inkwell-tiny (d_model 256, mlp 768, vocab 4096): provisional until the model is trained
    "tiny": [("tiny attention", 256, 256), ("tiny ff_proj/up_proj", 768, 256), ("tiny ff_out", 256, 768),
             ("tiny vocab head", 4096, 256)],
}
M_VALUES = (1, 16, 32, 64, 256)


@dataclass(frozen=True)
class Row:
    label: str
    n: int
    k: int
    m: int
    int4_ms: float
    fp_ms: dict[str, float]
    memory_ratio: float


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


def time_ms(fns: dict[str, Callable[[], object]], device: torch.device, budget_s: float,
            min_rounds: int = 5) -> dict[str, float]:
    """Minimum time in ms of one call of each of `fns`, called in turn (one warm-up round, which also
    autotunes on a GPU), until `budget_s` and `min_rounds` are both spent."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for round_ in itertools.count():
        if round_ > min_rounds and (time.perf_counter() - start > budget_s or round_ > 500):
            break
        for name, fn in fns.items():
            elapsed = _gpu_call_ms(fn) if device.type == "cuda" else _cpu_call_ms(fn)
            if round_:
                times[name].append(elapsed)
    return {name: min(t) for name, t in times.items()}


def _cpu_call_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def _gpu_call_ms(fn: Callable[[], object], calls: int = 20) -> float:
    # CUDA events around a batch of calls: a single microsecond-scale kernel is below launch overhead
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / calls


def int4_operands(w: torch.Tensor, group_size: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The serving layout of `w [N, K]` on `device`, as Int4Linear builds it at load."""
    q, scales = quantize_groups(w, group_size, torch.bfloat16 if device.type == "cpu" else dtype)
    packed = pack_int4(q)
    if device.type == "cpu":
        return to_int4pack_cpu(packed, scales, group_size)
    return packed.T.contiguous().to(device), scales.T.contiguous().to(device)


def bench_shape(label: str, n: int, k: int, m_values: tuple[int, ...], group_size: int, device: torch.device,
                budget_s: float) -> list[Row]:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) * 0.02
    int4_dtype = torch.float32 if device.type == "cpu" else torch.float16  # the activations the model has
    weight, scales = int4_operands(w, group_size, device, int4_dtype)
    int4_bytes = weight.numel() * weight.element_size() + scales.numel() * scales.element_size()
    fp_dtypes = {"fp16": torch.float16}
    if device.type == "cpu":
        fp_dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    fp_weights = {name: w.to(device, dt) for name, dt in fp_dtypes.items()}
    rows = []
    for m in m_values:
        x = torch.randn(m, k, generator=gen).to(device)
        xs = {"int4": x.to(int4_dtype), **{name: x.to(wf.dtype) for name, wf in fp_weights.items()}}
        fns = {"int4": functools.partial(int4_matmul, xs["int4"], weight, scales, group_size),
               **{name: functools.partial(F.linear, xs[name], wf) for name, wf in fp_weights.items()}}
        ms = time_ms(fns, device, budget_s)
        int4_ms = ms.pop("int4")
        rows.append(Row(label, n, k, m, int4_ms, ms, int4_bytes / (2 * n * k)))
    return rows


def format_table(rows: list[Row]) -> str:
    fp_names = list(rows[0].fp_ms)
    head = ["shape", "N x K", "M", "int4 ms", *[f"{f} ms" for f in fp_names],
            *[f"{f}/int4" for f in fp_names], "int4 mem / fp16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        times = [f"{r.fp_ms[f]:.3f}" for f in fp_names]
        ratios = [f"{r.fp_ms[f] / r.int4_ms:.2f}x" for f in fp_names]
        cells = [r.label, f"{r.n}x{r.k}", str(r.m), f"{r.int4_ms:.3f}", *times, *ratios,
                 f"{r.memory_ratio:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="llada,tiny", help=f"comma-separated from {sorted(SHAPES)}")
    parser.add_argument("--m", default=",".join(map(str, M_VALUES)), help="comma-separated token counts")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timing per (shape, M)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = set(args.shapes.split(",")) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shape set(s) {sorted(unknown)}; allowed: {sorted(SHAPES)}")
    device = torch.device(args.device)
    m_values = tuple(int(m) for m in args.m.split(","))
    print(f"# int4 matmul benchmark, {datetime.date.today()}, device: {device_name(device)}, "
          f"torch {torch.__version__}, group size {args.group_size}")
    rows = []
    for shape_set in args.shapes.split(","):
        for label, n, k in SHAPES[shape_set]:
            rows += bench_shape(label, n, k, m_values, args.group_size, device, args.budget)
    print(format_table(rows))


if __name__ == "__main__":
    main()
