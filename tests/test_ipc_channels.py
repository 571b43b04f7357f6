"""Behaviour tests for dlx.ipc channels: msgpack dicts between a frontend process and the engine,
claiming and re-claiming, gevent cooperation, resource-tracker hygiene and cleanup_stale."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ipc_support import CHILD_WAIT, TAG, no_leftover_shm, ours, prefix  # noqa: F401 (fixtures used by name)
from dlx.ipc import ChannelSet, NoFreeChannel, ShmRing, cleanup_stale, run_prefix

SPAWN = mp.get_context("spawn")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _start(target, *args) -> mp.Process:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


# ---- child process bodies (module level so the spawn context can import them) ------------------------
def _child_frontend(prefix: str, request: dict, results) -> None:
    with ChannelSet.claim(prefix) as channel:
        channel.send(request, timeout=CHILD_WAIT)
        results.put((channel.index, channel.recv(timeout=CHILD_WAIT)))


def _child_claim_and_die(prefix: str, results) -> None:
    channel = ChannelSet.claim(prefix)
    results.put((channel.index, channel.claim_info().generation))
    results.close()
    results.join_thread()  # the queue's feeder thread must flush before we die
    os.kill(os.getpid(), signal.SIGKILL)


def _child_create_and_crash(tag: str) -> None:
    ChannelSet.create(run_prefix(tag), 1, 4, 128)
    os._exit(0)  # no cleanup at all, as after a crash


# ---- gevent frontends ------------------------------------------------------------------------------
def test_get_under_gevent_lets_other_greenlets_run():
    pytest.importorskip("gevent")
    script = textwrap.dedent(f"""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from dlx.ipc import ShmRing, run_prefix
        owner = ShmRing.create(run_prefix("{TAG}gev"), 4, 64)
        producer, consumer = ShmRing.attach(owner.name, "producer"), ShmRing.attach(owner.name, "consumer")
        ticks = []
        def ticker():
            for i in range(20):
                ticks.append(i)
                gevent.sleep(0.01)
            producer.put(b"after ticks")
        waiter = gevent.spawn(consumer.get, 10.0)
        gevent.spawn(ticker).join()
        print(len(ticks), waiter.get())
        for ring in (producer, consumer, owner):
            ring.close()
        owner.unlink()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["20", "b'after", "ticks'"]
    assert done.stderr == ""


def test_an_idle_readers_sleep_ends_on_wake_or_on_a_message():
    """A frontend's reader sleeps long when it has nothing in flight; submit() wakes it, and so does mail."""
    pytest.importorskip("gevent")
    script = textwrap.dedent(f"""
        from gevent import monkey; monkey.patch_all()
        import gevent
        from dlx.ipc import ChannelSet, run_prefix
        owner = ChannelSet.create(run_prefix("{TAG}idle"), count=1, num_slots=4, slot_bytes=128)
        engine, frontend = ChannelSet.attach(owner.prefix), ChannelSet.claim(owner.prefix)
        engine_side = engine.channels[0]
        for wake in (frontend.wake, lambda: engine_side.send({{"n": 1}})):
            sleeper = gevent.spawn(frontend.sleep_until_incoming, 600.0)
            gevent.sleep(0.05)
            wake()
            sleeper.join(timeout=30)
            print(sleeper.dead, end=" ")
        print(frontend.recv(timeout=0))
        frontend.sleep_until_incoming(0.01)   # nothing came: back after the timeout
        frontend.close(); engine.close(); owner.unlink_all()
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "{'n':", "1}"]


# ---- channels --------------------------------------------------------------------------------------
def test_channel_dict_round_trip_between_frontend_process_and_engine(prefix):
    owner = ChannelSet.create(prefix, count=2, num_slots=8, slot_bytes=256)
    engine = ChannelSet.attach(prefix)
    request = {"op": "generate", "tokens": list(range(500)), "text": "héllo ✓", "blob": b"\x00\xff",
               "params": {"temperature": 0.5, "stop": None, "stream": True}}
    results = SPAWN.Queue()
    child = _start(_child_frontend, prefix, request, results)
    ready = engine.ready(timeout=CHILD_WAIT)
    assert len(ready) == 1
    channel = ready[0]
    assert channel.recv(timeout=0) == request
    assert channel.claim_info().pid == child.pid
    channel.send({"echo": request, 7: [1, 2]})
    index, reply = results.get(timeout=CHILD_WAIT)
    assert index == channel.index and reply == {"echo": request, 7: [1, 2]}
    child.join(CHILD_WAIT)
    assert channel.claim_info().pid == 0  # released on exit
    engine.close()
    owner.unlink_all()


def test_claim_release_and_reclaim_after_claimer_died(prefix):
    owner = ChannelSet.create(prefix, count=2, num_slots=4, slot_bytes=128)
    first, second = ChannelSet.claim(prefix), ChannelSet.claim(prefix)
    assert (first.index, second.index) == (0, 1)
    with pytest.raises(NoFreeChannel):
        ChannelSet.claim(prefix)
    first.release()
    again = ChannelSet.claim(prefix)
    assert again.index == 0 and again.claim_info().generation == 2
    again.release(), second.release()

    results = SPAWN.Queue()
    child = _start(_child_claim_and_die, prefix, results)
    assert results.get(timeout=CHILD_WAIT) == (0, 3)
    child.join(CHILD_WAIT)
    engine = ChannelSet.attach(prefix)
    engine.channels[0].send({"for": "the dead claimer"})
    successor = ChannelSet.claim(prefix)  # the dead child's channel is free again
    assert successor.index == 0 and successor.claim_info().generation == 4
    assert successor.recv(timeout=0) is None  # its predecessor's mail was discarded
    successor.release()
    engine.close()
    owner.unlink_all()


def test_attacher_exiting_without_cleanup_leaves_segments_and_prints_nothing(prefix):
    owner = ChannelSet.create(prefix, count=1, num_slots=4, slot_bytes=128)
    solo = ShmRing.create(prefix + "_solo", num_slots=2, slot_bytes=64)
    before = ours()
    script = textwrap.dedent(f"""
        from dlx.ipc import ChannelSet, ShmRing
        channel = ChannelSet.claim({prefix!r})
        ring = ShmRing.attach({solo.name!r}, "consumer")
        channel.send({{"hello": 1}})
        # exit without release()/close(): Python 3.11's resource tracker must not unlink or warn
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert ours() == before
    engine = ChannelSet.attach(prefix)
    assert engine.channels[0].recv(timeout=CHILD_WAIT) == {"hello": 1}
    engine.close()
    solo.close()
    solo.unlink()
    owner.unlink_all()


def test_cleanup_stale_refuses_foreign_roots():
    with pytest.raises(ValueError):
        cleanup_stale("sem.")


# ---- cleanup -----------------------------------------------------------------------------------------
def test_cleanup_stale_removes_dead_creators_entries_only(prefix):
    crashed = _start(_child_create_and_crash, TAG + "crash")
    crashed.join(CHILD_WAIT)
    stale = [e for e in ours() if e.startswith(f"dlx_{crashed.pid}_")]
    assert len(stale) == 8  # claim table + lock file, and per ring: segment + two doorbell FIFOs
    live = ShmRing.create(prefix + "_live", num_slots=2, slot_bytes=64)
    removed = cleanup_stale()
    assert set(stale) <= set(removed)
    assert [e for e in ours() if e.startswith(f"dlx_{crashed.pid}_")] == []
    assert {live.name, live.name + ".data", live.name + ".space"} <= set(ours())
    live.close()
    live.unlink()
