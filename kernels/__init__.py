"""int4 weight format and matmul kernels: packing, the pure-torch reference, the Triton W4A16 kernel
and the CPU path. Tensors in, tensors out; nothing here knows about models.

Importing this package registers the custom op `inkwell::int4_matmul` and nothing else: no Triton
import, no device work. The Triton kernel lives in `inkwell.kernels.triton_int4` (Linux x86_64 only).
"""

from .cpu_int4 import from_int4pack_cpu, int4pack_mm_cpu, int4pack_unsupported, to_int4pack_cpu
from .ops import int4_matmul, triton_available
from .packing import (
    check_int4_tensors,
    group_scales,
    pack_int4,
    quantize_groups,
    quantize_with_scales,
    unpack_int4,
)
from .reference import dequantize_int4, int4_matmul_reference

__all__ = [
    "check_int4_tensors", "dequantize_int4", "from_int4pack_cpu", "group_scales", "int4_matmul",
    "int4_matmul_reference", "int4pack_mm_cpu", "int4pack_unsupported", "pack_int4", "quantize_groups",
    "quantize_with_scales", "to_int4pack_cpu", "triton_available", "unpack_int4",
]
