"""Compute kernels: paged block-diffusion attention, KV-cache store, MoE and their PyTorch references.
Leaf package: imports torch (and Triton where available) only."""

# Every fused op (norms, rotary, MoE and its router, the sampling reduction) runs its PyTorch reference
# or its Triton kernel; the model's modules and the sampler take one of these names.
KERNEL_IMPLS = ("naive", "triton")
