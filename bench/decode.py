"""Decoding benchmark: the model's own generate() way (full recompute, eager plain PyTorch, one request at
a time) against the dlx engine one at a time and batched, with their tokens compared."""
import argparse
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

from dlx.config import EMBEDDED_MODEL_DIR, Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.engine.reference import DecodeSettings, reference_generate  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from dlx.frontend.tokenizer import FrontendTokenizer  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def run_engine(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> list:
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    reqs = [engine.add_request(p, params) for p in prompts]
    while engine.has_work():
        engine.step()
    return reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL_DIR)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    import tiny_corpus
    tok = FrontendTokenizer(args.model)
    questions = [q for kind in ("add3", "sub3", "mul", "compare") for q, _ in tiny_corpus.heldout_questions(kind, 64)]
    prompts = [tok.encode(q) for q in questions[:args.requests]]
    cfg = Config(model=args.model, max_model_len=512, num_kv_pages=4096).finalize()
    engine = LLMEngine(cfg)
    card = torch.cuda.get_device_name() if cfg.device == "cuda" else "CPU"
    settings = DecodeSettings(mask_id=engine.mask_id, eos_id=engine.eos_id)
    # Warm-up with the measured workload on every path: kernels specialise (and compile) per batch shape.
    run_engine(engine, prompts, args.max_tokens)
    for p in prompts:
        run_engine(engine, [p], args.max_tokens)
    # The baseline is the model's own generate() as users run it: plain PyTorch ops everywhere.
    engine.model.set_kernels("naive", "naive")
    for p in prompts:
        reference_generate(engine.model, p, args.max_tokens, settings)
    ref, t_ref = timed(lambda: [reference_generate(engine.model, p, args.max_tokens, settings) for p in prompts])
    engine.model.set_kernels(cfg.attn_impl, cfg.moe_impl)
    one, t_one = timed(lambda: [run_engine(engine, [p], args.max_tokens)[0] for p in prompts])
    batch, t_batch = timed(lambda: run_engine(engine, prompts, args.max_tokens))
    same_engine = [r.output for r in one] == [r.output for r in batch]
    same_as_ref = sum(r.token_ids == o.output for r, o in zip(ref, batch))
    tokens = sum(len(r.token_ids) for r in ref)
    print(f"\nDecoding benchmark on {card} — {os.path.basename(os.path.normpath(args.model))}, "
          f"{len(prompts)} held-out questions, max_tokens {args.max_tokens}, greedy, "
          f"engine kernels: attention {cfg.attn_impl}, MoE {cfg.moe_impl}; "
          f"engine one-at-a-time = batched tokens: {same_engine}; answers identical to the PyTorch reference: "
          f"{same_as_ref}/{len(prompts)}\n")
    print("| path | wall s | tokens | NFE | tokens/s | tokens per forward | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name, reqs, secs, nfe in (("reference generate() (full recompute, one at a time)",
                                   ref, t_ref, sum(r.nfe for r in ref)),
                                  ("dlx engine, one at a time", one, t_one, sum(r.nfe for r in one)),
                                  (f"dlx engine, {len(prompts)} batched", batch, t_batch, sum(r.nfe for r in batch))):
        print(f"| {name} | {secs:.3f} | {tokens} | {nfe} | {tokens / secs:.0f} | {tokens / nfe:.2f} "
              f"| {t_ref / secs:.1f}× |")


if __name__ == "__main__":
    main()
