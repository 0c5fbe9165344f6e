"""Triton W4A16 matmul: `out [M, N] = x [M, K] @ W.T` with W stored as int4 codes plus per-group scales.

Layout (made contiguous once at load, never per call): `qweight` int32 [K/8, N] = `weight_packed.T`
(GPTQ's `qweight`: word [j, n] holds inputs k = 8j..8j+7 of output n, lowest bits first) and
`scales` [K/g, N] = `weight_scale.T` in the activation dtype. Loading a [BLOCK_K, BLOCK_N] tile along
N is then coalesced.

Each program loads its tile of codes, dequantizes in registers (`(u - 8) * scale`, rounded once to
the activation dtype, exactly as `reference.dequantize_int4`), and accumulates in float32. Three
paths, by the number of tokens M:

- `gemv`   (M <= GEMV_MAX_M): one program per (row, N block, K split), multiply-and-reduce without
  `tl.dot`; the K splits add into a float32 buffer with atomics so that few-token calls still fill
  the GPU.
- `splitk` (M <= SPLITK_MAX_M): `tl.dot` tiles with split-K, same float32 atomic buffer.
- `tiled`  (M < DEQUANT_MIN_M): `tl.dot` tiles, one program per output tile, stored directly.
- `dequant` (M >= DEQUANT_MIN_M): dequantize the weight, then cuBLAS; int4 cannot win where the
  matmul is compute-bound.

The thresholds are first guesses: they have not been tuned on a GPU yet (see BENCHMARKS.md).
Block configurations are autotuned on a GPU only; on CPU (TRITON_INTERPRET=1) a fixed configuration is
used. Every `tl.dot` tile is at least 16 in each dimension (the interpreter accepts smaller tiles
that a GPU rejects). Only Triton APIs present in 3.6 are used.
"""

from __future__ import annotations

import functools
import os
from typing import Literal

import torch
import triton
import triton.language as tl

from .packing import PACK_FACTOR
from .reference import dequantize_int4

Path = Literal["auto", "gemv", "splitk", "tiled", "dequant"]
GEMV_MAX_M = 4
SPLITK_MAX_M = 32
DEQUANT_MIN_M = 1024
ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Fixed configurations for the interpreter (and any non-autotuned launch). Small, so that the
# interpreter runs quickly, and with SPLIT_K = 2 so the atomic split-K reduction is exercised.
FIXED_CONFIGS = {
    "gemv": {"BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": 2},
    "splitk": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 2},
    "tiled": {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 1},
}


@triton.jit
def _dequant_tile(qweight_ptr, scales_ptr, offs_k, offs_n, mask_k, mask_n, stride_qk, stride_qn,
                  stride_sg, stride_sn, GROUP_SIZE: tl.constexpr):
    """Codes and scales of inputs `offs_k` x outputs `offs_n` -> W.T tile [BLOCK_K, BLOCK_N]."""
    mask = mask_k[:, None] & mask_n[None, :]
    words = tl.load(qweight_ptr + (offs_k // 8)[:, None] * stride_qk + offs_n[None, :] * stride_qn,
                    mask=mask, other=0)
    shifts = (offs_k % 8) * 4
    q = ((words >> shifts[:, None]) & 0xF) - 8  # [BLOCK_K, BLOCK_N] int32 in [-8, 7]
    s = tl.load(scales_ptr + (offs_k // GROUP_SIZE)[:, None] * stride_sg + offs_n[None, :] * stride_sn,
                mask=mask, other=0.0)
    return q.to(s.dtype) * s  # one rounding to the activation dtype, as the reference does


@triton.jit
def _int4_gemv_kernel(x_ptr, qweight_ptr, scales_ptr, out_ptr, M, N, K, stride_xm, stride_xk,
                      stride_qk, stride_qn, stride_sg, stride_sn, stride_om, stride_on, M_BUCKET,
                      GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT_K: tl.constexpr):
    # grid: (M, cdiv(N, BLOCK_N), SPLIT_K); out is a zeroed float32 [M, N] when SPLIT_K > 1
    m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        offs_k = (kt * SPLIT_K + pid_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + m * stride_xm + offs_k * stride_xk, mask=mask_k, other=0.0)  # [BLOCK_K]
        w = _dequant_tile(qweight_ptr, scales_ptr, offs_k, offs_n, mask_k, mask_n, stride_qk, stride_qn,
                          stride_sg, stride_sn, GROUP_SIZE)  # [BLOCK_K, BLOCK_N]
        acc += tl.sum(x.to(tl.float32)[:, None] * w.to(tl.float32), axis=0)
    out_ptrs = out_ptr + m * stride_om + offs_n * stride_on
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask_n)


@triton.jit
def _int4_matmul_kernel(x_ptr, qweight_ptr, scales_ptr, out_ptr, M, N, K, stride_xm, stride_xk,
                        stride_qk, stride_qn, stride_sg, stride_sn, stride_om, stride_on, M_BUCKET,
                        GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    # grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N), SPLIT_K); out is a zeroed float32 [M, N] when SPLIT_K > 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(0, tl.cdiv(K, BLOCK_K * SPLIT_K)):
        offs_k = (kt * SPLIT_K + pid_k) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = _dequant_tile(qweight_ptr, scales_ptr, offs_k, offs_n, mask_k, mask_n, stride_qk, stride_qn,
                          stride_sg, stride_sn, GROUP_SIZE)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(x, w)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=mask)


def _gpu_configs(path: str) -> list:
    if path == "gemv":
        return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w, num_stages=s)
                for bn in (64, 128, 256) for bk in (64, 128) for sk in (1, 2, 4, 8)
                for w, s in ((4, 2), (8, 3))]
    split = (1, 2, 4, 8) if path == "splitk" else (1,)
    block_m = (16, 32) if path == "splitk" else (32, 64, 128)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_warps=w,
                          num_stages=s)
            for bm in block_m for bn in (64, 128) for bk in (32, 64, 128) for sk in split
            for w, s in ((4, 3), (8, 4))]


