"""LLaDA (`model_type: llada`): a LLaMA-style bidirectional transformer for masked diffusion.

Pre-norm blocks with RMSNorm, half-split RoPE, multi-head attention without a causal mask, SwiGLU with
`ff_proj` as the gate and `up_proj` as the value, and an untied `ff_out` output head unless
`weight_tying`. Config keys and tensor names are those of the published `GSAI-ML/LLaDA-8B-*`
checkpoints (`model.transformer.blocks.{i}.q_proj.weight`, ...), so they load without renaming.
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
class LLaDAConfig(ModelConfig):
    # Published config keys whose other values would change the architecture this file implements.
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {
        "block_type": ("llama",), "alibi": (False, None), "rope": (True, None),
        "activation_type": ("silu",), "layer_norm_type": ("rms",), "layer_norm_with_affine": (True, None),
        "bias_for_layer_norm": (False, None), "attention_layer_norm": (False, None),
        "input_emb_norm": (False, None), "scale_logits": (False, None),
    }

    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int
    n_kv_heads: int | None = None
    mlp_hidden_size: int | None = None
    mlp_ratio: int = 4
    embedding_size: int | None = None
    max_sequence_length: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    weight_tying: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    mask_token_id: int = 126336
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    model_type: str = "llada"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.kv_heads}")
        if self.include_bias:
            raise ValueError("include_bias=True is not supported; LLaDA's llama block has no linear biases")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def hidden_size(self) -> int:
        return self.mlp_hidden_size or self.mlp_ratio * self.d_model

    @property
    def padded_vocab(self) -> int:
        return self.embedding_size or self.vocab_size

    @property
    def max_length(self) -> int:
        return self.max_sequence_length


class LLaDABlock(nn.Module):
    def __init__(self, c: LLaDAConfig) -> None:
        super().__init__()
        self.c = c
        kv_dim = c.kv_heads * c.head_dim
        self.attn_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.include_qkv_bias)
        self.k_proj = nn.Linear(c.d_model, kv_dim, bias=c.include_qkv_bias)
        self.v_proj = nn.Linear(c.d_model, kv_dim, bias=c.include_qkv_bias)
        self.attn_out = nn.Linear(c.d_model, c.d_model, bias=False)
        self.ff_norm = RMSNorm(c.d_model, c.rms_norm_eps)
        self.ff_proj = nn.Linear(c.d_model, c.hidden_size, bias=False)  # gate
        self.up_proj = nn.Linear(c.d_model, c.hidden_size, bias=False)
        self.ff_out = nn.Linear(c.hidden_size, c.d_model, bias=False)

    def forward(self, x, rope, key_mask, cache: KVCache | None, layer: int, start: int):
        # x: [B, l, D]
        h = self.attn_norm(x)
        q = apply_rotary(split_heads(self.q_proj(h), self.c.n_heads), *rope)
        k = apply_rotary(split_heads(self.k_proj(h), self.c.kv_heads), *rope)
        v = split_heads(self.v_proj(h), self.c.kv_heads)
        if cache is not None:
            k, v = cache.update(layer, k, v, start)
        x = x + self.attn_out(merge_heads(attention(q, k, v, key_mask)))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    def __init__(self, c: LLaDAConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(c.padded_vocab, c.d_model)
        self.blocks = nn.ModuleList(LLaDABlock(c) for _ in range(c.n_layers))
        self.ln_f = RMSNorm(c.d_model, c.rms_norm_eps)
        if not c.weight_tying:
            self.ff_out = nn.Linear(c.d_model, c.padded_vocab, bias=False)


class LLaDAModel(nn.Module):
    """`model(input_ids [B, l], attention_mask [B, L] | None) -> logits [B, l, V]` (unshifted)."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        # tensor names are `model.transformer.*`, as in the published checkpoints
        self.model = nn.ModuleDict({"transformer": LLaDATransformer(config)})

    output_head_name = "model.transformer.ff_out"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        t, c = self.model["transformer"], self.config
        pos, key_mask = forward_positions(input_ids, attention_mask, kv_cache, start)
        x = t.wte(input_ids)  # [B, l, D]
        rope = rotary(pos, c.head_dim, c.rope_theta, upcast_dtype(x.dtype))
        for i, block in enumerate(t.blocks):
            x = block(x, rope, key_mask, kv_cache, i, start)
        x = t.ln_f(x)
        if c.weight_tying:
            return F.linear(x, t.wte.weight)
        return t.ff_out(x)  # [B, l, V]
