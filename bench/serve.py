"""Serving benchmark: one closed-loop workload in-process (engine API) and through HTTP (launch.py, SSE) at each
concurrency, on one machine; prints engine steps/s, tokens/s, TTFT, and HTTP ÷ in-process steps/s per level."""
import argparse
import gc
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable

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
from serve_report import (decoding_note, describe_model, describe_workload, diagnostic_lines, level_rows,  # noqa: E402
                          median_run, table_header, versions)

Workload = list[tuple[list[int], int]]


def prompts(n: int, length: int | None = None) -> list[list[int]]:
    """n prompts of token ids 5-304 (above the special tokens 0-4): `length` tokens each, or 20-36."""
    return [[(7 * i + 13 * j) % 300 + 5 for j in range(length or 20 + i % 17)] for i in range(n)]


def workload(n: int, max_tokens: int, longest: int | None, prompt_tokens: int | None = None) -> Workload:
    """(prompt, answer length) per request: every answer max_tokens long (all finish in lockstep), or, with
    `longest`, lengths spread evenly over [max_tokens, longest] in a fixed shuffled order (as real traffic)."""
    if not longest or longest <= max_tokens:
        return [(prompt, max_tokens) for prompt in prompts(n, prompt_tokens)]
    span = longest - max_tokens
    return [(prompt, max_tokens + (37 * i) % n * span // max(n - 1, 1))
            for i, prompt in enumerate(prompts(n, prompt_tokens))]


def level_workloads(args, levels: list[int]) -> dict[int, Workload]:
    """The workload of each concurrency: --requests-per-client × concurrency requests, or --requests."""
    def count(c: int) -> int:
        return args.requests_per_client * c if args.requests_per_client and not args.open_loop else args.requests
    return {c: workload(count(c), args.max_tokens, args.max_tokens_to, args.prompt_tokens) for c in levels}


def engine_args(args) -> dict:
    chosen = dict(model=args.model, device=args.device, dtype=args.dtype, load_format=args.load_format,
                  max_model_len=args.max_model_len, max_num_reqs=max(64, args.max_c), buffer_size=args.buffer_size,
                  num_kv_pages=args.kv_pages, admission_wait_ms=args.admission_wait_ms,
                  accept_threshold=args.accept_threshold)
    return {name: value for name, value in chosen.items() if value is not None}


def run_in_process(engine: LLMEngine, work: Workload, concurrency: int) -> dict:
    """The closed loop on the engine API: a request leaves, the next one joins before the next step. Steps are
    counted as the server's leader counts them: every engine.step() call."""
    pending, live, done = list(work), {}, []
    steps = nfe = 0
    busy = 0.0
    started = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency:
            prompt, max_tokens = pending.pop(0)
            req = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
            live[req.rid] = [time.perf_counter(), None]   # added at, TTFT
        step_start = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        busy += now - step_start
        steps, nfe = steps + 1, nfe + engine.last_metrics.num_requests
        for out in outputs:
            stamps = live[out.rid]
            if stamps[1] is None and out.stable_len > 0:
                stamps[1] = now - stamps[0]
            if out.finished:
                done.append((stamps[1] or now - stamps[0], now - stamps[0], len(out.output)))
                del live[out.rid]
    return {"wall_s": time.perf_counter() - started, "tokens": sum(tokens for _, _, tokens in done),
            "ttfts": [ttft for ttft, _, _ in done], "stream_tps": [tokens / seconds for _, seconds, tokens in done],
            "steps": steps, "nfe": nfe, "busy_s": busy}


def pin_engines(cpu: int, client_pids: list[int]) -> None:
    """Both engines on one CPU and the clients off it (the server, started with --engine-cpus, keeps its
    frontends off it too): the paths then differ in their transport only, not in where their steps ran."""
    for pid in client_pids:
        os.sched_setaffinity(pid, os.sched_getaffinity(0) - {cpu})
    # Every thread of the in-process engine, on one torch thread as the server's pinned worker (two torch
    # threads spinning on one core crawl).
    pin_process({cpu})
    torch.set_num_threads(1)


def start_server(args, port: int, cpus: set[int]) -> subprocess.Popen:
    """launch.py with the in-process engine's settings, on `cpus` (this process may be pinned by then); its
    output goes to a log file, whose end is shown if it never becomes healthy."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in engine_args(args).items()]
    if args.frontend_workers:
        flags.append(f"--frontend-workers={args.frontend_workers}")
    if args.pin_engines is not None:
        flags.append(f"--engine-cpus={args.pin_engines}")
    log = tempfile.NamedTemporaryFile("w+", prefix="dlx-bench-server-", suffix=".log", delete=False)
    restore = None if os.sched_getaffinity(0) == cpus else lambda: os.sched_setaffinity(0, cpus)
    proc = subprocess.Popen([sys.executable, "launch.py", *flags, "--port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=restore)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    log.seek(0)
    raise RuntimeError(f"server did not become healthy (exit code {proc.poll()}); {log.name} ends:\n"
                       f"{log.read()[-3000:]}")


def fits_beside(engine: LLMEngine) -> bool:
    """Whether the server's engine fits on the card beside this one: as much as this one reserves, plus 15 % and
    2 GiB (activations of the largest batch), must be free. Always true on the CPU."""
    if engine.cfg.device != "cuda":
        return True
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    return free > torch.cuda.memory_reserved() * 1.15 + (2 << 30)


def run_levels(levels: list[int], rounds: int, sides: dict[str, Callable[[int, bool], dict]], runs: dict,
               level_done: Callable[[int], None]) -> None:
    """Level after level: a warm-up run (warm=True) of each side, then `rounds` runs of each, the sides
    alternating (the idle one uses no CPU); fills runs[side][concurrency] and calls level_done(concurrency)."""
    for c in levels:
        for side, run in sides.items():
            run(c, True)
            runs.setdefault(side, {})[c] = []
        for _ in range(rounds):
            for side, run in sides.items():
                runs[side][c].append(run(c, False))
        level_done(c)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a checkpoint, or a config-only directory "
                        "(python -m dlx.models.shapes) with --load-format dummy")
    parser.add_argument("--load-format", default="auto", choices=("auto", "dummy"), help="both engines' weights")
    parser.add_argument("--dtype", default="auto", help="both engines' --dtype (auto: the checkpoint's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--requests", type=int, default=64, help="requests at every concurrency")
    parser.add_argument("--requests-per-client", type=int, default=None, metavar="K",
                        help="K × concurrency requests at each concurrency instead of --requests")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="every prompt this long (default 20-36)")
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
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per side and level (median)")
    parser.add_argument("--order", default="auto", choices=("auto", "alternate", "sequential"),
                        help="alternate the sides round by round, or run every in-process round first and free "
                             "that engine before the server starts; auto alternates when both engines fit")
    parser.add_argument("--pin-engines", type=int, default=None, metavar="CPU",
                        help="run both engines on this CPU and the frontends and clients on the others")
    parser.add_argument("--open-loop", action="store_true",
                        help="submit every request at once (concurrency = --requests): isolates transport cost "
                             "from the admission lag a closed loop of very short requests adds")
    return parser.parse_args()


def header_lines(args, card: str, work: dict[int, Workload], threshold: float, first: dict, sequential: bool,
                 processes: int) -> list[str]:
    """Title, then one line each: versions, model, workload (with how it decoded at the first level), method."""
    loop = "open loop (all submitted at once)" if args.open_loop else "closed loop"
    order = "every in-process run first" if sequential else "sides alternating"
    method = (f"method: the median run of {args.rounds} per level and side ({order}), after a warm-up of one "
              f"request per client; steps/s = engine steps ÷ wall s (HTTP: steps from the server's /metrics); "
              f"server: --frontend-workers {args.frontend_workers or auto_frontend_workers()}, "
              f"--admission-wait-ms {args.admission_wait_ms}; client processes: {processes}"
              f"{'' if args.pin_engines is None else f'; both engines pinned to CPU {args.pin_engines}'}")
    facts = (versions(), describe_model(args.model, args.dtype, args.load_format),
             f"{describe_workload(work, threshold, loop)}; {decoding_note(first, next(iter(work)))}", method)
    return [f"\nServing benchmark on {card}: in-process (engine API) against HTTP (launch.py, SSE block_append)\n",
            *(f"- {fact}" for fact in facts), ""]


def main() -> None:
    args = parse_args()
    levels = [args.requests] if args.open_loop else [int(c) for c in args.concurrency.split(",")]
    args.max_c = max(levels)
    work = level_workloads(args, levels)
    all_cpus = os.sched_getaffinity(0)
    # Client processes are forked before anything touches the GPU; they only speak HTTP.
    processes = min(args.client_processes, max(levels))
    clients = (multiprocessing.get_context("fork").Pool(processes), processes)
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    engine = LLMEngine(Config(**engine_args(args)).finalize())
    threshold = engine.cfg.accept_threshold
    sequential = args.order == "sequential" or (args.order == "auto" and not fits_beside(engine))
    if args.pin_engines is not None:
        pin_engines(args.pin_engines, [w.pid for w in clients[0]._pool])
    url, server, runs = f"http://127.0.0.1:{args.port}", None, {}

    def lanes_or_all(c: int, warm: bool) -> Workload:
        """Warm-up runs one request per lane: kernels specialise (and compile) per shape, and neither side
        should pay for that inside its timed runs."""
        return work[c][:c] if warm else work[c]

    def show(c: int) -> None:
        """A level's rows as soon as both sides ran it (the header first): a run cut short by a time limit
        still shows the levels it finished."""
        if c == levels[0]:
            first = median_run(runs["in-process"][c])
            print("\n".join(header_lines(args, card, work, threshold, first, sequential, processes)
                            + table_header()), flush=True)
        print("\n".join(level_rows(c, median_run(runs["in-process"][c]), median_run(runs["HTTP"][c]))), flush=True)

    sides = {"in-process": lambda c, warm: run_in_process(engine, lanes_or_all(c, warm), c)}
    try:
        if sequential:
            run_levels(levels, args.rounds, sides, runs, lambda c: None)
            sides, engine = {}, None
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        server = start_server(args, args.port, all_cpus)
        sides["HTTP"] = lambda c, warm: run_http(url, lanes_or_all(c, warm), c, clients, 0 if warm else server.pid)
        run_levels(levels, args.rounds, sides, runs, show)
    finally:
        clients[0].terminate()
        if server is not None:
            server.terminate()
            server.wait(60)
    print("\n".join(diagnostic_lines(levels, runs)))


if __name__ == "__main__":
    main()
