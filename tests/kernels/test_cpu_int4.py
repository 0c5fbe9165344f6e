"""The CPU int4pack path and the `inkwell::int4_matmul` dispatch agree with the reference."""

from __future__ import annotations

import pytest
import torch
from inkwell.kernels import (
    dequantize_int4,
    from_int4pack_cpu,
    int4_matmul,
    int4_matmul_reference,
    int4pack_mm_cpu,
    int4pack_unsupported,
    pack_int4,
    quantize_groups,
    to_int4pack_cpu,
)

BF16_UNIT_ROUNDOFF = 2.0**-8  # bf16 keeps 8 significant bits: one rounding errs by at most 2^-8 relative


def _layer(n: int, k: int, g: int, seed: int = 0, scale_dtype=torch.bfloat16):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    q, scales = quantize_groups(w, g, scale_dtype)
    return pack_int4(q), scales


@pytest.mark.parametrize("m, n, k, g", [
    (1, 64, 256, 32), (3, 48, 128, 64), (17, 32, 256, 128), (64, 128, 512, 256), (5, 4096 // 64, 4096, 128),
])
def test_cpu_path_matches_reference(m, n, k, g):
    packed, scales = _layer(n, k, g, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(100 + m))
    weight, scales_and_zeros = to_int4pack_cpu(packed, scales, g)
    out = int4pack_mm_cpu(x, weight, scales_and_zeros, g)
    ref = int4_matmul_reference(x, packed, scales)  # float32 throughout
    # The CPU path casts x to bf16 (the layer boundary), may round each product term to bf16 and rounds
    # the output to bf16: three relative errors of at most 2^-8 on the terms of sum_k |x_k||W_nk|.
    # W itself is exact (bf16 scales, |q| <= 8 needs 3 more bits, which fp32 dequantization keeps).
    bound = 3 * BF16_UNIT_ROUNDOFF * (x.abs() @ dequantize_int4(packed, scales).abs().T)
    err = (out - ref).abs()
    assert out.dtype == torch.float32 and out.shape == (m, n)
    assert bool((err <= bound).all()), f"max err {err.max():.3g}, worst err/bound {(err / bound).max():.3g}"
    # and it is not trivially loose: the error is the size of bf16 rounding, not of a wrong layout
    assert float(err.max()) < 0.05 * float(ref.abs().max())


def test_symmetric_codes_map_to_zero_point_zero():
    # W = (u - 8) * scale + zero with u = q + 8: a single nonzero code isolates the convention
    q = torch.zeros(16, 32, dtype=torch.int8)
    q[5, 7] = -3
    scales = torch.full((16, 1), 0.5, dtype=torch.bfloat16)
    weight, scales_and_zeros = to_int4pack_cpu(pack_int4(q), scales, 32)
    assert scales_and_zeros.shape == (1, 16, 2) and not bool(scales_and_zeros[..., 1].any())
    x = torch.eye(32)
    out = int4pack_mm_cpu(x, weight, scales_and_zeros, 32)  # [32, 16] = W.T
    expected = torch.zeros(32, 16)
    expected[7, 5] = -1.5
    assert torch.equal(out, expected)


@pytest.mark.parametrize("n, k, g", [(16, 32, 32), (64, 256, 64), (48, 512, 128), (256, 256, 256)])
def test_int4pack_layout_converts_back_exactly(n, k, g):
    packed, scales = _layer(n, k, g, seed=n)
    weight, scales_and_zeros = to_int4pack_cpu(packed, scales, g)
    assert weight.dtype == torch.uint8 and weight.shape == (n, k // 2)
    back_packed, back_scales = from_int4pack_cpu(weight, scales_and_zeros)
    assert torch.equal(back_packed, packed) and torch.equal(back_scales, scales)


@pytest.mark.parametrize("n, k, g, reason", [
    (16, 64, 16, "group size 16 is not one of"), (24, 64, 32, "out_features 24 is not a multiple of 16"),
    (16, 96, 64, "in_features 96 is not a multiple of the group size 64"),
])
def test_limits_are_named(n, k, g, reason):
    assert reason in int4pack_unsupported(n, k, g)
    assert int4pack_unsupported(4096, 4096, 128) is None


def test_dispatch_picks_the_layout_by_weight_dtype():
    packed, scales = _layer(32, 128, 32, scale_dtype=torch.float16)
    x = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(1))
    ref = int4_matmul_reference(x, packed, scales)
    qweight_out = int4_matmul(x, packed.T.contiguous(), scales.T.contiguous(), 32)  # CPU: the reference
    assert qweight_out.shape == (2, 3, 32) and torch.equal(qweight_out, ref)
    weight, scales_and_zeros = to_int4pack_cpu(packed, scales, 32)
    cpu_out = int4_matmul(x, weight, scales_and_zeros, 32)
    # the int4pack op computes in bf16: error relative to the output's scale, not per element
    assert cpu_out.dtype == x.dtype and (cpu_out - ref).abs().max() <= 0.02 * ref.abs().max()
    with pytest.raises(ValueError, match="weight must be int32 qweight"):
        int4_matmul(x, packed.T.to(torch.int64), scales.T.contiguous(), 32)


def test_custom_op_has_a_consistent_fake_implementation():
    packed, scales = _layer(32, 128, 64)
    weight, scales_and_zeros = to_int4pack_cpu(packed, scales, 64)
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.inkwell.int4_matmul.default, (x, weight, scales_and_zeros, 64))
    torch.library.opcheck(torch.ops.inkwell.int4_matmul.default,
                          (x.float(), packed.T.contiguous(), scales.T.contiguous().float(), 64))
    x_meta = torch.empty(2, 5, 128, device="meta")
    meta = int4_matmul(x_meta, weight.to("meta"), scales_and_zeros.to("meta"), 64)
    assert meta.shape == (2, 5, 32) and meta.device.type == "meta"


def test_import_does_not_touch_triton_or_cuda():
    import subprocess
    import sys

    code = ("import sys, torch, inkwell.kernels; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert not torch.cuda.is_initialized(), 'cuda initialised'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("first, second", [("inkwell.kernels", "kernels"), ("kernels", "inkwell.kernels")])
def test_a_second_import_under_the_folder_name_does_not_register_the_op_again(first, second):
    # from the repository root, `kernels/` is also the top-level package `kernels`, which transformers
    # imports when it probes for the Hugging Face `kernels` library
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).parents[2]
    code = (f"import importlib, torch; importlib.import_module({first!r}); "
            f"importlib.import_module({second!r}); "
            "from inkwell.kernels import int4_matmul, pack_int4; "
            "x = torch.ones(1, 8); qw = pack_int4(torch.ones(2, 8, dtype=torch.int8)).T.contiguous(); "
            "assert int4_matmul(x, qw, torch.ones(1, 2), 8).tolist() == [[8.0, 8.0]]")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
