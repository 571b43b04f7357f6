"""Engine-step benchmark of DiffusionGemma (GPU): its 26B-A4B shape with dummy weights, the whole LLMEngine.step()
(one denoising step of every running request's canvas) against the roofline of the bytes that step must read."""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dlx.config import Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.models.diffusion_gemma_dummy import BALANCE_METHOD, chosen_gemma_experts, expert_stats  # noqa: E402
from dlx.models.loader import read_config  # noqa: E402
from dlx.models.shapes import write_shape_dir  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from step_engine import random_prompt, sync  # noqa: E402

LOGIT_BYTES = 4        # compute_logits returns fp32 logits, whatever the weights' dtype
NEVER_CONFIDENT = 1e-9  # confidence_threshold: no random canvas gets this sure, so every canvas runs all its steps
PAGE = 32              # --max-model-len must be a whole number of blocks (the default block size)


def gemma_engine(model_dir: str, max_batch: int, longest_prompt: int, device: str = "cuda",
                 dtype: str = "bfloat16") -> LLMEngine:
    """A dummy-weight engine of the DiffusionGemma directory, sized for max_batch canvases after prompts of up to
    longest_prompt tokens (all of a batch's canvases run in one step, so the token budget holds them all)."""
    canvas = read_config(model_dir).get("canvas_length", 256)
    longest = -(-(longest_prompt + canvas + 1) // PAGE) * PAGE
    cfg = Config(model=model_dir, load_format="dummy", device=device, dtype=dtype, max_model_len=longest,
                 max_num_reqs=max_batch, max_num_batched_tokens=max(longest, max_batch * canvas))
    return LLMEngine(cfg.finalize(cuda_available=device != "cpu"))


def step_bytes(model: torch.nn.Module, distinct: list[int], prompt_len: int, batch: int) -> int:
    """Bytes one denoising step of `batch` canvases, each after a prompt of prompt_len tokens, must move at least:
    every weight once (the embedding whole: the tied head reads all of it), of each layer's experts only the
    distinct[i] the step touches, each layer's kept prompt keys and values per canvas (a sliding layer's last
    window - 1, a full layer's all), and the canvases' fp32 logits written and read once."""
    cfg = model.config
    share = {}   # expert stacks → the fraction of their experts this step touches
    for layer, touched in zip(model.layers, distinct):
        share[id(layer.moe.w13)] = share[id(layer.moe.w2)] = touched / cfg.num_experts
    total = sum(int(p.numel() * p.element_size() * share.get(id(p), 1.0)) for p in model.parameters())
    itemsize = model.embed_tokens.weight.element_size()   # the encoder's keys and values are in the weights' dtype
    for spec in cfg.layers:
        kept = min(prompt_len, cfg.sliding_window - 1) if spec.sliding else prompt_len
        total += batch * 2 * kept * spec.num_kv_heads * spec.head_dim * itemsize
    return total + 2 * batch * cfg.canvas_length * cfg.vocab_size * LOGIT_BYTES


def canvas_params(steps: int, seed: int, canvas: int) -> SamplingParams:
    """One canvas of exactly `steps` denoising steps: no adaptive stop, no EOS."""
    return SamplingParams(max_tokens=canvas, ignore_eos=True, seed=seed, max_denoising_steps=steps,
                          confidence_threshold=NEVER_CONFIDENT)


def measure(engine: LLMEngine, batch: int, context: int, rounds: int, steps: int, seed: int) -> dict | None:
    """Median whole-step ms over `rounds` rounds (after a warm-up round) of batch requests with prompts of `context`
    tokens denoising one canvas each for `steps` steps: steady steps (every canvas encoded, all running) beside the
    first step of each round (the encoder passes too), the step's roofline bytes, and its experts as one untimed
    steady step routed them."""
    canvas = engine.model.config.canvas_length
    prompts = [random_prompt(engine, context, seed + i) for i in range(batch)]
    steady_ms, first_ms, distinct, worst = [], [], [], 0.0
    for r in range(rounds + 1):   # round 0 warms up
        for i, prompt in enumerate(prompts):
            engine.add_request(prompt, canvas_params(steps, seed + i, canvas))
        first = True
        while engine.has_work():
            running = engine.scheduler.running
            steady = (len(running) == batch and not engine.scheduler.waiting
                      and all(req.decoding is not None and req.decoding.encoded is not None for req in running))
            if r and steady and not distinct:
                with chosen_gemma_experts(engine.model) as chosen:   # read back after the step: untimed
                    engine.step()
                distinct, worst = expert_stats(chosen, engine.model.config.num_experts)
                continue
            sync()
            start = time.perf_counter()
            engine.step()
            sync()
            elapsed = (time.perf_counter() - start) * 1e3
            if r and steady:
                steady_ms.append(elapsed)
            elif r and first:
                first_ms.append(elapsed)
            first = False
    if not steady_ms:   # the batch never ran together
        return None
    return {"step_ms": statistics.median(steady_ms), "steps": len(steady_ms),
            "first_ms": statistics.median(first_ms) if first_ms else float("nan"), "distinct": distinct,
            "worst_load": worst, "bytes": step_bytes(engine.model, distinct, context, batch)}


def measure_row(engine: LLMEngine, batch: int, context: int, rounds: int, steps: int) -> dict | str:
    """measure(), or why a row has no number."""
    try:
        m = measure(engine, batch, context, rounds, steps, seed=batch * 7919 + context)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "out of memory"
    return m if m is not None else "not measured: the batch never ran together"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="cut the shape to this many layers (quick runs)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--contexts", default="512,2048", help="prompt tokens of each request")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps of each request's canvas")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from forward import read_bandwidth   # Triton and CUDA events: the GPU run only
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    started = time.perf_counter()
    model_dir = write_shape_dir(tempfile.mkdtemp(prefix="dlx-gemma-shape-"), "diffusion_gemma", args.layers)
    engine = gemma_engine(model_dir, max(batches), max(contexts))
    load_s = time.perf_counter() - started
    bandwidth = read_bandwidth()
    cfg = engine.model.config
    print(f"\nEngine step on {torch.cuda.get_device_name()} — DiffusionGemma 26B-A4B shape"
          f"{f' cut to {args.layers} layers' if args.layers else ''} ({cfg.num_experts} experts, top-"
          f"{cfg.top_k_experts}; canvas {cfg.canvas_length}), bf16, dummy weights loaded in {load_s:.1f} s; "
          f"{BALANCE_METHOD}; read bandwidth {bandwidth / 1e12:.2f} TB/s (a kernel that only reads 4 GiB); "
          f"torch {torch.__version__}; dense prompt KV and PyTorch attention, the experts one by one (no paged KV, "
          f"Triton attention or GELU fused MoE for this family yet); each request: a `context`-token prompt and one "
          f"canvas of {args.steps} denoising steps; step = the whole LLMEngine.step() (one denoising step of every "
          f"canvas), median of {args.rounds} rounds' steady steps; first step = the same step with each request's "
          "encoder pass\n")
    print("| batch | context | step ms | first step ms | roofline ms | step ÷ roofline "
          "| distinct experts per MoE layer (min–max, mean) | busiest expert ÷ mean load |")
    print("|---|---|---|---|---|---|---|---|")
    for context in contexts:
        for batch in batches:
            m = measure_row(engine, batch, context, args.rounds, args.steps)
            if isinstance(m, str):
                print(f"| {batch} | {context} | {m} | | | | | |", flush=True)
                continue
            roof_ms, d = m["bytes"] / bandwidth * 1e3, m["distinct"]
            print(f"| {batch} | {context} | {m['step_ms']:.2f} | {m['first_ms']:.2f} | {roof_ms:.2f} "
                  f"| {m['step_ms'] / roof_ms:.2f}× | {min(d)}–{max(d)}, {statistics.mean(d):.0f} "
                  f"| {m['worst_load']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
