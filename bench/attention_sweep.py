"""Attention launch-option sweep on the GPU: for each (requests, context) case of the kernel benchmark,
times every tile shape x split count and prints the best ones against the measured copy bandwidth."""
import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_bench import attention_batch, copy_bandwidth, kernel_breakdown, kernel_ms, time_ms  # noqa: E402

from dlx.kernels import attention_triton  # noqa: E402

CASES = [(1, 4096), (1, 8192), (8, 4096), (8, 8192), (64, 4096), (64, 8192), (64, 1024), (8, 1024)]
TILES = [dict(BLOCK_Q=bq, BLOCK_N=bn, num_warps=w, num_stages=s)
         for bq, bn, w, s in itertools.product((32, 16), (32, 64, 128), (4, 8), (2, 3, 4))]
# 32-query tiles (128 rows: one program per SM), and 16-query tiles small enough for two programs per SM,
# whose starts and ends could then overlap (the per-program cost of docs/benchmarks.md).
QUICK_TILES = ([dict(BLOCK_Q=32, BLOCK_N=n, num_warps=w, num_stages=s)
                for n, w, s in itertools.product((64, 128), (4, 8), (2, 3, 4))]
               + [dict(BLOCK_Q=16, BLOCK_N=64, num_warps=w, num_stages=s)
                  for w, s in itertools.product((4, 8), (2, 3))])
PREFETCH = {"off": (False,), "on": (True,), "both": (False, True)}
SPLITS = (1, 2, 3, 4, 8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--cases", default=",".join(f"{r}x{c}" for r, c in CASES),
                        help="requests x context pairs, e.g. 8x4096,8x8192")
    parser.add_argument("--prefetch", choices=sorted(PREFETCH), default="both",
                        help="PREFETCH_PAGES launch option: page numbers loaded one key tile ahead")
    parser.add_argument("--quick", action="store_true",
                        help=f"only the {len(QUICK_TILES)} launch shapes of QUICK_TILES (the likely winners)")
    parser.add_argument("--block-q", default=None, metavar="Q,Q",
                        help="query tokens per tile to sweep instead (--block-n key tiles, 4/8 warps, 2-4 stages): "
                             "short tiles give split grids more, lighter programs that read each key tile from "
                             "L2 more than once")
    parser.add_argument("--block-n", default="64", metavar="N,N", help="key tiles to sweep with --block-q")
    parser.add_argument("--splits", default=",".join(map(str, SPLITS)), metavar="S,S", help="split counts to sweep")
    options = parser.parse_args()
    cases = [tuple(int(x) for x in case.split("x")) for case in options.cases.split(",")]
    split_counts = [int(s) for s in options.splits.split(",")]
    shapes = QUICK_TILES if options.quick else TILES
    if options.block_q:
        shapes = [dict(BLOCK_Q=int(bq), BLOCK_N=int(bn), num_warps=w, num_stages=s) for bq, bn, w, s in
                  itertools.product(options.block_q.split(","), options.block_n.split(","), (4, 8), (2, 3, 4))]
    tiles = [{**tile, "PREFETCH_PAGES": p} for tile in shapes for p in PREFETCH[options.prefetch]]
    copy_rate = copy_bandwidth()
    torch.cuda.empty_cache()
    print(f"# attention sweep on {torch.cuda.get_device_name()}, copy bandwidth {copy_rate / 1e12:.2f} TB/s")
    for num_requests, context_len in cases:
        args, bytes_moved = attention_batch(num_requests, context_len)
        reference = attention_triton.paged_attention_triton(*args)
        auto_ms = time_ms(lambda: attention_triton.paged_attention_triton(*args), iters=10)
        results = []
        for tile, splits in itertools.product(tiles, split_counts):
            if splits * tile["BLOCK_N"] > context_len:   # every split keeps at least one whole key tile
                continue
            def run():
                return attention_triton.paged_attention_triton(*args, num_splits=splits, tile=tile)
            try:
                error = (run().float() - reference.float()).abs().max().item()
                ms = time_ms(run, iters=10)
            except Exception as exc:  # out of shared memory / registers for this shape
                print(f"  skip {tile} splits {splits}: {type(exc).__name__}")
                continue
            results.append((ms, splits, tile, error))
        results.sort(key=lambda r: r[0])
        print(f"\n## {num_requests} requests x context {context_len} ({bytes_moved / 1e6:.1f} MB): "
              f"current heuristic {auto_ms:.4f} ms = {100 * bytes_moved / (auto_ms * 1e-3) / copy_rate:.0f}% copy")
        parts = kernel_breakdown(lambda: attention_triton.paged_attention_triton(*args))
        print("  kernels of the heuristic's launch: "
              + ", ".join(f"{name} {ms * 1e3:.1f} us" for name, ms in parts.items()))
        for ms, splits, tile, error in results[:options.top]:
            busy = kernel_ms(lambda: attention_triton.paged_attention_triton(*args, num_splits=splits, tile=tile))
            print(f"  {ms:.4f} ms  {100 * bytes_moved / (ms * 1e-3) / copy_rate:5.1f}%  kernels {busy:.4f} ms "
                  f"{100 * bytes_moved / (busy * 1e-3) / copy_rate:5.1f}%  splits {splits:2d}  {tile}  err {error:.1e}")


if __name__ == "__main__":
    main()
