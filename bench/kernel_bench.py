"""GPU kernel benchmarks: measured device copy bandwidth, then each kernel section measured against it.
Sections print one table each (attention now; MoE and others are added as entries of SECTIONS)."""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlx.kernels.attention import AttentionMetadata, attention_reference  # noqa: E402

GIB = 1 << 30
L2_FLUSH_BYTES = 256 << 20  # larger than any current L2, so every timed run starts cold


def l2_flush(dirty: bool = False):
    """A function that evicts the L2. By default it reads 256 MB, leaving the L2 cold and clean, as the
    kernels before attention or MoE in a forward leave it (they read weights and write little). dirty writes
    the 256 MB instead: the next kernel then also pays for writing ~50 MB of the flush back to memory (up
    to 8 us of a 70 us attention call, docs/benchmarks.md)."""
    buffer = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    words = buffer.view(torch.int64)
    return buffer.zero_ if dirty else words.max


def time_ms(fn, iters: int = 20, graph: bool = True, dirty_l2: bool = False) -> float:
    """Median milliseconds of fn over iters runs, CUDA events around each run, L2 flushed before each
    (l2_flush). With graph, fn is captured once and replayed (how the engine runs it): no Python launch
    overhead."""
    flush = l2_flush(dirty_l2)
    fn()  # compile / warm up outside the capture
    torch.cuda.synchronize()
    run = fn
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            fn()
        run = cuda_graph.replay
    return statistics.median(event_times(run, iters, before=flush))


def event_times(run, iters: int, before=lambda: None) -> list[float]:
    """Milliseconds of each of iters runs, CUDA events around each; `before` runs untimed ahead of each."""
    times = []
    for _ in range(iters):
        before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def profiled_calls(fn, iters: int = 20, dirty_l2: bool = False) -> list[list[tuple[str, float, float]]]:
    """(kernel name, start µs, end µs) of each of fn's kernels, per call (profiler timestamps, L2 flushed
    before each call as time_ms does). Calls are told apart by the flush's kernels, which fn must not launch."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    def gpu_kernels(run, repeats: int) -> list:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(repeats):
                run()
            torch.cuda.synchronize()
        return sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    flush = l2_flush(dirty_l2)
    fn()
    flush_names = {event.name for event in gpu_kernels(flush, 1)}   # the flush's kernels end one call

    def flushed_call() -> None:
        flush()
        fn()
    calls, current = [], None
    for event in gpu_kernels(flushed_call, iters):
        if event.name in flush_names:
            current = []
            calls.append(current)
        elif current is not None:
            current.append((event.name, event.time_range.start, event.time_range.end))
    return [call for call in calls if call]   # a flush of several kernels leaves empty calls between them


def per_kernel_ms(calls: list[list[tuple[str, float, float]]]) -> dict[str, float]:
    """Median milliseconds per call in each kernel of profiled_calls' calls. A kernel launched early
    (programmatic dependent launch) counts its wait for its predecessor too."""
    per_call = []
    for call in calls:
        spent: dict[str, float] = {}
        for name, start, end in call:
            spent[name] = spent.get(name, 0.0) + (end - start) / 1e3
        per_call.append(spent)
    names = {name for call in per_call for name in call}
    return {name: statistics.median(call.get(name, 0.0) for call in per_call) for name in sorted(names)}


def busy_ms(calls: list[list[tuple[str, float, float]]]) -> float:
    """Median milliseconds per call during which any of its kernels runs: the union of their intervals, so a
    kernel that starts early and waits for its predecessor is not counted twice."""
    busy = []
    for call in calls:
        total, reach = 0.0, float("-inf")
        for _, start, end in sorted(call, key=lambda k: k[1]):
            total += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        busy.append(total / 1e3)
    return statistics.median(busy) if busy else float("nan")


def kernel_breakdown(fn, iters: int = 20) -> dict[str, float]:
    """Median milliseconds the GPU spends in each of fn's kernels per call: what the call costs between
    neighbouring kernels of a captured forward, without the launch latency that time_ms's events include
    (several microseconds, most of a one-request call)."""
    return per_kernel_ms(profiled_calls(fn, iters))


def kernel_ms(fn, iters: int = 20) -> float:
    """Median GPU milliseconds per call during which any of fn's kernels runs (busy_ms)."""
    return busy_ms(profiled_calls(fn, iters))


