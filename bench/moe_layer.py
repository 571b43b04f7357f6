"""Fused MoE benchmark at one LLaDA2.0-mini layer under balanced routing: the Triton path against a per-expert
Python loop and the bytes-touched roofline, plus the router. A section of bench/kernel_bench.py."""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dlx.kernels.moe import moe_reference  # noqa: E402
from dlx.kernels.moe_router import route_reference, route_triton  # noqa: E402
from dlx.kernels.moe_triton import fused_moe  # noqa: E402

MOE_HIDDEN, MOE_INTER, EXPERTS, TOP_K, N_GROUP, TOPK_GROUP, ROUTED_SCALE = 2048, 512, 256, 8, 8, 4, 2.5  # mini


def moe_section(copy_bytes_per_s: float, time_ms) -> None:
    """Prints the MoE table; time_ms is bench/kernel_bench.py's timer (events around a graph replay, L2 flushed)."""
    print(f"\n## fused MoE (LLaDA2.0-mini layer: bf16, hidden {MOE_HIDDEN}, expert width {MOE_INTER}, {EXPERTS} "
          f"experts, top-{TOP_K}; BALANCED routing: each token's {TOP_K} experts drawn uniformly without "
          "replacement, seeded; weights cold in L2)")
    print("roofline = (distinct experts x expert weight bytes + x read + out written) / copy bandwidth; loop = "
          "moe_reference (per-expert Python loop, eager); router = fp32 logits -> ids, weights (group-limited top-k)")
    header = ("tokens", "experts", "MB", "roofline ms", "fused ms", "x roofline", "fused TB/s", "loop ms",
              "router torch ms", "router triton ms", "max |err|")
    print(" | ".join(f"{h:>10}" for h in header))
    gen = torch.Generator(device="cuda").manual_seed(0)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
    w13 = torch.randn(EXPERTS, 2 * MOE_INTER, MOE_HIDDEN, **bf16).mul_(MOE_HIDDEN ** -0.5)
    w2 = torch.randn(EXPERTS, MOE_HIDDEN, MOE_INTER, **bf16).mul_(MOE_INTER ** -0.5)
    expert_bytes = (w13[0].numel() + w2[0].numel()) * w13.element_size()
    bias = 0.1 * torch.randn(EXPERTS, device="cuda", generator=gen)
    for tokens in (32, 256, 2048):
        x = torch.randn(tokens, MOE_HIDDEN, **bf16)
        ids = torch.multinomial(torch.ones(tokens, EXPERTS, device="cuda"), TOP_K, generator=gen)
        weights = torch.rand(tokens, TOP_K, device="cuda", generator=gen) + 0.1
        weights = ROUTED_SCALE * weights / weights.sum(-1, keepdim=True)
        moe_args = (x, w13, w2, ids, weights)
        touched = ids.unique().numel()
        bytes_touched = touched * expert_bytes + 2 * x.numel() * x.element_size()
        roofline_ms = bytes_touched / copy_bytes_per_s * 1e3
        fused_ms = time_ms(lambda: fused_moe(*moe_args))
        loop_ms = time_ms(lambda: moe_reference(*moe_args), iters=5, graph=False)
        error = (fused_moe(*moe_args).float() - moe_reference(*moe_args).float()).abs().max().item()
        logits = torch.randn(tokens, EXPERTS, device="cuda", generator=gen)
        route_args = (logits, bias, TOP_K, N_GROUP, TOPK_GROUP, ROUTED_SCALE, "sigmoid")
        router_torch_ms = time_ms(lambda: route_reference(*route_args))
        router_triton_ms = time_ms(lambda: route_triton(*route_args))
        row = (tokens, touched, f"{bytes_touched / 1e6:.0f}", f"{roofline_ms:.4f}", f"{fused_ms:.4f}",
               f"{fused_ms / roofline_ms:.2f}x", f"{bytes_touched / (fused_ms * 1e-3) / 1e12:.2f}", f"{loop_ms:.3f}",
               f"{router_torch_ms:.4f}", f"{router_triton_ms:.4f}", f"{error:.2e}")
        print(" | ".join(f"{str(c):>10}" for c in row), flush=True)
