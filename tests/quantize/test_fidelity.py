"""The fidelity metrics give known answers on hand-built trajectories and probes."""

import math

import torch
from inkwell.quantize.fidelity import (
    NOT_PROBED,
    PerPrompt,
    bootstrap_ci,
    ccdf,
    flip_rate,
    probe_summary,
    served_commits,
)

N = NOT_PROBED


def test_flip_rate_counts_only_scored_commits():
    flips = torch.tensor([[True, False, True, False], [False, False, False, True]])
    counted = torch.tensor([[True, True, False, True], [True, True, True, True]])
    rate = flip_rate(flips, counted)
    assert rate.num.tolist() == [1, 1] and rate.den.tolist() == [3, 4]
    assert math.isclose(rate.value, 2 / 7)


def test_served_commits_stop_where_early_stop_would():
    # K = 5, stop id 7 at position 2 in row 0; row 1 has no stop (everything is served)
    tokens = torch.tensor([[3, 4, 7, 7, 7], [3, 4, 5, 6, 3]])
    commit = torch.tensor([[4, 0, 2, 1, 3], [0, 1, 2, 3, 4]])
    # row 0: positions 0..2 are committed by step max(4, 0, 2) = 4 -> every commit at step <= 4 counts
    assert served_commits(commit, tokens, (7,)).tolist() == [[True] * 5, [True] * 5]
    commit = torch.tensor([[1, 0, 2, 4, 3], [0, 1, 2, 3, 4]])
    # now t* = 2: the tail committed at steps 3 and 4 happens after the early stop
    assert served_commits(commit, tokens, (7,)).tolist() == [[True, True, True, False, False], [True] * 5]


def test_probe_summary_known_values():
    # one prompt, 3 positions committed at steps 0, 1, 3; probe steps 1, 2, 3, 4 (4 = final canvas)
    commit = torch.tensor([[0, 1, 3]])
    grid = torch.tensor([1, 2, 3, 4])
    agree = torch.tensor([[
        [0, 1, 1, 1],  # disagrees once, then agrees for good from step 2: lag 2 - (0 + 1) = 1
        [N, 0, 0, 0],  # never agrees: lag inf
        [N, N, N, 1],  # agrees at its first probe: lag 4 - (3 + 1) = 0
    ]], dtype=torch.int8)
    s = probe_summary(agree, grid, commit)
    assert math.isclose(s.mean_disagree.value, (1 / 4 + 1 + 0) / 3)
    assert math.isclose(s.never_agree.value, 1 / 3)
    assert s.lags.tolist() == [1.0, math.inf, 0.0]


def test_probe_summary_relapse_counts_from_the_last_disagreement():
    commit = torch.tensor([[0]])
    grid = torch.tensor([1, 3, 5, 7])
    agree = torch.tensor([[[1, 0, 1, 1]]], dtype=torch.int8)  # agrees, relapses at step 3, settles at 5
    s = probe_summary(agree, grid, commit)
    assert s.lags.tolist() == [4.0]
    assert math.isclose(s.mean_disagree.value, 0.25) and s.never_agree.value == 0


def test_unprobed_positions_are_ignored():
    agree = torch.tensor([[[N, N], [1, 0]]], dtype=torch.int8)
    s = probe_summary(agree, torch.tensor([1, 2]), torch.tensor([[0, 0]]))
    assert s.mean_disagree.den.tolist() == [1] and len(s.lags) == 1


def test_ccdf():
    xs, ys = ccdf(torch.tensor([0.0, 2.0, math.inf, 1.0]), 3)
    assert xs == [0, 1, 2, 3] and ys == [0.75, 0.5, 0.25, 0.25]


def test_paired_bootstrap():
    g = torch.Generator().manual_seed(0)
    den = torch.full((50,), 10.0, dtype=torch.float64)
    a = PerPrompt(torch.randint(0, 6, (50,), generator=g).double(), den)
    same = bootstrap_ci(a, a)
    assert same == {"value": 0.0, "low": 0.0, "high": 0.0}
    shifted = PerPrompt(a.num + 1, den)  # every prompt 0.1 higher: the paired CI is exactly 0.1
    d = bootstrap_ci(shifted, a)
    assert math.isclose(d["value"], 0.1) and math.isclose(d["low"], 0.1, rel_tol=1e-5)
    assert math.isclose(d["high"], 0.1, rel_tol=1e-5)
    alone = bootstrap_ci(a)
    assert alone["low"] < alone["value"] < alone["high"]
    b = PerPrompt(torch.randint(0, 6, (50,), generator=g).double(), den)  # independent noise: wide CI
    unpaired = bootstrap_ci(b, a)
    assert unpaired["high"] - unpaired["low"] > 0.05


def test_probe_steps_per_row():
    # row 0 probed at steps 2 and 4, row 1 only at 3 (its final served state); lags use each row's steps
    commit = torch.tensor([[0, 1], [0, 2]])
    grid = torch.tensor([[2, 4], [3, -1]])
    agree = torch.tensor([[[0, 1], [1, 1]], [[1, N], [1, N]]], dtype=torch.int8)
    s = probe_summary(agree, grid, commit)
    assert s.lags.tolist() == [3.0, 0.0, 2.0, 0.0]
