"""The shipped `inkwell-tiny-int4`: produced by this pipeline with FAIR-Calib from `inkwell-tiny`, loads by
name, passes compressed-tensors' validation, and its Stage I prior is normalised, floored and not flat.
The slow test re-runs the recorded pipeline and compares the prior (1e-6) and the integer codes (99 %)."""

import json

import pytest
import torch
from compressed_tensors import QuantizationConfig
from inkwell.engine import load_model
from inkwell.engine.loader import EMBEDDED
from inkwell.engine.quant_linear import Int4Linear
from inkwell.kernels import unpack_int4
from inkwell.quantize.pipeline import quantize_model
from inkwell.quantize.prior import Prior, first_stop, token_weights
from inkwell.quantize.settings import QuantizeSettings
from safetensors.torch import load_file

SHIPPED = EMBEDDED.get("inkwell-tiny-int4")
pytestmark = pytest.mark.skipif(SHIPPED is None or not (SHIPPED / "config.json").is_file(),
                                reason="inkwell-tiny-int4 is not built yet")


def _inkwell() -> dict:
    return json.loads((SHIPPED / "config.json").read_text())["quantization_config"]


def test_loads_by_name_on_the_cpu_int4_path():
    config = _inkwell()
    QuantizationConfig.model_validate(config)
    assert config["inkwell"]["method"] == "fair-calib" and config["inkwell"]["source_model"] == "inkwell-tiny"
    model = load_model("inkwell-tiny-int4")
    layers = [m for m in model.modules() if isinstance(m, Int4Linear)]
    assert layers and all(m.layout == "int4pack_cpu" for m in layers)
    assert (SHIPPED / "tokenizer.json").is_file() and (SHIPPED / "generation_config.json").is_file()


def test_shipped_prior_is_normalised_floored_and_not_flat():
    prior = Prior.load(SHIPPED / _inkwell()["inkwell"]["prior_path"])
    w = prior.tensor
    assert len(w) == 128 and abs(float(w.mean()) - 1) < 1e-9
    assert prior.ratio() >= 1.5 and prior.mode == "fair" and prior.lambda1 == 0.5
    mask = torch.ones(1, 140, dtype=torch.long)
    weights = token_weights(prior, mask, 12, first_stop(torch.tensor([[7] * 128]), (99,)))
    assert (weights[0, :12] == prior.floor).all() and torch.allclose(weights[0, 12:], w)


@pytest.mark.slow
def test_requantizing_reproduces_the_prior_and_the_codes(tmp_path):
    recorded = _inkwell()["inkwell"]["settings"]
    quantize_model("inkwell-tiny", QuantizeSettings(**recorded), tmp_path)
    old, new = Prior.load(SHIPPED / "fair_calib_prior.json"), Prior.load(tmp_path / "fair_calib_prior.json")
    assert torch.allclose(old.tensor, new.tensor, atol=1e-6, rtol=0)
    a, b = load_file(str(SHIPPED / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    names = [k for k in a if k.endswith("weight_packed")]
    same = sum(int((unpack_int4(a[k]) == unpack_int4(b[k])).sum()) for k in names)
    total = sum(unpack_int4(a[k]).numel() for k in names)
    assert same / total >= 0.99
