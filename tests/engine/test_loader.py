"""load_model on Hugging Face-format directories written here (single file and sharded, with the published
tensor names and config keys), presets and hub ids; dtypes; and every way a checkpoint can be broken."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from inkwell.engine import CheckpointError, load_model, read_config
from inkwell.engine import loader as loader_module
from inkwell.engine.checkpoint import save_model
from inkwell.engine.loader import default_dtype
from inkwell.engine.quant_linear import quantize_model_rtn
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
FAMILIES = ["tiny-llada", "tiny-dream"]


def published_names(preset: str) -> set[str]:
    """The tensor names of the published LLaDA-8B / Dream-7B checkpoints, for a preset's layer count."""
    if preset == "tiny-llada":
        block = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj",
                 "ff_out"]
        return {"model.transformer.wte.weight", "model.transformer.ln_f.weight",
                "model.transformer.ff_out.weight",
                *(f"model.transformer.blocks.{i}.{n}.weight" for i in range(2) for n in block)}
    layer = ["self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
             "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
             "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
             "input_layernorm.weight", "post_attention_layernorm.weight"]
    return {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
            *(f"model.layers.{i}.{n}" for i in range(2) for n in layer)}


def write_single(preset: str, out: Path, dtype: torch.dtype = torch.float32) -> Path:
    return save_model(load_model(preset), out, dtype=dtype)


def write_sharded(preset: str, out: Path, shards: int = 3) -> Path:
    """The layout `save_pretrained` writes for big models: model-0000i-of-0000n.safetensors + index."""
    single = write_single(preset, out / "single")
    state = load_file(str(single / "model.safetensors"))
    out.mkdir(exist_ok=True)
    shutil.copy(single / "config.json", out / "config.json")
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(out / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    shutil.rmtree(single)
    return out


def edit_tensors(file: Path, edit) -> None:
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file), metadata={"format": "pt"})


def edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text()) | changes
    (path / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


def at(path: Path, message: str) -> str:
    """A pattern for an error message that starts with `path: ` followed by `message` (a regex)."""
    return f"^{re.escape(str(path))}: {message}"


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a network connection or resolves a host name."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield calls
    assert calls == [], f"network calls were made: {calls}"


# ---- loading what save_model and save_pretrained-style sharding write ----

@pytest.mark.parametrize("preset", FAMILIES)
def test_single_file_checkpoint_round_trips_with_published_names(preset, tmp_path):
    model = load_model(preset)
    path = save_model(model, tmp_path / "ckpt")
    assert set(load_file(str(path / "model.safetensors"))) == published_names(preset)
    config = read_config(path)
    assert config["model_type"] == {"tiny-llada": "llada", "tiny-dream": "Dream"}[preset]
    assert config["torch_dtype"] == "float32"

    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert loaded.name_or_path == str(path)
    assert same_weights(loaded, model)
    ids = torch.arange(10)[None]
    assert torch.equal(loaded(ids), model(ids))


@pytest.mark.parametrize("preset", FAMILIES)
def test_sharded_checkpoint_loads_like_the_single_file(preset, tmp_path):
    path = write_sharded(preset, tmp_path / "sharded")
    assert len(list(path.glob("model-*-of-00003.safetensors"))) == 3
    assert not (path / "model.safetensors").exists()
    loaded = load_model(path)
    assert same_weights(loaded, load_model(preset))


@pytest.mark.parametrize("preset", FAMILIES)
def test_real_fixture_layout_loads_with_expected_shapes(preset):
    family = {"tiny-llada": "llada-tiny", "tiny-dream": "dream-tiny"}[preset]
    model = load_model(FIXTURES / family)
    state = model.state_dict()
    assert len(state) == len(published_names(preset))
    if preset == "tiny-llada":
        assert state["model.transformer.wte.weight"].shape == (160, 64)
        assert state["model.transformer.blocks.1.ff_proj.weight"].shape == (96, 64)
        assert state["model.transformer.ff_out.weight"].shape == (160, 64)
    else:  # grouped-query attention: 4 query heads, 2 key/value heads of 16
        assert state["model.layers.0.self_attn.q_proj.weight"].shape == (64, 64)
        assert state["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
        assert state["model.layers.0.self_attn.v_proj.bias"].shape == (32,)
        assert state["lm_head.weight"].shape == (160, 64)


# ---- dtypes and devices ----

@pytest.mark.parametrize(("requested", "expected"), [
    (None, torch.float32),  # the checkpoint is bfloat16; on a CPU the default is float32
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float64),
    ("bf16", torch.bfloat16),
    ("float64", torch.float64),
])
@pytest.mark.parametrize("preset", FAMILIES)
def test_dtype_is_the_requested_one_and_nothing_stays_on_meta(preset, requested, expected, tmp_path):
    path = write_single(preset, tmp_path / "ckpt", dtype=torch.bfloat16)
    assert read_config(path)["torch_dtype"] == "bfloat16"
    model = load_model(path, dtype=requested)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.dtype for t in tensors.values()} == {expected}
    assert {t.device for t in tensors.values()} == {torch.device("cpu")}
    assert not any(t.requires_grad for t in tensors.values())
    assert not model.training
    stored = load_file(str(path / "model.safetensors"))
    assert all(torch.equal(tensors[k], stored[k].to(expected)) for k in stored)
    assert model(torch.arange(6)[None]).dtype == expected