@functools.cache
def _autotuned(path: str):
    """The kernel for `path` wrapped in an autotuner (built on first GPU use, never at import)."""
    kernel = _int4_gemv_kernel if path == "gemv" else _int4_matmul_kernel
    reset = ["out_ptr"] if path != "tiled" else None  # atomics accumulate across tuning runs otherwise
    return triton.autotune(configs=_gpu_configs(path), key=["M_BUCKET", "N", "K", "GROUP_SIZE"],
                           reset_to_zero=reset)(kernel)


def choose_path(m: int) -> str:
    if m <= GEMV_MAX_M:
        return "gemv"
    if m <= SPLITK_MAX_M:
        return "splitk"
    return "tiled" if m < DEQUANT_MIN_M else "dequant"


def check_operands(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int) -> None:
    """Raise ValueError unless (x [M, K], qweight int32 [K/8, N], scales [K/g, N]) fit the kernel."""
    if x.ndim != 2:
        raise ValueError(f"x must be 2-d [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if qweight.dtype != torch.int32 or qweight.ndim != 2:
        raise ValueError(f"qweight must be a 2-d int32 [K/8, N] tensor, "
                         f"got {qweight.dtype} {tuple(qweight.shape)}")
    k, n = qweight.shape[0] * PACK_FACTOR, qweight.shape[1]
    if x.shape[1] != k:
        raise ValueError(f"x has {x.shape[1]} inputs but qweight {tuple(qweight.shape)} holds K = {k}")
    if group_size <= 0 or k % group_size:
        raise ValueError(f"group_size {group_size} must be positive and divide K = {k}")
    if tuple(scales.shape) != (k // group_size, n):
        raise ValueError(f"scales must have shape [K/g, N] = {(k // group_size, n)}, "
                         f"got {tuple(scales.shape)}")
    if scales.dtype != x.dtype:
        raise ValueError(f"scales must be in the activation dtype {x.dtype} (convert once at load), "
                         f"got {scales.dtype}")
    if not (qweight.is_contiguous() and scales.is_contiguous()):
        raise ValueError("qweight and scales must be contiguous (make them contiguous once at load)")
    if len({x.device, qweight.device, scales.device}) != 1:
        raise ValueError(f"x, qweight and scales are on different devices: "
                         f"{x.device}, {qweight.device}, {scales.device}")


def int4_matmul_triton(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, group_size: int,
                       path: Path = "auto") -> torch.Tensor:
    """x [M, K] @ W.T -> [M, N] in x's dtype; W from `qweight` [K/8, N] and `scales` [K/g, N]."""
    check_operands(x, qweight, scales, group_size)
    m, k = x.shape
    n = qweight.shape[1]
    path = choose_path(m) if path == "auto" else path
    if path == "dequant":
        w = dequantize_int4(qweight.T, scales.T, x.dtype)  # [N, K]
        return x @ w.T
    if m == 0:
        return x.new_zeros((0, n))
    tuned = x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1"
    kernel = _autotuned(path) if tuned else (_int4_gemv_kernel if path == "gemv" else _int4_matmul_kernel)
    config = {} if tuned else FIXED_CONFIGS[path]
    atomic = path != "tiled"  # the split-K paths may add partial sums into a float32 buffer
    out = torch.zeros((m, n), dtype=torch.float32, device=x.device) if atomic else x.new_empty((m, n))

    def grid(meta: dict) -> tuple[int, int, int]:
        rows = m if path == "gemv" else triton.cdiv(m, meta["BLOCK_M"])
        return rows, triton.cdiv(n, meta["BLOCK_N"]), meta.get("SPLIT_K", 1)

    kernel[grid](x, qweight, scales, out, m, n, k, x.stride(0), x.stride(1), qweight.stride(0),
                 qweight.stride(1), scales.stride(0), scales.stride(1), out.stride(0), out.stride(1),
                 triton.next_power_of_2(m), GROUP_SIZE=group_size, **config)
    return out.to(x.dtype) if atomic else out
