"""Serving benchmark: one closed-loop workload in-process (engine API) and through HTTP (launch.py, SSE),
alternating rounds; prints requests/s, TTFT, per-stream tokens/s, engine steps and the HTTP + IPC overhead."""
import argparse
import multiprocessing
import os
import subprocess
import sys
import time

import requests
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlx.config import Config, auto_frontend_workers  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.params import SamplingParams  # noqa: E402
from dlx.workers.affinity import pin_process  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_http import run_http  # noqa: E402


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % 300 + 5 for j in range(20 + i % 17)] for i in range(n)]


def workload(n: int, max_tokens: int, longest: int | None) -> list[tuple[list[int], int]]:
    """(prompt, answer length) per request: every answer max_tokens long (all finish in lockstep), or, with
    `longest`, lengths spread evenly over [max_tokens, longest] in a fixed shuffled order (as real traffic)."""
    if not longest or longest <= max_tokens:
        return [(prompt, max_tokens) for prompt in prompts(n)]
    span = longest - max_tokens
    return [(prompt, max_tokens + (37 * i) % n * span // max(n - 1, 1)) for i, prompt in enumerate(prompts(n))]


def engine_args(args) -> dict:
    chosen = dict(model=args.model, device=args.device, max_model_len=args.max_model_len,
                  max_num_reqs=max(64, args.max_c), buffer_size=args.buffer_size, num_kv_pages=args.kv_pages,
                  admission_wait_ms=args.admission_wait_ms, accept_threshold=args.accept_threshold)
    return {name: value for name, value in chosen.items() if value is not None}


def run_in_process(engine: LLMEngine, work: list[tuple[list[int], int]], concurrency: int) -> dict:
    pending, live, tokens, first = list(work), {}, 0, {}
    steps = nfe = busy = 0
    started = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency:
            prompt, max_tokens = pending.pop(0)
            req = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
            live[req.rid] = (req, time.perf_counter())
        step_start = time.perf_counter()
        outputs = engine.step()
        busy += time.perf_counter() - step_start
        steps, nfe = steps + 1, nfe + engine.last_metrics.num_requests
        for out in outputs:
            req, t0 = live[out.rid]
            if out.rid not in first and out.stable_len > 0:
                first[out.rid] = time.perf_counter() - t0
            if out.finished:
                tokens += len(out.output)
                del live[out.rid]
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": tokens, "ttft_s": sum(first.values()) / max(1, len(first)),
            "steps": steps, "nfe": nfe, "busy_s": busy}


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


def pin_engines(cpu: int, client_pids: list[int]) -> None:
    """Both engines on one CPU and the clients off it (the server, started with --engine-cpus, keeps its
    frontends off it too): the paths then differ in their transport only, not in where their steps ran."""
    for pid in client_pids:
        os.sched_setaffinity(pid, os.sched_getaffinity(0) - {cpu})
    # Every thread of the in-process engine, on one torch thread as the server's pinned worker (two torch
    # threads spinning on one core crawl).
    pin_process({cpu})
    torch.set_num_threads(1)


def start_server(args, port: int) -> subprocess.Popen:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in engine_args(args).items()]
    if args.frontend_workers:
        flags.append(f"--frontend-workers={args.frontend_workers}")
    if args.pin_engines is not None:
        flags.append(f"--engine-cpus={args.pin_engines}")
    proc = subprocess.Popen([sys.executable, "launch.py", *flags, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-tokens-to", type=int, default=None, metavar="N",
                        help="answer lengths spread over [--max-tokens, N] instead of all equal (not in lockstep)")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--buffer-size", type=int, default=1)
    parser.add_argument("--kv-pages", type=int, default=None)
    parser.add_argument("--port", type=int, default=18321)
    parser.add_argument("--admission-wait-ms", type=float, default=5.0,
                        help="the server's --admission-wait-ms (0 = start the next step at once)")
    parser.add_argument("--frontend-workers", type=int, default=None,
                        help="the server's --frontend-workers (default: the server's own, one per 4 cores)")
    parser.add_argument("--client-processes", type=int, default=8,
                        help="HTTP client processes the concurrent clients are spread over")
    parser.add_argument("--accept-threshold", type=float, default=None,
                        help="both engines' --accept-threshold: closer to 1 commits fewer tokens a forward, so "
                             "answers last more steps (LLaDA2.0-mini: ~2.55 tokens a forward at its 0.95)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating in-process/HTTP rounds (median)")
    parser.add_argument("--pin-engines", type=int, default=None, metavar="CPU",
                        help="run both engines on this CPU and the frontends and clients on the others")
    parser.add_argument("--open-loop", action="store_true",
                        help="submit every request at once (concurrency = --requests): isolates transport cost "
                             "from the admission lag a closed loop of very short requests adds")
    args = parser.parse_args()
    levels = [args.requests] if args.open_loop else [int(c) for c in args.concurrency.split(",")]
    args.max_c = max(levels)
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    # Client processes are forked before anything touches the GPU; they only speak HTTP.
    processes = min(args.client_processes, max(levels))
    clients = (multiprocessing.get_context("fork").Pool(processes), processes)
    engine = LLMEngine(Config(**engine_args(args)).finalize())
    server = start_server(args, args.port)
    if args.pin_engines is not None:
        pin_engines(args.pin_engines, [w.pid for w in clients[0]._pool])
    url = f"http://127.0.0.1:{args.port}"
    inproc, http = {c: [] for c in levels}, {c: [] for c in levels}
    try:
        # Warm-up with the measured prompts at every level: kernels specialise (and compile) per shape,
        # and neither path should pay for compilation inside its timed runs. Then the paths alternate,
        # round after round (the idle one uses no CPU), and each reports its median run.
        work = workload(args.requests, args.max_tokens, args.max_tokens_to)
        for c in levels:
            run_in_process(engine, work, c)
            run_http(url, work, c, clients)
        for _ in range(args.rounds):
            for c in levels:
                inproc[c].append(run_in_process(engine, work, c))
                http[c].append(run_http(url, work, c, clients, server.pid))
    finally:
        clients[0].terminate()
        server.terminate()
        server.wait(60)
    spread = {c: (sorted(round(r["wall_s"], 3) for r in inproc[c]), sorted(round(r["wall_s"], 3) for r in http[c]))
              for c in levels}
    inproc = {c: sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2] for c, runs in inproc.items()}
    http = {c: sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2] for c, runs in http.items()}
    first = inproc[levels[0]]   # decoding is the same on both paths: tokens a forward, steps an answer
    print(f"\nServing benchmark on {card} — model {os.path.basename(os.path.normpath(args.model))}, "
          f"{args.requests} requests × {args.max_tokens}{f'–{args.max_tokens_to}' if args.max_tokens_to else ''} "
          f"tokens, greedy, "
          f"{'open loop (all submitted at once)' if args.open_loop else 'closed loop'}, "
          f"server --admission-wait-ms {args.admission_wait_ms}, "
          f"{'' if args.accept_threshold is None else f'--accept-threshold {args.accept_threshold}, '}"
          f"{first['tokens'] / max(first['nfe'], 1):.2f} tokens a forward ({first['nfe'] / args.requests:.1f} "
          f"steps an answer), "
          f"{args.frontend_workers or auto_frontend_workers()} frontend workers, {processes} client processes"
          f"{'' if args.pin_engines is None else f', both engines pinned to CPU {args.pin_engines}'}; "
          f"median of {args.rounds} alternating rounds\n")
    print("| concurrency | path | wall s | requests/s | tokens/s | mean TTFT ms | per-stream tokens/s "
          "| steps | requests per step | mean step ms | engine busy | client − engine ms | HTTP+IPC overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        a, b = inproc[c], http[c]
        print(f"| {c} | in-process | {a['wall_s']:.2f} | {args.requests / a['wall_s']:.2f} "
              f"| {a['tokens'] / a['wall_s']:.0f} "
              f"| {a['ttft_s'] * 1000:.0f} | – | {a['steps']} | {a['nfe'] / max(a['steps'], 1):.1f} "
              f"| {1000 * a['busy_s'] / max(a['steps'], 1):.1f} "
              f"| {100 * a['busy_s'] / a['wall_s']:.0f}% | – | – |")
        overhead = (b["wall_s"] - a["wall_s"]) / a["wall_s"] * 100
        print(f"| {c} | HTTP | {b['wall_s']:.2f} | {args.requests / b['wall_s']:.2f} | {b['tokens'] / b['wall_s']:.0f} "
              f"| {b['ttft_s'] * 1000:.0f} | {b['stream_tps']:.1f} | {b['steps']:.0f} "
              f"| {b['nfe'] / max(b['steps'], 1):.1f} "
              f"| {1000 * b['busy_s'] / max(b['steps'], 1):.1f} "
              f"| {100 * b['busy_s'] / b['wall_s']:.0f}% | {b['outside_engine_s'] * 1000:.1f} | {overhead:+.1f}% |")

    for c in levels:
        print(f"\nwall s per round at concurrency {c}: in-process {spread[c][0]}, HTTP {spread[c][1]}")
        print(overhead_parts(inproc[c], http[c]))
        busiest = sorted(http[c]["cpu"].items(), key=lambda kv: -kv[1])[:6]
        slow = http[c]["steps"] - http[c]["steps_under_160ms"]
        print(f"\nHTTP run at concurrency {c}: {slow:.0f} engine steps over 160 ms. Admission waits: "
              f"{http[c]['waits_caught']:.0f} caught a follow-up, {http[c]['waits_empty']:.0f} empty, "
              f"{1000 * http[c]['held_s']:.1f} ms held in all. CPU seconds ({http[c]['wall_s']:.2f} s wall): "
              + ", ".join(f"{name} {sec:.2f}" for name, sec in busiest))


if __name__ == "__main__":
    main()
