"""Regression tests of the two engine fixes the reliability work needed (issue 10): Dream's `alg_temp` draw
with a temperature so small that the softmax overflows, and symbolic link loops and dangling links in a
checkpoint, which looked like missing files."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from inkwell.engine import CheckpointError, load_model
from inkwell.engine.checkpoint import save_model
from inkwell.engine.remasking import choose_top


@pytest.mark.parametrize("alg_temp", [1e-3, 1e-40, 5e-324])
@pytest.mark.parametrize("top", [0.0, -1.0])  # entropy scores are all negative: every score / tiny = -inf
def test_a_tiny_alg_temp_picks_the_best_scores_instead_of_failing(alg_temp, top):
    score = torch.linspace(top - 5, top, 32)  # position 31 is best
    masked = torch.ones(32, dtype=torch.bool)
    masked[30] = False
    chosen = choose_top(SimpleNamespace(score=score), masked, 4, alg_temp, torch.Generator().manual_seed(0))
    assert sorted(chosen.tolist()) == [27, 28, 29, 31]


def test_a_normal_alg_temp_still_draws():
    score, masked = torch.zeros(32), torch.ones(32, dtype=torch.bool)
    draws = {tuple(choose_top(SimpleNamespace(score=score), masked, 4, 1.0, torch.Generator().manual_seed(s))
                   .tolist()) for s in range(5)}
    assert len(draws) > 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_model(load_model("tiny-llada"), tmp_path_factory.mktemp("ckpt") / "model")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_symlink_loops_and_dangling_links_are_named(checkpoint, name, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError, match=f"^{loop}: symbolic link loop$"):
        load_model(loop)
    model = tmp_path / "model"
    model.mkdir()
    for part in ("config.json", "model.safetensors"):
        (model / part).symlink_to(checkpoint / part)
    load_model(model)  # links that resolve load as usual
    (model / name).unlink()
    (model / name).symlink_to(model / name)
    with pytest.raises(CheckpointError, match=f"^{model / name}: symbolic link loop$"):
        load_model(model)
    (model / name).unlink()
    (model / name).symlink_to(tmp_path / "gone")
    with pytest.raises(CheckpointError, match=f"^{model / name}: dangling symbolic link"):
        load_model(model)
