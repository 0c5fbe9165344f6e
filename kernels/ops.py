"""The one dispatch point for int4 matmuls: the custom op `inkwell::int4_matmul`.

The weight's layout is named by its dtype, so a layer converted once at load calls the same op
everywhere:

- int32 `qweight` [K/8, N] (= `weight_packed.T`) with `scales` [K/g, N]: the Triton kernel on CUDA
  for fp16/bf16 activations; the pure-torch reference otherwise (CPU, float32, or no Triton).
- uint8 `int4pack` [N, K/2] with `scales_and_zeros` [K/g, N, 2]: torch's CPU kernel (`cpu_int4`).

Being a `torch.library` op with a fake implementation, it traces under `torch.compile` and runs on
the meta device. It is defined with `torch.library.Library` and per-device kernels rather than the
`torch.library.custom_op` decorator: the decorator's Python wrapper cost about 30 us per call on the
CPU, as much as a whole small matmul. Triton is imported here, lazily, and nowhere else outside its
kernel file.
"""

from __future__ import annotations

import importlib.util

import torch

from .cpu_int4 import int4pack_mm_cpu
from .reference import int4_matmul_reference

TRITON_DTYPES = (torch.float16, torch.bfloat16)


def triton_available() -> bool:
    """Whether Triton is installed (it is only on Linux x86_64)."""
    return importlib.util.find_spec("triton") is not None


def _op_defined() -> bool:
    try:
        torch.ops.inkwell.int4_matmul  # noqa: B018 (lookup only)
    except (AttributeError, RuntimeError):
        return False
    return True


# Registered once per process. From the repository root this file can also be imported a second time
# under another name: `kernels/` is then importable as the top-level package `kernels`, which
# transformers probes for the Hugging Face `kernels` library. That copy must not register again.
_REGISTER = not _op_defined()
_LIB = torch.library.Library("inkwell", "FRAGMENT")  # the registration handle: keeps the op defined
if _REGISTER:
    _LIB.define("int4_matmul(Tensor x, Tensor weight, Tensor scales, int group_size) -> Tensor")


def int4_matmul(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] in x's dtype, for a weight in one of the layouts above."""
    return torch.ops.inkwell.int4_matmul.default(x, weight, scales, group_size)


def _int4_matmul_kernel(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                        group_size: int) -> torch.Tensor:
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # [M, K]
    if weight.dtype == torch.uint8:
        out = int4pack_mm_cpu(x2, weight, scales, group_size)
    elif weight.dtype == torch.int32:
        out = _qweight_matmul(x2, weight, scales, group_size)
    else:
        raise ValueError(f"int4_matmul: weight must be int32 qweight [K/8, N] or uint8 int4pack [N, K/2], "
                         f"got {weight.dtype}")
    return out if x.ndim == 2 else out.reshape(*x.shape[:-1], out.shape[-1])


def _int4_matmul_fake(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                      group_size: int) -> torch.Tensor:
    n = weight.shape[0] if weight.dtype == torch.uint8 else weight.shape[1]
    return x.new_empty((*x.shape[:-1], n))


if _REGISTER:
    _LIB.impl("int4_matmul", _int4_matmul_kernel, "CPU")
    _LIB.impl("int4_matmul", _int4_matmul_kernel, "CUDA")
    torch.library.register_fake("inkwell::int4_matmul", _int4_matmul_fake, lib=_LIB)


def _qweight_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    group_size: int) -> torch.Tensor:
    if x.is_cuda and x.dtype in TRITON_DTYPES and triton_available():
        from .triton_int4 import int4_matmul_triton  # the guarded Triton import

        return int4_matmul_triton(x, qweight, scales, group_size)
    k = qweight.shape[0] * 8
    if scales.shape[0] * group_size != k:
        raise ValueError(f"group_size {group_size} does not match scales {tuple(scales.shape)} for K = {k}")
    return int4_matmul_reference(x, qweight.T, scales.T)
