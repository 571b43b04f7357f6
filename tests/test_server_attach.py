"""The second deployment form: `launch.py --no-frontend` runs the engine workers, and a plain
`gunicorn -k gevent 'dlx.frontend.app:create_app()'` attaches to them through the runtime file; the engine
says what it serves and how to attach in `dlx: ` lines only."""
import os
import signal
import subprocess
import sys
import time

import requests

from server_support import ROOT, wait_until_healthy
from tests_support import die_with_parent, free_port


def test_gunicorn_attaches_to_headless_pool(tiny_dir, tmp_path):
    runtime = str(tmp_path / "runtime.json")
    engine = subprocess.Popen([sys.executable, "launch.py", "--model", tiny_dir, "--device", "cpu", "--no-frontend",
                               "--runtime-file", runtime, "--max-model-len", "256"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent)
    frontend = None
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(runtime):
            assert engine.poll() is None and time.monotonic() < deadline, engine.stdout.read()
            time.sleep(0.2)
        assert os.stat(runtime).st_mode & 0o777 == 0o600   # it may hold the API key: this user's alone
        port = free_port()
        frontend = subprocess.Popen([sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                                     "-b", f"127.0.0.1:{port}", "dlx.frontend.app:create_app()"],
                                    cwd=ROOT, env={**os.environ, "DLX_RUNTIME": runtime},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(url, frontend, 120)
        out = requests.post(url + "/generate", json={"prompt": "hello", "temperature": 0, "max_tokens": 8}).json()
        assert out["finish_reason"] in ("stop", "length")
    finally:
        if frontend:
            frontend.send_signal(signal.SIGTERM)
            frontend.wait(30)
        engine.send_signal(signal.SIGTERM)
        assert engine.wait(60) == 0
    lines = engine.stdout.read().splitlines()
    assert [line for line in lines if not line.startswith("dlx: ")] == [], lines
    assert f"dlx: model: {os.path.basename(tiny_dir)} ({tiny_dir})" in lines
    assert "dlx: frontend workers: none (--no-frontend)" in lines
    assert lines[-2:] == [f"dlx: engine ready; attach frontends with DLX_RUNTIME={runtime} gunicorn -k gevent "
                          "'dlx.frontend.app:create_app()'", "dlx: stopped"]
    assert not os.path.exists(runtime)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"dlx_{engine.pid}_")]
