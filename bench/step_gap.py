"""Does an idle gap between engine steps slow the next step? The in-process engine, one request at a time,
with no gap, a slept gap and a polled gap after every step (what a server waiting for a client leaves)."""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dlx.config import Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from serve import prompts  # noqa: E402  (the serving benchmark's workload)


def mean_step_ms(engine: LLMEngine, work: list[list[int]], max_tokens: int, gap_s: float, poll: bool) -> float:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    busy = steps = 0
    for prompt in work:
        engine.add_request(prompt, params)
        while engine.has_work():
            started = time.perf_counter()
            engine.step()
            busy, steps = busy + time.perf_counter() - started, steps + 1
            end = time.perf_counter() + gap_s
            if poll:
                while time.perf_counter() < end:
                    pass
            elif gap_s:
                time.sleep(gap_s)
    return 1000 * busy / max(steps, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dlx/assets/dlx-tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    engine = LLMEngine(Config(model=args.model, device=args.device, max_model_len=1024, max_num_reqs=64).finalize())
    work = prompts(args.requests)
    mean_step_ms(engine, work, args.max_tokens, 0.0, False)   # warm-up: compile every kernel variant
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    workload = f"{card}, {args.requests} requests x {args.max_tokens} tokens"
    print(f"| round | gap after each step | mean step ms ({workload}) |")
    print("|---|---|---|")
    for round_index in range(args.rounds):
        for gap_s, poll in ((0.0, False), (0.002, False), (0.002, True), (0.010, False)):
            label = "none" if not gap_s else f"{gap_s * 1000:.0f} ms {'polled' if poll else 'slept'}"
            print(f"| {round_index} | {label} | {mean_step_ms(engine, work, args.max_tokens, gap_s, poll):.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
