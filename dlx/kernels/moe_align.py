"""Grouping of a fused MoE's (token, slot) pairs by expert, in whole BLOCK_M-row blocks: the torch version (the
reference) and two Triton launches that replace its ten small kernels inside every MoE layer of a step."""
import torch
import triton
import triton.language as tl


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, ...]:
    """Group the T*K (token, slot) pairs by expert, each expert's rows padded to whole BLOCK_M-row blocks, with
    torch ops whose sizes depend on shapes only: nothing waits for the host, so a CUDA graph can hold it.
    Returns (order, bounds, block_ends, block_experts, num_blocks):
      order [T*K]         pair indices (token * K + slot, int64) sorted by expert, stable;
      bounds [E+1]        expert e's pairs are order[bounds[e]:bounds[e+1]];
      block_ends [E]      blocks of experts 0..e together (the padded layout: expert e owns blocks
                          block_ends[e] - cdiv(count, BLOCK_M) .. block_ends[e] - 1);
      block_experts [B]   the expert of each block, B the worst case; past the valid blocks it is E;
      num_blocks [1]      how many blocks are valid (a device tensor; programs beyond it return at once).
    Padding is virtual: a block's kernels find their pairs from bounds, so no padded index array is built."""
    num_pairs = topk_ids.numel()
    sorted_experts, order = topk_ids.reshape(-1).to(torch.int32).sort(stable=True)
    experts = torch.arange(num_experts + 1, dtype=torch.int32, device=topk_ids.device)
    bounds = torch.searchsorted(sorted_experts, experts, out_int32=True)
    blocks = (bounds.diff() + (block_m - 1)).div_(block_m, rounding_mode="floor")
    block_ends = blocks.cumsum(0, dtype=torch.int32)
    block_starts = torch.arange(max_blocks(num_pairs, num_experts, block_m), dtype=torch.int32,
                                device=topk_ids.device)
    block_experts = torch.searchsorted(block_ends, block_starts, right=True, out_int32=True)
    return order, bounds, block_ends, block_experts, block_ends[-1:]


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Blocks of the worst case: every non-empty expert wastes fewer than BLOCK_M rows and at most
    min(E, pairs) experts are non-empty."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m


@triton.jit
def _pair_experts(ids_ptr, pair, valid, TOP_K: tl.constexpr, SHARED: tl.constexpr, NUM_EXPERTS: tl.constexpr):
    """The expert of each pair; with SHARED every token has a last slot (K + 1 slots) on the last expert, the
    shared expert stacked after the routed ones (routed ids never name it)."""
    if SHARED:
        token, slot = pair // (TOP_K + 1), pair % (TOP_K + 1)
        routed = tl.load(ids_ptr + token * TOP_K + slot, mask=valid & (slot < TOP_K), other=0)
        return tl.where(slot < TOP_K, routed, NUM_EXPERTS - 1)
    return tl.load(ids_ptr + pair, mask=valid, other=0)


@triton.jit
def _count_kernel(ids_ptr, counts_ptr, num_pairs, TOP_K: tl.constexpr, SHARED: tl.constexpr,
                  NUM_EXPERTS: tl.constexpr, EXPERTS_PAD: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr):
    """Program c: how many pairs of chunk c go to each expert, into counts[c]."""
    chunk = tl.program_id(0)
    experts = tl.arange(0, EXPERTS_PAD)
    counts = tl.zeros([EXPERTS_PAD], tl.int32)
    for sub in range(0, CHUNK, SUB):
        pair = chunk * CHUNK + sub + tl.arange(0, SUB)
        valid = pair < num_pairs
        expert = _pair_experts(ids_ptr, pair, valid, TOP_K, SHARED, NUM_EXPERTS)
        hit = (expert[:, None] == experts[None, :]) & valid[:, None]
        counts += tl.sum(hit.to(tl.int32), 0)
    tl.store(counts_ptr + chunk * NUM_EXPERTS + experts, counts, mask=experts < NUM_EXPERTS)


