"""Engine-step benchmark (GPU): a LLaDA2.0-mini-shaped model with dummy weights and balanced routing, the whole
LLMEngine.step() (scheduler, forward, sampler, snapshots) against the HBM roofline of the bytes that step reads."""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.engine.reference import DecodeSettings, choose_tokens  # noqa: E402
from dlx.kernels.attention import AttentionMetadata  # noqa: E402
from dlx.models.dummy import BALANCE_METHOD, chosen_experts  # noqa: E402
from dlx.models.lora import LoRAAdapter, base_linear_shapes  # noqa: E402
from dlx.models.lora_layers import attach_adapters  # noqa: E402
from dlx.models.moe import SparseMoE  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from kernel_bench import busy_ms, event_times  # noqa: E402
from read_ceiling import read_ceiling_ms  # noqa: E402
from step_engine import BLOCK, capture, random_prompt, shape_engine, step_kernels, sync  # noqa: E402

def events_ms(fn, iters: int = 5) -> float:
    """Fastest of iters runs of fn, CUDA events around each."""
    return min(event_times(fn, iters))


def read_bandwidth() -> float:
    """Bytes per second a kernel that only reads 4 GiB achieves (bench/read_ceiling.py): the roofline's rate."""
    num_bytes = 4 << 30
    return num_bytes / (read_ceiling_ms(num_bytes, events_ms)[0] * 1e-3)


def step_bytes(model: torch.nn.Module, distinct: list[int], tokens: int, kv_tokens: int, logit_rows: int) -> int:
    """Bytes a step must move at least: every dense weight once, the experts it touches (distinct[i] of the i-th
    MoE layer's stacks), the embedding rows of its tokens, the cached K and V it attends to, and its logits
    written and read once in the model's dtype."""
    share = {}   # expert stacks → the fraction of their experts this step touches
    for moe, touched in zip((m for m in model.modules() if isinstance(m, SparseMoE)), distinct):
        share[id(moe.w13)] = share[id(moe.w2)] = touched / moe.w13.shape[0]
    total = 0
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if name == "word_embeddings.weight":
            size = min(tokens, param.shape[0]) * param.shape[1] * param.element_size()
        total += int(size * share.get(id(param), 1.0))
    layout = model.kv_layout()
    itemsize = torch.empty((), dtype=layout.dtype).element_size()
    return total + layout.page_bytes(1) * kv_tokens + 2 * logit_rows * model.config.vocab_size * itemsize


class GpuWait:
    """Wraps the sampler's choose(), where a step first waits for the GPU: the time of a synchronize() there is
    the step's wait, and the rest of the step is host time (scheduler, inputs, launches, commits, snapshots)."""

    def __init__(self, engine: LLMEngine):
        self.seconds, self.choose = 0.0, engine.sampler.choose
        engine.sampler.choose = self

    def __call__(self, *args):
        start = time.perf_counter()
        sync()
        self.seconds += time.perf_counter() - start
        return self.choose(*args)


