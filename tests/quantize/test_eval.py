"""`inkwell-eval` end to end on a tiny preset: an FP copy of the reference scores as the reference does
(no flips, the FP floor, zero NLL difference, full agreement), an int4 candidate does not; probes and
frontier argmaxes are those of direct forwards."""

import json
import shutil

import pytest
import torch
from inkwell.engine import DiffusionParams, load_model
from inkwell.engine.checkpoint import save_model
from inkwell.quantize import evaluate
from inkwell.quantize.cli import main as quantize_main
from inkwell.quantize.eval_cli import main, parse_candidates
from inkwell.quantize.eval_run import fingerprint
from inkwell.quantize.trajectory import rollouts

ARGS = ["--prompts", "8", "--gen-length", "16", "--block-length", "8", "--nll-windows", "4", "--nll-length",
        "32", "--bootstrap", "200", "--probe-stride", "4", "--batch-size", "64", "--flip-stride", "2",
        "--pairs", "copy:rtn3"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    save_model(load_model("tiny-llada"), root / "fp-copy")
    assert quantize_main(["--model", "tiny-llada", "--method", "rtn", "--group-size", "0", "--bits", "3",
                          "--out", str(root / "rtn3")]) == 0
    out = root / "eval.json"
    assert main(["--reference", "tiny-llada", "--candidate", f"copy={root / 'fp-copy'}", "--markdown",
                 str(root / "eval.md"),
                 "--candidate", str(root / "rtn3"), "--json", str(out), "--plots", str(root / "plots"),
                 *ARGS]) == 0
    return json.loads(out.read_text()), root


def test_fp_copy_scores_as_the_reference(result):
    r, _ = result
    for order in ("low_confidence", "random"):
        o = r["orders"][order]
        copy, fp = o["models"]["copy"], o["models"]["FP"]
        assert copy["flip_rate"]["value"] == 0
        assert copy["mean_disagree"] == fp["mean_disagree"] and copy["lag_ccdf"] == fp["lag_ccdf"]
        assert copy["free_running_agreement"]["value"] == 1.0
        assert 0 < o["scored_commits"] < o["commits"]  # every other step's commits (--flip-stride 2)
        assert o["minus_fp_floor"]["copy"]["never_agree"]["value"] == 0
    for ratio in r["nll"]["ratios"].values():
        assert ratio["minus_fp"]["copy"]["value"] == 0


def test_three_bit_rtn_is_worse_than_the_copy(result):
    r, root = result
    o = r["orders"]["low_confidence"]
    assert o["baseline"] == "copy"
    assert o["models"]["rtn3"]["flip_rate"]["value"] > 0
    pair = {(m["candidate"], m["minus"]): m for m in o["paired"]}
    assert pair[("rtn3", "copy")]["flip_rate"]["low"] > 0
    assert pair[("copy", "rtn3")]["flip_rate"]["high"] < 0  # --pairs copy:rtn3
    assert r["nll"]["ratios"]["0.5"]["minus_fp"]["rtn3"]["value"] != 0  # random weights: no sign expected
    assert {p.name for p in (root / "plots").iterdir()} >= {"lag_ccdf_random.png", "flip_rate_random.png"}
    md = (root / "eval.md").read_text()
    assert "| rtn3 |" in md and "**random**" in md and "minus FP @ 0.5" in md


def test_probes_and_frontier_match_direct_forwards():
    model = load_model("tiny-llada")
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]
    traj = rollouts(model, prompts, DiffusionParams(gen_length=8, block_length=4, remasking="random", seed=3))
    canvas = evaluate.make_canvas(model, prompts)
    # the teacher's own argmax on its states is what it committed
    everything = torch.ones_like(traj.tokens, dtype=torch.bool)
    assert torch.equal(evaluate.frontier_argmax(model, traj, canvas, 4, "t", everything), traj.tokens)
    some = everything.clone()
    some[1] = False
    part = evaluate.frontier_argmax(model, traj, canvas, 4, "t", some)
    assert torch.equal(part[0], traj.tokens[0]) and (part[1] == -1).all()
    grid = evaluate.probe_steps(torch.tensor([8, 4]), 3)
    assert grid.tolist() == [[3, 6, 8], [3, 4, -1]]
    agree = evaluate.probes(model, traj, canvas, torch.ones_like(traj.tokens, dtype=torch.bool), grid, 5, "p")
    r, i, s = 0, int(traj.commit_step[0].argmin()), 1  # the first commit of row 0, probed before step 6
    ids, mask = canvas.ids(traj.state(6)[r : r + 1], slice(r, r + 1))
    ids[0, canvas.prompt_ids.shape[1] + i] = model.config.mask_token_id
    logits = model(ids, attention_mask=mask)[0, canvas.prompt_ids.shape[1] + i]
    logits[model.config.mask_token_id] = -torch.inf
    assert agree[r, i, s] == int(logits.argmax() == traj.tokens[r, i])
    assert (agree[traj.commit_step[:, :, None] >= grid[:, None, :]] == -1).all()
    assert (agree[1, :, 2] == -1).all() and (agree[0, :, 2] >= 0).all()  # padding; the final canvas


