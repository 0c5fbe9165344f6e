"""Streamed quantization, measured on the CPU: a synthetic random-weight LLaDA (about 300M parameters,
bfloat16 on disk) quantized by `inkwell-quantize` in fresh processes, each run's peak RSS (the child's
`ru_maxrss`), the most resident memory at the end of a Stage II block (`rss_mb` of quantize_report.json)
and seconds per block, beside the size of the whole model and of one block in float32.

    python recipes/bench_quantize_stream.py [--layers 18 --d-model 1024 --mlp 2816 --vocab 32000 --threads 1]
                                            [--runs rtn,gptq-stage1,gptq,fair-calib]

Runs: RTN (no calibration, streamed from start to end); GPTQ with its Stage I rollouts in the same process
(`--save-rollouts`: the float32 teacher sets that process's peak, as it did for every run before
streaming); GPTQ and FAIR-Calib from those rollouts (`--rollouts-file`: Stage II and the export only, the
part that streaming bounds). Calibration is kept small (8 prompts, a 32-token window, 16 steps).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from inkwell.engine.checkpoint import save_model
from inkwell.engine.models import build_model, config_from_dict
from torch import nn

CALIB = ["--calib-prompts", "8", "--prompt-tokens", "16", "--gen-length", "32", "--block-length", "32",
         "--steps", "16", "--batch-size", "8", "--group-size", "128"]
FAIR = ["--refine-steps", "5", "--refine-batch", "4", "--clip-grid", "4"]
MB = 2**20


def synthetic_llada(d_model: int, layers: int, mlp: int, vocab: int) -> nn.Module:
    """Random weights in bfloat16: N(0, 0.02) matrices, ones for the norms (as the presets)."""
    config = config_from_dict({
        "model_type": "llada", "d_model": d_model, "n_layers": layers, "n_heads": d_model // 64,
        "mlp_hidden_size": mlp, "vocab_size": vocab, "max_sequence_length": 1024, "mask_token_id": vocab - 1,
        "eos_token_id": vocab - 2, "pad_token_id": vocab - 2, "bos_token_id": vocab - 3})
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = build_model(config)
    for name, p in list(model.named_parameters()):
        module_name, _, attr = name.rpartition(".")
        value = torch.randn(p.shape, generator=generator) * 0.02 if p.ndim > 1 else torch.ones(p.shape)
        param = nn.Parameter(value.bfloat16(), requires_grad=False)
        model.get_submodule(module_name)._parameters[attr] = param
    return model


def make_model(out: Path, d_model: int, layers: int, mlp: int, vocab: int) -> dict:
    """Save the synthetic model in bfloat16 to `out`; its sizes in float32."""
    model = synthetic_llada(d_model, layers, mlp, vocab)
    parts = model.model.transformer
    save_model(model, out, dtype=torch.bfloat16)
    return {"parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "model_fp32_mb": round(fp32_mb(model)), "block_fp32_mb": round(fp32_mb(parts.blocks[0])),
            "embedding_fp32_mb": round(fp32_mb(parts.wte))}


def fp32_mb(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) * 4 / MB


def quantize(label: str, model_dir: Path, out: Path, threads: int, *flags: str) -> dict:
    """One `inkwell-quantize` process; its peak RSS from `wait4`, per-block numbers from its report."""
    cmd = [sys.executable, "-m", "inkwell.quantize.cli", "--model", str(model_dir), "--out", str(out),
           "--threads", str(threads), *flags]
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{label}: inkwell-quantize exited {proc.returncode}, see {log.name}")
    blocks = json.loads((out / "quantize_report.json").read_text()).get("blocks", [])
    seconds = [b["seconds"] for b in blocks]
    return {"run": label, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "stage2_rss_mb": max((b["rss_mb"] for b in blocks), default=None),
            "s_per_block": round(sum(seconds) / len(seconds), 2) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--mlp", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every quantize run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model and outputs here")
    parser.add_argument("--runs", default="rtn,gptq-stage1,gptq,fair-calib",
                        help="runs, by output directory (gptq, fair-calib use gptq-stage1's rollouts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quantize-stream-"))
    # The model is made in a child process: a forked child's peak RSS (ru_maxrss) counts the image it had
    # before exec, so a bench process holding the model would inflate every run's peak by its size.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        sizes = pool.apply(make_model, (work / "model", args.d_model, args.layers, args.mlp, args.vocab))
    saved = ["--rollouts-file", str(work / "gptq-stage1" / "stage1_rollouts.pt")]
    plan = [("rtn", "rtn", "rtn", ["--group-size", "128"]),  # (label, output dir, method, flags)
            ("gptq, Stage I in process", "gptq-stage1", "gptq", [*CALIB, "--save-rollouts", "true"]),
            ("gptq, saved rollouts", "gptq", "gptq", [*CALIB, *saved]),
            ("fair-calib, saved rollouts", "fair-calib", "fair-calib", [*CALIB, *FAIR, *saved])]
    result = {"sizes": sizes, "threads": args.threads, "calibration": CALIB, "fair_calib": FAIR, "runs": []}
    print(json.dumps(sizes))
    print("| run | peak RSS (MB) | max RSS after a Stage II block (MB) | s/block | wall (s) |")
    print("|---|---|---|---|---|", flush=True)
    chosen = args.runs.split(",")
    for label, out, method, flags in [p for p in plan if p[1] in chosen]:  # each row as it comes (long runs)
        run = quantize(label, work / "model", work / out, args.threads, "--method", method, *flags)
        result["runs"].append(run)
        (work / "bench_quantize_stream.json").write_text(json.dumps(result, indent=1) + "\n")
        print("| " + " | ".join(str(run[k]) for k in ("run", "peak_rss_mb", "stage2_rss_mb", "s_per_block",
                                                       "wall_s")) + " |", flush=True)
    print(f"outputs: {work}")


if __name__ == "__main__":
    main()
