"""RMSNorm with an optional fused residual add: the PyTorch reference (the model's exact op order) and a Triton kernel.
With a residual both return (normed(x + residual), x + residual), the sum rounded to x's dtype as `h = x + a` is."""
# Annotations stay strings: the kernel below names tl.constexpr before Triton is imported (lazily).
from __future__ import annotations

import torch

from dlx.kernels import KERNEL_IMPLS
from dlx.kernels.lazy_jit import jit_on_first_use


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float,
                       residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Normalise in fp32, cast back to x's dtype, then scale: the order the LLaDA2 reference code uses.
    With a residual, normalise s = x + residual (one rounding to the common dtype) and return (normed, s)."""
    if residual is not None:
        summed = x + residual
        return rms_norm_reference(summed, weight, eps), summed
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rms_norm_rows(x_ptr, residual_ptr, weight_ptr, out_ptr, sum_ptr, eps,
                   stride_x, stride_r, stride_o, stride_s,
                   HIDDEN: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """Triton kernel body, one program per row. Every rounding the PyTorch ops make is made here too, in the
    same place: the sum to x's dtype, the normalised row to x's dtype, the scaled row to the output dtype."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < HIDDEN  # padded lanes load 0 and so add nothing to the sum of squares
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_r + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * stride_s + offs, x, mask=ok)
    xf = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(xf * xf, axis=0) / HIDDEN + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_o + offs, (normed * weight).to(out_ptr.dtype.element_ty), mask=ok)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """[rows, hidden] with a unit-stride last dimension; row-strided views (slices of wider rows) are kept."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as rms_norm_reference in one launch (x [..., hidden]); the residual must have x's shape and
    dtype. Outputs are new tensors: normed in the promoted dtype of x and weight, as `weight * x` gives."""
    kernel = jit_on_first_use(_rms_norm_rows)
    hidden = x.shape[-1]
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(f"residual {tuple(residual.shape)} {residual.dtype} does not match x "
                         f"{tuple(x.shape)} {x.dtype}")
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    summed = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    rows = _as_rows(x)
    if len(rows) == 0:
        return out if residual is None else (out, summed)
    res_rows = _as_rows(residual) if residual is not None else rows
    out_rows = out.view(-1, hidden)
    sum_rows = summed.view(-1, hidden) if summed is not None else out_rows
    block = triton.next_power_of_2(hidden)
    kernel[(len(rows),)](
        rows, res_rows, weight.contiguous(), out_rows, sum_rows, eps,
        rows.stride(0), res_rows.stride(0), out_rows.stride(0), sum_rows.stride(0),
        HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None,
        num_warps=min(max(block // 256, 1), 8))  # 8 contiguous elements (16 bytes of bf16) per thread
    return out if residual is None else (out, summed)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
             impl: str = "naive") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm by `impl`: "naive" is rms_norm_reference, "triton" the fused kernel."""
    if impl == "naive":
        return rms_norm_reference(x, weight, eps, residual)
    if impl == "triton":
        return rms_norm_triton(x, weight, eps, residual)
    raise ValueError(f"unknown norm impl {impl!r}; expected one of {KERNEL_IMPLS}")
