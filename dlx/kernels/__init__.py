"""Compute kernels: paged block-diffusion attention, KV-cache store, MoE and their PyTorch references.
Leaf package: imports torch (and Triton where available) only."""
