"""The `pack-quantized` int4 format: bit layout, round trips, agreement with compressed-tensors, the RTN
quantizer, and rejection of malformed buffers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inkwell.kernels import (
    check_int4_tensors,
    dequantize_int4,
    group_scales,
    pack_int4,
    quantize_groups,
    quantize_with_scales,
    unpack_int4,
)


def _compressed_tensors(module: str):
    return pytest.importorskip(f"compressed_tensors.{module}",
                               reason="the bit-exact tests need compressed-tensors (a dev dependency)")


def _codes(seed: int, n: int, k: int) -> torch.Tensor:
    return torch.randint(-8, 8, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def test_bit_layout_lowest_bits_hold_lowest_k():
    q = torch.tensor([[-8, -7, 0, 1, 2, 3, 6, 7]], dtype=torch.int8)  # stored u = 0, 1, 8, 9, 10, 11, 14, 15
    word = sum(u << (4 * i) for i, u in enumerate([0, 1, 8, 9, 10, 11, 14, 15]))  # 0xFEBA9810
    assert pack_int4(q).tolist() == [[word - 2**32]]  # two's complement: the top nibble 0xF makes it negative
    assert unpack_int4(pack_int4(q)).tolist() == q.tolist()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9), words=st.integers(1, 6))
def test_unpack_pack_round_trip_codes(seed, n, words):
    q = _codes(seed, n, 8 * words)
    assert torch.equal(unpack_int4(pack_int4(q)), q)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-2**31, 2**31 - 1), min_size=3, max_size=3), min_size=1, max_size=5))
def test_pack_unpack_round_trip_any_word(rows):
    # every int32 is a valid word (all 16 nibble values are codes), so packing inverts unpacking exactly
    packed = torch.tensor(rows, dtype=torch.int32)
    assert torch.equal(pack_int4(unpack_int4(packed)), packed)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 7), words=st.integers(1, 12))
def test_bit_exact_with_compressed_tensors_packer(seed, n, words):
    ct_helpers = _compressed_tensors("compressors.pack_quantized.helpers")
    q = _codes(seed, n, 8 * words)
    packed = pack_int4(q)
    assert torch.equal(packed, ct_helpers.pack_to_int32(q, 4))
    assert torch.equal(unpack_int4(packed), ct_helpers.unpack_from_int32(packed, 4, torch.Size(q.shape)))


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [32, 128])
def test_compressed_tensors_compressor_writes_the_same_tensors(group_size, scale_dtype):
    PackedQuantizationCompressor = _compressed_tensors("compressors").PackedQuantizationCompressor
    quantization = _compressed_tensors("quantization")
    QuantizationArgs, QuantizationScheme = quantization.QuantizationArgs, quantization.QuantizationScheme

    w = torch.randn(40, 256, generator=torch.Generator().manual_seed(group_size))
    q, scales = quantize_groups(w, group_size, scale_dtype)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    theirs = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scales}, scheme)
    assert torch.equal(theirs["weight_packed"], pack_int4(q))
    assert theirs["weight_shape"].tolist() == [40, 256]
    back = PackedQuantizationCompressor.decompress(dict(theirs), scheme)["weight"]  # in the scales' dtype
    assert torch.equal(back, dequantize_int4(pack_int4(q), scales, scale_dtype))


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_rtn_error_is_at_most_half_a_step_and_never_clips(group_size):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    w[3, :group_size] = 0.0  # an all-zero group
    q, scales = quantize_groups(w, group_size, torch.float32)
    assert int(q.min()) >= -7 and int(q.max()) <= 7  # absmax / 7: the extremes map onto +-7
    step = scales.repeat_interleave(group_size, dim=1)
    err = (dequantize_int4(pack_int4(q), scales) - w).abs()
    assert bool((err <= step / 2 + 1e-7).all())
    assert scales[3, 0] == 1.0 and not bool(q[3, :group_size].any())
    assert bool((scales > 0).all())


def test_quantize_with_scales_uses_the_stored_scales():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    scales = group_scales(w, 32, torch.bfloat16)
    q = quantize_with_scales(w, scales, 32)
    expected = torch.round(w / scales.float().repeat_interleave(32, dim=1)).clamp(-8, 7).to(torch.int8)
    assert torch.equal(q, expected)


def _good(n: int = 16, k: int = 64, g: int = 32):
    q, scales = quantize_groups(torch.randn(n, k), g)
    return pack_int4(q), scales, torch.tensor([n, k])


@pytest.mark.parametrize("corrupt, message", [
    (lambda p, s, shp: (p.to(torch.int64), s, shp), "weight_packed must be int32"),
    (lambda p, s, shp: (p.flatten(), s, shp), "weight_packed must be 2-d"),
    (lambda p, s, shp: (p, s.to(torch.int32), shp), "weight_scale must be float16, bfloat16 or float32"),
    (lambda p, s, shp: (p, s[:-1], shp), "weight_scale must be 2-d"),
    (lambda p, s, shp: (p, s[:, :1].repeat(1, 3), shp), "do not divide in_features"),
    (lambda p, s, shp: (p, s, torch.tensor([16, 72])), "weight_shape says [16, 72]"),
    (lambda p, s, shp: (p, s, torch.tensor([16.0, 64.0])), "weight_shape must be an int64 tensor"),
    (lambda p, s, shp: (p, s.index_fill(1, torch.tensor([0]), float("nan")), shp), "inf or NaN"),
])
def test_malformed_buffers_are_rejected_with_a_clear_error(corrupt, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_int4_tensors(*corrupt(*_good()))


def test_group_size_must_match_the_scales():
    packed, scales, shape = _good(g=32)
    assert check_int4_tensors(packed, scales, shape) == (16, 64, 32)
    with pytest.raises(ValueError, match="group_size 64 does not fit"):
        check_int4_tensors(packed, scales, shape, group_size=64)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match=r"codes must lie in \[-8, 7\]"):
        pack_int4(torch.full((1, 8), 8, dtype=torch.int8))
    with pytest.raises(ValueError, match="K a multiple of 8"):
        pack_int4(torch.zeros((1, 12), dtype=torch.int8))
