"""`inkwell-quantize` end to end on the tiny random-weight presets: every method's checkpoint loads with
`load_model`, passes compressed-tensors' validation and records its settings; bad input is a clear error."""

import json
from dataclasses import fields

import pytest
import torch
from compressed_tensors import QuantizationConfig
from inkwell.engine import load_model
from inkwell.engine.quant_linear import Int4Linear
from inkwell.kernels import unpack_int4
from inkwell.quantize.cli import main
from inkwell.quantize.settings import QuantizeSettings
from safetensors.torch import load_file

SMALL = ["--calib-prompts", "4", "--prompt-tokens", "8", "--gen-length", "16", "--block-length", "8",
         "--refine-steps", "3", "--refine-batch", "2", "--clip-grid", "4"]


def quantize(out, model="tiny-llada", *extra):
    rc = main(["--model", model, "--out", str(out), *SMALL, *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    return {m: quantize(root / m, "tiny-llada", "--method", m, "--group-size", "64")
            for m in ("rtn", "gptq", "fair-calib")}


def _inkwell(out):
    return json.loads((out / "config.json").read_text())["quantization_config"]["inkwell"]


@pytest.mark.parametrize("method", ["rtn", "gptq", "fair-calib"])
def test_checkpoint_loads_and_validates(outputs, method):
    out = outputs[method]
    config = json.loads((out / "config.json").read_text())
    qc = QuantizationConfig.model_validate(config["quantization_config"])
    assert qc.format == "pack-quantized" and qc.ignore == ["model.transformer.ff_out"]
    assert qc.config_groups["group_0"].weights.group_size == 64
    model = load_model(out)
    linears = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert len(linears) == 2 * 7  # every block Linear, not the output head
    assert not isinstance(model.model.transformer.ff_out, Int4Linear)
    logits = model(torch.tensor([[1, 2, 3, 511, 511]]))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["rtn", "gptq", "fair-calib"])
def test_inkwell_block_records_every_setting(outputs, method):
    block = _inkwell(outputs[method])
    assert block["method"] == method
    assert set(block["settings"]) == {f.name for f in fields(QuantizeSettings)}
    assert block["settings"]["group_size"] == 64
    if method == "rtn":
        assert block["calibration"] is None
    else:
        assert block["calibration"]["prompts"] == 4 and block["calibration"]["window"] == 16
        assert block["calibration"]["rollout_params"]["remasking"] == "random"
    if method == "fair-calib":
        prior = json.loads((outputs[method] / block["prior_path"]).read_text())
        assert len(prior["weights"]) == 16 and abs(sum(prior["weights"]) / 16 - 1) < 1e-9
        assert block["settings"]["refine"] and block["settings"]["clip_search"]
    else:
        assert block["prior_path"] is None


def test_stage1_order_switch_changes_the_rollouts_and_the_prior(outputs, tmp_path):
    out = quantize(tmp_path / "lc", "tiny-llada", "--method", "fair-calib", "--group-size", "64",
                   "--stage1-order", "low_confidence")
    block = _inkwell(out)
    assert block["settings"]["stage1_order"] == "low_confidence"
    assert block["calibration"]["rollout_params"]["remasking"] == "low_confidence"
    assert _inkwell(outputs["fair-calib"])["settings"]["stage1_order"] == "random"
    lc, rnd = (json.loads((o / _inkwell(o)["prior_path"]).read_text())["weights"]
               for o in (out, outputs["fair-calib"]))
    assert len(lc) == len(rnd) == 16
    assert max(abs(a - b) for a, b in zip(lc, rnd, strict=True)) > 1e-3


def test_methods_differ_and_gptq_beats_rtn_on_calibration(outputs):
    report = json.loads((outputs["gptq"] / "quantize_report.json").read_text())
    layers = [layer for b in report["blocks"] for layer in b["layers"].values()]
    assert all(layer["error"] <= layer["rtn_error"] * 1.0001 for layer in layers)
    assert sum(layer["error"] for layer in layers) < 0.9 * sum(layer["rtn_error"] for layer in layers)
    packed = {m: load_file(str(outputs[m] / "model.safetensors"))
              ["model.transformer.blocks.0.q_proj.weight_packed"] for m in outputs}
    assert not torch.equal(packed["rtn"], packed["gptq"])
    assert not torch.equal(packed["gptq"], packed["fair-calib"])


def test_fair_calib_with_uniform_prior_is_gptq_with_the_same_clipping_and_refinement(tmp_path):
    a = quantize(tmp_path / "a", "tiny-llada", "--method", "fair-calib", "--prior", "uniform")
    b = quantize(tmp_path / "b", "tiny-llada", "--method", "gptq", "--clip-search", "true",
                 "--refine", "true")
    ta, tb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    report = json.loads((a / "quantize_report.json").read_text())
    assert any(b["refine"]["kept"] for b in report["blocks"])  # the refinement did change something


def test_dream_per_channel_and_three_bits(tmp_path):
    out = quantize(tmp_path / "d", "tiny-dream", "--method", "fair-calib", "--group-size", "0", "--bits", "3")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    QuantizationConfig.model_validate(config)
    sizes = {g["weights"]["group_size"] for g in config["config_groups"].values()}
    assert sizes == {128, 256}  # one group per row: K of the attention/up layers and of down_proj
    assert config["ignore"] == ["lm_head"] and config["inkwell"]["settings"]["bits"] == 3
    tensors = load_file(str(out / "model.safetensors"))
    q = unpack_int4(tensors["model.layers.0.mlp.down_proj.weight_packed"])
    assert int(q.min()) >= -4 and int(q.max()) <= 3
    assert "model.layers.0.self_attn.q_proj.bias" in tensors
    model = load_model(out)
    assert isinstance(model.model.layers[0].self_attn.k_proj, Int4Linear)


def test_unknown_method_is_rejected(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--model", "tiny-llada", "--method", "awq", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "invalid choice: 'awq'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--model", "tiny-llada", "--group-size", "48"], "group_size 48 does not divide in_features 128"),
    (["--model", "tiny-llada", "--group-size", "12"], "multiple of 8"),
    (["--model", "no-such-model"], "cannot read model 'no-such-model'"),
])
def test_bad_input_is_a_clear_error(capsys, tmp_path, args, message):
    assert main([*args, "--method", "rtn", "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_model_directory(capsys, tmp_path):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert main(["--model", str(bad), "--method", "rtn", "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--model", "tiny-llada", "--method", "rtn", "--out", str(blocker / "out")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_float64_stage_two_is_independent_of_the_matmul_kernels(tmp_path):
    """`--compute-dtype float64` (what the shipped model uses): the same checkpoint whatever order the BLAS
    kernels sum in (here: 1 vs 2 threads, as a stand-in for another CPU), with no float64 tensor in it."""
    threads = torch.get_num_threads()
    runs = []
    try:
        for n, name in ((1, "one"), (2, "two")):
            torch.set_num_threads(n)
            runs.append(quantize(tmp_path / name, "tiny-llada", "--method", "fair-calib", "--compute-dtype",
                                 "float64", "--calib-prompts", "8"))
    finally:
        torch.set_num_threads(threads)
    a, b = (load_file(str(r / "model.safetensors")) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(t.dtype == torch.float64 for t in a.values())
    assert _inkwell(runs[0])["settings"]["compute_dtype"] == "float64"
    assert isinstance(load_model(runs[0]).model.transformer.blocks[0].q_proj, Int4Linear)


def test_masked_canvas_calibration_is_recorded_and_changes_the_codes(outputs, tmp_path):
    out = quantize(tmp_path / "m", "tiny-llada", "--method", "gptq", "--group-size", "64",
                   "--calib-canvas", "masked")
    block = _inkwell(out)
    assert block["settings"]["calib_canvas"] == "masked" and block["calibration"]["canvas"] == "masked"
    assert _inkwell(outputs["gptq"])["calibration"]["canvas"] == "clean"
    name = "model.transformer.blocks.0.q_proj.weight_packed"
    masked, clean = (load_file(str(o / "model.safetensors"))[name] for o in (out, outputs["gptq"]))
    assert not torch.equal(masked, clean)  # same sequences, other block inputs, other codes
