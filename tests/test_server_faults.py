"""Faults and load against a real server: client disconnects free KV pages, a killed worker is restarted and the
requests in flight complete, 200 concurrent streams all finish, an idle server sleeps, SIGTERM leaves no shm."""
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from server_support import ServerProcess, sse_events


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir, "--max-num-reqs", "64")
    yield srv
    assert srv.stop() == 0, srv.output()
    assert srv.shm_entries() == []
    assert srv.descendants() == []


def metric(server, name: str) -> float:
    for line in requests.get(server.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


LONG = {"prompt": list(range(10, 110)), "temperature": 0, "max_tokens": 150, "ignore_eos": True}


def test_stream_disconnect_frees_kv_pages(server):
    r = requests.post(server.url + "/generate", json={**LONG, "stream": True}, stream=True)
    lines = r.iter_lines()
    next(lines)
    assert wait_for(lambda: metric(server, "dlx_kv_pages_used") > 0, 10)
    r.close()   # the client goes away mid-stream
    assert wait_for(lambda: (metric(server, "dlx_kv_pages_used") == 0
                             and metric(server, "dlx_requests_running") == 0), 20)


def test_non_streaming_disconnect_frees_kv_pages(server):
    body = json.dumps(LONG).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert wait_for(lambda: metric(server, "dlx_requests_running") > 0, 10)
    assert wait_for(lambda: (metric(server, "dlx_kv_pages_used") == 0
                             and metric(server, "dlx_requests_running") == 0), 20)


def stream_one(url: str, i: int) -> tuple[bool, bool]:
    r = requests.post(url + "/generate", json={"prompt": f"request {i}: hello", "temperature": 0, "max_tokens": 12,
                                               "stream": True, "stream_mode": ["denoise", "block_append"][i % 2]},
                      stream=True, timeout=300)
    events = sse_events(r)
    return events[-1] == "[DONE]", any(isinstance(e, dict) and e.get("event") == "final" for e in events)


@pytest.mark.slow
def test_two_hundred_concurrent_streams_all_finish(server):
    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(lambda i: stream_one(server.url, i), range(200)))
    assert results == [(True, True)] * 200
    assert wait_for(lambda: metric(server, "dlx_kv_pages_used") == 0, 20)


def process_tree(root: int) -> list[int]:
    """`root` and every process below it (engine workers, gunicorn's frontends, their children)."""
    tree, frontier = [root], [root]
    while frontier:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", ",".join(map(str, frontier))], capture_output=True,
                             text=True)
        frontier = [int(p) for p in out.stdout.split()]
        tree += frontier
    return tree


def threads_usage(pids: list[int]) -> dict[tuple[int, int], tuple[int, float]]:
    """(pid, tid) → (voluntary context switches, CPU seconds) of every thread of `pids`. A thread that sleeps
    and wakes switches once per wake-up; a spinning one burns CPU instead."""
    usage = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    switches = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt"))
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    cpu = int(f.read().split()[0]) / 1e9
            except (FileNotFoundError, ProcessLookupError):
                continue
            usage[(pid, int(tid))] = (switches, cpu)
    return usage


def test_idle_server_does_not_spin(server):
    """After the burst of streams above, an idle server's processes sleep: each wakes about once a second
    (gunicorn's arbiter and each frontend's heartbeat, the engine leader's heartbeat); nothing polls. Wake-ups
    are counted rather than timed: one costs 0.5–5 ms of CPU depending on the machine (a VM more)."""
    time.sleep(2)   # let the last request's stragglers settle
    before = threads_usage(process_tree(server.proc.pid))
    time.sleep(10)
    after = threads_usage(list({pid for pid, _ in before}))
    wakes = {key: after[key][0] - before[key][0] for key in before if key in after}
    cpu = sum(after[key][1] - before[key][1] for key in before if key in after)
    busiest = sorted(wakes.items(), key=lambda kv: -kv[1])[:4]
    assert sum(wakes.values()) < 8 * 10, f"idle server threads woke {sum(wakes.values())} times in 10 s: {busiest}"
    assert max(wakes.values()) <= 15, f"an idle thread woke more than once a second: {busiest}"
    assert cpu < 0.2 * 10, f"idle server processes used {cpu:.2f} CPU-seconds in 10 s (one spinning core: 10)"


def named_semaphores(pid: int) -> list[str]:
    """Named POSIX semaphores a process maps that still have a name in /dev/shm (a killed process leaves
    them). glibc maps a semaphore under a temporary name, so mappings are matched to names by inode."""
    with open(f"/proc/{pid}/maps") as f:
        mapped = {int(line.split()[4]) for line in f if "/dev/shm/sem." in line}
    names = []
    for name in os.listdir("/dev/shm"):
        try:
            if name.startswith("sem.") and os.stat(os.path.join("/dev/shm", name)).st_ino in mapped:
                names.append(name)
        except FileNotFoundError:   # another process's semaphore went away meanwhile
            continue
    return names


def test_killed_worker_restarts_and_in_flight_requests_complete(server):
    """A SIGKILLed engine: /health turns 503 while the pool restarts, and the requests in flight continue on the
    new pool (tests/test_server_resume.py kills it at exact points) with the tokens of an uninterrupted run."""
    restarts, resumed = metric(server, "dlx_engine_restarts_total"), metric(server, "dlx_requests_resumed_total")
    r = requests.post(server.url + "/generate", json={**LONG, "max_tokens": 200, "stream": True},
                      stream=True, timeout=120)
    lines = r.iter_lines()
    next(lines)
    plain = ThreadPoolExecutor(1).submit(requests.post, server.url + "/generate", timeout=120,
                                         json={**LONG, "max_tokens": 200, "threshold": 1.0})
    assert wait_for(lambda: metric(server, "dlx_requests_running") == 2, 30, every=0.02)
    workers = server.children_running(b"spawn_main")
    assert workers and all(named_semaphores(pid) == [] for pid in workers), "a SIGKILL would leak these"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    saw_unhealthy = wait_for(lambda: requests.get(server.url + "/health").status_code == 503, 10, every=0.02)
    assert saw_unhealthy
    frames = [json.loads(line[len(b"data: "):]) for line in lines if line and line != b"data: [DONE]"]
    assert not any(f.get("event") == "error" for f in frames)
    streamed = frames[-1]
    finished = plain.result()
    assert finished.status_code == 200 and streamed["event"] == "final"
    assert metric(server, "dlx_engine_restarts_total") == restarts + 1
    assert metric(server, "dlx_requests_resumed_total") >= resumed + 2
    assert wait_for(lambda: requests.get(server.url + "/health").status_code == 200, 180, every=0.5)
    again = requests.post(server.url + "/generate", json={**LONG, "max_tokens": 200}).json()
    assert streamed["token_ids"] == again["token_ids"] and streamed["finish_reason"] == "length"
    again = requests.post(server.url + "/generate", json={**LONG, "max_tokens": 200, "threshold": 1.0}).json()
    assert finished.json()["token_ids"] == again["token_ids"]
    # after a restart the launcher (supervisor thread included) is idle again, not spinning
    time.sleep(1)
    before = threads_usage([server.proc.pid])
    time.sleep(3)
    after = threads_usage([server.proc.pid])
    wakes = sum(after[key][0] - before[key][0] for key in before if key in after)
    assert wakes <= 8, f"the launcher's threads woke {wakes} times in 3 s (gunicorn's arbiter: once a second)"
