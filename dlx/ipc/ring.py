"""ShmRing: a single-producer single-consumer ring of fixed-size slots in one shared-memory segment.
Owns the head/tail protocol, blocking put/get with back-pressure, and dead-peer detection."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from multiprocessing.shared_memory import SharedMemory

from .doorbell import Doorbell
from .errors import IpcError, PeerDead, RingClosed, RingTimeout
from .layout import (HEADER_BYTES, MIN_SLOT_BYTES, ROLES, W_CLOSED, W_HEAD, W_NUM_SLOTS, W_PID, W_SLOT_BYTES, W_TAIL,
                     SlotCodec, header_valid, init_header)
from .procs import DEPARTED_PID, own_identity, process_alive
from .segments import open_segment, remove_file, require_own_name, side_path, unlink_segment

# A blocked side wakes at least this often to notice a peer that died without ringing.
LIVENESS_INTERVAL = 0.5


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + max(0.0, timeout)


class ShmRing:
    """One direction of traffic. The creator (usually the launcher) owns the segment; the two sides
    attach by name with a role. A message is written into as many consecutive slots as it needs and
    published with a single head update, so a consumer never sees half a message even if the producer
    is killed mid-write."""

    def __init__(self, shm: SharedMemory, role: str | None, data_bell: Doorbell, space_bell: Doorbell) -> None:
        self.name = shm.name
        self.role = role
        self._shm = shm
        self._buf = shm.buf
        self._words = shm.buf[:HEADER_BYTES].cast("q")
        self.num_slots = self._words[W_NUM_SLOTS]
        self.slot_bytes = self._words[W_SLOT_BYTES]
        self._codec = SlotCodec(self.num_slots, self.slot_bytes)
        self._data_bell = data_bell  # rung by the producer after publishing; waited on by the consumer
        self._space_bell = space_bell  # rung by the consumer after freeing slots; waited on by the producer
        # Created per ring at construction, so under gevent (patched before the ring is made) it is a
        # cooperative lock: greenlets of one process take turns at being "the" single producer/consumer.
        self._lock = threading.Lock()
        # The counter this side owns: head for the producer, tail for the consumer.
        self._cursor = self._words[W_HEAD] if role == "producer" else self._words[W_TAIL]
        self._peer_verified = 0.0  # monotonic time the peer's process was last seen alive (/proc)

    @classmethod
    def create(cls, name: str, num_slots: int, slot_bytes: int) -> ShmRing:
        """Create segment and doorbells; `name` must start with `dlx_<this pid>_` (see run_prefix)."""
        require_own_name(name)
        if num_slots < 1 or slot_bytes < MIN_SLOT_BYTES or slot_bytes % 8:
            raise ValueError(f"need num_slots >= 1 and slot_bytes a multiple of 8 >= {MIN_SLOT_BYTES}")
        shm = open_segment(name, create=True, size=HEADER_BYTES + num_slots * slot_bytes)
        bells: list[Doorbell] = []
        try:
            init_header(shm.buf, num_slots, slot_bytes)
            for suffix in (".data", ".space"):
                bells.append(Doorbell.create(side_path(name + suffix)))
        except BaseException:
            for bell in bells:
                bell.close()
                remove_file(bell.path)
            shm.close()
            unlink_segment(shm)
            raise
        return cls(shm, None, *bells)

    @classmethod
    def attach(cls, name: str, role: str) -> ShmRing:
        """Open an existing ring as its "producer" or "consumer", recording this process as that side."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        shm = open_segment(name, create=False)
        if not header_valid(shm.buf):
            shm.close()
            raise ValueError(f"{name!r} is not an initialised dlx ring")
        ring = cls(shm, role, Doorbell.open(side_path(name + ".data")), Doorbell.open(side_path(name + ".space")))
        try:
            ring._take_role(role)
        except BaseException:
            ring.close()
            raise
        return ring

    def _take_role(self, role: str) -> None:
        pid_word, start_word = W_PID[role]
        current_pid, current_start = self._words[pid_word], self._words[start_word]
        # Two live objects for one role would keep separate cursors and corrupt the ring, so refuse,
        # even within this process; a dead or departed holder (a restarted worker) is replaced.
        if current_pid not in (0, DEPARTED_PID) and process_alive(current_pid, current_start):
            raise IpcError(f"ring {self.name} already has a live {role} (pid {current_pid})")
        me, my_start = own_identity()
        self._words[start_word] = my_start  # start time first: a peer never pairs our pid with a stale one
        self._words[pid_word] = me

    # ---- producer side -------------------------------------------------------------------------
    def put(self, payload: bytes, timeout: float | None = None) -> None:
        """Append one message, waiting for room (back-pressure). timeout None waits as long as the
        consumer lives; RingTimeout when room never came, PeerDead when the consumer is gone."""
        self._require_role("producer")
        view = memoryview(payload).cast("B")
        needed = self._codec.slots_for(view.nbytes)
        if needed > self.num_slots:
            raise ValueError(f"message of {view.nbytes} bytes exceeds ring capacity "
                             f"({self.num_slots} slots x {self._codec.chunk} payload bytes)")
        with self._lock:
            if self._words[W_CLOSED]:
                raise RingClosed(f"ring {self.name} is shut down")

            def has_room() -> bool:
                return self.num_slots - (self._cursor - self._words[W_TAIL]) >= needed

            if not self._wait_until(has_room, self._space_bell, _deadline(timeout), "consumer"):
                raise RingTimeout(f"ring {self.name}: no room for {needed} slots within {timeout} s")
            self._codec.write(self._buf, self._cursor, view)
            self._cursor += needed
            # Publish only after every payload byte is in place (single writer; x86-64 keeps stores in order).
            self._words[W_HEAD] = self._cursor
        self._data_bell.ring()

    # ---- consumer side -------------------------------------------------------------------------
    def has_data(self) -> bool:
        """True when a whole message is waiting (consumer side)."""
        return self._words[W_HEAD] != self._cursor

    def get(self, timeout: float | None = None) -> bytes | None:
        """Next whole message; None on timeout; PeerDead (RingClosed) once empty with the producer gone."""
        self._require_role("consumer")
        with self._lock:
            if not self._wait_until(self.has_data, self._data_bell, _deadline(timeout), "producer"):
                return None
            try:
                payload, used = self._codec.read(self._buf, self._cursor, self._words[W_HEAD] - self._cursor)
            except ValueError as error:
                raise IpcError(f"ring {self.name} is corrupt: {error}") from None
            self._cursor += used
            # Hand the slots back only after the payload has been copied out.
            self._words[W_TAIL] = self._cursor
        self._space_bell.ring()
        return payload

    def discard_pending(self) -> int:
        """Drop every queued message (a new claimer ignoring its predecessor's mail); returns slots freed."""
        self._require_role("consumer")
        with self._lock:
            freed = self._words[W_HEAD] - self._cursor
            self._cursor += freed
            self._words[W_TAIL] = self._cursor
        self._space_bell.ring()
        return freed

    # ---- shared helpers --------------------------------------------------------------------------
    def _wait_until(self, ready: Callable[[], bool], bell: Doorbell, deadline: float | None, peer: str) -> bool:
        """Sleep on `bell` until ready() holds (True) or the deadline passes (False).

        Wakes at least every LIVENESS_INTERVAL to look at the peer and the closed flag, so a peer that
        died without ringing is noticed within about half a second. A peer that detached is seen at once;
        the process table is read only after a quiet interval (a peer that rang is alive), not on every
        wait of a busy stream."""
        check_peer = time.monotonic() - self._peer_verified > LIVENESS_INTERVAL
        while True:
            if ready():
                return True
            if self._words[W_CLOSED]:
                raise RingClosed(f"ring {self.name} is shut down")
            if self._peer_gone(peer, check_process=check_peer):
                raise PeerDead(f"ring {self.name}: the {peer} process is gone")
            remaining = LIVENESS_INTERVAL if deadline is None else min(deadline - time.monotonic(), LIVENESS_INTERVAL)
            if remaining <= 0:
                return False
            check_peer = not bell.wait(remaining)

    def _peer_gone(self, peer: str, check_process: bool = True) -> bool:
        pid_word, start_word = W_PID[peer]
        pid = self._words[pid_word]
        if pid == 0:
            return False  # not attached yet: the launcher may still be starting it
        if pid == DEPARTED_PID:
            return True
        if not check_process:
            return False
        if not process_alive(pid, self._words[start_word]):
            return True
        self._peer_verified = time.monotonic()
        return False

    def peer_alive(self) -> bool:
        """True while the other side is attached and its process runs."""
        pid_word, start_word = W_PID["consumer" if self.role == "producer" else "producer"]
        return process_alive(self._words[pid_word], self._words[start_word])

    def _require_role(self, role: str) -> None:
        if self.role != role:
            raise IpcError(f"ring {self.name} is attached as {self.role}, not {role}")
        if self._buf is None:
            raise IpcError(f"ring {self.name} is closed")

    @property
    def data_bell(self) -> Doorbell:
        """Rung by the producer after publishing (wait_any polls many rings' bells at once)."""
        return self._data_bell

    @property
    def closed(self) -> bool:
        """The shared closed flag (set by shutdown on any side)."""
        return bool(self._words[W_CLOSED])

    def shutdown(self) -> None:
        """Mark the ring closed for everyone and wake both sides; waiters raise RingClosed."""
        if self._buf is None:
            raise IpcError(f"ring {self.name} is closed")
        self._words[W_CLOSED] = 1
        self._data_bell.ring()
        self._space_bell.ring()

    def close(self) -> None:
        """Detach this process. A role holder marks itself departed and wakes the peer, which then sees
        PeerDead instead of waiting for a process that will never come back."""
        if self._buf is None:
            return
        if self.role is not None:
            pid_word, _ = W_PID[self.role]
            if self._words[pid_word] == os.getpid():
                self._words[pid_word] = DEPARTED_PID
                (self._data_bell if self.role == "producer" else self._space_bell).ring()
        self._data_bell.close()
        self._space_bell.close()
        self._words.release()
        self._buf = None
        self._shm.close()  # SharedMemory.unlink still works afterwards: it only needs the name

    def unlink(self) -> None:
        """Remove the segment's name and its doorbell FIFOs (mappings already open keep working)."""
        unlink_segment(self._shm)
        remove_file(side_path(self.name + ".data"))
        remove_file(side_path(self.name + ".space"))

    def __del__(self) -> None:
        # A process that exits without close() would otherwise see SharedMemory.__del__ fail noisily:
        # the mapping cannot be unmapped while our header view still points into it.
        words = getattr(self, "_words", None)
        if words is not None:
            words.release()

    def __enter__(self) -> ShmRing:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShmRing({self.name!r}, role={self.role}, slots={self.num_slots}x{self.slot_bytes})"
