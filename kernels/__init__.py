"""int4 weight format and matmul kernels: packing, the pure-torch reference, the Triton W4A16 kernel
and the CPU path. Tensors in, tensors out; nothing here knows about models."""
