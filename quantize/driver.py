"""The block-by-block driver shared by every method.

For each transformer block, in order: compute the FP teacher's output of the block (and, for FAIR-Calib's
`k_proj`/`v_proj` weights, its attention averaged over heads); then for each group of Linear layers that
see the same input, in computation order, accumulate the token-weighted Hessian of their inputs with
forward hooks, quantize each layer with the method, and put the dequantized weight in place so that later
groups see the quantized layers ("true sequential"); optionally refine the block's scales at the block
output; finally propagate the calibration inputs through the quantized block (or keep the FP stream,
`propagate=fp`). Blocks come from a `WeightSource`: only the current block's FP weights are held (the others
stay on `meta` when it streams from a file), and once a block is done only its packed results are kept.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call
from tqdm import tqdm

from . import arch
from .calibration import CalibrationSet
from .methods import COMPUTE_DTYPES, METHODS, SCALE_DTYPES, LayerStats, PackedWeight
from .refine import refine_scales
from .settings import QuantizeSettings
from .source import WeightSource


class _Stop(Exception):
    """Raised by the last hook of a group: the rest of the block's forward is not needed."""


@dataclass
class Batch:
    x_q: torch.Tensor  # [b, L, D] input of the current block, through the quantized blocks
    x_fp: torch.Tensor  # [b, L, D] the FP teacher's input of the current block
    inputs: arch.BlockInputs
    w: torch.Tensor  # [b, L] token weights (prior, floor, 0 on padding)


def _embed_batches(model: nn.Module, calib: CalibrationSet, token_w: torch.Tensor, size: int,
                   dtype: torch.dtype) -> list[Batch]:
    out = []
    with torch.no_grad():
        for sl in calib.batches(size):
            x, inputs = arch.embed(model, calib.ids[sl], calib.attention_mask[sl], dtype)
            out.append(Batch(x, x, inputs, token_w[sl].to(x.dtype)))
    return out


