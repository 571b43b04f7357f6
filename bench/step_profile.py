"""Where an engine step's GPU time goes (GPU): steady decode steps of the LLaDA2.0-mini-shaped dummy model through
the CUDA graphs under torch.profiler, kernels grouped into families and summed per step, with each family's share."""
import argparse
import collections
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from step_engine import BLOCK, random_prompt, shape_engine, step_kernels, sync  # noqa: E402

# First match wins: (family, substrings of the kernel name). Triton kernels carry their Python names.
FAMILIES = [
    ("attention", ("_paged_attention_kernel",)), ("attention combine", ("_combine_splits",)),
    ("MoE gate/up (grouped GEMM + SwiGLU)", ("_gate_up_kernel",)), ("MoE down (grouped GEMM)", ("_down_kernel",)),
    ("MoE slot sum", ("_sum_slots",)), ("MoE routing (sort, search, align)", ("sort", "search", "cumsum", "radix", "_count_kernel",
                                          "_place_kernel")),
    ("router", ("route",)), ("q/k norms + rotary", ("rotary",)), ("norms", ("norm",)), ("KV store", ("store",)),
    ("greedy argmax + probability", ("argmax", "prob")),
    ("dense GEMMs (cuBLAS)", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "splitk")),
]


OTHER = "other (elementwise, copies, index)"


def kernel_family(name: str) -> str:
    lowered = name.lower()
    return next((family for family, keys in FAMILIES if any(key in lowered for key in keys)), OTHER)


def family_table(kernels: list[tuple[str, float]], steps: int) -> list[tuple[str, float, float, float]]:
    """(family, µs per step, kernels per step, share of the kernel time) from (name, µs) pairs of `steps` steps,
    largest first."""
    time, count = collections.Counter(), collections.Counter()
    for name, micros in kernels:
        family = kernel_family(name)
        time[family] += micros
        count[family] += 1
    total = sum(time.values()) or 1.0
    return [(f, time[f] / steps, count[f] / steps, time[f] / total) for f, _ in time.most_common()]


def gaps_us(kernels: list[tuple[str, float, float]], long_us: float = 50.0) -> tuple[float, float]:
    """(idle µs between kernels shorter than long_us, idle µs in longer gaps) in the kernels' span: the first
    is launch spacing inside the graphs, the second mostly the host's work between steps."""
    short = long = 0.0
    ordered = sorted((start, end) for _, start, end in kernels)
    reach = ordered[0][1] if ordered else 0.0
    for start, end in ordered[1:]:
        idle = max(0.0, start - reach)
        short, long = (short + idle, long) if idle < long_us else (short, long + idle)
        reach = max(reach, end)
    return short, long


def replay_cpu_us(engine: LLMEngine) -> tuple[float, float]:
    """CPU µs that one replay() of the batch-1 body graph and of the one-row head graph takes to return."""
    graphs, timings = engine.runner.graphs, []
    for graph in (graphs.bodies[min(graphs.bodies)], graphs.heads[min(graphs.heads)]):
        samples = []
        for _ in range(10):
            sync()
            started = time.perf_counter()
            graph()
            samples.append((time.perf_counter() - started) * 1e6)
        timings.append(statistics.median(samples))
    sync()
    return timings[0], timings[1]


def host_profile(engine: LLMEngine, steps: int, top: int = 12) -> None:
    """The Python functions that take the most time in `steps` engine steps (cProfile, own time), printed."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        engine.step()
    profiler.disable()
    print(f"host (cProfile) over {steps} steps, most own time first:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def profile_steps(engine: LLMEngine, batch: int, context: int, steps: int
                  ) -> tuple[list[tuple[str, float, float]], float]:
    """Kernels (name, µs) of `steps` steady decode steps: `batch` requests of `context` cached tokens each, one
    32-token block at threshold 1, profiled once every request has run a step; and the median wall ms of the
    next steady steps, unprofiled."""
    prompts = [random_prompt(engine, context, seed) for seed in range(batch)]
    params = SamplingParams(temperature=0, max_tokens=BLOCK, ignore_eos=True, threshold=1.0)
    for prompt in prompts:
        engine.add_request(prompt, params)
    while not (engine.scheduler.running and all(r.nfe >= 1 for r in engine.scheduler.running)
               and len(engine.scheduler.running) == batch):
        engine.step()
    engine.step()
    kernels = step_kernels(engine, steps)
    host_profile(engine, steps)
    walls = []
    for _ in range(steps):
        sync()
        started = time.perf_counter()
        engine.step()
        sync()
        walls.append((time.perf_counter() - started) * 1e3)
    while engine.has_work():
        engine.step()
    return kernels, statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    engine = shape_engine("mini", None, batches, args.context + 2 * BLOCK, eager=False)
    cfg = engine.cfg
    print(f"\nGPU time of a steady engine step on {torch.cuda.get_device_name()}: LLaDA2.0-mini shape, bf16, dummy "
          f"weights, CUDA graphs {'on' if cfg.cuda_graphs else 'off'}, context {args.context}, {args.steps} steps "
          f"profiled; torch {torch.__version__}")
    if engine.runner.graphs is not None:
        body_us, head_us = replay_cpu_us(engine)
        print(f"CPU time of one replay() call: body graph (1 request) {body_us:.0f} µs, head graph (1 row) "
              f"{head_us:.0f} µs")
    for batch in batches:
        kernels, wall_ms = profile_steps(engine, batch, args.context, args.steps)
        rows = family_table([(name, end - start) for name, start, end in kernels], args.steps)
        short, long = (g / args.steps / 1e3 for g in gaps_us(kernels))
        print(f"\nbatch {batch}: {sum(r[1] for r in rows) / 1e3:.2f} ms of kernels a step, {wall_ms:.2f} ms a whole "
              f"step (wall, median); idle between kernels {short:.2f} ms (gaps under 50 µs) + {long:.2f} ms (longer "
              "gaps: the host between steps)\n")
        print("| kernel family | µs per step | kernels per step | share |")
        print("|---|---|---|---|")
        for family, micros, count, share in rows:
            print(f"| {family} | {micros:.0f} | {count:.0f} | {share:.1%} |")


if __name__ == "__main__":
    main()
