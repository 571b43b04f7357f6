"""Tile sweep of the fused MoE's two grouped GEMMs (GPU) at one LLaDA2.0-mini layer with its shared expert stacked:
each kernel's time per tile choice against the bytes it must read, to pick choose_tiles' values from measurements."""
import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlx.kernels import moe_triton  # noqa: E402
from kernel_bench import kernel_breakdown  # noqa: E402
from moe_layer import EXPERTS, MOE_HIDDEN, MOE_INTER, TOP_K  # noqa: E402
from forward import read_bandwidth  # noqa: E402  (bytes per second of a kernel that only reads 4 GiB)

SWEEPS = {   # tokens → (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) choices, each GEMM swept over all
    32: itertools.product((16,), (32, 64, 128), (64, 128, 256), (3, 4, 5), (4,)),
    2048: itertools.product((32, 64, 128), (64, 128), (64, 128), (3, 4), (4, 8)),
}


def layer(tokens: int, seed: int = 0) -> tuple:
    """Inputs of fused_moe(..., shared=True): bf16 weights of 256 routed + 1 shared expert, balanced routing."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    bf16 = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
    w13 = torch.randn(EXPERTS + 1, 2 * MOE_INTER, MOE_HIDDEN, **bf16).mul_(MOE_HIDDEN ** -0.5)
    w2 = torch.randn(EXPERTS + 1, MOE_HIDDEN, MOE_INTER, **bf16).mul_(MOE_INTER ** -0.5)
    x = torch.randn(tokens, MOE_HIDDEN, **bf16)
    ids = torch.multinomial(torch.ones(tokens, EXPERTS, device="cuda"), TOP_K, generator=gen).to(torch.int32)
    weights = torch.rand(tokens, TOP_K, device="cuda", generator=gen) + 0.1
    return x, w13, w2, ids, weights / weights.sum(-1, keepdim=True)


def sweep(tokens: int, bandwidth: float, top: int) -> None:
    x, w13, w2, ids, weights = layer(tokens)
    touched = ids.unique().numel() + 1
    expert_bytes = {"gate_up": w13[0].numel() * 2, "down": w2[0].numel() * 2}
    current = moe_triton.choose_tiles(tokens * (TOP_K + 1), EXPERTS + 1, MOE_HIDDEN, MOE_INTER, torch.bfloat16)
    results = {"gate_up": [], "down": []}
    original = moe_triton.choose_tiles
    for block_m, block_n, block_k, stages, warps in SWEEPS[tokens]:
        tiles = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_stages=stages, num_warps=warps)
        moe_triton.choose_tiles = lambda *args, t=tiles: {"gate_up": t, "down": t}
        try:
            times = kernel_breakdown(lambda: moe_triton.fused_moe(x, w13, w2, ids, weights, shared=True), iters=8)
        except Exception as exc:   # noqa: BLE001 (a tile that does not fit shared memory: skip it)
            print(f"skipped {tiles}: {type(exc).__name__}", flush=True)
            continue
        finally:
            moe_triton.choose_tiles = original
        for kernel in results:
            ms = next(v for k, v in times.items() if f"_{kernel}_kernel" in k)
            results[kernel].append((ms, tiles))
    print(f"\n{tokens} tokens x top-{TOP_K} + the shared expert, {touched} experts touched; read ceiling "
          f"{bandwidth / 1e12:.2f} TB/s; current choice {current}\n")
    print("| GEMM | µs | ÷ read ceiling | BLOCK_M | BLOCK_N | BLOCK_K | stages | warps |")
    print("|---|---|---|---|---|---|---|---|")
    for kernel, rows in results.items():
        ceiling_ms = touched * expert_bytes[kernel] / bandwidth * 1e3
        for ms, t in sorted(rows, key=lambda r: r[0])[:top]:
            print(f"| {kernel} | {ms * 1e3:.1f} | {ms / ceiling_ms:.2f}× | {t['BLOCK_M']} | {t['BLOCK_N']} | "
                  f"{t['BLOCK_K']} | {t['num_stages']} | {t['num_warps']} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="32,2048")
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()
    bandwidth = read_bandwidth()
    print(f"Fused MoE tiles on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        sweep(tokens, bandwidth, args.top)


if __name__ == "__main__":
    main()