def _hessians(block: nn.Module, index: int, names: tuple[str, ...], batches: list[Batch], weights: dict,
              propagate: str) -> dict[str, LayerStats]:
    """Token-weighted input Hessians 2 Σ_j w_j x_j x_jᵀ / Σ_j w_j of the layers `names`."""
    k = {n: block.get_submodule(n).in_features for n in names}
    acc = {n: torch.zeros(k[n], k[n], dtype=torch.float64) for n in names}
    mass = {n: 0.0 for n in names}
    current = [0]

    def hook(name):
        def record(module, args, output):
            x = args[0].detach().double().reshape(-1, k[name])  # [b*L, K]
            w = weights[name][current[0]].double().reshape(-1, 1)  # [b*L, 1]
            xs = x * w.sqrt()
            acc[name] += 2 * xs.T @ xs
            mass[name] += float(w.sum())
            if name == names[-1]:
                raise _Stop
        return record

    handles = [block.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            for b, batch in enumerate(batches):
                current[0] = b
                try:
                    batch.inputs.run(block, batch.x_q if propagate == "quantized" else batch.x_fp, index)
                except _Stop:
                    pass
    finally:
        for h in handles:
            h.remove()
    return {n: LayerStats(acc[n] / max(mass[n], 1e-12), int(sum(int((w > 0).sum()) for w in weights[n])))
            for n in names}


def _kv_weights(model, block, batches: list[Batch]) -> list[torch.Tensor]:
    """Σ_i w_i ā_ij per batch [b, L]: prior-weighted attention each token j receives (FP teacher)."""
    return [torch.einsum("bi,bij->bj", b.w, arch.attention_probs(model, block, b.x_fp, b.inputs))
            for b in batches]


def _set_weight(block: nn.Module, name: str, weight: torch.Tensor) -> None:
    linear = block.get_submodule(name)
    linear.weight = nn.Parameter(weight.to(linear.weight.dtype), requires_grad=False)


def layer_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """The calibration loss GPTQ minimises, tr(E H Eᵀ) with E = W - Ŵ, per output row."""
    e = (weight.double() - approx.double())
    return float(((e @ hessian) * e).sum() / len(e))


def quantize_blocks(source: WeightSource, calib: CalibrationSet, token_w: torch.Tensor,
                    settings: QuantizeSettings) -> tuple[dict[str, PackedWeight], dict]:
    """Quantize every block's Linear layers; returns {module name: PackedWeight} and a report."""
    s, model, method = settings, source.model, METHODS[settings.method]
    fam, dtype = arch.family(model), COMPUTE_DTYPES[s.compute_dtype]
    embedding = source.module(fam.embed)
    batches = _embed_batches(model, calib, token_w, s.batch_size, dtype)
    source.release(embedding)  # block 0's inputs are made: the embedding is done
    results: dict[str, PackedWeight] = {}
    report: dict = {"blocks": []}
    for index in tqdm(range(len(arch.blocks(model))), desc=f"Stage II ({s.method})", unit="block"):
        t0 = time.perf_counter()
        block = source.block(index).to(dtype)
        with torch.no_grad():
            targets = [b.inputs.run(block, b.x_fp, index) for b in batches]  # teacher outputs h*
        token = [b.w for b in batches]
        kv = _kv_weights(model, block, batches) if s.kv_weighting == "attention" and s.prior != "uniform" \
            else token
        block_q, layers = {}, {}
        for group in fam.groups:
            weights = {n: (kv if n in fam.kv else token) for n in group}
            stats = _hessians(block, index, group, batches, weights, s.propagate)
            for name in group:
                w = block.get_submodule(name).weight.detach().float()
                block_q[name] = method(w, stats[name], s)
                rtn_w = METHODS["rtn"](w, stats[name], s).weight()
                layers[name] = {"error": layer_error(w, block_q[name].weight(), stats[name].hessian),
                                "rtn_error": layer_error(w, rtn_w, stats[name].hessian),
                                "tokens": stats[name].tokens}
                _set_weight(block, name, block_q[name].weight())
        refined = None
        if s.refine and s.refine_steps > 0:
            block_q, refined = _refine(block, index, block_q, batches, targets, token, s)
        with torch.no_grad():
            for b, target in zip(batches, targets, strict=True):
                b.x_q = b.inputs.run(block, b.x_q, index) if s.propagate == "quantized" else target
                b.x_fp = target
        source.release(block)
        results.update({f"{fam.blocks}.{index}.{n}": qw.packed() for n, qw in block_q.items()})
        report["blocks"].append({"block": index, "seconds": round(time.perf_counter() - t0, 3),
                                 "peak_rss_mb": _peak_rss_mb(), "rss_mb": _rss_mb(), "layers": layers,
                                 "refine": refined})
    return results, report


def _refine(block, index, block_q, batches, targets, token, s: QuantizeSettings):
    def forward(b: int, rows, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = batches[b]
        cos, sin = batch.inputs.rope
        mask = batch.inputs.key_mask
        x = batch.x_q if s.propagate == "quantized" else batch.x_fp
        return functional_call(block, weights, (x[rows], (cos[rows], sin[rows]),
                                                None if mask is None else mask[rows], None, index, 0))

    refined, info = refine_scales(forward, block_q, targets, token, s.refine_steps, s.refine_lr,
                                  s.refine_batch, SCALE_DTYPES[s.scale_dtype], s.seed + index,
                                  COMPUTE_DTYPES[s.compute_dtype])
    for name, qw in refined.items():
        _set_weight(block, name, qw.weight())
    return refined, info


def quantize_rtn(source: WeightSource, settings: QuantizeSettings) -> dict[str, PackedWeight]:
    """Data-free round to nearest of every block Linear (no calibration pass)."""
    fam, results = arch.family(source.model), {}
    for index in tqdm(range(len(arch.blocks(source.model))), desc="RTN", unit="block"):
        block = source.block(index)
        for name in arch.block_linears(source.model):
            w = block.get_submodule(name).weight.detach().float()
            results[f"{fam.blocks}.{index}.{name}"] = METHODS["rtn"](w, LayerStats(None), settings).packed()
        source.release(block)
    return results


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_mb() -> float | None:
    """Resident memory now (Linux; None elsewhere): unlike the peak, not dominated by Stage I's teacher."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
