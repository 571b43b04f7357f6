"""Serving benchmark: the same closed-loop workload in-process (Python engine API) and through HTTP
(launch.py + SSE streams), at several concurrencies; prints requests/s, TTFT, per-stream tokens/s and
the HTTP + IPC overhead. `python bench/serve.py --model DIR [--device cuda] [--concurrency 1,32]`."""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

import requests
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlx.config import Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.engine.sampling_params import SamplingParams  # noqa: E402


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % 300 + 5 for j in range(20 + i % 17)] for i in range(n)]


def engine_args(args) -> dict:
    return dict(model=args.model, device=args.device, max_model_len=args.max_model_len, max_num_reqs=max(64, args.max_c),
                buffer_size=args.buffer_size, num_kv_pages=args.kv_pages)


def run_in_process(engine: LLMEngine, work: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    pending, live, tokens, first = list(work), {}, 0, {}
    started = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency:
            req = engine.add_request(pending.pop(0), params)
            live[req.rid] = (req, time.perf_counter())
        for out in engine.step():
            req, t0 = live[out.rid]
            if out.rid not in first and out.stable_len > 0:
                first[out.rid] = time.perf_counter() - t0
            if out.finished:
                tokens += len(out.output)
                del live[out.rid]
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": tokens, "ttft_s": sum(first.values()) / max(1, len(first))}


def one_stream(url: str, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    ttft = None
    r = requests.post(url + "/generate", json={"prompt": prompt, "temperature": 0, "max_tokens": max_tokens,
                                               "ignore_eos": True, "stream": True, "stream_mode": "block_append"},
                      stream=True, timeout=600)
    count = 0
    for line in r.iter_lines():
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("event") == "append" and event["token_ids"] and ttft is None:
            ttft = time.perf_counter() - t0
        if event.get("event") == "final":
            count = len(event["token_ids"])
    return ttft or 0.0, time.perf_counter() - t0, count


def run_http(url: str, work: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    lock, results, queue = threading.Lock(), [], list(work)

    def client():
        while True:
            with lock:
                if not queue:
                    return
                prompt = queue.pop(0)
            res = one_stream(url, prompt, max_tokens)
            with lock:
                results.append(res)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": sum(r[2] for r in results), "ttft_s": sum(r[0] for r in results) / len(results),
            "stream_tps": sum(r[2] / r[1] for r in results) / len(results)}


def start_server(args, port: int) -> subprocess.Popen:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in engine_args(args).items() if v is not None]
    proc = subprocess.Popen([sys.executable, "launch.py", *flags, "--port", str(port), "--frontend-workers", "2"],
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
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--buffer-size", type=int, default=1)
    parser.add_argument("--kv-pages", type=int, default=None)
    parser.add_argument("--port", type=int, default=18321)
    parser.add_argument("--open-loop", action="store_true",
                        help="submit every request at once (concurrency = --requests): isolates transport cost "
                             "from the admission lag a closed loop of very short requests adds")
    args = parser.parse_args()
    levels = [args.requests] if args.open_loop else [int(c) for c in args.concurrency.split(",")]
    args.max_c = max(levels)
    card = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    engine = LLMEngine(Config(**engine_args(args)).finalize())
    run_in_process(engine, prompts(4), 2, 8)   # warm-up
    inproc = {c: run_in_process(engine, prompts(args.requests), c, args.max_tokens) for c in levels}
    del engine
    if args.device == "cuda":
        torch.cuda.empty_cache()
    server = start_server(args, args.port)
    try:
        url = f"http://127.0.0.1:{args.port}"
        run_http(url, prompts(4), 2, 8)   # warm-up
        http = {c: run_http(url, prompts(args.requests), c, args.max_tokens) for c in levels}
    finally:
        server.terminate()
        server.wait(60)
    print(f"\nServing benchmark on {card} — model {os.path.basename(os.path.normpath(args.model))}, "
          f"{args.requests} requests × {args.max_tokens} tokens, greedy, "
          f"{'open loop (all submitted at once)' if args.open_loop else 'closed loop'}\n")
    print("| concurrency | path | wall s | requests/s | tokens/s | mean TTFT ms | per-stream tokens/s | HTTP+IPC overhead |")
    print("|---|---|---|---|---|---|---|---|")
    for c in levels:
        a, b = inproc[c], http[c]
        print(f"| {c} | in-process | {a['wall_s']:.2f} | {args.requests / a['wall_s']:.2f} | {a['tokens'] / a['wall_s']:.0f} "
              f"| {a['ttft_s'] * 1000:.0f} | – | – |")
        overhead = (b["wall_s"] - a["wall_s"]) / a["wall_s"] * 100
        print(f"| {c} | HTTP | {b['wall_s']:.2f} | {args.requests / b['wall_s']:.2f} | {b['tokens'] / b['wall_s']:.0f} "
              f"| {b['ttft_s'] * 1000:.0f} | {b['stream_tps']:.1f} | {overhead:+.1f}% |")


if __name__ == "__main__":
    main()
