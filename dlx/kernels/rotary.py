"""Per-head qk RMSNorm + partial rotate-half rotary: the PyTorch reference (the model's op sequence) and one fused
Triton kernel that reads q and k once from the fused QKV output and by default writes them back in place."""
# Annotations stay strings: the kernels below name tl.constexpr before Triton is imported (lazily).
from __future__ import annotations

import math

import torch

from dlx.kernels import KERNEL_IMPLS
from dlx.kernels.lazy_jit import jit_on_first_use
from dlx.kernels.norm import rms_norm_reference

ELEMENTS_PER_PROGRAM = 2048  # upper bound on a program's (head, dim) tile


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [N, heads, head_dim]; cos/sin [max_positions, rotary_dim] fp32 tables, cast to x's dtype; rotate-half on
    the first rotary_dim dims in x's dtype (each op rounds), the rest passes through."""
    rotary_dim = cos.shape[-1]
    cos = cos[positions].to(x.dtype)[:, None, :]
    sin = sin[positions].to(x.dtype)[:, None, :]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


def qk_norm_rotary_reference(q: torch.Tensor, k: torch.Tensor | None, q_weight: torch.Tensor | None,
                             k_weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                             positions: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [N, Hq, D], k [N, Hkv, D] (or None): RMSNorm per head when weights are given, then rotary. New tensors."""
    if q_weight is not None:
        q = rms_norm_reference(q, q_weight, eps)
        k = rms_norm_reference(k, k_weight, eps) if k is not None else None
    return rotary_reference(q, cos, sin, positions), (rotary_reference(k, cos, sin, positions)
                                                      if k is not None else None)


def _qk_norm_rotary_rows(q_ptr, k_ptr, q_out_ptr, k_out_ptr, q_weight_ptr, k_weight_ptr, cos_ptr, sin_ptr,
                         positions_ptr, eps, max_positions, stride_qn, stride_qh, stride_kn, stride_kh,
                         stride_qon, stride_qoh, stride_kon, stride_koh, stride_table,
                         Q_HEADS: tl.constexpr, K_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                         ROTARY_DIM: tl.constexpr, HALF_PAD: tl.constexpr, REST_PAD: tl.constexpr,
                         BLOCK_H: tl.constexpr, HAS_NORM: tl.constexpr, REST: tl.constexpr):
    """Triton kernel body. Program (row, head block): BLOCK_H heads of one token, q heads first, then k heads.
    A head is read as three slices: the two rotary halves (lo, hi) and the pass-through rest, so the rotary
    partner of lo[j] is hi[j], a load of its own (no gather). In place needs no barrier: each element is
    written with a value computed from its own load, so no store overtakes the load it overwrites (the launch
    keeps warps from holding replicas of a tile). REST: the rest is read and written (with a norm, or out of
    place); without either it is left untouched."""
    row = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    is_q = heads < Q_HEADS
    head_ok = heads < Q_HEADS + K_HEADS
    k_heads = tl.where(is_q, 0, heads - Q_HEADS)
    src = tl.where(is_q, q_ptr + row * stride_qn + heads * stride_qh,
                   k_ptr + row * stride_kn + k_heads * stride_kh)[:, None]
    dst = tl.where(is_q, q_out_ptr + row * stride_qon + heads * stride_qoh,
                   k_out_ptr + row * stride_kon + k_heads * stride_koh)[:, None]
    weight = tl.where(is_q, q_weight_ptr, k_weight_ptr)[:, None]   # each head's norm weight (L1-resident)
    dtype = q_out_ptr.dtype.element_ty
    j = tl.arange(0, HALF_PAD)
    j_ok = j < ROTARY_DIM // 2
    rot_mask = head_ok[:, None] & j_ok[None, :]
    lo = tl.load(src + j[None, :], mask=rot_mask, other=0.0).to(tl.float32)
    hi = tl.load(src + ROTARY_DIM // 2 + j[None, :], mask=rot_mask, other=0.0).to(tl.float32)
    if REST:
        r = ROTARY_DIM + tl.arange(0, REST_PAD)
        r_ok = r < HEAD_DIM
        rest_mask = head_ok[:, None] & r_ok[None, :]
        rest = tl.load(src + r[None, :], mask=rest_mask, other=0.0).to(tl.float32)
    if HAS_NORM:
        squares = tl.sum(lo * lo + hi * hi, axis=1)  # padded lanes are 0
        if REST:
            squares += tl.sum(rest * rest, axis=1)
        rstd = tl.math.rsqrt(squares / HEAD_DIM + eps)[:, None]
        # RMSNorm's tail, rounded to the activation dtype where PyTorch stores: normalised, then scaled.
        w_lo = tl.load(weight + j[None, :], mask=rot_mask, other=0.0).to(tl.float32)
        w_hi = tl.load(weight + ROTARY_DIM // 2 + j[None, :], mask=rot_mask, other=0.0).to(tl.float32)
        lo = ((lo * rstd).to(dtype).to(tl.float32) * w_lo).to(dtype).to(tl.float32)
        hi = ((hi * rstd).to(dtype).to(tl.float32) * w_hi).to(dtype).to(tl.float32)
        if REST:
            w_rest = tl.load(weight + r[None, :], mask=rest_mask, other=0.0).to(tl.float32)
            rest = ((rest * rstd).to(dtype).to(tl.float32) * w_rest).to(dtype).to(tl.float32)
    position = tl.load(positions_ptr + row).to(tl.int64)
    # Negative positions index from the end, as tensor indexing does: padding rows (-1) stay in bounds.
    table = tl.where(position < 0, position + max_positions, position) * stride_table
    # Tables cast to the activation dtype, then x * cos + rotate_half(x) * sin with rotate_half = (-hi, lo),
    # rounded after each product as PyTorch's separate ops are (no-ops in fp32).
    cos_lo = tl.load(cos_ptr + table + j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    sin_lo = tl.load(sin_ptr + table + j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    cos_hi = tl.load(cos_ptr + table + ROTARY_DIM // 2 + j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    sin_hi = tl.load(sin_ptr + table + ROTARY_DIM // 2 + j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)[None, :]
    out_lo = (lo * cos_lo).to(dtype).to(tl.float32) - (hi * sin_lo).to(dtype).to(tl.float32)
    out_hi = (hi * cos_hi).to(dtype).to(tl.float32) + (lo * sin_hi).to(dtype).to(tl.float32)
    tl.store(dst + j[None, :], out_lo.to(dtype), mask=rot_mask)
    tl.store(dst + ROTARY_DIM // 2 + j[None, :], out_hi.to(dtype), mask=rot_mask)
    if REST:
        tl.store(dst + r[None, :], rest.to(dtype), mask=rest_mask)


def heads_per_program(q_heads: int, k_heads: int, head_width: int) -> int:
    """Heads per program: a power of two dividing both head counts, so no program holds padding heads,
    capped so a tile stays under ELEMENTS_PER_PROGRAM."""
    common = math.gcd(q_heads, k_heads)
    return max(1, min(common & -common, ELEMENTS_PER_PROGRAM // head_width))


def qk_norm_rotary_triton(q: torch.Tensor, k: torch.Tensor | None, q_weight: torch.Tensor | None,
                          k_weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                          positions: torch.Tensor, eps: float, *, inplace: bool = True
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as qk_norm_rotary_reference in one launch. inplace: q and k (strided views of the fused
    QKV output are fine) are overwritten and returned; otherwise new contiguous tensors are returned."""
    kernel = jit_on_first_use(_qk_norm_rotary_rows)
    num_rows, q_heads, head_dim = q.shape
    k_heads, rotary_dim = (k.shape[1] if k is not None else 0), cos.shape[-1]
    has_norm = q_weight is not None
    if k is not None and (k.dtype != q.dtype or k.shape[::2] != q.shape[::2]):
        raise ValueError(f"k {tuple(k.shape)} {k.dtype} does not pair with q {tuple(q.shape)} {q.dtype}")
    if has_norm and any(w is not None and w.dtype != q.dtype for w in (q_weight, k_weight)):
        raise ValueError("the qk norm weights must have the activation dtype (as the model loads them)")
    if has_norm and k is not None and k_weight is None:
        raise ValueError("q_weight given without k_weight")
    if rotary_dim % 2 or rotary_dim > head_dim or sin.shape != cos.shape:
        raise ValueError(f"rotary tables {tuple(cos.shape)} do not fit head_dim {head_dim}")
    q = q if q.stride(-1) == 1 else q.contiguous()  # in place then means into this copy (returned)
    k = k if k is None or k.stride(-1) == 1 else k.contiguous()
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace or k is None else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_rows == 0:
        return q_out, k_out
    cos, sin, positions = cos.contiguous(), sin.contiguous(), positions.contiguous()
    k_in, k_dst = (k, k_out) if k is not None else (q, q_out)   # never addressed: there are no k heads
    q_weight = q_weight.contiguous() if has_norm else q
    k_weight = k_weight.contiguous() if has_norm and k is not None else q_weight
    half_pad = triton.next_power_of_2(max(rotary_dim // 2, 1))
    rest_pad = triton.next_power_of_2(head_dim - rotary_dim) if head_dim > rotary_dim else 1
    block_h = heads_per_program(q_heads, k_heads, 2 * half_pad + rest_pad)
    kernel[(num_rows, triton.cdiv(q_heads + k_heads, block_h))](
        q, k_in, q_out, k_dst, q_weight, k_weight, cos, sin, positions, eps, cos.shape[0],
        q.stride(0), q.stride(1), k_in.stride(0), k_in.stride(1), q_out.stride(0), q_out.stride(1),
        k_dst.stride(0), k_dst.stride(1), cos.stride(0),
        Q_HEADS=q_heads, K_HEADS=k_heads, HEAD_DIM=head_dim, ROTARY_DIM=rotary_dim, HALF_PAD=half_pad,
        REST_PAD=rest_pad, BLOCK_H=block_h, HAS_NORM=has_norm,
        REST=head_dim > rotary_dim and (has_norm or not inplace),
        # ≥ 4 elements of the smallest (rotary-half) tile per thread: no two warps load the same element.
        num_warps=max(1, min(4, block_h * half_pad // 128)))
    return q_out, k_out


def qk_norm_rotary(q: torch.Tensor, k: torch.Tensor | None, q_weight: torch.Tensor | None,
                   k_weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                   eps: float, impl: str = "naive", *,
                   inplace: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """By `impl`: "naive" is qk_norm_rotary_reference (new tensors); "triton" the fused kernel, which by default
    writes q and k in place (into the fused QKV buffer they view) and returns them: use the returned tensors."""
    if impl == "naive":
        return qk_norm_rotary_reference(q, k, q_weight, k_weight, cos, sin, positions, eps)
    if impl == "triton":
        return qk_norm_rotary_triton(q, k, q_weight, k_weight, cos, sin, positions, eps, inplace=inplace)
    raise ValueError(f"unknown qk norm/rotary impl {impl!r}; expected one of {KERNEL_IMPLS}")
