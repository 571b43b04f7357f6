"""Serving benchmark: one closed-loop workload in-process (engine API) and through HTTP (launch.py, SSE),
alternating rounds; prints requests/s, TTFT, per-stream tokens/s, engine steps and the HTTP + IPC overhead."""
import argparse
import http.client
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import requests
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlx.config import Config, auto_frontend_workers  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.engine.sampling_params import SamplingParams  # noqa: E402


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % 300 + 5 for j in range(20 + i % 17)] for i in range(n)]


def engine_args(args) -> dict:
    return dict(model=args.model, device=args.device, max_model_len=args.max_model_len, max_num_reqs=max(64, args.max_c),
                buffer_size=args.buffer_size, num_kv_pages=args.kv_pages, admission_wait_ms=args.admission_wait_ms)


def run_in_process(engine: LLMEngine, work: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    pending, live, tokens, first = list(work), {}, 0, {}
    steps = nfe = busy = 0
    started = time.perf_counter()
    while pending or live:
        while pending and len(live) < concurrency:
            req = engine.add_request(pending.pop(0), params)
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


def one_stream(conn: http.client.HTTPConnection, prompt: list[int], max_tokens: int) -> tuple[float, float, int, float]:
    """(TTFT, total seconds, tokens, seconds the engine reported from arrival to finish). The client is
    http.client on a kept-alive connection: `requests` adds ~0.5 ms of its own Python per round trip,
    which would be counted against the server."""
    t0 = time.perf_counter()
    ttft, engine_s, count = None, 0.0, 0
    body = json.dumps({"prompt": prompt, "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True,
                       "stream": True, "stream_mode": "block_append"})
    conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"/generate answered {response.status}: {response.read()[:200]!r}")
    while line := response.readline():
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("event") == "append" and event["token_ids"] and ttft is None:
            ttft = time.perf_counter() - t0
        if event.get("event") == "final":
            count = len(event["token_ids"])
            timing = event.get("timing") or {}
            engine_s = sum(timing.get(k, 0.0) for k in ("queue_s", "prefill_s", "decode_s"))
    return ttft or 0.0, time.perf_counter() - t0, count, engine_s


