"""`--engine-cpus`: every thread of the engine worker runs on its own CPU, the launcher and the frontends on
the others, and the server answers as usual."""
import os

import pytest
import requests

from server_support import ServerProcess

ALLOWED = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs: one for the engine, one for the rest")


def thread_cpus(pid: int) -> list[set[int]]:
    """The allowed CPUs of every thread of a process."""
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


def test_engine_worker_and_frontends_on_separate_cpus(tiny_dir):
    engine_cpu = ALLOWED[-1]
    server = ServerProcess(tiny_dir, "--engine-cpus", str(engine_cpu))
    try:
        out = requests.post(server.url + "/generate", json={"prompt": "hello", "temperature": 0, "max_tokens": 8})
        assert out.status_code == 200 and out.json()["finish_reason"] in ("stop", "length")
        workers, frontends = server.children_running(b"spawn_main"), server.children_running(b"launch.py")
        assert len(workers) == 1 and len(frontends) == 2
        assert all(cpus == {engine_cpu} for cpus in thread_cpus(workers[0]))
        for pid in [server.proc.pid, *frontends]:
            assert all(engine_cpu not in cpus for cpus in thread_cpus(pid))
    finally:
        assert server.stop() == 0
