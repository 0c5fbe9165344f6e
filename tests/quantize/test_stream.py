"""Streamed quantization: a model directory is read block by block (`WeightSource`) and gives exactly the
checkpoint of the in-memory path; during Stage II at most one block holds FP weights; a tensor missing
from the file is a clear error."""

import json
import platform

import pytest
import torch
from inkwell.engine import load_model
from inkwell.engine.checkpoint import TensorEntry, save_model, write_safetensors
from inkwell.engine.quant_linear import Int4Linear
from inkwell.quantize import arch
from inkwell.quantize.cli import main, release_freed_blocks
from inkwell.quantize.source import WeightSource
from safetensors.torch import load_file, save_file

from .test_pipeline import quantize


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny-llada written to disk in float32: the preset's exact weights, read back from a file."""
    return save_model(load_model("tiny-llada"), tmp_path_factory.mktemp("src") / "tiny-llada")


def _config(out) -> dict:
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]["inkwell"]["source_model"]
    return config


@pytest.mark.parametrize("method", ["gptq", "fair-calib"])
def test_streamed_checkpoint_equals_the_in_memory_one(saved, tmp_path, method):
    memory = quantize(tmp_path / "memory", "tiny-llada", "--method", method, "--group-size", "64")
    streamed = quantize(tmp_path / "streamed", str(saved), "--method", method, "--group-size", "64")
    a, b = load_file(str(memory / "model.safetensors")), load_file(str(streamed / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.endswith("weight_packed") for k in a)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)  # codes, scales, the rest
    assert _config(memory) == _config(streamed)


@pytest.mark.parametrize("method", ["gptq", "fair-calib"])
def test_stage2_holds_one_fp_block_at_a_time(saved, tmp_path, monkeypatch, method):
    materialised: list[int] = []  # blocks with non-meta weights, at every block forward of Stage II
    opened = WeightSource.open

    def open_and_watch(name):
        source = opened(name)
        blocks = arch.blocks(source.model)
        for block in blocks:
            block.register_forward_pre_hook(lambda module, args: materialised.append(
                sum(any(not p.is_meta for p in b.parameters()) for b in blocks)))
        return source

    monkeypatch.setattr(WeightSource, "open", staticmethod(open_and_watch))
    quantize(tmp_path / "out", str(saved), "--method", method, "--group-size", "64")
    assert materialised and max(materialised) == 1


@pytest.mark.parametrize("method", ["rtn", "fair-calib"])
def test_the_export_reads_one_tensor_at_a_time(saved, tmp_path, monkeypatch, method):
    """After Stage II no FP weight of the source is held (the embedding included), and the export reads
    each tensor that stays in floating point alone, in the source dtype, and releases it before the next."""
    held: list[int] = []  # materialised source tensors whenever the export asks for one
    read = WeightSource.tensor

    def watched(self, name, dtype):
        held.append(sum(not t.is_meta for t in self.model.state_dict(keep_vars=True).values()))
        return read(self, name, dtype)

    monkeypatch.setattr(WeightSource, "tensor", watched)
    out = quantize(tmp_path / "out", str(saved), "--method", method, "--group-size", "64")
    stored = load_file(str(out / "model.safetensors"))
    floats = [k for k, t in stored.items() if t.is_floating_point() and not k.endswith("weight_scale")]
    assert len(held) == len(floats) and max(held) == 0
    assert all(stored[k].dtype == torch.float32 for k in floats)  # the source's dtype
    assert isinstance(load_model(out).model.transformer.blocks[0].q_proj, Int4Linear)


def test_write_safetensors_round_trips_and_checks_what_it_writes(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int32),
               "c": torch.tensor([True, False]), "d": torch.randn(2, 2, 2, dtype=torch.float16),
               "e": torch.zeros(0, 4)}
    entries = [TensorEntry(k, t.dtype, tuple(t.shape), lambda t=t: t) for k, t in tensors.items()]
    write_safetensors(tmp_path / "x.safetensors", entries, {"format": "pt"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], t) for k, t in tensors.items())
    wrong = [TensorEntry("a", torch.float32, (3, 5), lambda: tensors["a"])]
    with pytest.raises(ValueError, match="a: made torch.bfloat16"):
        write_safetensors(tmp_path / "y.safetensors", wrong, {})


def test_a_block_tensor_missing_from_the_file_is_named(saved, tmp_path, capsys):
    broken = save_model(load_model(saved), tmp_path / "broken")
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.transformer.blocks.1.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    assert main(["--model", str(broken), "--method", "rtn", "--out", str(tmp_path / "o")]) == 2
    assert "missing: model.transformer.blocks.1.up_proj.weight" in capsys.readouterr().err


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_blocks_go_back_to_the_system_under_glibc():
    assert release_freed_blocks()  # M_MMAP_THRESHOLD accepted: streamed runs stay near one block
