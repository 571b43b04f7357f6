"""A doorbell wait in a gevent-patched process (a frontend) sleeps on one kept io watcher: it returns when
rung, drains the rings, times out when nobody rings, and lets other greenlets run meanwhile."""
import subprocess
import sys

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import os, tempfile
import gevent
from dlx.ipc.doorbell import Doorbell, cooperative

assert cooperative()
bell = Doorbell.create(os.path.join(tempfile.mkdtemp(), "bell"))
ticks = []

def other_stream():
    while True:
        ticks.append(1)
        gevent.sleep(0.002)

def ring_later():   # rings only once the other stream has run meanwhile: a rung wait proves the loop ran
    while len(ticks) < 3:
        gevent.sleep(0.002)
    bell.ring()
    bell.ring()

ticker = gevent.spawn(other_stream)
gevent.spawn(ring_later)
assert bell.wait(30.0), "the gevent loop was blocked during the wait"
assert bell.wait(0.05) is False, "both rings were drained by the first wait"
watcher = bell._watcher
bell.ring()
assert bell.wait(1.0) and bell._watcher is watcher   # one watcher for every wait
bell.close()
ticker.kill()
print("ok")
"""


def test_cooperative_wait_on_a_kept_watcher():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_plain_processes_use_select():
    from dlx.ipc.doorbell import cooperative
    assert not cooperative()
