"""Building blocks shared by the model files: RMSNorm, half-split rotary embeddings, positions from the
attention mask, and bidirectional multi-head attention with grouped key/value heads.

Numerics follow the published references: RMSNorm and RoPE are computed in at least float32 (float64
stays float64), attention runs in the model dtype.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class ModelConfig:
    """`from_dict` / `to_dict` of the frozen config dataclasses, which keep the whole `config.json` in `raw`.

    `UNSUPPORTED` maps published keys to the values this implementation supports: any other value would
    change the architecture silently, so `from_dict` refuses it.
    """

    UNSUPPORTED: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def from_dict(cls, d: dict):
        """The config from a `config.json` dict; ValueError naming missing keys or an unsupported value."""
        names = {f.name for f in fields(cls)} - {"raw"}
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{cls.__name__}: config is missing required keys {missing}")
        for key, allowed in cls.UNSUPPORTED.items():
            if key in d and d[key] not in allowed:
                raise ValueError(f"{cls.__name__}: {key}={d[key]!r} is not supported; "
                                 f"allowed: {list(allowed)}")
        return cls(**{k: v for k, v in d.items() if k in names}, raw=dict(d))

    def to_dict(self) -> dict:
        return dict(self.raw) | {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw"}


def upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, the dtype itself for float32/float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(upcast_dtype(x.dtype))
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def position_ids(attention_mask: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """Positions [B, L]: `cumsum(mask) - 1` so left padding does not move a row's positions."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def rotary(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin [B, 1, L, head_dim] for half-split RoPE, computed in `dtype` (>= float32)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=dtype) / head_dim)
    freqs = positions.to(dtype)[..., None] * inv_freq  # [B, L, head_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, L, head_dim]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, L, D]; rotate the two halves of the head dimension (LLaMA/Qwen layout)."""
    h = x.to(cos.dtype)
    x1, x2 = h.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


def key_padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean [B, 1, 1, L] mask of real keys for SDPA, or None when every key is real."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


def attention(q, k, v, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Bidirectional attention. q: [B, H, L, D]; k, v: [B, KVH, S, D] with H a multiple of KVH."""
    if k.shape[1] != q.shape[1]:
        repeat = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(repeat, dim=1)
        v = v.repeat_interleave(repeat, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    b, length, _ = x.shape
    return x.view(b, length, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, L, D] -> [B, L, H*D]."""
    b, _, length, _ = x.shape
    return x.transpose(1, 2).reshape(b, length, -1)


class KVCache:
    """Keys and values of every layer over the whole sequence, `[B, KVH, L, D]` each.

    Fast-dLLM's prefix and dual caches: a full forward fills it; later forwards compute only the
    positions `[start, start + l)` and attend over the cached keys with that slice refreshed in place.
    """

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        if layer == len(self.layers):
            assert start == 0, "an empty cache must be filled by a full forward"
            self.layers.append((k, v))
            return k, v
        ck, cv = self.layers[layer]
        ck[:, :, start : start + k.shape[2]] = k
        cv[:, :, start : start + v.shape[2]] = v
        return ck, cv

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (when requests leave a batch)."""
        self.layers = [(k[rows], v[rows]) for k, v in self.layers]


def forward_positions(input_ids, attention_mask, cache: KVCache | None, start: int):
    """Positions [B, l] of the computed slice and the key mask over the full sequence."""
    b, length = input_ids.shape
    full = attention_mask.shape[1] if attention_mask is not None else start + length
    if cache is None and start != 0:
        raise ValueError("start > 0 needs a filled KVCache")
    pos = position_ids(attention_mask, b, full, input_ids.device)[:, start : start + length]
    return pos, key_padding_bias(attention_mask, None)
