"""The quantization methods: small functions with one shared signature,
`method(weight [N, K], stats, settings) -> QuantizedWeight`.

What differs between GPTQ and FAIR-Calib at this level is only what the driver put into `stats` (the
token weights of the Hessian: uniform, or the Stage I prior, attention-weighted for k_proj/v_proj) and
the clipping search; FAIR-Calib's scale refinement works on a whole block (quantize/refine.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from inkwell.kernels import pack_int4

from .gptq import clip_search, dequantize, gptq, rtn
from .settings import QuantizeSettings

SCALE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COMPUTE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class LayerStats:
    """What calibration measured for one Linear layer."""

    hessian: torch.Tensor | None  # [K, K]: 2 Σ_j w_j x_j x_jᵀ / Σ_j w_j over calibration tokens j
    tokens: int = 0  # calibration tokens with non-zero weight


@dataclass
class QuantizedWeight:
    q: torch.Tensor  # int8 [N, K] codes
    scales: torch.Tensor  # float32 [N, K/g] (values representable in the scale dtype)

    @property
    def group_size(self) -> int:
        return self.q.shape[1] // self.scales.shape[1]

    def weight(self) -> torch.Tensor:
        return dequantize(self.q, self.scales)  # [N, K] float32

    def packed(self) -> PackedWeight:
        return PackedWeight(pack_int4(self.q), self.scales)


@dataclass
class PackedWeight:
    """A finished layer as Stage II keeps it until the export: the codes packed 8 to an int32 (half a byte
    per weight, the checkpoint's `weight_packed`) and the scales."""

    weight_packed: torch.Tensor  # int32 [N, K/8]
    scales: torch.Tensor  # float32 [N, K/g]

    @property
    def group_size(self) -> int:
        return self.weight_packed.shape[1] * 8 // self.scales.shape[1]


Method = Callable[[torch.Tensor, LayerStats, QuantizeSettings], QuantizedWeight]


def rtn_method(weight: torch.Tensor, stats: LayerStats, s: QuantizeSettings) -> QuantizedWeight:
    """Round to nearest with absmax scales; calibration is ignored."""
    return QuantizedWeight(*rtn(weight, s.group_for(weight.shape[1]), s.bits, SCALE_DTYPES[s.scale_dtype]))


def gptq_method(weight: torch.Tensor, stats: LayerStats, s: QuantizeSettings) -> QuantizedWeight:
    """GPTQ on the (uniformly weighted) Hessian; clipping search first when `clip_search` is on."""
    g, dtype = s.group_for(weight.shape[1]), SCALE_DTYPES[s.scale_dtype]
    scales = clip_search(weight, stats.hessian, g, s.bits, dtype, s.clip_min, s.clip_grid) \
        if s.clip_search else None
    return QuantizedWeight(*gptq(weight, stats.hessian, g, s.bits, dtype, s.damp, s.gptq_block_size,
                                 s.actorder, scales))


def fair_calib_method(weight: torch.Tensor, stats: LayerStats, s: QuantizeSettings) -> QuantizedWeight:
    """FAIR-Calib Stage II for one layer: per-group clipping search (on by default for this method), then
    GPTQ, both on the prior-weighted Hessian H = 2 Σ_j w_j x_j x_jᵀ that the driver accumulated (DESIGN
    section 7). The per-layer algorithm is GPTQ's; the prior enters through `stats`."""
    return gptq_method(weight, stats, s)


METHODS: dict[str, Method] = {"rtn": rtn_method, "gptq": gptq_method, "fair-calib": fair_calib_method}
