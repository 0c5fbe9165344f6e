"""What the block-by-block driver needs to know about a model family, read from the engine's own modules
(never a copy of them): the transformer blocks, the embedding, the inputs a block takes (rotary tables,
key mask), the order in which a block's Linear layers see their inputs, and the teacher attention
averaged over heads (for the `k_proj`/`v_proj` priors of FAIR-Calib Stage II).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from inkwell.engine.models.layers import apply_rotary, forward_positions, rotary, split_heads, upcast_dtype
from torch import nn


@dataclass(frozen=True)
class Family:
    blocks: str  # dotted path of the ModuleList of blocks
    embed: str  # the token embedding
    attn_norm: str  # inside a block: the norm before attention
    attn: str  # inside a block: the module holding q/k/v ("" = the block itself)
    # Linear layers of a block, in groups that see the same input, in the order the block computes them
    groups: tuple[tuple[str, ...], ...]
    kv: tuple[str, ...]  # the key and value projections
    final_norm: str  # after the last block
    head: str  # the output head ("" = tied to the embedding)

    def heads(self, config) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim)."""
        return (getattr(config, "n_heads", None) or config.num_attention_heads, config.kv_heads,
                config.head_dim)


FAMILIES = {
    "llada": Family(blocks="model.transformer.blocks", embed="model.transformer.wte", attn_norm="attn_norm",
                    attn="", groups=(("q_proj", "k_proj", "v_proj"), ("attn_out",), ("ff_proj", "up_proj"),
                                     ("ff_out",)), kv=("k_proj", "v_proj"),
                    final_norm="model.transformer.ln_f", head="model.transformer.ff_out"),
    "Dream": Family(blocks="model.layers", embed="model.embed_tokens", attn_norm="input_layernorm",
                    attn="self_attn", groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                              ("self_attn.o_proj",), ("mlp.gate_proj", "mlp.up_proj"),
                                              ("mlp.down_proj",)),
                    kv=("self_attn.k_proj", "self_attn.v_proj"), final_norm="model.norm", head="lm_head"),
}


def family(model: nn.Module) -> Family:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(f"no quantization support for model_type {model_type!r}; "
                         f"supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(family(model).blocks)


def block_linears(model: nn.Module) -> list[str]:
    """Names of a block's Linear layers in computation order."""
    return [name for group in family(model).groups for name in group]


@dataclass
class BlockInputs:
    """What every block of one batch takes besides the hidden states."""

    rope: tuple[torch.Tensor, torch.Tensor]
    key_mask: torch.Tensor | None

    def run(self, block: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        return block(x, self.rope, self.key_mask, None, index, 0)  # x: [B, L, D] -> [B, L, D]


def embed(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None,
          dtype: torch.dtype | None = None):
    """(hidden states [B, L, D] entering block 0, in `dtype` (default the embedding's), BlockInputs) for
    token ids [B, L]."""
    c = model.config
    x = model.get_submodule(family(model).embed)(ids)
    x = x if dtype is None else x.to(dtype)
    pos, key_mask = forward_positions(ids, attention_mask, None, 0)
    return x, BlockInputs(rotary(pos, c.head_dim, c.rope_theta, upcast_dtype(x.dtype)), key_mask)


@torch.no_grad()
def attention_probs(model: nn.Module, block: nn.Module, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
    """The block's attention, averaged over heads: ā [B, L_query, L_key] for hidden states x [B, L, D]."""
    fam = family(model)
    n_heads, kv_heads, head_dim = fam.heads(model.config)
    attn = block.get_submodule(fam.attn) if fam.attn else block
    h = block.get_submodule(fam.attn_norm)(x)
    up = upcast_dtype(x.dtype)
    q = apply_rotary(split_heads(attn.q_proj(h), n_heads), *inputs.rope).to(up)  # [B, H, L, d]
    k = apply_rotary(split_heads(attn.k_proj(h), kv_heads), *inputs.rope).to(up)
    k = k.repeat_interleave(n_heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)  # [B, H, L, L]
    if inputs.key_mask is not None:
        scores = scores.masked_fill(~inputs.key_mask, -torch.inf)
    return scores.softmax(-1).mean(1)  # [B, L, L]


@torch.no_grad()
def final_hidden(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The normalised hidden states [B, L, D] that the output head reads."""
    x, inputs = embed(model, ids, attention_mask)
    for index, block in enumerate(blocks(model)):
        x = inputs.run(block, x, index)
    return model.get_submodule(family(model).final_norm)(x)


def head(model: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Output head on hidden states [..., D] -> logits [..., V] (tied to the embedding when it has none)."""
    fam = family(model)
    try:
        return model.get_submodule(fam.head)(h)
    except AttributeError:
        return h @ model.get_submodule(fam.embed).weight.T


@torch.no_grad()
def logits_at(model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None,
              positions: torch.Tensor) -> torch.Tensor:
    """Logits at chosen positions, the output head applied there only. positions: [B] -> [B, V], or
    [B, n] -> [B, n, V]; the same numbers as `model(ids, attention_mask)` at those positions."""
    h = final_hidden(model, ids, attention_mask)
    rows = torch.arange(len(ids)).view(-1, *([1] * (positions.ndim - 1)))
    return head(model, h[rows, positions])