def test_unknown_dtype_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown dtype 'float8'.*bfloat16.*float32"):
        load_model("tiny-llada", dtype="float8")


def test_default_dtype_off_cpu_is_the_checkpoint_dtype(tmp_path):
    path = write_single("tiny-llada", tmp_path / "ckpt", dtype=torch.bfloat16)
    files = {path / "model.safetensors": None}
    cuda = torch.device("cuda")  # only a device object: nothing is allocated
    assert default_dtype({}, files, torch.device("cpu")) == torch.float32
    assert default_dtype({"torch_dtype": "float16"}, files, cuda) == torch.float16
    assert default_dtype({"dtype": "float32"}, files, cuda) == torch.float32  # transformers 5 key
    # LLaDA-8B's config names no dtype: the stored one (bfloat16) wins, not a float16 guess
    assert "torch_dtype" not in read_config(FIXTURES / "llada-8b")
    assert default_dtype({}, files, cuda) == torch.bfloat16


def test_weights_go_into_a_model_built_on_meta(monkeypatch, tmp_path):
    """The loader never materialises a randomly initialised model next to the loaded weights."""
    path = write_single("tiny-dream", tmp_path / "ckpt")
    built = []
    real_build = loader_module.build_model

    def spy(config):
        model = real_build(config)
        built.append({t.device.type for t in model.state_dict().values()})
        return model

    monkeypatch.setattr(loader_module, "build_model", spy)
    model = load_model(path)
    assert built == [{"meta"}]
    assert not any(t.is_meta for t in model.state_dict().values())


# ---- broken checkpoints: one CheckpointError naming the file and the tensor ----

def remove(name):
    return lambda state: state.pop(name)


def put(name, shape):
    return lambda state: state.__setitem__(name, torch.zeros(shape))


def retype(name):
    return lambda state: state.__setitem__(name, state[name].to(torch.int32))


@pytest.mark.parametrize(("preset", "edit", "message"), [
    ("tiny-llada", remove("model.transformer.blocks.1.up_proj.weight"),
     r"1 tensor\(s\) .* missing: model\.transformer\.blocks\.1\.up_proj\.weight"),
    ("tiny-dream", remove("model.layers.0.self_attn.k_proj.bias"),
     r"1 tensor\(s\) .* missing: model\.layers\.0\.self_attn\.k_proj\.bias"),
    ("tiny-llada", put("model.transformer.blocks.0.attn_bias.weight", (4,)),
     r"unexpected tensor 'model\.transformer\.blocks\.0\.attn_bias\.weight'"),
    ("tiny-dream", put("model.layers.0.self_attn.o_proj.bias", (128,)),
     r"unexpected tensor 'model\.layers\.0\.self_attn\.o_proj\.bias'"),
    ("tiny-llada", put("model.transformer.blocks.0.k_proj.weight", (64, 128)),
     r"tensor 'model\.transformer\.blocks\.0\.k_proj\.weight' has shape \(64, 128\), "
     r"the config expects \(128, 128\)"),
    ("tiny-dream", put("lm_head.weight", (500, 128)),
     r"tensor 'lm_head\.weight' has shape \(500, 128\), the config expects \(512, 128\)"),
    ("tiny-dream", retype("model.norm.weight"), r"tensor 'model\.norm\.weight' has dtype torch\.int32"),
], ids=["missing", "missing-bias", "unexpected", "unexpected-bias", "shape", "shape-head", "int-dtype"])
def test_bad_tensors_are_named_with_their_file(preset, edit, message, tmp_path):
    path = write_single(preset, tmp_path / "ckpt")
    edit_tensors(path / "model.safetensors", edit)
    with pytest.raises(CheckpointError, match=at(path / "model.safetensors", message)):
        load_model(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bad header"])
def test_corrupt_safetensors_file_is_named(damage, tmp_path):
    path = write_single("tiny-llada", tmp_path / "ckpt")
    file = path / "model.safetensors"
    data = file.read_bytes()
    header = int.from_bytes(data[:8], "little")
    file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x89PNG" * 100, "empty": b"",
                      "bad header": data[:8] + b"[" * header + data[8 + header:]}[damage])
    with pytest.raises(CheckpointError, match=at(file, "corrupt or unreadable safetensors file")):
        load_model(path)