def engine_counters(url: str) -> dict:
    """Steps, forwards summed over requests and busy seconds, from the server's /metrics."""
    wanted = {"dlx_step_seconds_count": "steps", "dlx_step_seconds_sum": "busy_s", "dlx_nfe_total": "nfe",
              'dlx_step_seconds_bucket{le="0.16"}': "steps_under_160ms",
              'dlx_admission_waits_total{outcome="caught"}': "waits_caught",
              'dlx_admission_waits_total{outcome="empty"}': "waits_empty", "dlx_admission_wait_seconds_total": "held_s"}
    out = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def tree_cpu_seconds(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process in root's tree, keyed 'pid command'."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except OSError:
            continue
        if entry.isdigit():
            fields = text[text.rindex(")") + 2:].split()
            stats[int(entry)] = (int(fields[1]), text[text.index("(") + 1:text.rindex(")")],
                                 (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return {f"{pid} {stats[pid][1]}": stats[pid][2] for pid in tree if pid in stats}


def client_process(url: str, lanes: list[list[list[int]]], max_tokens: int, start_at: float) -> tuple:
    """One client process: a thread per lane, each sending its prompts one after another (a closed loop)
    from `start_at` on; returns (results, this process's CPU seconds, when its last lane finished)."""
    cpu_start = time.process_time()
    results, lock = [], threading.Lock()

    def lane(prompts: list[list[int]]) -> None:
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=600)
        for prompt in prompts:   # keep-alive: one connection per client, as real clients do
            res = one_stream(conn, prompt, max_tokens)
            with lock:
                results.append(res)
        conn.close()

    time.sleep(max(0.0, start_at - time.perf_counter()))
    threads = [threading.Thread(target=lane, args=(prompts,)) for prompts in lanes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.process_time() - cpu_start, time.perf_counter()


def run_http(url: str, work: list[list[int]], concurrency: int, max_tokens: int, clients: tuple,
             server_pid: int = 0) -> dict:
    """The closed loop through HTTP: `concurrency` client lanes spread over the client process pool, so the
    client's own Python is never what the server waits for. `clients` = (process pool, its size)."""
    lanes = [work[j::concurrency] for j in range(concurrency)]
    pool, processes = clients
    before = engine_counters(url)
    cpu_before = tree_cpu_seconds(server_pid) if server_pid else {}
    started = time.perf_counter() + 0.2   # every client process is waiting by then
    parts = pool.starmap(client_process, [(url, lanes[k::processes], max_tokens, started)
                                             for k in range(min(processes, concurrency))])
    wall = max(end for _, _, end in parts) - started
    results = [r for part, _, _ in parts for r in part]
    cpu = {}
    if server_pid:
        cpu_after = {**tree_cpu_seconds(server_pid), "client": sum(c for _, c, _ in parts)}
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items() if v - cpu_before.get(k, 0.0) > 0.005}
    time.sleep(0.3)   # the leader publishes counters at most every 0.1 s while busy
    after = engine_counters(url)
    return {"wall_s": wall, "tokens": sum(r[2] for r in results), "ttft_s": sum(r[0] for r in results) / len(results),
            "stream_tps": sum(r[2] / r[1] for r in results) / len(results),
            "outside_engine_s": sum(r[1] - r[3] for r in results) / len(results), "cpu": cpu,
            **{k: after.get(k, 0) - before.get(k, 0) for k in ("steps", "nfe", "busy_s", "steps_under_160ms",
                                                                       "waits_caught", "waits_empty", "held_s")}}


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


def start_server(args, port: int) -> subprocess.Popen:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in engine_args(args).items() if v is not None]
    if args.frontend_workers:
        flags.append(f"--frontend-workers={args.frontend_workers}")
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
    parser.add_argument("--rounds", type=int, default=3, help="alternating in-process/HTTP rounds (median)")
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
    url = f"http://127.0.0.1:{args.port}"
    inproc, http = {c: [] for c in levels}, {c: [] for c in levels}
    try:
        # Warm-up with the measured prompts at every level: kernels specialise (and compile) per shape,
        # and neither path should pay for compilation inside its timed runs. Then the paths alternate,
        # round after round (the idle one uses no CPU), and each reports its median run.
        for c in levels:
            run_in_process(engine, prompts(args.requests), c, args.max_tokens)
            run_http(url, prompts(args.requests), c, args.max_tokens, clients)
        for _ in range(args.rounds):
            for c in levels:
                inproc[c].append(run_in_process(engine, prompts(args.requests), c, args.max_tokens))
                http[c].append(run_http(url, prompts(args.requests), c, args.max_tokens, clients, server.pid))
    finally:
        clients[0].terminate()
        server.terminate()
        server.wait(60)
    spread = {c: (sorted(round(r["wall_s"], 3) for r in inproc[c]), sorted(round(r["wall_s"], 3) for r in http[c]))
              for c in levels}
    inproc = {c: sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2] for c, runs in inproc.items()}
    http = {c: sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2] for c, runs in http.items()}
    print(f"\nServing benchmark on {card} — model {os.path.basename(os.path.normpath(args.model))}, "
          f"{args.requests} requests × {args.max_tokens} tokens, greedy, "
          f"{'open loop (all submitted at once)' if args.open_loop else 'closed loop'}, "
          f"server --admission-wait-ms {args.admission_wait_ms}, {args.frontend_workers or auto_frontend_workers()} "
          f"frontend workers, {processes} client processes; median of {args.rounds} alternating rounds\n")
    print("| concurrency | path | wall s | requests/s | tokens/s | mean TTFT ms | per-stream tokens/s "
          "| steps | requests per step | mean step ms | engine busy | client − engine ms | HTTP+IPC overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in levels:
        a, b = inproc[c], http[c]
        print(f"| {c} | in-process | {a['wall_s']:.2f} | {args.requests / a['wall_s']:.2f} | {a['tokens'] / a['wall_s']:.0f} "
              f"| {a['ttft_s'] * 1000:.0f} | – | {a['steps']} | {a['nfe'] / max(a['steps'], 1):.1f} "
              f"| {1000 * a['busy_s'] / max(a['steps'], 1):.1f} "
              f"| {100 * a['busy_s'] / a['wall_s']:.0f}% | – | – |")
        overhead = (b["wall_s"] - a["wall_s"]) / a["wall_s"] * 100
        print(f"| {c} | HTTP | {b['wall_s']:.2f} | {args.requests / b['wall_s']:.2f} | {b['tokens'] / b['wall_s']:.0f} "
              f"| {b['ttft_s'] * 1000:.0f} | {b['stream_tps']:.1f} | {b['steps']:.0f} | {b['nfe'] / max(b['steps'], 1):.1f} "
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
