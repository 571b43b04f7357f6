"""Run-time LoRA adapters inside the fused MoE GEMMs: the per-adapter stacked expert pairs (MoELoRA), their kernel
arguments, and the Triton helpers the gate/up and down kernels call under their NUM_ADAPTERS > 0 flag."""
from typing import NamedTuple

import torch
import triton
import triton.language as tl


class MoELoRA(NamedTuple):
    """Adapters stacked per adapter n and expert e, scale folded into b (as LoRAWeights stacks them):
      token_adapter [T]    int32/int64, each token row's adapter; -1 (or anything outside 0..N-1): none;
      a13 [N, E, R, H], b13 [N, E, 2I, R]   w13's pair: h13 += (x @ a13[n, e]^T) @ b13[n, e]^T, gate rows first;
      a2 [N, E, R, I], b2 [N, E, H, R]      w2's pair, added before the routing weight is applied.
    The two parts may have different ranks; zero-padded ranks give the same product."""
    token_adapter: torch.Tensor
    a13: torch.Tensor
    b13: torch.Tensor
    a2: torch.Tensor
    b2: torch.Tensor


def lora_args(lora: MoELoRA | None, part: int, dummy: torch.Tensor) -> tuple[tuple, dict]:
    """(pointer and stride arguments, constexprs) of part 0 (w13) or 1 (w2) for a GEMM kernel. Without adapters
    every pointer is `dummy` and NUM_ADAPTERS is 0, so the kernel compiles without any LoRA code. Only shapes are
    read here: nothing waits for the device."""
    if lora is None:
        return (dummy, dummy, dummy) + (0,) * 6, dict(NUM_ADAPTERS=0, RANK=1, RANK_PAD=16)
    a, b = (lora.a13, lora.b13) if part == 0 else (lora.a2, lora.b2)
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    rank = a.shape[2]
    # tl.dot needs power-of-two sizes of at least 16: the kernels load R columns masked into RANK_PAD (zeros).
    constexprs = dict(NUM_ADAPTERS=a.shape[0], RANK=rank, RANK_PAD=max(16, triton.next_power_of_2(rank)))
    return (lora.token_adapter, a, b, *a.stride()[:3], *b.stride()[:3]), constexprs


@triton.jit
def _row_adapters(token_adapter_ptr, pair, row_ok, TOP_K: tl.constexpr):
    """Each row's adapter; padding rows get -1 (no adapter)."""
    return tl.load(token_adapter_ptr + pair // TOP_K, mask=row_ok, other=-1)


@triton.jit
def _lora_down_project(xa, rows, adapter, a_ptr, expert, k, stride_an, stride_ae, stride_ar,
                       K_DIM: tl.constexpr, BLOCK_K: tl.constexpr, NUM_ADAPTERS: tl.constexpr, RANK: tl.constexpr,
                       RANK_PAD: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """xa [BLOCK_M, RANK_PAD] += rows (this K tile, starting at k) @ a[n, expert, :, tile]^T, each row with its own
    adapter n: per adapter, the other adapters' rows are zeroed, so xa ends up holding every row's own product."""
    offs_r = tl.arange(0, RANK_PAD)
    offs_k = k + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + expert * stride_ae + offs_r[None, :] * stride_ar + offs_k[:, None]
    a_ok = (offs_r[None, :] < RANK) & (offs_k[:, None] < K_DIM)
    for n in tl.static_range(NUM_ADAPTERS):
        a = tl.load(a_ptrs + n * stride_an, mask=a_ok, other=0.0).to(DOT_DTYPE)
        mine = tl.where((adapter == n)[:, None], rows, tl.zeros_like(rows))
        xa = tl.dot(mine, a, xa, input_precision=DOT_PRECISION)
    return xa


@triton.jit
def _lora_up_project(acc, xa, adapter, b_ptr, expert, cols, col_ok, stride_bn, stride_be, stride_brow,
                     NUM_ADAPTERS: tl.constexpr, RANK: tl.constexpr, RANK_PAD: tl.constexpr,
                     DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] += xa @ b[n, expert, cols, :]^T, each row with its own adapter n. xa (fp32) is rounded
    to DOT_DTYPE first, as the PyTorch path rounds x @ a^T to the activations' dtype (bf16) before the second
    product; rows of adapter -1 have xa = 0 and get nothing."""
    offs_r = tl.arange(0, RANK_PAD)
    b_ptrs = b_ptr + expert * stride_be + cols[None, :] * stride_brow + offs_r[:, None]
    b_ok = (offs_r[:, None] < RANK) & col_ok[None, :]
    xa = xa.to(DOT_DTYPE)
    for n in tl.static_range(NUM_ADAPTERS):
        b = tl.load(b_ptrs + n * stride_bn, mask=b_ok, other=0.0).to(DOT_DTYPE)
        mine = tl.where((adapter == n)[:, None], xa, tl.zeros_like(xa))
        acc = tl.dot(mine, b, acc, input_precision=DOT_PRECISION)
    return acc