def measure(engine: LLMEngine, batch: int, context: int, rounds: int, seed: int, lora: str | None = None
            ) -> dict | None:
    """Median whole-step ms over `rounds` rounds of 31 steady steps (batch requests, context cached tokens each,
    one 32-token block at threshold 1, one token a forward), with the step's roofline bytes and host ms beside."""
    prompts = [random_prompt(engine, context, seed + i) for i in range(batch)]
    warm = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    for prompt in prompts:   # prefill once: the measured rounds find their prompts in the prefix cache
        engine.add_request(prompt, warm)
    while engine.has_work():
        engine.step()
    params = SamplingParams(temperature=0, max_tokens=BLOCK, ignore_eos=True, threshold=1.0, lora=lora)
    steps, rows, distinct, busy, kernels, host = [], [], [], [], [], []
    wait = GpuWait(engine) if not isinstance(engine.sampler.choose, GpuWait) else engine.sampler.choose
    for r in range(rounds + 1):   # round 0 warms up
        for prompt in prompts:
            engine.add_request(prompt, params)
        while engine.has_work():
            running = engine.scheduler.running + list(engine.scheduler.waiting)
            wanted = sum(len(engine.strategy.logit_positions(req)) for req in running if req.block_steps)
            steady = all(req.nfe >= 1 for req in running) and len(running) == batch and engine.scheduler.running
            if r and steady and not distinct:
                graphs, engine.runner.graphs = engine.runner.graphs, None   # a replay calls no Python hook
                try:
                    with chosen_experts(engine.model) as chosen:   # counted on an untimed step: unique() syncs
                        engine.step()
                finally:
                    engine.runner.graphs = graphs
                distinct = [int(chosen[i].unique().numel()) for i in sorted(chosen)]
                continue
            if r and steady and len(busy) < 3 and torch.cuda.is_available():
                busy_ms_, count = profiled_step(engine)
                busy.append(busy_ms_)
                kernels.append(count)
                continue
            sync()
            start, waited = time.perf_counter(), wait.seconds
            engine.step()
            elapsed = time.perf_counter() - start
            if r and steady:
                steps.append(elapsed * 1e3)
                host.append((elapsed - (wait.seconds - waited)) * 1e3)
                rows.append(wanted)
    if not steps:   # the batch never ran together (its prompts' pages were not all still cached)
        return None
    roof = [step_bytes(engine.model, distinct, batch * BLOCK, batch * context, n) for n in rows]
    return {"step_ms": statistics.median(steps), "steps": len(steps), "host_ms": statistics.median(host),
            "distinct": distinct, "bytes": statistics.median(roof),
            "busy_ms": statistics.median(busy) if busy else float("nan"),
            "kernels": statistics.median(kernels) if kernels else 0}


def profiled_step(engine: LLMEngine) -> tuple[float, int]:
    """GPU-busy milliseconds (kernel intervals' union) and kernel count of one engine step."""
    kernels = step_kernels(engine)
    return busy_ms([kernels]), len(kernels)


def naive_step_ms(engine: LLMEngine, context: int) -> float:
    """One step the way the model's own generate() runs it: the whole canvas recomputed (no cache), plain
    PyTorch attention and a per-expert loop, logits of the block's masked rows, greedy choice."""
    model, settings = engine.model, DecodeSettings(mask_id=engine.mask_id, eos_id=engine.eos_id)
    ids = torch.tensor(random_prompt(engine, context, 0) + [engine.mask_id] * BLOCK, device="cuda")
    positions = torch.arange(context + BLOCK, device="cuda")
    meta = AttentionMetadata.single(context + BLOCK, BLOCK, "cuda")
    model.set_kernels("naive", "naive")
    try:
        def step():
            hidden = model(ids, positions, meta)
            return choose_tokens(model.compute_logits(hidden[context:]), settings, None)[0].tolist()
        return events_ms(step, iters=3)
    finally:
        model.set_kernels(engine.cfg.attn_impl, engine.cfg.moe_impl)


def attach_random_adapter(engine: LLMEngine, rank: int) -> str:
    """A random rank-`rank` LoRA adapter on every linear layer, attached for run-time use under the name "bench"."""
    shapes = base_linear_shapes(engine.model.config)
    pairs = {name: (torch.randn(rank, cols) * 0.01, torch.randn(rows, rank) * 0.01)
             for name, (rows, cols) in shapes.items()}
    attach_adapters(engine.model, [LoRAAdapter("bench", "", pairs)])
    engine.adapters = {"bench": 0}
    return f"rank {rank} on {len(pairs)} linear layers"


