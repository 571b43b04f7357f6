"""`torchrun --nproc-per-node 2 launch.py …`: each torchrun process is a worker (TP 2 on gloo), rank 0 also
serves HTTP and alone says what it serves; SIGTERM to torchrun stops every worker and leaves no shared memory."""
import os
import signal
import subprocess
import sys

import pytest
import requests

from server_support import ROOT, wait_until_healthy
from tests_support import die_with_parent, free_port


@pytest.mark.slow
def test_torchrun_two_workers_serve_and_stop_cleanly(tiny_dir):
    port = free_port()
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-port", str(free_port()), "launch.py", "--model", tiny_dir, "--device", "cpu",
                             "--tensor-parallel-size", "2", "--max-model-len", "256", "--port", str(port),
                             "--frontend-workers", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=die_with_parent)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_healthy(url, proc, 180), proc.stdout.read()[-3000:] if proc.poll() is not None else ""
        out = requests.post(url + "/generate", json={"prompt": "hello", "temperature": 0, "max_tokens": 12}).json()
        assert out["finish_reason"] in ("stop", "length") and out["nfe"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    # torchrun itself reports the SIGTERM it received as a failure; the workers must have stopped cleanly
    log = proc.stdout.read()
    assert code in (0, 1) and "/dlx/" not in log and "launch.py\", line" not in log, log[-3000:]
    ours = [line for line in log.splitlines() if line.startswith("dlx: ")]   # torchrun's own lines aside
    assert ours[0].startswith("dlx: warning: no GPU in use"), log[-3000:]
    assert ours[1:] == [f"dlx: model: {os.path.basename(tiny_dir)} ({tiny_dir})", "dlx: device: cpu, dtype float32",
                        "dlx: engine workers: TP 2 × DP 1 = 2 processes, one per torchrun rank",
                        "dlx: frontend workers: 2 processes (gunicorn, gevent)", f"dlx: serving on {url}",
                        "dlx: stopped"], log[-3000:]
    assert "FutureWarning" not in log and "[INFO]" not in log, log[-3000:]
    assert not [n for n in set(os.listdir("/dev/shm")) - before if n.startswith("dlx_")]