def copy_bandwidth() -> float:
    """Bytes per second of a 4 GiB device-to-device copy (bytes read + bytes written)."""
    src = torch.empty(4 * GIB, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    src.fill_(1)
    ms = time_ms(lambda: dst.copy_(src), iters=10, graph=False)
    return 2 * 4 * GIB / (ms * 1e-3)


# ---------------------------------------------------------------- attention
HEADS, KV_HEADS, HEAD_DIM, PAGE, BLOCK, NEW_TOKENS = 16, 4, 128, 32, 32, 32  # LLaDA2.0-mini, one GPU


def attention_batch(num_requests: int, context_len: int, dtype: torch.dtype = torch.bfloat16,
                    shuffled_pages: bool = True, new_tokens: int = NEW_TOKENS):
    """num_requests requests of new_tokens in-flight tokens after context_len cached ones, pages shuffled
    (as a long-running server's are) unless shuffled_pages is False; q/k/v are views of one fused QKV,
    as the model produces them."""
    gen = torch.Generator(device="cuda").manual_seed(num_requests * 7919 + context_len)
    rows, pages_each = num_requests * new_tokens, -(-context_len // PAGE)
    qkv = torch.randn(rows, HEADS + 2 * KV_HEADS, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)
    q, k, v = qkv.split([HEADS, KV_HEADS, KV_HEADS], dim=1)
    num_pages = max(1, num_requests * pages_each)
    k_cache = torch.randn(num_pages, PAGE, KV_HEADS, HEAD_DIM, device="cuda", dtype=dtype, generator=gen)
    v_cache = torch.randn_like(k_cache)
    order = (torch.randperm(num_pages, device="cuda", generator=gen) if shuffled_pages
             else torch.arange(num_pages, device="cuda")).int()
    table = order[:num_requests * pages_each].view(num_requests, pages_each)
    positions = (torch.arange(new_tokens, device="cuda") + context_len).repeat(num_requests)
    meta = AttentionMetadata(
        cu_seqlens_q=torch.arange(0, rows + 1, new_tokens, device="cuda"),
        context_lens=torch.full((num_requests,), context_len, device="cuda"),
        page_tables=table, slot_mapping=None, block_size=BLOCK,
        query_lens=[new_tokens] * num_requests, context_lens_host=[context_len] * num_requests)
    bytes_moved = (2 * num_requests * context_len * KV_HEADS * HEAD_DIM  # cached K and V
                   + 2 * rows * KV_HEADS * HEAD_DIM + 2 * rows * HEADS * HEAD_DIM) * k_cache.element_size()
    return (q, k, v, positions, k_cache, v_cache, meta, HEAD_DIM ** -0.5), bytes_moved


def attention_section(copy_bytes_per_s: float) -> None:
    from dlx.kernels import attention_plan, attention_triton
    from read_ceiling import read_ceiling_ms   # bench/ is on sys.path when this file runs as a script
    print("\n## paged block-diffusion attention (bf16, 16 q / 4 kv heads, dim 128, page 32, block 32, "
          f"{NEW_TOKENS} new tokens per request, caches cold in L2)")
    print("bandwidth = (cached K+V + new K/V + q + out bytes) / time; % is of the measured copy bandwidth; "
          "triton ms = CUDA events around a graph replay (launch latency included), kernel ms = the kernels' own "
          "GPU time (profiler); L2 cold and clean before each run, dirty-L2 ms with the L2 full of another kernel's "
          "writes (l2_flush); same-size copy = a device copy moving the call's bytes (half read, half written); "
          "same-size read = a Triton kernel only reading as many bytes (bench/read_ceiling.py), best of three "
          "tile sizes: the most any kernel of that size reaches")
    tiny = torch.zeros(1, device="cuda")
    print(f"timing floor, a one-element add: {time_ms(lambda: tiny.add_(1)):.4f} ms by events, "
          f"{kernel_ms(lambda: tiny.add_(1)):.4f} ms of kernel time")
    header = ("requests", "context", "MB", "splits", "naive ms", "triton ms", "% copy", "kernel ms",
              "% copy, kernel", "dirty-L2 ms", "% copy, dirty", "same-size copy ms", "% of same-size copy",
              "same-size read ms", "% copy, read", "read kernel ms", "% copy, read kernel", "1-pass ms",
              "max |err|")
    print(" | ".join(f"{h:>10}" for h in header))

    def of_copy(bytes_moved: int, ms: float) -> str:
        return f"{100 * bytes_moved / (ms * 1e-3) / copy_bytes_per_s:.0f}%"
    for context_len in (1024, 4096, 8192):
        for num_requests in (1, 8, 64):
            args, bytes_moved = attention_batch(num_requests, context_len)
            triton_out = attention_triton.paged_attention_triton(*args)
            splits = attention_plan.launch_plan(args[0], KV_HEADS, args[6], cached=True)[2]
            triton_ms = time_ms(lambda: attention_triton.paged_attention_triton(*args))
            one_pass_ms = time_ms(lambda: attention_triton.paged_attention_triton(*args, num_splits=1))
            kernel_time_ms = kernel_ms(lambda: attention_triton.paged_attention_triton(*args))
            dirty_ms = time_ms(lambda: attention_triton.paged_attention_triton(*args), dirty_l2=True)
            source = torch.empty(bytes_moved // 2, dtype=torch.uint8, device="cuda")
            target = torch.empty_like(source)
            copy_ms = time_ms(lambda: target.copy_(source))
            read_ms, read_kernel_ms = read_ceiling_ms(bytes_moved, time_ms, kernel_ms)
            naive_ms = error = float("nan")
            if num_requests <= 8:  # the reference loops over requests in Python: small cases only
                naive_ms = time_ms(lambda: attention_reference(*args), iters=5, graph=False)
                error = (triton_out.float() - attention_reference(*args).float()).abs().max().item()
            row = (num_requests, context_len, f"{bytes_moved / 1e6:.1f}", splits, f"{naive_ms:.3f}",
                   f"{triton_ms:.4f}", of_copy(bytes_moved, triton_ms), f"{kernel_time_ms:.4f}",
                   of_copy(bytes_moved, kernel_time_ms),
                   f"{dirty_ms:.4f}", of_copy(bytes_moved, dirty_ms), f"{copy_ms:.4f}",
                   f"{100 * copy_ms / triton_ms:.0f}%", f"{read_ms:.4f}", of_copy(bytes_moved, read_ms),
                   f"{read_kernel_ms:.4f}", of_copy(bytes_moved, read_kernel_ms),
                   f"{one_pass_ms:.4f}", f"{error:.2e}")
            print(" | ".join(f"{str(c):>10}" for c in row), flush=True)


def moe_section(copy_bytes_per_s: float) -> None:
    from moe_layer import moe_section as moe_table   # bench/ is on sys.path when this file runs as a script
    moe_table(copy_bytes_per_s, time_ms)


def fused_section(copy_bytes_per_s: float) -> None:
    from fused_ops import fused_ops_section   # bench/ is on sys.path when this file runs as a script
    fused_ops_section(copy_bytes_per_s, time_ms)


SECTIONS = {"attention": attention_section, "moe": moe_section, "fused": fused_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    options = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/kernel_bench.py needs a CUDA GPU")
    import triton
    print(f"# dlx kernel benchmark on {torch.cuda.get_device_name()} "
          f"({torch.cuda.get_device_properties(0).multi_processor_count} SMs), "
          f"torch {torch.__version__}, triton {triton.__version__}")
    copy_bytes_per_s = copy_bandwidth()
    torch.cuda.empty_cache()  # hand the copy's 8 GiB back before the sections allocate
    print(f"device copy bandwidth (4 GiB, read + write, median of 10): {copy_bytes_per_s / 1e12:.2f} TB/s")
    for name in options.sections:
        SECTIONS[name](copy_bytes_per_s)


if __name__ == "__main__":
    main()
