"""LLaDA and Dream forwards: parity with the published reference code, left padding, dtypes, the KV cache
signature, the real 8B architecture on the meta device, and config validation."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from inkwell.engine import CheckpointError, load_model
from inkwell.engine.models import PRESETS, KVCache, build_model, config_from_dict
from safetensors.torch import load_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = ["llada-tiny", "dream-tiny"]
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


def expected(family: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / family / "expected_logits.safetensors"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_the_reference_implementation(family, dtype):
    ref = expected(family)
    model = load_model(FIXTURES / family, dtype=dtype)
    logits = model(ref["input_ids"])
    want = ref["logits_float64" if dtype == torch.float64 else "logits_float32"]
    assert logits.shape == want.shape == (2, 19, 160)
    assert logits.dtype == dtype
    diff = (logits.double() - want.double()).abs().max().item()
    print(f"{family} {dtype}: max-abs diff {diff:.3g}")
    assert diff <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_rows_match_the_rows_alone(family, dtype):
    ids = expected(family)["input_ids"]
    model = load_model(FIXTURES / family, dtype=dtype)
    short, full = ids[0, :11], ids[1]
    pad = 19 - 11
    # the pad ids are arbitrary tokens (not the pad id): only the mask may keep them out
    batch = torch.stack([torch.cat([torch.arange(3, 3 + pad), short]), full])
    mask = torch.ones_like(batch)
    mask[0, :pad] = 0
    logits = model(batch, attention_mask=mask)
    alone_short = model(short[None])[0]
    alone_full = model(full[None])[0]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(logits[0, pad:], alone_short, atol=tol, rtol=0)
    torch.testing.assert_close(logits[1], alone_full, atol=tol, rtol=0)
    # an all-ones mask is the same as no mask
    torch.testing.assert_close(model(full[None], attention_mask=torch.ones(1, 19))[0], alone_full,
                               atol=tol, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_is_bidirectional(family):
    """A masked-diffusion LM reads the whole canvas: a later token changes an earlier position's logits."""
    ids = expected(family)["input_ids"][:1]
    model = load_model(FIXTURES / family, dtype=torch.float64)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 150
    before, after = model(ids), model(changed)
    assert (before[0, 0] - after[0, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16],
                         ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("preset", ["tiny-llada", "tiny-dream"])
def test_forward_runs_in_each_dtype(preset, dtype):
    model = load_model(preset, dtype=dtype)
    ids = torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    logits = model(ids, attention_mask=mask)
    assert logits.shape == (2, 24, 512)
    assert logits.dtype == dtype
    assert torch.isfinite(logits).all()
    reference = load_model(preset, dtype=torch.float64)(ids, attention_mask=mask)
    scale = reference.abs().max()
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    assert ((logits.double() - reference).abs().max() / scale) < tol


def test_dream_preset_uses_grouped_query_attention():
    model = load_model("tiny-dream")
    attn = model.model.layers[0].self_attn
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert attn.k_proj.weight.shape == (model.config.kv_heads * model.config.head_dim, 128)
    assert attn.q_proj.weight.shape == (128, 128)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_in_milliseconds(preset):
    load_model(preset)  # warm up allocator and kernels
    start = time.perf_counter()
    model = load_model(preset)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{preset} took {elapsed:.3f} s to build"
    assert model.name_or_path == preset
    # deterministic random weights: the same preset gives the same model
    assert torch.equal(model(torch.arange(8)[None]), load_model(preset)(torch.arange(8)[None]))


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_slice_forward_matches_the_full_forward(family):
    """The sampler's cached call `model(ids[:, s:e], attention_mask, kv_cache=cache, start=s)`."""
    ids = expected(family)["input_ids"]
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    model = load_model(FIXTURES / family, dtype=torch.float64)
    cache = KVCache()
    full = model(ids, attention_mask=mask, kv_cache=cache, start=0)
    torch.testing.assert_close(full, model(ids, attention_mask=mask), atol=1e-12, rtol=0)
    assert len(cache.layers) == model.config.raw.get("n_layers", model.config.raw.get("num_hidden_layers"))
    part = model(ids[:, 8:14], attention_mask=mask, kv_cache=cache, start=8)
    torch.testing.assert_close(part, full[:, 8:14], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="KVCache"):
        model(ids[:, 8:14], attention_mask=mask, start=8)


def test_llada_8b_builds_on_meta_with_the_published_tensor_names_and_shapes():
    cfg = json.loads((FIXTURES / "llada-8b" / "config.json").read_text())
    index = json.loads((FIXTURES / "llada-8b" / "model.safetensors.index.json").read_text())
    with torch.device("meta"):
        model = build_model(config_from_dict(cfg))
    state = model.state_dict()
    assert all(t.is_meta for t in state.values())
    assert set(state) == set(index["weight_map"])

    d, mlp, vocab = 4096, 12288, 126464
    assert (cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]) == (d, mlp, vocab)
    per_block = {"attn_norm": (d,), "ff_norm": (d,), "q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d),
                 "attn_out": (d, d), "ff_proj": (mlp, d), "up_proj": (mlp, d), "ff_out": (d, mlp)}
    want = {"model.transformer.wte.weight": (vocab, d), "model.transformer.ln_f.weight": (d,),
            "model.transformer.ff_out.weight": (vocab, d)}
    want |= {f"model.transformer.blocks.{i}.{n}.weight": s for i in range(32) for n, s in per_block.items()}
    assert {k: tuple(v.shape) for k, v in state.items()} == want
    # the published shards are bfloat16: their byte count pins the parameter count
    assert 2 * sum(t.numel() for t in state.values()) == index["metadata"]["total_size"]


@pytest.mark.parametrize(("family", "key", "value"), [
    ("llada-tiny", "alibi", True),
    ("llada-tiny", "block_type", "sequential"),
    ("llada-tiny", "layer_norm_type", "default"),
    ("llada-tiny", "activation_type", "gelu"),
    ("llada-tiny", "rope", False),
    ("dream-tiny", "hidden_act", "gelu"),
    ("dream-tiny", "rope_scaling", {"type": "yarn", "factor": 4.0}),
    ("dream-tiny", "use_sliding_window", True),
])
def test_config_settings_the_model_does_not_implement_are_rejected(family, key, value, tmp_path):
    cfg = json.loads((FIXTURES / family / "config.json").read_text()) | {key: value}
    with pytest.raises(ValueError, match=rf"{key}=.*allowed"):
        config_from_dict(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"config\.json: .*{key}="):
        load_model(tmp_path)


@pytest.mark.parametrize(("family", "key"), [("llada-tiny", "d_model"), ("dream-tiny", "num_hidden_layers")])
def test_missing_required_config_key_is_named(family, key):
    cfg = json.loads((FIXTURES / family / "config.json").read_text())
    del cfg[key]
    with pytest.raises(ValueError, match=f"missing required keys.*{key}"):
        config_from_dict(cfg)


def test_head_counts_must_divide():
    cfg = dict(PRESETS["tiny-dream"], num_key_value_heads=3)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        config_from_dict(cfg)
    with pytest.raises(ValueError, match="n_heads"):
        config_from_dict(dict(PRESETS["tiny-llada"], n_heads=5))