@triton.jit
def _place_kernel(ids_ptr, counts_ptr, order_ptr, bounds_ptr, block_ends_ptr, block_experts_ptr, num_pairs,
                  num_chunks, max_blocks, TOP_K: tl.constexpr, SHARED: tl.constexpr, NUM_EXPERTS: tl.constexpr,
                  EXPERTS_PAD: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program c: each pair of chunk c goes to order[bounds[e] + (e's pairs before it)], so order is the stable
    sort; program 0 also writes bounds, block_ends and block_experts."""
    chunk = tl.program_id(0)
    experts = tl.arange(0, EXPERTS_PAD)
    real = experts < NUM_EXPERTS
    totals = tl.zeros([EXPERTS_PAD], tl.int32)
    before = tl.zeros([EXPERTS_PAD], tl.int32)   # pairs of each expert in the chunks before this one
    for c in range(0, num_chunks):
        counts = tl.load(counts_ptr + c * NUM_EXPERTS + experts, mask=real, other=0)
        totals += counts
        before += tl.where(c < chunk, counts, 0)
    starts = tl.cumsum(totals, 0) - totals
    cursor = starts + before
    for sub in range(0, CHUNK, SUB):
        pair = chunk * CHUNK + sub + tl.arange(0, SUB)
        valid = pair < num_pairs
        expert = _pair_experts(ids_ptr, pair, valid, TOP_K, SHARED, NUM_EXPERTS)
        hit = ((expert[:, None] == experts[None, :]) & valid[:, None]).to(tl.int32)
        rank = tl.sum(tl.cumsum(hit, 0) * hit, 1) - 1   # earlier pairs of the same expert in this sub-chunk
        place = tl.sum(hit * cursor[None, :], 1) + rank
        tl.store(order_ptr + place, pair.to(tl.int64), mask=valid)
        cursor += tl.sum(hit, 0)
    if chunk == 0:
        tl.store(bounds_ptr + experts, starts, mask=real)
        tl.store(bounds_ptr + NUM_EXPERTS, num_pairs)
        block_ends = tl.cumsum((totals + BLOCK_M - 1) // BLOCK_M, 0)
        tl.store(block_ends_ptr + experts, block_ends, mask=real)
        for first in range(0, max_blocks, SUB):
            block = first + tl.arange(0, SUB)
            owner = tl.sum(((block_ends[None, :] <= block[:, None]) & real[None, :]).to(tl.int32), 1)
            tl.store(block_experts_ptr + block, owner, mask=block < max_blocks)


def align_by_expert_triton(topk_ids: torch.Tensor, num_experts: int, block_m: int,
                           shared: bool = False) -> tuple[torch.Tensor, ...]:
    """align_by_expert's result in two launches whose sizes depend on shapes only. topk_ids [T, K] (routed
    experts below num_experts); with `shared`, every token gains a last slot on expert num_experts - 1 (the
    shared expert), so pairs are token * (K + 1) + slot."""
    num_tokens, top_k = topk_ids.shape
    ids = topk_ids if topk_ids.is_contiguous() else topk_ids.contiguous()
    num_pairs = num_tokens * (top_k + shared)
    chunk = min(1024, max(32, triton.next_power_of_2(triton.cdiv(num_pairs, 32))))
    num_chunks = triton.cdiv(num_pairs, chunk)
    device = topk_ids.device
    counts = torch.empty(num_chunks, num_experts, dtype=torch.int32, device=device)
    order = torch.empty(num_pairs, dtype=torch.int64, device=device)
    bounds = torch.empty(num_experts + 1, dtype=torch.int32, device=device)
    block_ends = torch.empty(num_experts, dtype=torch.int32, device=device)
    block_experts = torch.empty(max_blocks(num_pairs, num_experts, block_m), dtype=torch.int32, device=device)
    options = dict(TOP_K=top_k, SHARED=shared, NUM_EXPERTS=num_experts,
                   EXPERTS_PAD=triton.next_power_of_2(num_experts), CHUNK=chunk, SUB=32)
    _count_kernel[(num_chunks,)](ids, counts, num_pairs, **options, num_warps=4)
    _place_kernel[(num_chunks,)](ids, counts, order, bounds, block_ends, block_experts, num_pairs, num_chunks,
                                 len(block_experts), **options, BLOCK_M=block_m, num_warps=4)
    return order, bounds, block_ends, block_experts, block_ends[-1:]
