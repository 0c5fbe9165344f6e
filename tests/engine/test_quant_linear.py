"""`Int4Linear` in the tiny presets, int4 checkpoints through save_model/load_model, the dequantized
fallback, malformed checkpoints, and the resident-bytes report."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from inkwell.engine import CheckpointError, load_model
from inkwell.engine.checkpoint import save_model
from inkwell.engine.quant_linear import (
    Int4Linear,
    int4_linear_from_tensors,
    quantization_config,
    quantize_model_rtn,
    resident_weight_bytes,
)
from inkwell.kernels import dequantize_int4
from safetensors.torch import load_file, save_file
from torch import nn

PRESETS = ["tiny-llada", "tiny-dream"]


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 509, (2, 24), generator=torch.Generator().manual_seed(seed))


def _dequantized_copy(model: nn.Module) -> nn.Module:
    """The FP model whose Linear weights are exactly the int4 model's dequantized weights."""
    fp = load_model(model.config.raw.get("_preset"))
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear):
            t = module.checkpoint_tensors()
            fp.get_submodule(name).weight.copy_(dequantize_int4(t["weight_packed"], t["weight_scale"]))
    return fp


def _quantized(preset: str, group_size: int = 64) -> tuple[nn.Module, dict]:
    model = load_model(preset)
    model.config.raw["_preset"] = preset
    return model, quantize_model_rtn(model, group_size)


