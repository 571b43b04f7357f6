"""Faults and load against a real server: client disconnects free KV pages, a killed worker gives error
frames then recovery, 200 concurrent streams all finish, an idle server sleeps, SIGTERM leaves no shm."""
import json
import os
import signal
import socket
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


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def test_idle_server_does_not_spin(server):
    time.sleep(2)   # let the last request's stragglers settle
    pids = [server.proc.pid] + server.descendants()
    before = cpu_seconds(pids)
    time.sleep(10)   # long enough that the 10 ms tick of each process's CPU time blurs the sum little
    used = cpu_seconds(pids) - before
    # Five processes' periodic wake-ups (ring timeouts, heartbeats, gunicorn's worker loop) cost about 0.035
    # CPU-s a second after the burst of 200 streams above (0.015 after quiet traffic); one spinning core is 1.0.
    assert used < 0.05 * 10, f"idle server processes used {used:.2f} CPU-seconds in 10 s"


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


def test_killed_worker_fails_requests_then_recovers(server):
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
    rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert any(b'"event":"error"' in line for line in rest)
    failed = plain.result()   # the non-streaming request: a 500 that says why, in the error shape
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    assert "engine worker died" in failed.json()["error"]["message"]
    saw_unhealthy = wait_for(lambda: requests.get(server.url + "/health").status_code == 503, 10, every=0.02)
    assert saw_unhealthy
    assert wait_for(lambda: requests.get(server.url + "/health").status_code == 200, 180, every=0.5)
    ok = requests.post(server.url + "/generate", json={"prompt": "hello", "temperature": 0, "max_tokens": 8})
    assert ok.status_code == 200 and ok.json()["finish_reason"] in ("stop", "length")
    # after a restart the launcher (supervisor thread included) is idle again, not spinning
    time.sleep(1)
    before = cpu_seconds([server.proc.pid])
    time.sleep(3)
    assert cpu_seconds([server.proc.pid]) - before < 0.1
