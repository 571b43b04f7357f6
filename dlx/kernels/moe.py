"""Mixture-of-experts compute: routed gated experts (SwiGLU unless told) over stacked weights, weighted and summed.
The PyTorch path here loops over the experts that received tokens; fused kernels plug in beside it."""
from collections.abc import Callable

import torch
import torch.nn.functional as F


def moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                  topk_weights: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] = F.silu,
                  delta: Callable[[int, int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                  ) -> torch.Tensor:
    """x [T, H]; w13 [E, 2I, H] (gate rows then up rows); w2 [E, H, I]; topk_ids/topk_weights [T, K];
    each expert computes down(activation(gate) * up). The weighted sum runs in the weights' dtype (fp32).
    `delta(part, expert, tokens, inputs)`, when given, is added to w13's (part 0) and w2's (part 1) products of
    the routed rows of batch rows `tokens` (run-time LoRA adapters)."""
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    tokens = order // top_k
    routed = x[tokens]
    out = torch.empty(num_tokens * top_k, w2.shape[1], dtype=x.dtype, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = slice(start, start + count)
        h = F.linear(routed[rows], w13[expert])
        if delta is not None:
            h = h + delta(0, expert, tokens[rows], routed[rows])
        gate, up = h.chunk(2, dim=-1)
        h = activation(gate) * up
        out[rows] = F.linear(h, w2[expert]) if delta is None else \
            F.linear(h, w2[expert]) + delta(1, expert, tokens[rows], h)
        start += count
    unsorted = torch.empty_like(out)
    unsorted[order] = out
    weighted = unsorted.view(num_tokens, top_k, -1).to(topk_weights.dtype) * topk_weights[..., None]
    return weighted.sum(dim=1).to(x.dtype)
