"""The model core shared by the server and the quantizer: architectures, loading, tokenizer and special
ids, `Int4Linear`, the diffusion sampler and the serving engine."""

from .engine import Engine, EngineRequest, QueueFull
from .loader import CheckpointError, load_model, read_config
from .params import DiffusionParams
from .sampler import StepEvent, generate, iter_generate
from .tokenizer import SpecialIds, load_tokenizer, special_ids

__all__ = ["CheckpointError", "DiffusionParams", "Engine", "EngineRequest", "QueueFull", "SpecialIds",
           "StepEvent", "generate", "iter_generate", "load_model", "load_tokenizer", "read_config",
           "special_ids"]
