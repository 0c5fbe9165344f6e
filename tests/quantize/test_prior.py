"""Stage I on hand-built trajectories: F, R, the combinations and ablations, the Stage II token weights."""

import math

import pytest
import torch
from inkwell.quantize.prior import (
    additive,
    build_prior,
    first_stop,
    frontier_reliability,
    relative_confidence,
    token_weights,
)
from inkwell.quantize.trajectory import Trajectories

MASK = 9


def _traj():
    # 2 rollouts, K = 3 positions, T = 3 steps. Rollout 0 commits 0,1,2 at steps 0,1,2; rollout 1 in reverse.
    commit = torch.tensor([[0, 1, 2], [2, 1, 0]])
    top1 = torch.tensor([
        [[0.8, 0.4, 0.2], [0.0, 0.5, 0.25], [0.0, 0.0, 0.9]],
        [[0.1, 0.2, 0.4], [0.3, 0.6, 0.0], [0.5, 0.0, 0.0]],
    ])
    return Trajectories(prompts=[torch.tensor([1]), torch.tensor([1])], tokens=torch.tensor([[3, 4, 5]] * 2),
                        commit_step=commit, top1=top1, steps=3, mask_id=MASK)


def test_states_follow_commit_steps():
    t = _traj()
    assert t.state(0).eq(MASK).all()
    assert t.state(1).tolist() == [[3, MASK, MASK], [MASK, MASK, 5]]
    assert t.state(3).tolist() == [[3, 4, 5]] * 2


def test_frontier_and_reliability_known_values():
    f, r = frontier_reliability(_traj())
    # λ0 = (T - t + 1) / T at 1-based step t: 1, 2/3, 1/3
    assert torch.allclose(f, torch.tensor([(1 + 1 / 3) / 2, 2 / 3, (1 / 3 + 1) / 2], dtype=f.dtype))
    # rollout 0: c̃ at step 0 = [1, .5, .25]; step 1 (0 committed) = [-, 1, .5]; step 2 = [-, -, 1]
    # rollout 1: step 0 = [.25, .5, 1]; step 1 (2 committed) = [.5, 1, -]; step 2 = [1, -, -]
    r0 = [1.0, (0.5 + 1) / 2, (0.25 + 0.5 + 1) / 3]
    r1 = [(0.25 + 0.5 + 1) / 3, (0.5 + 1) / 2, 1.0]
    expect = torch.tensor([(a + b) / 2 for a, b in zip(r0, r1, strict=True)], dtype=r.dtype)
    assert torch.allclose(r, expect)


def test_relative_confidence_ignores_unmasked_positions():
    c = relative_confidence(torch.tensor([0.9, 0.3, 0.6]), torch.tensor([False, True, True]))
    assert torch.allclose(c, torch.tensor([0.0, 0.5, 1.0], dtype=c.dtype))


def test_fair_prior_is_norm_f_plus_half_norm_r_scaled_to_mean_one():
    t = _traj()
    f, r = frontier_reliability(t)
    p = build_prior(t, "fair", 0.5, 0.05, 3)
    expect = f / f.mean() + 0.5 * r / r.mean()
    assert torch.allclose(p.tensor, expect / expect.mean())
    assert math.isclose(sum(p.weights) / 3, 1.0)
    assert torch.allclose(build_prior(t, "frontier", 0.5, 0.05, 3).tensor, f / f.mean())
    assert torch.allclose(build_prior(t, "reliability", 0.5, 0.05, 3).tensor, r / r.mean())


def test_additive_prior_is_the_paper_literal_sum():
    t = _traj()
    w = additive(t, 0.5)
    # position 0: λ0 = 1 (r0) + 1/3 (r1); masked c̃: r0 step 0 -> 1; r1 steps 0..2 -> .25, .5, 1
    assert math.isclose(float(w[0]), 1 + 1 / 3 + 0.5 * (1 + 0.25 + 0.5 + 1))
    p = build_prior(t, "additive", 0.5, 0.05, 3)
    assert torch.allclose(p.tensor, w / w.mean())


def test_additive_prior_warns_when_flat(caplog):
    build_prior(_traj(), "additive", 0.5, 0.05, 3)
    assert "nearly flat" in caplog.text


def test_uniform_prior_and_unknown_mode():
    p = build_prior(None, "uniform", 0.5, 0.05, 4)
    assert p.weights == [1.0] * 4
    with pytest.raises(ValueError, match="allowed"):
        build_prior(_traj(), "bogus", 0.5, 0.05, 3)


def test_token_weights_floor_outside_window_and_after_the_stop():
    p = build_prior(_traj(), "fair", 0.5, 0.05, 3)
    tokens = torch.tensor([[3, 7, 4], [3, 4, 5]])
    stops = first_stop(tokens, (7,))
    assert stops.tolist() == [1, 3]
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])  # 2 prompt positions (row 0 left-padded)
    w = token_weights(p, mask, 2, stops)
    assert w[0, 0] == 0  # padding
    assert w[0, 1] == 0.05 and w[1, 0] == 0.05 and w[1, 1] == 0.05  # prompt: the floor
    assert torch.allclose(w[0, 2:4], p.tensor[:2]) and w[0, 4] == 0.05  # after the stop: the floor
    assert torch.allclose(w[1, 2:], p.tensor)
    u = token_weights(build_prior(None, "uniform", 0.5, 0.05, 3), mask, 2, stops)
    assert torch.equal(u, mask.double())


def test_prior_save_load_roundtrip(tmp_path):
    p = build_prior(_traj(), "fair", 0.5, 0.05, 3)
    q = type(p).load(p.save(tmp_path / "prior.json"))
    assert q == p
    with pytest.raises(ValueError, match="not a Stage I prior"):
        type(p).load(tmp_path / "missing.json")
