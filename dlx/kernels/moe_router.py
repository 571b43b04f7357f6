"""Expert choice for group-limited routers (LLaDA2's sigmoid router): the PyTorch reference and a Triton kernel
doing scores, bias, group choice, top-k and weight normalisation in one program per token, on fp32 logits."""
# Annotations stay strings: the kernel body names tl.constexpr before Triton is imported (lazily, because the
# model imports the reference from here on CPU-only machines too).
from __future__ import annotations

import torch

from dlx.kernels.lazy_jit import jit_on_first_use


def route_reference(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_group: int, topk_group: int,
                    scaling: float, score_function: str) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] fp32 → (expert ids [T, K] int64, weights [T, K] fp32). Experts are chosen on
    scores + bias inside the topk_group groups with the best top-2 sums; weights are the unbiased scores of
    the chosen experts, normalised (K > 1) and scaled. Torch ops only, none of which waits for the host."""
    scores = torch.sigmoid(logits) if score_function == "sigmoid" else torch.softmax(logits, -1)
    choice = scores if bias is None else scores + bias
    if n_group > 1 and topk_group < n_group:
        grouped = choice.view(len(logits), n_group, -1)
        group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        best_groups = group_score.topk(topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)
        # expand, not repeat_interleave: a broadcast view whose size never depends on tensor values
        keep = keep[:, :, None].expand(grouped.shape).reshape(choice.shape)
        choice = choice.masked_fill(~keep, float("-inf"))
    topk_ids = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(1, topk_ids)
    if top_k > 1:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return topk_ids, weights * scaling


def _route_rows(logits_ptr, bias_ptr, ids_ptr, weights_ptr, stride_logits, scaling,
                  GROUP_SIZE: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr,
                  TOP_K: tl.constexpr, GROUPS_PAD: tl.constexpr, GROUP_PAD: tl.constexpr, K_PAD: tl.constexpr,
                  HAS_BIAS: tl.constexpr, SOFTMAX: tl.constexpr):
    """One token: its expert row is held as [group, member]; repeated argmax (lowest index on ties)
    picks the groups, then the experts."""
    token = tl.program_id(0).to(tl.int64)
    group = tl.arange(0, GROUPS_PAD)
    member = tl.arange(0, GROUP_PAD)[None, :]
    expert = group[:, None] * GROUP_SIZE + member
    real = (group[:, None] < N_GROUP) & (member < GROUP_SIZE)
    logits = tl.load(logits_ptr + token * stride_logits + expert, mask=real, other=float("-inf"))
    if SOFTMAX:
        exps = tl.exp(logits - tl.max(tl.max(logits, 1), 0))
        scores = exps / tl.sum(tl.sum(exps, 1), 0)
    else:
        scores = tl.sigmoid(logits)
    choice = scores
    if HAS_BIAS:
        choice += tl.load(bias_ptr + expert, mask=real, other=0.0)
    choice = tl.where(real, choice, float("-inf"))
    if TOPK_GROUP < N_GROUP:
        best = tl.max(choice, 1)
        group_score = best
        if GROUP_SIZE > 1:  # add the runner-up: one copy of the maximum is taken out, ties keep the other
            first = tl.min(tl.where(choice == best[:, None], member, GROUP_PAD), 1)
            group_score += tl.max(tl.where(member == first[:, None], float("-inf"), choice), 1)
        group_score = tl.where(group < N_GROUP, group_score, float("-inf"))
        keep = group < 0
        for _ in tl.static_range(TOPK_GROUP):
            top = tl.max(group_score, 0)
            pick = tl.min(tl.where(group_score == top, group, GROUPS_PAD), 0)
            keep = keep | (group == pick)
            group_score = tl.where(group == pick, float("-inf"), group_score)
        choice = tl.where(keep[:, None], choice, float("-inf"))
    slot = tl.arange(0, K_PAD)
    ids = tl.zeros([K_PAD], tl.int32)
    weights = tl.zeros([K_PAD], tl.float32)
    for k in tl.static_range(TOP_K):
        top = tl.max(tl.max(choice, 1), 0)
        pick = tl.min(tl.min(tl.where(choice == top, expert, GROUPS_PAD * GROUP_PAD), 1), 0)
        score = tl.sum(tl.sum(tl.where(expert == pick, scores, 0.0), 1), 0)
        ids = tl.where(slot == k, pick, ids)
        weights = tl.where(slot == k, score, weights)
        choice = tl.where(expert == pick, float("-inf"), choice)
    if TOP_K > 1:
        weights = weights / (tl.sum(weights, 0) + 1e-20)
    tl.store(ids_ptr + token * TOP_K + slot, ids, mask=slot < TOP_K)
    tl.store(weights_ptr + token * TOP_K + slot, weights * scaling, mask=slot < TOP_K)


def route_triton(logits: torch.Tensor, bias: torch.Tensor | None, top_k: int, n_group: int, topk_group: int,
                 scaling: float, score_function: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as route_reference except that ids are int32 (what fused_moe sorts); ties may come out
    in another order, so compare ids as sets per token."""
    kernel = jit_on_first_use(_route_rows)
    logits = logits.float() if logits.stride(-1) == 1 else logits.float().contiguous()
    num_tokens, num_experts = logits.shape
    grouped = n_group > 1 and topk_group < n_group
    groups = n_group if grouped else 1
    ids = torch.empty(num_tokens, top_k, dtype=torch.int32, device=logits.device)
    weights = torch.empty(num_tokens, top_k, dtype=torch.float32, device=logits.device)
    if num_tokens == 0:
        return ids, weights
    group_size = num_experts // groups
    kernel[(num_tokens,)](
        logits, logits if bias is None else bias.float(), ids, weights, logits.stride(0), scaling,
        GROUP_SIZE=group_size, N_GROUP=groups, TOPK_GROUP=topk_group if grouped else 1, TOP_K=top_k,
        GROUPS_PAD=triton.next_power_of_2(groups), GROUP_PAD=triton.next_power_of_2(group_size),
        K_PAD=triton.next_power_of_2(top_k), HAS_BIAS=bias is not None, SOFTMAX=score_function != "sigmoid",
        num_warps=1 if num_experts <= 64 else 2)
    return ids, weights
