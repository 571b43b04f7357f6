"""KV-cache store: write the keys/values of committed tokens into their page slots.
The PyTorch path and the Triton kernel live here; slot -1 means the row is not stored (still being denoised)."""
# Annotations stay strings: the kernel below names tl.constexpr before Triton is imported (lazily).
from __future__ import annotations

import torch

from dlx.kernels.lazy_jit import jit_on_first_use

KV_STORE_IMPLS = ("naive", "triton", "triton_grouped")


def store_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """k/v [N, Hkv, D]; caches [pages, page_size, Hkv, D]; slot_mapping [N] int64."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def _store_kv_rows(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                   stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
                   PAGE_SIZE: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK: tl.constexpr):
    """Triton kernel body, one program per token row: copy all the row's KV heads into its page slot,
    unless the slot is -1."""
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs = tl.arange(0, BLOCK)
    head, dim = offs // HEAD_DIM, offs % HEAD_DIM
    in_range = offs < NUM_KV_HEADS * HEAD_DIM
    cache_offsets = (slot // PAGE_SIZE) * stride_cp + (slot % PAGE_SIZE) * stride_cs + head * stride_ch + dim
    key = tl.load(k_ptr + row * stride_kn + head * stride_kh + dim, mask=in_range)
    value = tl.load(v_ptr + row * stride_vn + head * stride_vh + dim, mask=in_range)
    tl.store(k_cache_ptr + cache_offsets, key.to(k_cache_ptr.dtype.element_ty), mask=in_range)
    tl.store(v_cache_ptr + cache_offsets, value.to(v_cache_ptr.dtype.element_ty), mask=in_range)


def store_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """Same contract as store_kv_reference in one launch with no device sync: slot -1 is skipped in-kernel."""
    kernel = jit_on_first_use(_store_kv_rows)
    if len(k) == 0:
        return
    k = k if k.stride(-1) == 1 else k.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1:
        raise ValueError("the K and V caches must share one layout with a contiguous head dimension")
    num_kv_heads, head_dim = k.shape[1], k.shape[2]
    kernel[(len(k),)](
        k, v, k_cache, v_cache, slot_mapping, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], PAGE_SIZE=k_cache.shape[1], NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim,
        BLOCK=triton.next_power_of_2(num_kv_heads * head_dim), num_warps=4)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, impl: str) -> None:
    """Store by `impl`: "naive" is store_kv_reference; "triton" (or the attention flag's value
    "triton_grouped") is the Triton kernel."""
    if impl == "naive":
        store_kv_reference(k, v, k_cache, v_cache, slot_mapping)
    elif impl in ("triton", "triton_grouped"):
        store_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    else:
        raise ValueError(f"unknown kv store impl {impl!r}; expected one of {KV_STORE_IMPLS}")
