"""The serving benchmark's report: header lines (card, versions, model, workload), one markdown table of both
sides per concurrency (steps/s, tokens/s, TTFT, HTTP ÷ in-process), and the HTTP runs' overhead split below it."""
import json
import math
import os
import statistics

import torch

from dlx.models.loader import dtype_name
from dlx.models.shapes import SHAPES

SIDES = ("in-process", "HTTP")
TABLE_COLUMNS = ("concurrency", "side", "requests", "tokens", "wall s", "steps", "steps/s", "tokens/s",
                 "tokens/s per stream", "TTFT median ms", "TTFT p90 ms", "requests per step", "mean step ms",
                 "HTTP ÷ in-process steps/s")


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def versions() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return f"torch {torch.__version__}, triton {triton_version}"


def shape_name(config: dict) -> str | None:
    """'LLaDA2.0-mini shape' when config.json is a published shape (any depth), else None."""
    ignored = {"num_hidden_layers", "eos_token_id", "pad_token_id"}
    for name, shape in SHAPES.items():
        if all(config.get(key) == value for key, value in shape.items() if key not in ignored):
            return f"LLaDA2.0-{name} shape"
    return None


def describe_model(model_dir: str, dtype: str, load_format: str) -> str:
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    name = shape_name(config) or os.path.basename(os.path.normpath(model_dir))
    weights = "dummy weights (--load-format dummy)" if load_format == "dummy" else "checkpoint weights"
    return (f"model: {name} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
            f"{config['num_experts']} experts top-{config['num_experts_per_tok']}, vocabulary {config['vocab_size']}), "
            f"{dtype_name(dtype, config.get('torch_dtype'))}, {weights}")


def describe_workload(work: dict[int, list[tuple[list[int], int]]], threshold: float, loop: str) -> str:
    """Requests per level, prompt and answer lengths, decoding settings of a {concurrency: workload} map."""
    counts = ", ".join(f"{len(requests)} at concurrency {c}" for c, requests in work.items())
    every = [request for requests in work.values() for request in requests]
    prompt_lengths = sorted(len(prompt) for prompt, _ in every)
    answer_lengths = sorted(length for _, length in every)

    def span(lengths: list[int]) -> str:
        return str(lengths[0]) if lengths[0] == lengths[-1] else f"{lengths[0]}–{lengths[-1]}"

    return (f"workload: {loop}, requests {counts}; prompts of {span(prompt_lengths)} tokens, answers of "
            f"{span(answer_lengths)} tokens (ignore_eos: fixed lengths), greedy, --accept-threshold {threshold}")


def mean_step_ms(run: dict) -> float:
    return 1000 * run["busy_s"] / max(run["steps"], 1)


def table_row(c: int, side: str, run: dict, ratio: str) -> str:
    cells = (c, side, len(run["ttfts"]), run["tokens"], f"{run['wall_s']:.2f}", f"{run['steps']:.0f}",
             f"{run['steps'] / run['wall_s']:.2f}", f"{run['tokens'] / run['wall_s']:.1f}",
             f"{statistics.mean(run['stream_tps']):.1f}", f"{1000 * statistics.median(run['ttfts']):.1f}",
             f"{1000 * percentile(run['ttfts'], 0.9):.1f}", f"{run['nfe'] / max(run['steps'], 1):.1f}",
             f"{mean_step_ms(run):.1f}", ratio)
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda run: run["wall_s"])[len(runs) // 2]


def decoding_note(run: dict, concurrency: int) -> str:
    """Tokens a forward and steps an answer of one run (decoding is the same on both sides)."""
    return (f"{run['tokens'] / max(run['nfe'], 1):.2f} tokens a forward ({run['nfe'] / len(run['ttfts']):.1f} "
            f"steps an answer) at concurrency {concurrency}")


def table_header() -> list[str]:
    return ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]


def level_rows(c: int, inproc: dict, http: dict) -> list[str]:
    """The two rows of one concurrency, from each side's median run."""
    ratio = (http["steps"] / http["wall_s"]) / (inproc["steps"] / inproc["wall_s"])
    return [table_row(c, "in-process", inproc, "–"), table_row(c, "HTTP", http, f"{ratio:.3f}")]


def overhead_parts(inproc: dict, http: dict) -> str:
    """The HTTP run's overhead split three ways against the in-process run: steps that ran slower (the
    engine's CPU-bound step time varies between processes and runs), extra steps (smaller batches:
    follow-ups that missed a step), and time the engine sat idle waiting for requests (transport)."""
    step = inproc["busy_s"] / max(inproc["steps"], 1)
    slower = http["busy_s"] - http["steps"] * step
    extra = (http["steps"] - inproc["steps"]) * step
    idle = http["wall_s"] - http["busy_s"]
    total = http["wall_s"] - inproc["wall_s"]   # = slower + extra + idle, up to the in-process run's own idle
    base = inproc["wall_s"] / 100
    return (f"overhead {total / base:+.1f}% = slower steps {slower / base:+.1f}% + extra steps {extra / base:+.1f}% "
            f"+ engine idle {idle / base:+.1f}% (in-process idle {(inproc['wall_s'] - inproc['busy_s']) / base:.1f}%)")


def diagnostic_lines(levels: list[int], runs: dict[str, dict[int, list[dict]]]) -> list[str]:
    """Per concurrency: every round's wall time, the overhead split, and where the HTTP run spent CPU."""
    lines = []
    for c in levels:
        walls = {side: sorted(round(run["wall_s"], 3) for run in runs[side][c]) for side in SIDES}
        inproc, http = median_run(runs["in-process"][c]), median_run(runs["HTTP"][c])
        busiest = sorted(http["cpu"].items(), key=lambda kv: -kv[1])[:6]
        slow = http["steps"] - http["steps_under_160ms"]
        lines += [f"\nwall s per round at concurrency {c}: in-process {walls['in-process']}, HTTP {walls['HTTP']}",
                  overhead_parts(inproc, http),
                  f"HTTP run at concurrency {c}: {slow:.0f} engine steps over 160 ms; admission waits: "
                  f"{http['waits_caught']:.0f} caught a follow-up, {http['waits_empty']:.0f} empty, "
                  f"{1000 * http['held_s']:.1f} ms held in all; client − engine "
                  f"{1000 * http['outside_engine_s']:.1f} ms a request; CPU seconds ({http['wall_s']:.2f} s wall): "
                  + (", ".join(f"{name} {sec:.2f}" for name, sec in busiest) or "not measured")]
    return lines