def test_corrupt_shard_is_named(tmp_path):
    path = write_sharded("tiny-dream", tmp_path / "ckpt")
    shard = path / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=at(shard, "corrupt")):
        load_model(path)


def test_missing_shard_is_named_with_a_tensor_it_holds(tmp_path):
    path = write_sharded("tiny-llada", tmp_path / "ckpt")
    shard = path / "model-00003-of-00003.safetensors"
    held = sorted(load_file(str(shard)))[0]
    shard.unlink()
    message = at(shard, rf"shard named by .*index\.json is missing \(it holds tensor '{held}'")
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_tensor_the_index_promises_but_the_shard_lacks_is_named(tmp_path):
    path = write_sharded("tiny-dream", tmp_path / "ckpt")
    shard = path / "model-00001-of-00003.safetensors"
    name = sorted(load_file(str(shard)))[0]
    edit_tensors(shard, remove(name))
    message = at(shard, f"tensor '{name}' listed in the index is not in the file")
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_tensor_missing_from_the_index_is_named_with_the_index(tmp_path):
    path = write_sharded("tiny-llada", tmp_path / "ckpt")
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    del index["weight_map"]["model.transformer.ln_f.weight"]
    index_file.write_text(json.dumps(index))
    message = at(index_file, r"1 tensor\(s\) .* missing: model\.transformer\.ln_f")
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_unreadable_index_is_named(tmp_path):
    path = write_sharded("tiny-llada", tmp_path / "ckpt")
    (path / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: unreadable shard index"):
        load_model(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"model_type": "gpt9"}, r"unknown model_type 'gpt9'; supported: \['Dream', 'llada'\]"),
    ({"model_type": None}, r"unknown model_type None"),
    ({"d_model": None}, r"LLaDAConfig: config is missing required keys \['d_model'\]"),
    ({"alibi": True}, r"LLaDAConfig: alibi=True is not supported; allowed: \[False, None\]"),
])
def test_bad_config_is_named(changes, message, tmp_path):
    path = write_single("tiny-llada", tmp_path / "ckpt")
    edit_config(path, **changes)
    with pytest.raises(CheckpointError, match=at(path / "config.json", message)):
        load_model(path)


def test_invalid_config_json_is_named(tmp_path):
    path = write_single("tiny-dream", tmp_path / "ckpt")
    (path / "config.json").write_text('{"model_type": "Dream",')
    with pytest.raises(CheckpointError, match=at(path / "config.json", "not valid JSON")):
        load_model(path)