def lora_rows(engine: LLMEngine, rows: list, base: dict, rounds: int, rank: int) -> None:
    """The base model's steps beside the same steps with a run-time adapter on every row."""
    what = attach_random_adapter(engine, rank)
    graphs = capture(engine)[0]
    print(f"\nRun-time LoRA adapter ({what}), every request using it; {graphs} CUDA graphs\n")
    print("| batch | context | base step ms | with adapter ms | ratio |")
    print("|---|---|---|---|---|")
    for batch, context in rows:
        m, b = measure_row(engine, batch, context, rounds, lora="bench"), base[(batch, context)]
        if isinstance(m, str) or isinstance(b, str):
            print(f"| {batch} | {context} | {b if isinstance(b, str) else ''} | {m if isinstance(m, str) else ''} | |")
            continue
        ratio = m["step_ms"] / b["step_ms"]
        print(f"| {batch} | {context} | {b['step_ms']:.2f} | {m['step_ms']:.2f} | {ratio:.2f}× |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mini", choices=("mini", "flash"))
    parser.add_argument("--layers", type=int, default=None, help="cut the shape to this many layers (quick runs)")
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--naive-contexts", default="512,2048", help="contexts of the naive baseline (batch 1)")
    parser.add_argument("--lora-rank", type=int, default=0, help="then the same steps with a run-time adapter")
    parser.add_argument("--lora-batches", default="1,64", help="batches of the LoRA rows (at the first context)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    started = time.perf_counter()
    engine = shape_engine(args.shape, args.layers, batches, max(contexts) + 2 * BLOCK)
    cfg = engine.cfg
    load_s = time.perf_counter() - started
    bandwidth = read_bandwidth()
    naive = {c: naive_step_ms(engine, c) for c in (int(x) for x in args.naive_contexts.split(",") if x)}
    rows = [(batch, context) for context in contexts for batch in batches]
    eager = {row: measure_row(engine, *row, args.rounds) for row in rows}   # first: no graph is captured yet
    graphs, capture_s = capture(engine)
    print(f"\nEngine step on {torch.cuda.get_device_name()} — LLaDA2.0-{args.shape} shape"
          f"{f' cut to {args.layers} layers' if args.layers else ''}, bf16, dummy weights loaded in {load_s:.1f} s; "
          f"{BALANCE_METHOD}; read bandwidth {bandwidth / 1e12:.2f} TB/s (a kernel that only reads 4 GiB); "
          f"torch {torch.__version__}; attention {cfg.attn_impl}, MoE {cfg.moe_impl}; {graphs} CUDA graphs captured "
          f"in {capture_s:.1f} s; each request: `context` cached tokens + one 32-token block at threshold 1 (one "
          f"token a forward); step = the whole LLMEngine.step(), median of {args.rounds} × 31 steady steps; host ms = "
          f"the step's time outside its wait for the GPU\n")
    print("| batch | context | eager step ms | graphs step ms | host ms | GPU busy ms | kernels | roofline ms "
          "| graphs ÷ roofline | distinct experts per MoE layer (min–max, mean) | naive generate() way, batch 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    graphed = {}
    for batch, context in rows:
        m, e = measure_row(engine, batch, context, args.rounds), eager[(batch, context)]
        graphed[(batch, context)] = m
        if isinstance(m, str) or isinstance(e, str):
            print(f"| {batch} | {context} | {e if isinstance(e, str) else ''} | {m if isinstance(m, str) else ''} "
                  "| | | | | | | |")
            continue
        roof_ms = m["bytes"] / bandwidth * 1e3
        d = m["distinct"]
        slow = naive.get(context) if batch == 1 else None
        base = f"{slow:.1f} ms ({slow / m['step_ms']:.0f}×)" if slow else ""
        print(f"| {batch} | {context} | {e['step_ms']:.2f} | {m['step_ms']:.2f} | {m['host_ms']:.2f} "
              f"| {m['busy_ms']:.2f} | {m['kernels']:.0f} | {roof_ms:.2f} | {m['step_ms'] / roof_ms:.2f}× "
              f"| {min(d)}–{max(d)}, {statistics.mean(d):.0f} | {base} |", flush=True)
    if args.lora_rank:
        lora = [(int(b), contexts[0]) for b in args.lora_batches.split(",") if (int(b), contexts[0]) in graphed]
        lora_rows(engine, lora, graphed, args.rounds, args.lora_rank)


def measure_row(engine: LLMEngine, batch: int, context: int, rounds: int, lora: str | None = None) -> dict | str:
    """measure(), or why a row has no number."""
    try:
        m = measure(engine, batch, context, rounds, seed=batch * 7919 + context, lora=lora)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"
    return m if m is not None else "not measured: the batch never ran together"


if __name__ == "__main__":
    main()
