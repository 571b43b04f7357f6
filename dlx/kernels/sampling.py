"""Greedy sampling reduction: per row the argmax token (one id excluded, lowest id among equal maxima) and its
softmax probability, streamed once over the vocabulary with an online max and sum of exp; softmax is never stored."""
# Annotations stay strings: the kernels below name tl.constexpr before Triton is imported (lazily).
from __future__ import annotations

import torch

from dlx.kernels import KERNEL_IMPLS
from dlx.kernels.device import sm_count
from dlx.kernels.lazy_jit import jit_on_first_use

MIN_SPLIT_ELEMENTS = 8192   # a vocabulary split shorter than this costs more to combine than it gains
MAX_SPLITS = 32


def argmax_prob_reference(logits: torch.Tensor, exclude_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the sampler does for a greedy request: fp32, the excluded id at -inf, softmax, argmax (first
    maximal probability), the probability gathered. logits [R, V] is left untouched."""
    logits = logits.to(torch.float32, copy=True)
    if exclude_id is not None:
        logits[:, exclude_id] = float("-inf")
    probs = logits.softmax(-1)
    ids = probs.argmax(-1)
    return ids, probs.gather(-1, ids[:, None]).squeeze(-1)


def _argmax_prob_split(logits_ptr, ids_ptr, probs_ptr, part_max_ptr, part_sum_ptr, part_id_ptr,
                       vocab, chunk, exclude_id, stride_row, num_splits,
                       BLOCK_V: tl.constexpr, SPLIT: tl.constexpr):
    """Triton kernel body. Program (row, split) streams vocabulary ids [split * chunk, +chunk). Each lane keeps
    its own running max, sum of exp(x - max) and first id of that max, so the loop has no cross-lane step.
    One exp per element: of exp(x - new_max) and exp(old_max - new_max) one is exp(0) = 1."""
    log2e = 1.4426950408889634
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    lo = split * chunk
    hi = tl.minimum(lo + chunk, vocab)
    offs = tl.arange(0, BLOCK_V)
    # A finite floor, not -inf: lanes that only ever see -inf (the excluded id, the tail) never compute
    # inf - inf, and their exp(-inf - floor) = 0 leaves the sum at 0.
    run_max = tl.full([BLOCK_V], -1.0e30, tl.float32)
    run_sum = tl.zeros([BLOCK_V], tl.float32)
    run_id = tl.zeros([BLOCK_V], tl.int32)
    base = logits_ptr + row * stride_row
    for start in range(lo, hi, BLOCK_V):
        ids = start + offs
        x = tl.load(base + ids, mask=ids < hi, other=float("-inf")).to(tl.float32)
        x = tl.where(ids == exclude_id, float("-inf"), x)
        better = x > run_max   # strict: a lane keeps the first (lowest) id of its maximum
        new_max = tl.maximum(run_max, x)
        scale = tl.exp2((tl.minimum(run_max, x) - new_max) * log2e)
        run_sum = tl.where(better, run_sum * scale + 1.0, run_sum + scale)
        run_id = tl.where(better, ids, run_id)
        run_max = new_max
    best = tl.max(run_max, axis=0)
    best_id = tl.min(tl.where(run_max == best, run_id, vocab), axis=0)   # lowest id among lanes at the max
    total = tl.sum(run_sum * tl.exp2((run_max - best) * log2e), axis=0)
    if SPLIT:
        tl.store(part_max_ptr + row * num_splits + split, best)
        tl.store(part_sum_ptr + row * num_splits + split, total)
        tl.store(part_id_ptr + row * num_splits + split, best_id)
    else:
        tl.store(ids_ptr + row, best_id.to(tl.int64))
        tl.store(probs_ptr + row, 1.0 / total)   # exp(best - best) / total


def _argmax_prob_combine(part_max_ptr, part_sum_ptr, part_id_ptr, ids_ptr, probs_ptr, num_splits, vocab,
                         SPLITS_PAD: tl.constexpr):
    """Triton kernel body, one program per row: merge the splits' (max, sum, id) as the lanes were merged."""
    log2e = 1.4426950408889634
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, SPLITS_PAD)
    ok = s < num_splits
    part_max = tl.load(part_max_ptr + row * num_splits + s, mask=ok, other=-1.0e30)
    part_sum = tl.load(part_sum_ptr + row * num_splits + s, mask=ok, other=0.0)
    part_id = tl.load(part_id_ptr + row * num_splits + s, mask=ok, other=vocab)
    best = tl.max(part_max, axis=0)
    best_id = tl.min(tl.where(part_max == best, part_id, vocab), axis=0)
    total = tl.sum(part_sum * tl.exp2((part_max - best) * log2e), axis=0)
    tl.store(ids_ptr + row, best_id.to(tl.int64))
    tl.store(probs_ptr + row, 1.0 / total)


