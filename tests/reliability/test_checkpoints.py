"""Broken checkpoints through `inkwell-serve`: each kind makes the process exit 1 with one clear log line
naming the file and the problem (no traceback), instead of serving a broken model. tests/engine/
test_loader.py covers the same errors at the `load_model` level; here they go through the command line.
Most cases run `inkwell-serve`'s main() in this process; two go through a real process."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from inkwell.server import cli
from safetensors.torch import load_file, save_file

from .conftest import ServerProcess, free_port


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_tensors(path: Path, edit) -> Path:
    file = path / "model.safetensors"
    state = load_file(str(file))
    edit(state)
    save_file(state, str(file), metadata={"format": "pt"})
    return file


def edit_quant(path: Path, **weights) -> Path:
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"].update(weights)
    (path / "config.json").write_text(json.dumps(config))
    return path / "model.safetensors"


def truncated(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    path = copy(fp, root / "truncated")
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return path, f"{file}: corrupt or unreadable safetensors file"


def wrong_dtype(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    name = "model.transformer.ln_f.weight"
    file = edit_tensors(copy(fp, root / "dtype"), lambda s: s.__setitem__(name, s[name].to(torch.int32)))
    return file.parent, f"{file}: tensor '{name}' has dtype torch.int32, expected a float type"


def missing_tensor(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    name = "model.transformer.blocks.1.ff_out.weight"
    file = edit_tensors(copy(fp, root / "missing"), lambda s: s.pop(name))
    return file.parent, f"{file}: 1 tensor(s) the config needs are missing: {name}"


def int8_bits(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    file = edit_quant(copy(int4, root / "bits"), num_bits=8)
    return file.parent, f"{file}: layer 'model.transformer.blocks.0."  # then DETAIL


def group_size(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    file = edit_quant(copy(int4, root / "group"), group_size=48)
    return file.parent, f"{file}: layer 'model.transformer.blocks.0."  # then DETAIL


def not_a_model(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    path = root / "empty"
    path.mkdir()
    (path / "README.md").write_text("not a model\n")
    return path, f"{path}: not a model directory (no config.json)"


def a_file(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    return fp / "config.json", f"{fp / 'config.json'}: not a model directory"


def symlink_loop(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    path = root / "loop"
    path.symlink_to(path)
    return path, f"{path}: symbolic link loop"


def weights_symlink_loop(fp: Path, int4: Path, root: Path) -> tuple[Path, str]:
    path = copy(fp, root / "inner-loop")
    file = path / "model.safetensors"
    file.unlink()
    file.symlink_to(file)
    return path, f"{file}: symbolic link loop"


KINDS = [truncated, wrong_dtype, missing_tensor, int8_bits, group_size, not_a_model, a_file, symlink_loop,
         weights_symlink_loop]
DETAIL = {"int8_bits": "weights.num_bits is 8; supported: 4",  # the part after the layer's name
          "group_size": "group_size 48 does not fit"}


@pytest.mark.parametrize("kind", KINDS, ids=[k.__name__ for k in KINDS])
def test_broken_checkpoint_makes_inkwell_serve_exit_1_with_one_error_naming_the_file(kind, model_dirs,
                                                                                      tmp_path, caplog):
    """`inkwell-serve`'s main() in this process (fast): exit status 1 and one error record, no traceback."""
    path, message = kind(*model_dirs, tmp_path)
    status = cli.main(["--model", f"broken={path}", "--port", str(free_port()), "--log-level", "warning"])
    assert status == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert errors[0].getMessage().startswith(f"loading the models failed: {message}")
    assert DETAIL.get(kind.__name__, "") in errors[0].getMessage()
    assert errors[0].exc_info is None, "a broken checkpoint is one line, not a traceback"


def test_the_real_process_exits_1_and_prints_only_the_reason(model_dirs, tmp_path):
    """Two kinds through a real `inkwell-serve` process (started together): exit status 1, one ERROR line."""
    cases = {kind.__name__: kind(*model_dirs, tmp_path) for kind in (truncated, symlink_loop)}
    servers = {name: ServerProcess(["--model", f"broken={path}"], tmp_path / f"{name}.log")
               for name, (path, _) in cases.items()}
    try:
        for name, (_, message) in cases.items():
            assert servers[name].proc.wait(timeout=600) == 1
            log = servers[name].log.read_text()
            errors = [line for line in log.splitlines() if " ERROR " in line]
            assert len(errors) == 1 and f"loading the models failed: {message}" in errors[0], log
            assert "Traceback" not in log
    finally:
        for server in servers.values():
            server.stop()
