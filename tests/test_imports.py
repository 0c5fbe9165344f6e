"""`import inkwell.engine` and `import inkwell.kernels` on a CPU-only machine: quick, no CUDA, no network,
no threads or files opened by the hub libraries at import (DESIGN section 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = r"""
import json, socket, sys, threading, time

calls = []
def refuse(*args, **kwargs):
    calls.append(repr(args)[:200])
    raise OSError("network access at import")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start

import torch
print(json.dumps({{
    "elapsed": elapsed,
    "network": calls,
    "cuda_initialized": torch.cuda.is_initialized(),
    "threads": sorted(t.name for t in threading.enumerate() if t is not threading.main_thread()),
    "public": sorted(getattr(sys.modules["{module}"], "__all__", [])),
    "heavy": sorted(m for m in ("transformers", "huggingface_hub", "triton") if m in sys.modules),
}}))
"""


@pytest.mark.parametrize("module", ["inkwell.engine", "inkwell.kernels"])
def test_import_on_a_cpu_only_machine_is_quick_and_quiet(module):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["network"] == []
    assert report["cuda_initialized"] is False
    assert report["threads"] == []
    assert report["elapsed"] < 10, f"import {module} took {report['elapsed']:.1f} s"
    # transformers and the hub client cost seconds: they load when a tokenizer or hub id is first used
    assert report["heavy"] == [], f"import {module} pulled in {report['heavy']}"
    if module == "inkwell.engine":  # the public surface of DESIGN section 9
        assert {"load_model", "load_tokenizer"} <= set(report["public"])


def test_top_level_folders_do_not_break_libraries_that_probe_their_names():
    """Run from the repository root (as `python -m pytest` and `make` do), `kernels/` is also importable as
    plain `kernels`, the name of a hub package transformers probes with `import kernels` when it loads its
    model classes (compressed-tensors does so at import). Importing the folder a second time under that name
    must be harmless."""
    root = Path(__file__).parents[1]
    code = "import inkwell.engine, inkwell.kernels; import transformers.modeling_utils; print('ok')"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
