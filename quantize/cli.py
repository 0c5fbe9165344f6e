"""`inkwell-quantize`: writes int4 checkpoints (RTN, GPTQ, FAIR-Calib) in the `pack-quantized` format.

    inkwell-quantize --model inkwell-tiny --method fair-calib --group-size 128 --out out/tiny-int4

Every hyperparameter is a flag derived from `QuantizeSettings` and recorded in the checkpoint's
`quantization_config.inkwell` block.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import sys

from .pipeline import quantize_model
from .settings import add_arguments, from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inkwell-quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory, embedded name or cached hub id")
    parser.add_argument("--out", required=True, help="output model directory")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_arguments(parser)
    return parser


def release_freed_blocks() -> bool:
    """Have glibc's malloc return large freed allocations (>= 1 MiB) to the system at once. Its default,
    dynamic threshold keeps freed block weights in the heap, and a streamed run's resident memory then
    grows block by block (BENCHMARKS.md, "Streamed quantization"). False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD (malloc.h); 1 on success
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    release_freed_blocks()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        settings = from_args(args)
        inkwell = quantize_model(args.model, settings, args.out)
    except ValueError as err:
        sys.stderr.write(f"inkwell-quantize: error: {err}\n")
        return 2
    summary = {k: inkwell[k] for k in ("method", "source_model", "prior_path") if k in inkwell}
    sys.stdout.write(f"wrote {args.out}: {json.dumps(summary)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
