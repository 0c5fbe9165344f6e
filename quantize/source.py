"""`WeightSource`: where Stage II and the export read the FP weights from, so that quantization streams.

A model directory is read from its safetensors files tensor by tensor into a skeleton built on the `meta`
device: Stage II materialises the embedding to make block 0's inputs, then one block at a time in float32,
releasing each once its packed results are kept, so peak memory stays near one FP block plus the
calibration activations; the export reads the tensors that stay in floating point (embeddings, norms,
biases, output head) from the file one at a time. Stage I, which runs the whole teacher, loads it for the
rollouts only (`full_model`). A preset has no file: its model is built in memory once, loading is a
no-op on it and releasing only restores float32, so both cases run the same driver and export code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from inkwell.engine import load_model
from inkwell.engine.loader import load_tensors, read_config, resolve_model_path
from inkwell.engine.models import build_model, config_from_dict
from torch import nn

from . import arch


class WeightSource:
    def __init__(self, model: nn.Module, path: Path | None = None) -> None:
        self.model = model  # with a path: on `meta` except what is loaded; without: the whole FP model
        self.path = path

    @classmethod
    def open(cls, name: str) -> WeightSource:
        """A file-backed source for a model directory (nothing loaded yet), in memory for a preset."""
        try:
            path = resolve_model_path(name)
            if path is None:
                return cls(load_model(name, dtype=torch.float32))
            with torch.device("meta"):
                skeleton = build_model(config_from_dict(read_config(path)))
            return cls(skeleton, path)
        except (ValueError, OSError) as err:  # CheckpointError, a bad config, FileNotFoundError
            raise ValueError(f"cannot read model {name!r}: {err}") from err

    @property
    def streamed(self) -> bool:
        return self.path is not None

    def full_model(self) -> nn.Module:
        """The whole FP model in float32 (Stage I); for a file-backed source a separate copy, freed when the
        caller drops it."""
        return load_model(self.path, dtype=torch.float32) if self.streamed else self.model

    def load(self, keep: Callable[[str], bool]) -> None:
        """Materialise, in float32, the tensors whose names pass `keep`."""
        if self.streamed:
            load_tensors(self.model, self.path, keep)

    def module(self, name: str) -> nn.Module:
        """Submodule `name`, its weights materialised."""
        self.load(lambda tensor: tensor.startswith(name + "."))
        return self.model.get_submodule(name)

    def block(self, index: int) -> nn.Module:
        """Block `index`, its weights materialised."""
        return self.module(f"{arch.family(self.model).blocks}.{index}")

    def tensor(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Tensor `name` in `dtype`; when streaming, read from the file and its module released again."""
        module_name, _, leaf = name.rpartition(".")
        module = self.model.get_submodule(module_name)
        if self.streamed:
            load_tensors(self.model, self.path, lambda tensor: tensor == name, dtype)
        value = getattr(module, leaf).detach().to(dtype)
        self.release(module)
        return value

    def release(self, module: nn.Module) -> None:
        """Drop a module's weights (back to `meta`) once what is needed from it is kept; a preset's module
        stays in memory, back in float32 (Stage II may have run it in another dtype)."""
        if self.streamed:
            module.to("meta")
        else:
            module.float()
