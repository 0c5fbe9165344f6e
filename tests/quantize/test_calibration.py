"""Masked canvases, the calibration inputs of the dLLM-aware GPTQ baseline (`--calib-canvas masked`)."""

import torch
from inkwell.quantize.calibration import CalibrationSet, masked_canvases

MASK = 99


def _clean(rows=64, prompt=5, window=20):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (rows, prompt + window), generator=g)
    attention = torch.ones_like(ids)
    attention[:, :2] = 0  # left padding
    return CalibrationSet(ids, attention, prompt, torch.full((rows,), window))


def test_only_response_positions_are_masked_each_sequence_at_its_own_ratio():
    clean = _clean()
    before = clean.ids.clone()
    masked = masked_canvases(clean, MASK, seed=3)
    assert torch.equal(clean.ids, before)  # the clean set is not modified
    assert torch.equal(masked.ids[:, :5], before[:, :5])  # prompt and padding untouched
    hidden = masked.ids[:, 5:] == MASK
    assert torch.equal(masked.ids[:, 5:][~hidden], before[:, 5:][~hidden])  # the rest is the response
    share = hidden.float().mean(dim=1)
    assert share.min() < 0.2 and share.max() > 0.8  # r ~ U(0, 1) per sequence, not one global ratio
    assert masked.window_start == 5 and torch.equal(masked.attention_mask, clean.attention_mask)
    assert torch.equal(masked.stops, clean.stops)


def test_masking_is_seeded():
    clean = _clean()
    assert torch.equal(masked_canvases(clean, MASK, 3).ids, masked_canvases(clean, MASK, 3).ids)
    assert not torch.equal(masked_canvases(clean, MASK, 3).ids, masked_canvases(clean, MASK, 4).ids)
