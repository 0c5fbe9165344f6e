"""Model architectures by `model_type`, and named presets with random weights for tests."""

from __future__ import annotations

from .dream import DreamConfig, DreamModel
from .layers import KVCache
from .llada import LLaDAConfig, LLaDAModel

ARCHITECTURES = {"llada": (LLaDAConfig, LLaDAModel), "Dream": (DreamConfig, DreamModel)}

# Tiny random-weight presets: built in milliseconds, for tests and benchmarks of the machinery.
PRESETS: dict[str, dict] = {
    "tiny-llada": {
        "model_type": "llada", "d_model": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
        "mlp_hidden_size": 256, "vocab_size": 512, "embedding_size": 512, "max_sequence_length": 1024,
        "rope_theta": 500000.0, "mask_token_id": 511, "eos_token_id": 510, "pad_token_id": 510,
        "bos_token_id": 509, "torch_dtype": "float32",
    },
    "tiny-dream": {
        "model_type": "Dream", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 512,
        "max_position_embeddings": 1024, "rope_theta": 1000000.0, "mask_token_id": 511,
        "eos_token_id": 510, "pad_token_id": 510, "bos_token_id": 509, "torch_dtype": "float32",
    },
}


def config_from_dict(d: dict):
    """The architecture's config dataclass for a `config.json` dict."""
    model_type = d.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown model_type {model_type!r}; supported: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type][0].from_dict(d)


def build_model(config):
    """An uninitialised model for a config dataclass (wrap in `torch.device('meta')` to skip memory)."""
    return ARCHITECTURES[config.model_type][1](config)


__all__ = ["ARCHITECTURES", "PRESETS", "KVCache", "DreamConfig", "DreamModel", "LLaDAConfig",
           "LLaDAModel", "build_model", "config_from_dict"]
