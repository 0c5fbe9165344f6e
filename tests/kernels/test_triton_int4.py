"""The Triton W4A16 kernel against the reference: under TRITON_INTERPRET=1 on CPU (in a subprocess, as
the variable must be set before Triton compiles anything), and natively on a GPU (`gpu` marker).

Tolerance, per output element, with S = sum_k |x_k| |W_nk| (the sum of absolute product terms):
- The kernel's dequantized tile is bit-identical to the reference's W: both compute q * scale with one
  rounding to the activation dtype (the scales already are in that dtype, |q| <= 8).
- Both accumulate in float32 but in a different order: at most 2 * K * 2^-24 * S apart
  (the standard bound K * u * S for each of two recursive summations, u = 2^-24).
- In fp16, both round the float32 sum once to fp16 (unit roundoff 2^-11): another 2 * 2^-11 * S.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="Triton is only installed on Linux x86_64")

UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 0.0}

# (path, M, N, K, group_size, dtype): odd M and N, K in {64, 160, 256}, groups 32/64/128, both dtypes,
# every kernel path forced once and the automatic choice
INTERPRETER_CASES = [
    ("gemv", 1, 37, 256, 128, "float16"), ("gemv", 3, 61, 160, 32, "float32"),
    ("gemv", 1, 48, 64, 64, "float32"), ("splitk", 5, 45, 256, 64, "float16"),
    ("splitk", 17, 33, 160, 32, "float32"), ("splitk", 31, 16, 128, 128, "float16"),
    ("tiled", 33, 71, 256, 128, "float32"), ("tiled", 47, 40, 192, 64, "float16"),
    ("tiled", 65, 33, 64, 32, "float16"), ("auto", 7, 29, 128, 32, "float16"),
    ("auto", 1, 64, 256, 64, "float32"), ("dequant", 9, 35, 96, 32, "float16"),
]

# Runs in a fresh interpreter with TRITON_INTERPRET=1; prints one JSON line per case.
CHILD = r"""
import json, sys
import torch
from inkwell.kernels import dequantize_int4, int4_matmul_reference, pack_int4, quantize_groups
from inkwell.kernels.triton_int4 import int4_matmul_triton
UNIT = {"float16": 2.0**-11, "float32": 0.0}
for i, (path, m, n, k, g, dtype_name) in enumerate(json.loads(sys.argv[1])):
    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(i)
    q, scales = quantize_groups(torch.randn(n, k, generator=gen), g, dtype)
    packed = pack_int4(q)
    x = torch.randn(m, k, generator=gen).to(dtype)
    out = int4_matmul_triton(x, packed.T.contiguous(), scales.T.contiguous(), g, path=path)
    ref = int4_matmul_reference(x, packed, scales).double()
    s = x.double().abs() @ dequantize_int4(packed, scales, torch.float64).abs().T
    bound = (2 * k * 2.0**-24 + 2 * UNIT[dtype_name]) * s
    err = (out.double() - ref).abs()
    print(json.dumps({"case": [path, m, n, k, g, dtype_name], "dtype": str(out.dtype).split(".")[-1],
                      "shape": list(out.shape), "max_err": err.max().item(),
                      "worst_ratio": (err / bound.clamp_min(1e-30)).max().item(),
                      "ref_max": ref.abs().max().item()}))
"""


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="interpreter tests run only without CUDA; the gpu-marked tests cover this machine")
def test_kernel_under_interpreter_matches_reference():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(INTERPRETER_CASES)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == len(INTERPRETER_CASES)
    for r in results:
        path, m, n, _, _, dtype = r["case"]
        assert r["dtype"] == dtype and r["shape"] == [m, n], r
        assert r["worst_ratio"] <= 1.0, r  # within the bound derived in the module docstring
        assert r["ref_max"] > 1.0, r  # the comparison is not between two near-zero outputs


def test_launcher_rejects_bad_operands():
    from inkwell.kernels import pack_int4, quantize_groups
    from inkwell.kernels.triton_int4 import check_operands

    q, scales = quantize_groups(torch.randn(32, 128), 32)
    qweight, st = pack_int4(q).T.contiguous(), scales.T.contiguous()  # [16, 32], [4, 32] fp16
    x = torch.randn(3, 128, dtype=torch.float16)
    check_operands(x, qweight, st, 32)
    bad = [
        ((x[0], qweight, st, 32), "x must be 2-d"),
        ((x.to(torch.int32), qweight, st, 32), "x must be float16, bfloat16 or float32"),
        ((x, qweight.to(torch.int64), st, 32), "qweight must be a 2-d int32"),
        ((x[:, :64], qweight, st, 32), "x has 64 inputs but qweight"),
        ((x, qweight, st, 48), "group_size 48 must be positive and divide K"),
        ((x, qweight, st[:2], 32), "scales must have shape"),
        ((x, qweight, st.float(), 32), "scales must be in the activation dtype"),
        ((x, pack_int4(q).T, st, 32), "must be contiguous"),
    ]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            check_operands(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("path", ["gemv", "splitk", "tiled", "dequant", "auto"])
@pytest.mark.parametrize("m, n, k, g", [(1, 4096, 4096, 128), (13, 1000, 2048, 64), (77, 512, 768, 32)])
def test_kernel_on_gpu_matches_reference(dtype, path, m, n, k, g):
    from inkwell.kernels import dequantize_int4, pack_int4, quantize_groups
    from inkwell.kernels.triton_int4 import int4_matmul_triton

    gen = torch.Generator().manual_seed(m)
    q, scales = quantize_groups(torch.randn(n, k, generator=gen), g, dtype)
    packed, scales = pack_int4(q).cuda(), scales.cuda()
    x = torch.randn(m, k, generator=gen).to("cuda", dtype)
    out = int4_matmul_triton(x, packed.T.contiguous(), scales.T.contiguous(), g, path=path)
    w = dequantize_int4(packed, scales, dtype).double()  # W as the kernel dequantizes it, [N, K]
    ref = x.double() @ w.T  # exact
    s = x.double().abs() @ w.abs().T
    # the kernel: float32 accumulation and one output rounding; one more rounding allowed for cuBLAS's
    # reduced-precision split-K reductions on the dequant path
    bound = (k * 2.0**-24 + 2 * UNIT_ROUNDOFF[str(dtype).split(".")[-1]]) * s
    assert out.dtype == dtype and out.shape == (m, n)
    assert bool(((out.double() - ref).abs() <= bound).all())
