"""Per-weight quantizers: RTN matches the kernels' helpers, GPTQ beats RTN on its own loss, clipping
search never loses to absmax, act-order and 3-bit codes stay in range."""

import pytest
import torch
from inkwell.kernels import quantize_groups
from inkwell.quantize.driver import layer_error
from inkwell.quantize.gptq import absmax_scales, clip_search, code_range, codes, dequantize, gptq, rtn


def _layer(n=64, k=128, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)  # correlated inputs, as in a real model
    x = torch.randn(tokens, k, generator=g) @ mix * (1 + 3 * torch.rand(k, generator=g))
    return w, 2 * x.T.double() @ x.double() / tokens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rtn_matches_kernels_packing_helpers(dtype):
    w, _ = _layer()
    q, s = rtn(w, 32, 4, dtype)
    q_ref, s_ref = quantize_groups(w, 32, dtype)
    assert torch.equal(q, q_ref)
    assert torch.equal(s.to(dtype), s_ref)


@pytest.mark.parametrize("group_size,actorder", [(32, False), (128, False), (32, True)])
def test_gptq_error_below_rtn_on_calibration_hessian(group_size, actorder):
    w, h = _layer()
    q_r, s_r = rtn(w, group_size, 4, torch.bfloat16)
    q_g, s_g = gptq(w, h, group_size, 4, torch.bfloat16, damp=0.01, block_size=32, actorder=actorder)
    e_rtn = layer_error(w, dequantize(q_r, s_r), h)
    e_gptq = layer_error(w, dequantize(q_g, s_g), h)
    assert e_gptq < 0.8 * e_rtn
    lo, hi = code_range(4)
    assert int(q_g.min()) >= lo and int(q_g.max()) <= hi
    assert torch.equal(s_g, s_g.to(torch.bfloat16).float()), "scales must be representable in bf16"


def test_gptq_with_identity_hessian_is_rtn():
    # with H = I no column's error can be compensated by another: GPTQ reduces to round to nearest
    w, _ = _layer()
    q_g, s_g = gptq(w, torch.eye(w.shape[1]), 32, 4, torch.float16, damp=1e-6, block_size=16)
    q_r, s_r = rtn(w, 32, 4, torch.float16)
    assert torch.equal(q_g, q_r) and torch.equal(s_g, s_r)


def test_clip_search_never_worse_than_absmax_per_group():
    w, h = _layer()
    scales = clip_search(w, h, 32, 4, torch.bfloat16, clip_min=0.6, grid=9)
    base = absmax_scales(w, 32, 4, torch.bfloat16)
    assert (scales <= base).all() and (scales < base).any()
    hb = torch.block_diag(*[h[i:i + 32, i:i + 32] for i in range(0, 128, 32)])
    assert layer_error(w, dequantize(codes(w, scales, 4), scales), hb) <= \
        layer_error(w, dequantize(codes(w, base, 4), base), hb) + 1e-12


def test_three_bit_codes():
    w, h = _layer()
    q, s = gptq(w, h, 32, 3, torch.bfloat16, damp=0.01, block_size=32)
    assert int(q.min()) >= -4 and int(q.max()) <= 3 and int(q.max()) == 3
    q4, s4 = gptq(w, h, 32, 4, torch.bfloat16, damp=0.01, block_size=32)
    assert layer_error(w, dequantize(q, s), h) > layer_error(w, dequantize(q4, s4), h)