def test_candidate_labels():
    assert parse_candidates(["a=/x/y", "/p/q"]) == {"a": "/x/y", "q": "/p/q"}
    with pytest.raises(ValueError, match="used twice"):
        parse_candidates(["/a/q", "/b/q"])


def test_early_stop_off_scores_every_canvas_position(result, tmp_path):
    """`--early-stop false` scores the whole canvas (the reference sampler's trajectory): 8 prompts x 16
    positions, every one a scored commit; with early stop as served, never more."""
    r, root = result
    out = tmp_path / "full.json"
    assert main(["--reference", "tiny-llada", "--candidate", str(root / "rtn3"), "--json", str(out),
                 *ARGS[:-2], "--flip-stride", "1", "--orders", "low_confidence", "--free-running", "false",
                 "--early-stop", "false"]) == 0
    full = json.loads(out.read_text())
    o = full["orders"]["low_confidence"]
    assert full["settings"]["early_stop"] is False
    assert o["commits"] == o["scored_commits"] == 8 * 16
    assert r["orders"]["low_confidence"]["commits"] <= 8 * 16


def test_cache_dir_reuses_what_matches(result, tmp_path, monkeypatch):
    """`--cache-dir`: the first run equals an uncached one; a second with the same checkpoints (one under
    a new label) computes nothing and reports the same numbers; a changed probe setting reuses the
    teacher's trajectories but scores the models again."""
    r, root = result
    cache = tmp_path / "cache"
    run = ["--reference", "tiny-llada", "--candidate", f"copy={root / 'fp-copy'}", *ARGS[:-2],
           "--orders", "low_confidence", "--cache-dir", str(cache)]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    assert main([*run, "--candidate", str(root / "rtn3"), "--json", str(first)]) == 0
    a = json.loads(first.read_text())
    assert a["orders"]["low_confidence"]["models"] == r["orders"]["low_confidence"]["models"]
    assert a["nll"]["ratios"]["0.5"]["models"] == r["nll"]["ratios"]["0.5"]["models"]
    entries = {p.name for p in cache.iterdir()}
    kinds = sorted(name.split("-")[0] for name in entries)
    # scores: FP, copy, rtn3; free-running: copy, rtn3; NLL at 3 ratios of 2 models (the copy has the
    # reference's weights: one model)
    assert kinds == ["free"] * 2 + ["nll"] * 6 + ["scores"] * 3 + ["teacher"]

    def recomputed(*args, **kwargs):
        raise AssertionError("recomputed")

    for name in ("rollouts", "probes", "frontier_argmax", "free_running", "masked_nll"):
        monkeypatch.setattr(evaluate, name, recomputed)
    assert main([*run, "--candidate", f"again={root / 'rtn3'}", "--json", str(second)]) == 0
    b = json.loads(second.read_text())
    models = b["orders"]["low_confidence"]["models"]
    assert models["again"] == a["orders"]["low_confidence"]["models"]["rtn3"]
    assert b["nll"]["ratios"]["0.9"]["models"]["again"] == a["nll"]["ratios"]["0.9"]["models"]["rtn3"]
    assert {p.name for p in cache.iterdir()} == entries
    assert main([*run, "--json", str(second), "--free-running", "false"]) == 0
    c = json.loads(second.read_text())["orders"]["low_confidence"]["models"]["copy"]
    assert "free_running_agreement" not in c
    assert c == {k: v for k, v in models["copy"].items() if k != "free_running_agreement"}

    monkeypatch.undo()
    monkeypatch.setattr(evaluate, "rollouts", recomputed)
    assert main([*run, "--json", str(second), "--probe-stride", "2", "--free-running", "false"]) == 0
    assert len({p.name for p in cache.iterdir()} - entries) == 2  # FP and copy scored again, NLL reused


def test_fingerprint_is_the_weights_not_the_recorded_provenance(result, tmp_path):
    """The cache key of a model: the same checkpoint re-made from inputs at other paths (which the
    quantizer records in `quantization_config`) is the same model; other weights are not."""
    src = result[1] / "rtn3"
    moved = tmp_path / "elsewhere"
    shutil.copytree(src, moved)
    config = json.loads((moved / "config.json").read_text())
    config["quantization_config"]["inkwell"]["settings"]["calib_file"] = "/some/other/path.jsonl"
    (moved / "config.json").write_text(json.dumps(config))

    def fp(path):
        return fingerprint(evaluate.dequantized(load_model(path, dtype=torch.float32)))

    assert fp(moved) == fp(src)
    other = evaluate.dequantized(load_model(moved, dtype=torch.float32))
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1
    assert fingerprint(other) != fp(src)
    assert fp(result[1] / "fp-copy") != fp(src)


def test_unwritable_cache_dir_is_a_clear_error(result, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--reference", "tiny-llada", "--candidate", str(result[1] / "rtn3"),
                 "--json", str(tmp_path / "o.json"), "--cache-dir", str(blocker / "cache")]) == 2
    assert "inkwell-eval: error:" in capsys.readouterr().err
