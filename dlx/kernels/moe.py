"""Mixture-of-experts compute: routed gated experts (SwiGLU unless told) over stacked weights, weighted and summed.
The PyTorch path here loops over the experts that received tokens; fused kernels plug in beside it."""
from collections.abc import Callable

import torch
import torch.nn.functional as F


def moe_reference(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                  topk_weights: torch.Tensor, activation: Callable[[torch.Tensor], torch.Tensor] = F.silu
                  ) -> torch.Tensor:
    """x [T, H]; w13 [E, 2I, H] (gate rows then up rows); w2 [E, H, I]; topk_ids/topk_weights [T, K];
    each expert computes down(activation(gate) * up). The weighted sum runs in the weights' dtype (fp32)."""
    num_tokens, top_k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    routed = x[order // top_k]
    out = torch.empty(num_tokens * top_k, w2.shape[1], dtype=x.dtype, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        rows = slice(start, start + count)
        gate, up = F.linear(routed[rows], w13[expert]).chunk(2, dim=-1)
        out[rows] = F.linear(activation(gate) * up, w2[expert])
        start += count
    unsorted = torch.empty_like(out)
    unsorted[order] = out
    weighted = unsorted.view(num_tokens, top_k, -1).to(topk_weights.dtype) * topk_weights[..., None]
    return weighted.sum(dim=1).to(x.dtype)
