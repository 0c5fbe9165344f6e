"""`Int4Linear`: a Linear layer stored in the int4 `pack-quantized` format (placeholder until the
kernels issue lands; see issue #5)."""

from __future__ import annotations

import torch
from torch import nn

INT4_SUFFIXES = ("weight_packed", "weight_scale", "weight_shape")


def int4_linear_from_tensors(parts: dict[str, torch.Tensor], quant_config: dict | None, in_features: int,
                             out_features: int, bias: torch.Tensor | None, dtype: torch.dtype,
                             device: torch.device) -> nn.Module:
    raise ValueError("int4 checkpoints are not supported yet (issue #5)")
