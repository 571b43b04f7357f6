"""The serving benchmark's HTTP side: closed-loop client processes streaming /generate over kept-alive
connections, and what the server reports (engine counters from /metrics, CPU seconds of its processes)."""
import http.client
import json
import os
import threading
import time
from urllib.parse import urlsplit

import requests


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


def client_process(url: str, lanes: list[list[tuple[list[int], int]]], start_at: float) -> tuple:
    """One client process: a thread per lane, each sending its prompts one after another (a closed loop)
    from `start_at` on; returns (results, this process's CPU seconds, when its last lane finished)."""
    cpu_start = time.process_time()
    results, lock = [], threading.Lock()

    def lane(requests_: list[tuple[list[int], int]]) -> None:
        conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=600)
        for prompt, max_tokens in requests_:   # keep-alive: one connection per client, as real clients do
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


def run_http(url: str, work: list[tuple[list[int], int]], concurrency: int, clients: tuple,
             server_pid: int = 0) -> dict:
    """The closed loop through HTTP: `concurrency` client lanes spread over the client process pool, so the
    client's own Python is never what the server waits for. `clients` = (process pool, its size). Engine steps
    are the server's /metrics counters before and after: the engine is idle outside the clients' window, so they
    count the steps of that window, as the in-process loop counts its own."""
    lanes = [work[j::concurrency] for j in range(concurrency)]
    pool, processes = clients
    before = engine_counters(url)
    cpu_before = tree_cpu_seconds(server_pid) if server_pid else {}
    started = time.perf_counter() + 0.2   # every client process is waiting by then
    parts = pool.starmap(client_process, [(url, lanes[k::processes], started)
                                             for k in range(min(processes, concurrency))])
    wall = max(end for _, _, end in parts) - started
    results = [r for part, _, _ in parts for r in part]
    cpu = {}
    if server_pid:
        cpu_after = {**tree_cpu_seconds(server_pid), "client": sum(c for _, c, _ in parts)}
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items() if v - cpu_before.get(k, 0.0) > 0.005}
    time.sleep(0.3)   # the leader publishes counters at most every 0.1 s while busy
    after = engine_counters(url)
    return {"wall_s": wall, "tokens": sum(r[2] for r in results), "ttfts": [r[0] for r in results],
            "stream_tps": [r[2] / r[1] for r in results],
            "outside_engine_s": sum(r[1] - r[3] for r in results) / len(results), "cpu": cpu,
            **{k: after.get(k, 0) - before.get(k, 0) for k in ("steps", "nfe", "busy_s", "steps_under_160ms",
                                                                       "waits_caught", "waits_empty", "held_s")}}
