"""Behaviour tests for dlx.ipc rings: round trips across real processes, back-pressure, dead peers,
idle cost, shutdown and wait_any. No test asserts on speed."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest

from ipc_support import CHILD_WAIT, no_leftover_shm, prefix  # noqa: F401 (fixtures used by name)
from dlx.ipc import IpcError, PeerDead, RingClosed, RingTimeout, ShmRing, wait_any

SPAWN = mp.get_context("spawn")
def _pattern(seed: int, size: int) -> bytes:
    block = bytes((seed + k) % 256 for k in range(256))
    return (block * (size // 256 + 1))[:size]


def _start(target, *args) -> mp.Process:
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


# ---- child process bodies (module level so the spawn context can import them) ------------------------
def _child_produce(name: str, sizes: list[int]) -> None:
    with ShmRing.attach(name, "producer") as ring:
        for seed, size in enumerate(sizes):
            ring.put(_pattern(seed, size), timeout=CHILD_WAIT)


def _child_drain_on_go(name: str, count: int, ready, go, results) -> None:
    with ShmRing.attach(name, "consumer") as ring:
        ready.set()
        go.wait(CHILD_WAIT)
        results.put([ring.get(timeout=CHILD_WAIT) for _ in range(count)])


def _child_attach_then_die(name: str, role: str, ready, messages: list[bytes]) -> None:
    ring = ShmRing.attach(name, role)
    for message in messages:
        ring.put(message, timeout=CHILD_WAIT)
    ready.set()
    time.sleep(0.3)  # let the parent start waiting, so it is blocked when we die
    os.kill(os.getpid(), signal.SIGKILL)


def _child_idle_get(name: str, results) -> None:
    with ShmRing.attach(name, "consumer") as ring:
        before = os.times()
        message = ring.get(timeout=2.0)
        after = os.times()
        results.put((message, (after.user - before.user) + (after.system - before.system)))


def _child_put_one(name: str, payload: bytes) -> None:
    with ShmRing.attach(name, "producer") as ring:
        time.sleep(0.2)  # usually lands while the parent sleeps in wait_any
        ring.put(payload, timeout=CHILD_WAIT)



# ---- rings -----------------------------------------------------------------------------------------
def test_round_trip_across_processes_preserves_bytes_and_order(prefix):
    with ShmRing.create(prefix + "_r", num_slots=16, slot_bytes=256) as owner:
        chunk = 256 - 16
        rng = random.Random(7)
        sizes = [1, 0, chunk, chunk + 1, 10 * chunk, 16 * chunk, 3]
        sizes += [rng.randrange(0, 5 * chunk) for _ in range(150)]  # wraps the ring many times
        consumer = ShmRing.attach(owner.name, "consumer")
        child = _start(_child_produce, owner.name, sizes)
        received = [consumer.get(timeout=CHILD_WAIT) for _ in sizes]
        assert [len(m) for m in received] == sizes
        assert received == [_pattern(seed, size) for seed, size in enumerate(sizes)]
        child.join(CHILD_WAIT)
        with pytest.raises(PeerDead):  # the producer detached and the ring is empty
            consumer.get(timeout=CHILD_WAIT)
        consumer.close()
        owner.unlink()


def test_full_ring_blocks_producer_until_consumer_drains(prefix):
    with ShmRing.create(prefix + "_r", num_slots=4, slot_bytes=128) as owner:
        producer = ShmRing.attach(owner.name, "producer")
        ready, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        # Four one-slot messages fill the ring; the rest (up to 300 bytes = three slots) must wait.
        sent = [_pattern(i, 50) for i in range(4)] + [_pattern(i, 1 + (i * 37) % 300) for i in range(16)]
        child = _start(_child_drain_on_go, owner.name, len(sent), ready, go, results)
        assert ready.wait(CHILD_WAIT)
        for message in sent[:4]:
            producer.put(message, timeout=0)
        with pytest.raises(RingTimeout):  # full, and the consumer is alive but not draining yet
            producer.put(b"overflow", timeout=0.1)
        go.set()
        for message in sent[4:]:  # these must wait for the consumer to free slots
            producer.put(message, timeout=CHILD_WAIT)
        assert results.get(timeout=CHILD_WAIT) == sent
        child.join(CHILD_WAIT)
        producer.close()
        owner.unlink()


def test_put_times_out_when_nobody_drains_and_resumes_after_a_get(prefix):
    with ShmRing.create(prefix + "_r", num_slots=3, slot_bytes=64) as owner:
        producer, consumer = ShmRing.attach(owner.name, "producer"), ShmRing.attach(owner.name, "consumer")
        for i in range(3):
            producer.put(bytes([i]) * 40)
        with pytest.raises(RingTimeout):
            producer.put(b"more", timeout=0.3)
        assert consumer.get(timeout=0) == bytes([0]) * 40
        producer.put(b"more", timeout=0)
        assert [consumer.get(timeout=0) for _ in range(3)] == [bytes([1]) * 40, bytes([2]) * 40, b"more"]
        producer.close(), consumer.close()
        owner.unlink()


def test_oversized_message_and_get_timeout(prefix):
    with ShmRing.create(prefix + "_r", num_slots=4, slot_bytes=128) as owner:
        producer, consumer = ShmRing.attach(owner.name, "producer"), ShmRing.attach(owner.name, "consumer")
        capacity = 4 * (128 - 16)
        with pytest.raises(ValueError):
            producer.put(b"x" * (capacity + 1))
        assert consumer.get(timeout=0.2) is None
        producer.put(b"y" * capacity)  # exactly the whole ring is fine
        assert consumer.get(timeout=0) == b"y" * capacity
        assert consumer.get(timeout=0) is None
        producer.close(), consumer.close()
        owner.unlink()


def test_second_live_holder_of_a_role_is_refused(prefix):
    with ShmRing.create(prefix + "_r", num_slots=2, slot_bytes=64) as owner:
        with ShmRing.attach(owner.name, "producer"):
            with pytest.raises(IpcError):
                ShmRing.attach(owner.name, "producer")
        with ShmRing.attach(owner.name, "producer"):  # the first one departed, so this is fine
            pass
        owner.unlink()


def test_blocked_put_raises_peer_dead_when_consumer_is_killed(prefix):
    with ShmRing.create(prefix + "_r", num_slots=2, slot_bytes=64) as owner:
        producer = ShmRing.attach(owner.name, "producer")
        producer.put(b"a"), producer.put(b"b")  # full
        ready = SPAWN.Event()
        child = _start(_child_attach_then_die, owner.name, "consumer", ready, [])
        assert ready.wait(CHILD_WAIT)
        with pytest.raises(PeerDead):
            producer.put(b"c", timeout=CHILD_WAIT)
        child.join(CHILD_WAIT)
        assert child.exitcode == -signal.SIGKILL
        producer.close()
        owner.unlink()


def test_get_drains_then_raises_peer_dead_when_producer_is_killed(prefix):
    with ShmRing.create(prefix + "_r", num_slots=8, slot_bytes=64) as owner:
        consumer = ShmRing.attach(owner.name, "consumer")
        ready = SPAWN.Event()
        sent = [b"one", b"two", b"three" * 30]
        child = _start(_child_attach_then_die, owner.name, "producer", ready, sent)
        assert ready.wait(CHILD_WAIT)
        assert [consumer.get(timeout=CHILD_WAIT) for _ in sent] == sent
        with pytest.raises(PeerDead):
            consumer.get(timeout=CHILD_WAIT)
        child.join(CHILD_WAIT)
        consumer.close()
        owner.unlink()


def test_idle_get_does_not_spin(prefix):
    with ShmRing.create(prefix + "_r", num_slots=4, slot_bytes=64) as owner:
        producer = ShmRing.attach(owner.name, "producer")  # alive and silent
        results = SPAWN.Queue()
        child = _start(_child_idle_get, owner.name, results)
        message, cpu_seconds = results.get(timeout=CHILD_WAIT)
        child.join(CHILD_WAIT)
        assert message is None
        assert cpu_seconds < 0.2, f"waiting 2 s cost {cpu_seconds:.3f} s of CPU"
        producer.close()
        owner.unlink()


def test_shutdown_wakes_waiters_with_ring_closed(prefix):
    with ShmRing.create(prefix + "_r", num_slots=2, slot_bytes=64) as owner:
        producer, consumer = ShmRing.attach(owner.name, "producer"), ShmRing.attach(owner.name, "consumer")
        producer.put(b"last words")
        owner.shutdown()
        assert consumer.get(timeout=0) == b"last words"  # what was queued is still delivered
        with pytest.raises(RingClosed):
            consumer.get(timeout=CHILD_WAIT)
        with pytest.raises(RingClosed):
            producer.put(b"late")
        producer.close(), consumer.close()
        owner.unlink()


def test_wait_any_returns_exactly_the_rings_with_data(prefix):
    owners = [ShmRing.create(f"{prefix}_r{i}", num_slots=4, slot_bytes=64) for i in range(3)]
    producers = [ShmRing.attach(o.name, "producer") for o in owners]
    consumers = [ShmRing.attach(o.name, "consumer") for o in owners]
    producers[0].put(b"zero")
    producers[2].put(b"two")
    assert wait_any(consumers, timeout=1.0) == [consumers[0], consumers[2]]
    assert consumers[0].get(timeout=0) == b"zero" and consumers[2].get(timeout=0) == b"two"
    assert wait_any(consumers, timeout=0.2) == []
    producers[1].close()  # hand ring 1's producer role to another process
    child = _start(_child_put_one, owners[1].name, b"one")
    assert wait_any(consumers, timeout=CHILD_WAIT) == [consumers[1]]
    assert consumers[1].get(timeout=0) == b"one"
    child.join(CHILD_WAIT)
    for ring in producers + consumers + owners:
        ring.close()
    for ring in owners:
        ring.unlink()