def test_config_without_weights(tmp_path):
    shutil.copy(FIXTURES / "llada-tiny" / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or model\.safetensors\.index\.json"):
        load_model(tmp_path)


def test_paths_that_are_not_model_directories(tmp_path):
    with pytest.raises(CheckpointError, match=at(tmp_path, r"not a model directory \(no config\.json\)")):
        load_model(tmp_path)
    file = FIXTURES / "llada-tiny" / "config.json"
    with pytest.raises(CheckpointError, match=at(file, "not a model directory")):
        load_model(file)


# ---- names: presets, hub ids in the local cache, and misses that must not download ----

def fake_hub_cache(root: Path, repo_id: str, source: Path) -> None:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_in_the_local_cache_loads_offline(monkeypatch, tmp_path, no_network):
    fake_hub_cache(tmp_path, "acme/llada-tiny", FIXTURES / "llada-tiny")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = load_model("acme/llada-tiny")
    assert model.name_or_path == "acme/llada-tiny"
    assert same_weights(model, load_model(FIXTURES / "llada-tiny"))


def test_hub_id_not_in_the_cache_is_a_clear_error_without_download(monkeypatch, tmp_path, no_network):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    message = (r"model 'GSAI-ML/LLaDA-8B-Instruct' is not a local directory and not in the local Hugging "
               r"Face cache; nothing is downloaded")
    with pytest.raises(FileNotFoundError, match=message):
        load_model("GSAI-ML/LLaDA-8B-Instruct")
    assert list(tmp_path.iterdir()) == []  # nothing was written to the cache either


def test_unknown_plain_name_lists_the_presets(no_network):
    with pytest.raises(FileNotFoundError, match=r"'tiny-gpt'.*tiny-dream, tiny-llada"):
        load_model("tiny-gpt")


# ---- int4 (pack-quantized) checkpoints: the loader's side ----

def write_int4(out: Path, shards: int = 1) -> tuple[torch.nn.Module, Path]:
    """tiny-dream with RTN int4 linears (q/k/v keep their bias); sharded with every bias in the last shard."""
    model = load_model("tiny-dream")
    config = quantize_model_rtn(model, group_size=64)
    path = save_model(model, out, config_updates={"quantization_config": config})
    if shards > 1:
        state = load_file(str(path / "model.safetensors"))
        (path / "model.safetensors").unlink()
        names = sorted(n for n in state if not n.endswith(".bias"))
        biases = sorted(n for n in state if n.endswith(".bias"))
        groups = [names[i::shards - 1] for i in range(shards - 1)] + [biases]
        weight_map = {}
        for i, group in enumerate(groups):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: state[n] for n in group}, str(path / file))
            weight_map |= dict.fromkeys(group, file)
        (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return model, path


@pytest.mark.parametrize("shards", [1, 3])
def test_int4_checkpoint_loads_with_biases_from_any_shard(shards, tmp_path):
    model, path = write_int4(tmp_path / "int4", shards)
    loaded = load_model(path)
    attn = loaded.model.layers[1].self_attn
    assert type(attn.q_proj).__name__ == "Int4Linear"
    assert type(loaded.lm_head) is torch.nn.Linear  # the output head stays in full precision
    torch.testing.assert_close(attn.q_proj.bias, model.model.layers[1].self_attn.q_proj.bias, atol=0, rtol=0)
    ids = torch.arange(12)[None]
    torch.testing.assert_close(loaded(ids), model(ids), atol=1e-5, rtol=0)


def test_int4_layers_are_built_while_reading(monkeypatch, tmp_path):
    """Packed tensors are turned into their serving layout layer by layer, not all kept until the end."""
    _, path = write_int4(tmp_path / "int4")
    events = []
    real_read, real_int4 = loader_module._read_tensors, loader_module._assign_int4

    def read(file, names):
        for item in real_read(file, names):
            events.append("read")
            yield item

    def build(*args, **kwargs):
        events.append("int4")
        return real_int4(*args, **kwargs)

    monkeypatch.setattr(loader_module, "_read_tensors", read)
    monkeypatch.setattr(loader_module, "_assign_int4", build)
    load_model(path)
    assert events.count("int4") == 2 * 7  # q, k, v, o, gate, up, down in two layers
    assert events.index("int4") < len(events) // 2


def test_int4_layer_missing_its_bias_is_an_error_not_a_dropped_bias(tmp_path):
    _, path = write_int4(tmp_path / "int4")
    edit_tensors(path / "model.safetensors", remove("model.layers.0.self_attn.v_proj.bias"))
    message = r"1 tensor\(s\) .* missing: model\.layers\.0\.self_attn\.v_proj\.bias"
    with pytest.raises(CheckpointError, match=at(path / "model.safetensors", message)):
        load_model(path)


def test_int4_layer_missing_its_scale_is_named(tmp_path):
    _, path = write_int4(tmp_path / "int4")
    edit_tensors(path / "model.safetensors", remove("model.layers.1.mlp.up_proj.weight_scale"))
    message = r"layer 'model\.layers\.1\.mlp\.up_proj'.*missing weight_scale"
    with pytest.raises(CheckpointError, match=at(path / "model.safetensors", message)):
        load_model(path)