def choose_num_splits(rows: int, vocab: int, num_sms: int) -> int:
    """Split each row's vocabulary only while rows alone give fewer than two programs per SM (one program
    streaming per SM keeps too few loads in flight to reach full bandwidth); splits of ≥ MIN_SPLIT_ELEMENTS."""
    if rows >= 2 * num_sms:
        return 1
    return max(1, min(-(-2 * num_sms // rows), vocab // MIN_SPLIT_ELEMENTS, MAX_SPLITS))


def argmax_prob_triton(logits: torch.Tensor, exclude_id: int | None, *, block_v: int | None = None,
                       num_splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as argmax_prob_reference (logits [R, V], fp32 or bf16) without a device sync: ids int64,
    probabilities fp32. block_v / num_splits override the tile width and the vocabulary split count."""
    split_kernel, combine_kernel = jit_on_first_use(_argmax_prob_split), jit_on_first_use(_argmax_prob_combine)
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    rows, vocab = logits.shape
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    probs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return ids, probs
    exclude = exclude_id % vocab if exclude_id is not None else -1   # negative ids count from the end
    block_v = block_v or min(4096, triton.next_power_of_2(vocab))
    wanted = num_splits or choose_num_splits(rows, vocab, sm_count(logits.device))
    chunk = triton.cdiv(triton.cdiv(vocab, wanted), block_v) * block_v   # whole tiles: only the last is ragged
    splits = triton.cdiv(vocab, chunk)
    num_warps = 8 if block_v >= 4096 else 4
    if splits == 1:
        split_kernel[(rows, 1)](logits, ids, probs, probs, probs, ids, vocab, chunk, exclude, logits.stride(0), 1,
                                BLOCK_V=block_v, SPLIT=False, num_warps=num_warps)
        return ids, probs
    stats = torch.empty(2, rows, splits, dtype=torch.float32, device=logits.device)
    part_id = torch.empty(rows, splits, dtype=torch.int32, device=logits.device)
    split_kernel[(rows, splits)](logits, ids, probs, stats[0], stats[1], part_id, vocab, chunk, exclude,
                                 logits.stride(0), splits, BLOCK_V=block_v, SPLIT=True, num_warps=num_warps)
    combine_kernel[(rows,)](stats[0], stats[1], part_id, ids, probs, splits, vocab,
                            SPLITS_PAD=triton.next_power_of_2(splits), num_warps=1)
    return ids, probs


def argmax_prob(logits: torch.Tensor, exclude_id: int | None, impl: str = "naive") -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy (token id, probability) per row by `impl`: "naive" is argmax_prob_reference, "triton" the kernel.
    Ties: both return the lowest id among equal maxima. They differ only where two logits within a few fp32
    ulps of each other round to the same softmax probability: the reference (argmax over probabilities) then
    takes the lower id, the kernel (argmax over logits) the larger logit; both probabilities agree to ~1e-7.
    Rows that are all -inf or hold NaN are unspecified in the kernel (the reference gives NaN)."""
    if impl == "naive":
        return argmax_prob_reference(logits, exclude_id)
    if impl == "triton":
        return argmax_prob_triton(logits, exclude_id)
    raise ValueError(f"unknown sampling impl {impl!r}; expected one of {KERNEL_IMPLS}")
