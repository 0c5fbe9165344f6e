"""Dream (`model_type: Dream`): a Qwen2-architecture transformer run bidirectionally for diffusion.

Pre-norm decoder layers with RMSNorm, half-split RoPE, grouped-query attention with q/k/v bias and no
causal mask, SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`), final `model.norm` and `lm_head`. The
forward returns unshifted logits; Dream's "position i-1 predicts token i" alignment lives in the
sampler. Config keys and tensor names are those of `Dream-org/Dream-v0-*-7B`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    KVCache,
    ModelConfig,
    RMSNorm,
    apply_rotary,
    attention,
    forward_positions,
    merge_heads,
    rotary,
    split_heads,
    upcast_dtype,
)


@dataclass(frozen=True)
class DreamConfig(ModelConfig):
    # Published config keys whose other values would change the architecture this file implements.
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {
        "hidden_act": ("silu",), "rope_scaling": (None,), "use_sliding_window": (False, None),
    }

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    vocab_size: int
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    mask_token_id: int = 151666
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    model_type: str = "Dream"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings


class DreamAttention(nn.Module):
    def __init__(self, c: DreamConfig) -> None:
        super().__init__()
        self.c = c
        kv_dim = c.kv_heads * c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=True)
        self.k_proj = nn.Linear(c.hidden_size, kv_dim, bias=True)
        self.v_proj = nn.Linear(c.hidden_size, kv_dim, bias=True)
        self.o_proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)

    def forward(self, h, rope, key_mask, cache: KVCache | None, layer: int, start: int):
        q = apply_rotary(split_heads(self.q_proj(h), self.c.num_attention_heads), *rope)
        k = apply_rotary(split_heads(self.k_proj(h), self.c.kv_heads), *rope)
        v = split_heads(self.v_proj(h), self.c.kv_heads)
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
        return self.o_proj(merge_heads(attention(q, k, v, key_mask)))


class DreamMLP(nn.Module):
    def __init__(self, c: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nn.Module):
    def __init__(self, c: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = DreamAttention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = DreamMLP(c)

    def forward(self, x, rope, key_mask, cache, layer: int, start: int):
        x = x + self.self_attn(self.input_layernorm(x), rope, key_mask, cache, layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    def __init__(self, c: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class DreamModel(nn.Module):
    """`model(input_ids [B, l], attention_mask [B, L] | None) -> logits [B, l, V]` (unshifted)."""

    output_head_name = "lm_head"

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DreamBackbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        m, c = self.model, self.config
        pos, key_mask = forward_positions(input_ids, attention_mask, kv_cache, start)
        x = m.embed_tokens(input_ids)  # [B, l, D]
        rope = rotary(pos, c.head_dim, c.rope_theta, upcast_dtype(x.dtype))
        for i, layer in enumerate(m.layers):
            x = layer(x, rope, key_mask, kv_cache, i, start)
        x = m.norm(x)
        if c.tie_word_embeddings:
            return F.linear(x, m.embed_tokens.weight)
        return self.lm_head(x)  # [B, l, V]
