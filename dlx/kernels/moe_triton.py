"""Fused mixture-of-experts in Triton: sync-free grouping of (token, slot) pairs by expert, a grouped gate/up GEMM
with SwiGLU fused, a grouped down GEMM that applies the routing weights, and a fixed-order sum over the slots."""
import torch
import triton
import triton.language as tl

from dlx.kernels.moe_align import align_by_expert, align_by_expert_triton
from dlx.kernels.moe_lora import MoELoRA, _lora_down_project, _lora_up_project, _row_adapters, lora_args

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _block_pairs(block, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr, BLOCK_M: tl.constexpr):
    """(expert, pair index per row, row is real) of one BLOCK_M-row block of the padded layout."""
    expert = tl.load(block_experts_ptr + block)
    first, end = tl.load(bounds_ptr + expert), tl.load(bounds_ptr + expert + 1)
    first_block = tl.load(block_ends_ptr + expert) - tl.cdiv(end - first, BLOCK_M)
    position = first + (block - first_block) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = position < end
    pair = tl.load(order_ptr + position, mask=row_ok, other=0)
    return expert.to(tl.int64), pair.to(tl.int64), row_ok


@triton.jit
def _gate_up_kernel(x_ptr, w13_ptr, h_ptr, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr,
                    num_blocks_ptr, stride_x, stride_w_expert, stride_w_row, stride_h,
                    token_adapter_ptr, a_ptr, b_ptr, stride_an, stride_ae, stride_ar, stride_bn, stride_be,
                    stride_brow, HIDDEN: tl.constexpr, INTER: tl.constexpr, TOP_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, NUM_ADAPTERS: tl.constexpr, RANK: tl.constexpr,
                    RANK_PAD: tl.constexpr):
    """Program (block, column tile): h[block rows, cols] = silu(x @ gate[cols]^T) * (x @ up[cols]^T), gate and
    up accumulated side by side for the same columns so SwiGLU is applied before anything is stored. With
    adapters (NUM_ADAPTERS > 0) each row's LoRA product of w13 joins gate and up before SwiGLU."""
    n_tiles = tl.cdiv(INTER, BLOCK_N)
    # Column tiles vary fastest: a block's tiles share its x rows, and the blocks of one expert run together
    # so a weight tile fetched for one is still in L2 for the next.
    block, n_tile = tl.program_id(0) // n_tiles, tl.program_id(0) % n_tiles
    if block >= tl.load(num_blocks_ptr):
        return
    expert, pair, row_ok = _block_pairs(block, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr, BLOCK_M)
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = (cols < INTER) | (INTER % BLOCK_N == 0)  # folds to true (unmasked loads) when tiles divide INTER
    offs_k = tl.arange(0, BLOCK_K)
    # Padding rows read token 0's row (a real address) and are never stored.
    x_ptrs = x_ptr + (pair // TOP_K)[:, None] * stride_x + offs_k[None, :]
    gate_ptrs = w13_ptr + expert * stride_w_expert + cols[None, :] * stride_w_row + offs_k[:, None]
    up_offset = INTER * stride_w_row
    gate_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    up_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if NUM_ADAPTERS > 0:
        adapter = _row_adapters(token_adapter_ptr, pair, row_ok, TOP_K)
        # Recomputed by every column tile of the block: a is R rows per expert and stays in L2.
        xa = tl.zeros([BLOCK_M, RANK_PAD], tl.float32)
    for k in range(0, HIDDEN, BLOCK_K):
        k_ok = (offs_k < HIDDEN - k) | (HIDDEN % BLOCK_K == 0)
        rows = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0).to(DOT_DTYPE)
        w_ok = k_ok[:, None] & col_ok[None, :]
        gate = tl.load(gate_ptrs, mask=w_ok, other=0.0).to(DOT_DTYPE)
        up = tl.load(gate_ptrs + up_offset, mask=w_ok, other=0.0).to(DOT_DTYPE)
        gate_acc = tl.dot(rows, gate, gate_acc, input_precision=DOT_PRECISION)
        up_acc = tl.dot(rows, up, up_acc, input_precision=DOT_PRECISION)
        if NUM_ADAPTERS > 0:
            xa = _lora_down_project(xa, rows, adapter, a_ptr, expert, k, stride_an, stride_ae, stride_ar, HIDDEN,
                                    BLOCK_K, NUM_ADAPTERS, RANK, RANK_PAD, DOT_DTYPE, DOT_PRECISION)
        x_ptrs += BLOCK_K
        gate_ptrs += BLOCK_K
    if NUM_ADAPTERS > 0:
        # b13's gate rows then its up rows, as in w13.
        gate_acc = _lora_up_project(gate_acc, xa, adapter, b_ptr, expert, cols, col_ok, stride_bn, stride_be,
                                    stride_brow, NUM_ADAPTERS, RANK, RANK_PAD, DOT_DTYPE, DOT_PRECISION)
        up_acc = _lora_up_project(up_acc, xa, adapter, b_ptr, expert, INTER + cols, col_ok, stride_bn, stride_be,
                                  stride_brow, NUM_ADAPTERS, RANK, RANK_PAD, DOT_DTYPE, DOT_PRECISION)
    h = gate_acc * tl.sigmoid(gate_acc) * up_acc
    h_rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(h_ptr + h_rows[:, None] * stride_h + cols[None, :], h.to(h_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _down_kernel(h_ptr, w2_ptr, slots_ptr, weights_ptr, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr,
                 num_blocks_ptr, stride_h, stride_w_expert, stride_w_row, stride_slots,
                 token_adapter_ptr, a_ptr, b_ptr, stride_an, stride_ae, stride_ar, stride_bn, stride_be, stride_brow,
                 HIDDEN: tl.constexpr, INTER: tl.constexpr, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                 NUM_ADAPTERS: tl.constexpr, RANK: tl.constexpr, RANK_PAD: tl.constexpr, SHARED: tl.constexpr):
    """Program (block, column tile): slots[pair, cols] = routing weight(pair) * (h[block rows] @ w2[cols]^T),
    each (token, slot) pair's row written exactly once (no atomics). With adapters, each row's LoRA product of w2
    is added before the routing weight. With SHARED a token's last slot is the shared expert, of weight 1."""
    n_tiles = tl.cdiv(HIDDEN, BLOCK_N)
    block, n_tile = tl.program_id(0) // n_tiles, tl.program_id(0) % n_tiles
    if block >= tl.load(num_blocks_ptr):
        return
    expert, pair, row_ok = _block_pairs(block, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr, BLOCK_M)
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = (cols < HIDDEN) | (HIDDEN % BLOCK_N == 0)
    offs_k = tl.arange(0, BLOCK_K)
    h_rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    h_ptrs = h_ptr + h_rows[:, None] * stride_h + offs_k[None, :]
    w_ptrs = w2_ptr + expert * stride_w_expert + cols[None, :] * stride_w_row + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if NUM_ADAPTERS > 0:
        adapter = _row_adapters(token_adapter_ptr, pair, row_ok, TOP_K)
        xa = tl.zeros([BLOCK_M, RANK_PAD], tl.float32)
    for k in range(0, INTER, BLOCK_K):
        k_ok = (offs_k < INTER - k) | (INTER % BLOCK_K == 0)
        # Padding rows of h were never written: masked, so no stale NaN or Inf enters the MMA.
        rows = tl.load(h_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(DOT_DTYPE)
        w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(DOT_DTYPE)
        acc = tl.dot(rows, w, acc, input_precision=DOT_PRECISION)
        if NUM_ADAPTERS > 0:
            xa = _lora_down_project(xa, rows, adapter, a_ptr, expert, k, stride_an, stride_ae, stride_ar, INTER,
                                    BLOCK_K, NUM_ADAPTERS, RANK, RANK_PAD, DOT_DTYPE, DOT_PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if NUM_ADAPTERS > 0:
        acc = _lora_up_project(acc, xa, adapter, b_ptr, expert, cols, col_ok, stride_bn, stride_be, stride_brow,
                               NUM_ADAPTERS, RANK, RANK_PAD, DOT_DTYPE, DOT_PRECISION)
    if SHARED:   # TOP_K counts the shared slot; the router's weights have TOP_K - 1 columns
        slot = pair % TOP_K
        routed = slot < TOP_K - 1
        weight = tl.load(weights_ptr + (pair // TOP_K) * (TOP_K - 1) + slot, mask=row_ok & routed, other=0.0)
        weight = tl.where(routed, weight.to(tl.float32), 1.0)
    else:
        weight = tl.load(weights_ptr + pair, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(slots_ptr + pair[:, None] * stride_slots + cols[None, :],
             (acc * weight[:, None]).to(slots_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _sum_slots_kernel(slots_ptr, out_ptr, stride_slots, stride_out, HIDDEN: tl.constexpr, TOP_K: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    """Program (token, column tile): out = sum of the token's K weighted slot rows in fp32, slot 0 first, so
    the result is deterministic and does not depend on what else is in the batch."""
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = (cols < HIDDEN) | (HIDDEN % BLOCK_H == 0)
    acc = tl.zeros([BLOCK_H], tl.float32)
    for slot in tl.static_range(TOP_K):
        acc += tl.load(slots_ptr + (token * TOP_K + slot) * stride_slots + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


def few_rows_per_expert(num_pairs: int, num_experts: int) -> bool:
    """Under ~32 rows an expert (LLaDA2.0-mini: up to ~128 tokens), the regime where the GEMMs only stream
    weights: 16-row blocks, the grouping in two Triton launches, and the shared expert worth stacking (measured on
    an H100 at 32 tokens: its own cuBLAS GEMMs and glue cost 0.46 ms a step more than one more stacked expert; at
    2,048 tokens the stacked one costs 0.34 ms more, and the Triton grouping 2.3 ms more than the torch one)."""
    return num_pairs < 32 * num_experts


def choose_tiles(num_pairs: int, num_experts: int, hidden: int, inter: int, dtype: torch.dtype,
                 lora: bool = False) -> dict:
    """Tile sizes and launch options of both GEMMs, keyed by "gate_up" and "down" (BLOCK_M is shared)."""
    # Rows per expert decide it. Up to ~32 (LLaDA2.0-mini: 32-256 tokens x 8 of 256 experts gives 1-8) an expert
    # block is one 16-row MMA (the minimum) and the GEMMs only stream weights: long K tiles and a 3-deep pipeline
    # keep bytes in flight. Beyond (2048 tokens: ~64 each) 64-row blocks let each weight tile feed a full-height
    # MMA instead of being re-read per 16 rows. fp32 (tests) takes shorter K tiles to fit shared memory.
    block_m = 16 if few_rows_per_expert(num_pairs, num_experts) else 64
    block_k = 32 if dtype == torch.float32 else (128 if block_m == 16 else 64)
    stages = 2 if dtype == torch.float32 else 3

    def fit(size: int, dim: int) -> int:  # small test shapes: no tile wider than the padded dimension
        return min(size, max(16, triton.next_power_of_2(dim)))
    common = dict(BLOCK_M=block_m, num_warps=4, num_stages=stages)
    gate_up = dict(common, BLOCK_N=fit(64, inter), BLOCK_K=fit(block_k, hidden))
    if block_m == 64 and dtype != torch.float32 and not lora:
        # bench/moe_tiles.py on an H100 at 2,048 tokens: 128 columns and a 4-deep pipeline, 1.22x the read
        # ceiling against 1.29x and more (adapters keep the smaller tile: their accumulators need the room).
        gate_up.update(BLOCK_N=fit(128, inter), num_stages=4)
    return {"gate_up": gate_up,
            "down": dict(common, BLOCK_N=fit(64 if block_m == 16 else 128, hidden), BLOCK_K=fit(block_k, inter))}


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
              topk_weights: torch.Tensor, lora: MoELoRA | None = None, shared: bool = False) -> torch.Tensor:
    """Same contract as moe_reference: x [T, H]; w13 [E, 2I, H] (gate rows then up rows); w2 [E, H, I];
    topk_ids/topk_weights [T, K]. Returns [T, H] in x.dtype. Launch sizes depend on shapes only.
    `lora`: run-time adapters per token row, what moe_reference's `delta` adds (see MoELoRA).
    `shared`: the last expert of w13 and w2 is a shared expert every token also goes through with weight 1 (the
    router's ids name the others), so the layer's shared MLP rides in the same grouped GEMMs."""
    if shared and lora is not None:
        raise ValueError("run-time LoRA adapters cover the routed experts only: run the shared expert apart")
    x = x if x.stride(-1) == 1 else x.contiguous()
    w13 = w13 if w13.stride(-1) == 1 else w13.contiguous()
    w2 = w2 if w2.stride(-1) == 1 else w2.contiguous()
    (num_tokens, routed_k), (num_experts, double_inter, hidden) = topk_ids.shape, w13.shape
    top_k = routed_k + shared   # slots per token
    inter, num_pairs = double_inter // 2, num_tokens * top_k
    out = torch.empty(num_tokens, hidden, dtype=x.dtype, device=x.device)
    if num_pairs == 0:
        return out.zero_()
    tiles = choose_tiles(num_pairs, num_experts, hidden, inter, x.dtype, lora is not None)
    block_m = tiles["gate_up"]["BLOCK_M"]
    # (order, bounds, block_ends, block_experts, num_blocks)
    if shared or few_rows_per_expert(num_pairs, num_experts):   # only the Triton grouping knows the shared slot
        routing = align_by_expert_triton(topk_ids, num_experts, block_m, shared)
    else:   # its one-hot scans grow with the pairs: torch's sort is faster here
        routing = align_by_expert(topk_ids, num_experts, block_m)
    max_blocks = len(routing[3])
    # Triton's interpreter (3.6 to 3.9) multiplies bf16 as raw uint16 bits, so CPU runs do their MMAs in fp32.
    dot_dtype = tl.float32 if x.device.type == "cpu" else _TL_DTYPES[x.dtype]
    precision = "ieee" if dot_dtype == tl.float32 else "tf32"
    h = torch.empty(max_blocks * block_m, inter, dtype=x.dtype, device=x.device)
    (lora13, rank13), (lora2, rank2) = lora_args(lora, 0, x), lora_args(lora, 1, x)
    gate_up = tiles["gate_up"]
    _gate_up_kernel[(max_blocks * triton.cdiv(inter, gate_up["BLOCK_N"]),)](
        x, w13, h, *routing, x.stride(0), w13.stride(0), w13.stride(1), h.stride(0), *lora13,
        HIDDEN=hidden, INTER=inter, TOP_K=top_k, DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, **gate_up, **rank13)
    # One row per (token, slot) in x.dtype: each written once, then summed in fp32 in a fixed order.
    slots = torch.empty(num_pairs, hidden, dtype=x.dtype, device=x.device)
    down = tiles["down"]
    _down_kernel[(max_blocks * triton.cdiv(hidden, down["BLOCK_N"]),)](
        h, w2, slots, topk_weights.reshape(-1).contiguous(), *routing, h.stride(0), w2.stride(0), w2.stride(1),
        slots.stride(0), *lora2, HIDDEN=hidden, INTER=inter, TOP_K=top_k, DOT_DTYPE=dot_dtype,
        DOT_PRECISION=precision, SHARED=shared, **down, **rank2)
    block_h = min(1024, triton.next_power_of_2(hidden))
    _sum_slots_kernel[(num_tokens, triton.cdiv(hidden, block_h))](
        slots, out, slots.stride(0), out.stride(0), HIDDEN=hidden, TOP_K=top_k, BLOCK_H=block_h, num_warps=4)
    return out