@pytest.mark.parametrize("preset", PRESETS)
def test_int4_model_logits_close_to_dequantized_fp_model(preset):
    model, _ = _quantized(preset)
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert len(layers) == 14 and all(m.layout == "int4pack_cpu" for m in layers)  # 7 per block, 2 blocks
    assert isinstance(model.get_submodule(model.output_head_name), nn.Linear)  # the head stays FP
    fp = _dequantized_copy(model)
    ids = _ids()
    out, ref = model(ids), fp(ids)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # Same weights; the int4 layers compute with bf16 activations (unit roundoff 2^-8), so logits move by
    # about 2^-8 relative per layer: a 1e-2 relative error budget over 2 blocks, and the top token agrees.
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 1e-2, rel
    assert float((out.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.95
    # and the int4 model is a different model from the unquantized preset (the test is not vacuous)
    assert float((load_model(preset)(ids) - ref).norm() / ref.norm()) > 10 * rel


@pytest.mark.parametrize("preset", PRESETS)
def test_int4_checkpoint_round_trip(preset, tmp_path):
    model, qconfig = _quantized(preset, group_size=32)
    save_model(model, tmp_path, config_updates={"quantization_config": qconfig})
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["ignore"] == [model.output_head_name]
    stored = load_file(str(tmp_path / "model.safetensors"))
    name = {"tiny-dream": "model.layers.0.self_attn.q_proj",
            "tiny-llada": "model.transformer.blocks.0.q_proj"}[preset]
    assert stored[f"{name}.weight_packed"].dtype == torch.int32
    assert stored[f"{name}.weight_packed"].shape == (128, 128 // 8)
    assert stored[f"{name}.weight_scale"].shape == (128, 128 // 32)
    assert stored[f"{name}.weight_shape"].tolist() == [128, 128]
    assert f"{name}.weight" not in stored
    if preset == "tiny-dream":
        assert f"{name}.bias" in stored  # Dream's q/k/v biases survive
    reloaded = load_model(tmp_path)
    assert isinstance(reloaded.get_submodule(name), Int4Linear)
    ids = _ids(1)
    assert torch.equal(reloaded(ids), model(ids))
    save_model(reloaded, tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert again.keys() == stored.keys()
    assert all(torch.equal(again[k], stored[k]) for k in stored)  # load -> save is bit-exact


def test_outside_cpu_limits_the_layer_is_dequantized_once_and_reported(caplog):
    linear = nn.Linear(64, 24, bias=True)  # 24 outputs: not a multiple of 16
    with caplog.at_level(logging.WARNING, logger="inkwell.engine.quant_linear"):
        layer = Int4Linear.from_linear(linear, group_size=32)
    assert layer.layout == "dequantized"
    assert "out_features 24 is not a multiple of 16" in layer.dequantized_reason
    assert "dequantized at load" in caplog.text
    assert {name for name, _ in layer.named_buffers()} == {"weight", "weight_scale"}
    t = layer.checkpoint_tensors()
    w = dequantize_int4(t["weight_packed"], t["weight_scale"])
    x = torch.randn(5, 64)
    assert torch.allclose(layer(x), x @ w.T + linear.bias, atol=1e-6)
    again = Int4Linear(t["weight_packed"], t["weight_scale"], 32, t["bias"])
    assert all(torch.equal(v, again.checkpoint_tensors()[k]) for k, v in t.items())


@pytest.mark.parametrize("layout", ["int4pack_cpu", "qweight", "dequantized"])
def test_every_layout_computes_the_same_layer(layout):
    linear = nn.Linear(128, 64, bias=False)
    q_layer = Int4Linear.from_linear(linear, group_size=64, layout="qweight", scale_dtype=torch.bfloat16)
    t = q_layer.checkpoint_tensors()
    layer = Int4Linear(t["weight_packed"], t["weight_scale"], 64, layout=layout)
    assert set(layer.checkpoint_tensors()) == {"weight_packed", "weight_scale", "weight_shape"}
    assert all(torch.equal(v, layer.checkpoint_tensors()[k]) for k, v in t.items())
    x = torch.randn(3, 7, 128, dtype=torch.float64)
    out = layer(x)
    assert out.dtype == torch.float64 and out.shape == (3, 7, 64)
    ref = x @ dequantize_int4(t["weight_packed"], t["weight_scale"], torch.float64).T
    assert torch.allclose(out, ref, rtol=0, atol=0.03 * float(ref.abs().max()))  # bf16 on int4pack_cpu


def test_int4_weight_memory_is_under_0_3_of_fp16():
    layer = Int4Linear.from_linear(nn.Linear(1024, 1024, bias=False), group_size=128)
    fp16_bytes = 1024 * 1024 * 2
    assert layer.layout == "int4pack_cpu"
    # K*N/2 bytes of codes + bf16 (scale, zero) pairs per group: 0.25 + 2*2/(2*128) = 0.266 of fp16
    assert layer.resident_bytes() / fp16_bytes <= 0.3
    model, _ = _quantized("tiny-llada", group_size=128)
    report = resident_weight_bytes(model)
    assert report["dequantized"] == 0 and report["total"] == report["int4"] + report["float"]
    linears = 2 * (4 * 128 * 128 + 3 * 128 * 256)
    assert report["int4"] == linears // 2 + 2 * 2 * linears // 128


def _write_int4_checkpoint(tmp_path, mutate=None, config_mutate=None):
    model, qconfig = _quantized("tiny-llada", group_size=32)
    save_model(model, tmp_path, config_updates={"quantization_config": qconfig})
    if mutate:
        state = load_file(str(tmp_path / "model.safetensors"))
        mutate(state)
        save_file(state, str(tmp_path / "model.safetensors"))
    if config_mutate:
        config = json.loads((tmp_path / "config.json").read_text())
        config_mutate(config["quantization_config"])
        (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


LAYER = "model.transformer.blocks.1.up_proj"


@pytest.mark.parametrize("mutate, config_mutate, message", [
    (lambda s: s.pop(f"{LAYER}.weight_scale"), None, "missing weight_scale"),
    (lambda s: s.update({f"{LAYER}.weight_packed": s[f"{LAYER}.weight_packed"].to(torch.int64)}), None,
     "weight_packed must be int32"),
    (lambda s: s.update({f"{LAYER}.weight_scale": s[f"{LAYER}.weight_scale"][:, :2].contiguous()}), None,
     "group_size 32 does not fit"),
    (lambda s: s.update({f"{LAYER}.weight_shape": torch.tensor([256, 256])}), None, "weight_shape says"),
    (lambda s: s.update({f"{LAYER}.weight_packed": torch.zeros(128, 16, dtype=torch.int32),
                         f"{LAYER}.weight_scale": torch.ones(128, 4, dtype=torch.bfloat16),
                         f"{LAYER}.weight_shape": torch.tensor([128, 128])}), None,
     "model expects [256, 128]"),
    (None, lambda c: c["config_groups"]["group_0"]["weights"].update(num_bits=8), "num_bits is 8"),
    (None, lambda c: c.update(quant_method="gptq"), "quant_method is 'gptq'"),
])
def test_malformed_int4_checkpoints_are_rejected(tmp_path, mutate, config_mutate, message):
    path = _write_int4_checkpoint(tmp_path, mutate, config_mutate)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        load_model(path)
    assert LAYER in str(err.value) or config_mutate is not None


def test_loader_entry_point_without_config_infers_the_group_size():
    layer = Int4Linear.from_linear(nn.Linear(64, 32), group_size=32)
    parts = layer.checkpoint_tensors()
    bias = parts.pop("bias")
    rebuilt = int4_linear_from_tensors(parts, None, 64, 32, bias, torch.float32, torch.device("cpu"))
    assert rebuilt.group_size == 32
    with pytest.raises(ValueError, match="group_size 64 does not fit: in_features 64 needs 1 groups"):
        int4_linear_from_tensors(parts, quantization_config(64, []), 64, 32, bias, torch.float32,
                                 torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int4_linear_on_cuda_uses_the_qweight_layout(dtype):
    linear = nn.Linear(512, 384, bias=True).to("cuda", dtype)
    layer = Int4Linear.from_linear(linear, group_size=128)
    assert layer.layout == "qweight" and layer.qweight.is_cuda and layer.scales.dtype == dtype
    t = layer.checkpoint_tensors()
    w = dequantize_int4(t["weight_packed"], t["weight_scale"], torch.float64).cuda()
    for m in (1, 9, 48):
        x = torch.randn(m, 512, device="cuda", dtype=dtype)
        out = layer(x)
        ref = x.double() @ w.T + linear.bias.double()
        # fp32 accumulation, W rounded once to `dtype`, one output rounding: well within 2% of the scale
        assert out.dtype == dtype and float((out.double() - ref).abs().max()) < 0.02 * float(ref.abs().max())
