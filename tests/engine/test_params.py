"""DiffusionParams: validation names allowed values, family defaults, rounding of defaults that do not fit."""

import pytest
from inkwell.engine import DiffusionParams


def test_family_defaults():
    llada = DiffusionParams().resolve("llada")
    assert (llada.gen_length, llada.block_length, llada.steps) == (128, 32, 128)
    assert llada.remasking == "low_confidence"
    dream = DiffusionParams().resolve("Dream")  # a config's model_type works too
    assert (dream.gen_length, dream.block_length, dream.steps, dream.remasking) == (128, 128, 128, "entropy")
    assert (dream.temperature, dream.cache, dream.cfg_scale, dream.eps) == (0.0, "none", 0.0, 1e-3)


@pytest.mark.parametrize(("given", "expected"), [
    ({"gen_length": 40}, (64, 32, 64)),  # default block 32: the canvas is padded up
    ({"block_length": 48}, (144, 48, 144)),  # default gen_length 128 rounded up to the block
    ({"gen_length": 64, "steps": 3}, (64, 32, 4)),  # steps rounded up to a multiple of 2 blocks
    ({"gen_length": 96, "block_length": 32, "steps": 12}, (96, 32, 12)),  # consistent explicit values
])
def test_defaults_that_do_not_fit_are_rounded(given, expected):
    p = DiffusionParams(**given).resolve("llada")
    assert (p.gen_length, p.block_length, p.steps) == expected
    assert p.steps % p.num_blocks == 0 and p.gen_length % p.block_length == 0


@pytest.mark.parametrize(("given", "message"), [
    ({"gen_length": 40, "block_length": 32}, r"allowed block_length values: \[1, 2, 4, 5, 8, 10, 20, 40\]"),
    ({"gen_length": 64, "block_length": 128}, "must divide gen_length"),
    ({"gen_length": 64, "block_length": 16, "steps": 6}, "multiple of the number of blocks 4"),
    ({"remasking": "greedy"}, r"remasking must be one of \['low_confidence', 'random', 'maskgit_plus'"),
    ({"cache": "full"}, r"cache must be one of \['none', 'prefix', 'dual'\]"),
    ({"temperature": -1}, "temperature must be a finite number >= 0"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"top_k": 0}, "top_k must be an integer >= 1"),
    ({"gen_length": 12.5}, "gen_length must be an integer"),
    ({"steps": True}, "steps must be an integer"),
    ({"eps": 1.0}, r"eps must be in \(0, 1\)"),
    ({"threshold": 1.5}, r"threshold must be in \(0, 1\]"),
    ({"threshold": 0.9, "remasking": "origin"}, "threshold needs a ranked remasking"),
    ({"alg_temp": 0.5, "remasking": "random"}, r"alg_temp applies only to remasking in \['maskgit_plus'"),
    ({"alg_temp": 0.5, "remasking": "entropy", "threshold": 0.9}, "set only one of them"),
    ({"cfg_scale": -0.5}, "cfg_scale must be"),
    ({"seed": -1}, "seed must be an integer >= 0"),
    ({"logits_eos_inf": 1}, "logits_eos_inf must be true or false"),
])
def test_invalid_values_are_rejected_naming_allowed_values(given, message):
    with pytest.raises(ValueError, match=message):
        DiffusionParams(**given)


def test_alg_temp_is_checked_against_the_family_default():
    DiffusionParams(alg_temp=0.5).resolve("dream")  # Dream's default entropy takes alg_temp
    with pytest.raises(ValueError, match="alg_temp applies only"):
        DiffusionParams(alg_temp=0.5).resolve("llada")  # LLaDA's default low_confidence does not


def test_unknown_family_and_frozen():
    with pytest.raises(ValueError, match=r"allowed: \['dream', 'llada'\]"):
        DiffusionParams().resolve("gpt2")
    p = DiffusionParams()
    with pytest.raises(AttributeError):
        p.steps = 3  # type: ignore[misc]
