"""Triton kernels compiled on first use: Triton is imported when a kernel is first needed, not when the model
imports a kernel module on a CPU-only machine, because Triton fixes interpreter-or-compiler at first import."""
import functools


@functools.cache
def jit_on_first_use(body):
    """`body` as a triton.jit kernel. Also binds `triton` and `tl` in body's module, where the kernel source
    (tl.constexpr annotations stay strings there) and the host code that launches it name them."""
    import triton
    import triton.language as tl
    body.__globals__.update(triton=triton, tl=tl)
    return triton.jit(body)
