"""Starts and stops real dlx servers (`python launch.py …`) on loopback ports for tests."""
import os
import signal
import subprocess
import sys
import time

import requests

from tests_support import die_with_parent, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_until_healthy(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll GET /health until 200; False if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.3)
    return False


class ServerProcess:
    def __init__(self, model_dir: str | None, *flags: str, startup_timeout: float = 180.0, test_defaults: bool = True,
                 env: dict | None = None):
        """model_dir None starts the embedded default model, exactly as `python launch.py` does; env adds to
        (or overrides) this process's environment for the server."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join("/tmp", f"dlx-test-server-{self.port}.log")
        self.log = open(self.log_path, "w")
        defaults = ["--device", "cpu", "--max-model-len", "256", "--frontend-workers", "2"] if test_defaults else []
        model = ["--model", model_dir] if model_dir else []
        cmd = [sys.executable, "launch.py", *model, "--port", str(self.port), *defaults, *flags]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent, env={**os.environ, **(env or {})})
        self.wait_healthy(startup_timeout)

    def wait_healthy(self, timeout: float) -> None:
        if not wait_until_healthy(self.url, self.proc, timeout):
            raise RuntimeError(f"server not healthy (exit code {self.proc.poll()}):\n{self.output()}")

    def output(self) -> str:
        """The server's stdout and stderr so far (the last 6000 characters); after stop(), all it wrote."""
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path) as f:
            return f.read()[-6000:]

    def shm_entries(self) -> list[str]:
        return [n for n in os.listdir("/dev/shm") if n.startswith(f"dlx_{self.proc.pid}_")]

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def descendants(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def children_running(self, marker: bytes) -> list[int]:
        """The server's child processes whose command line contains `marker`: b"spawn_main" for the engine
        workers (multiprocessing spawn), b"launch.py" for gunicorn's forked frontends."""
        pids = []
        for pid in self.descendants():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker in f.read():
                        pids.append(pid)
            except FileNotFoundError:   # the child exited meanwhile
                continue
        return pids


def sse_events(response) -> list:
    """Parse an SSE body into JSON objects (and the string '[DONE]')."""
    import json
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events
