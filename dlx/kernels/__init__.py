"""Compute kernels: paged block-diffusion attention, KV-cache store, MoE and their PyTorch references.
Leaf package: imports torch (and Triton where available) only."""

# Every fused op (norms, rotary, MoE and its router, the sampling reduction) runs its PyTorch reference
# or its Triton kernel; the model's modules and the sampler take one of these names.
KERNEL_IMPLS = ("naive", "triton")


def fused_impl(attn_impl: str) -> str:
    """The Triton attention brings the fused norms, rotary, KV store and sampling reduction with it; "naive"
    attention means plain PyTorch everywhere."""
    return "triton" if attn_impl == "triton_grouped" else "naive"
