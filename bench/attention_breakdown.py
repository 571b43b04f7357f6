"""Where a split-KV attention call spends its GPU time: the split kernel and the combine kernel, timed apart
by the profiler at the kernel benchmark's shapes (bench/kernel_bench.py), for the cases below target."""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernel_bench import attention_batch, busy_ms, copy_bandwidth, per_kernel_ms, profiled_calls  # noqa: E402

from dlx.kernels import attention_plan, attention_triton  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", default="1x4096,1x8192,8x4096,8x8192,64x4096,64x8192",
                        help="requests x context pairs")
    parser.add_argument("--contiguous-pages", action="store_true",
                        help="each request's pages in order (default: shuffled, as in bench/kernel_bench.py)")
    parser.add_argument("--new-tokens", type=int, default=32,
                        help="in-flight tokens per request (fewer: smaller query tiles, less MMA work per key tile)")
    options = parser.parse_args()
    copy_rate = copy_bandwidth()
    print("| requests | context | MB | splits | kernel | GPU us | share |")
    print("|---|---|---|---|---|---|---|")
    for case in options.cases.split(","):
        num_requests, context_len = (int(x) for x in case.split("x"))
        args, bytes_moved = attention_batch(num_requests, context_len, shuffled_pages=not options.contiguous_pages,
                                            new_tokens=options.new_tokens)
        splits = attention_plan.launch_plan(args[0], 4, args[6], cached=True)[2]
        calls = profiled_calls(lambda: attention_triton.paged_attention_triton(*args))
        # The combine starts early on sm_90 (programmatic dependent launch) and its time includes that wait:
        # the call's total is the time any of its kernels runs, not the sum.
        parts, total = per_kernel_ms(calls), busy_ms(calls)
        for name, ms in parts.items():
            print(f"| {num_requests} | {context_len} | {bytes_moved / 1e6:.1f} | {splits} | {name.strip('_')} "
                  f"| {ms * 1e3:.1f} | {100 * ms / total:.0f}% |")
        print(f"| {num_requests} | {context_len} | {bytes_moved / 1e6:.1f} | {splits} | all | {total * 1e3:.1f} "
              f"| {100 * bytes_moved / (total * 1e-3) / copy_rate:.0f}% of copy |")


if __name__ == "__main__":
    main()
