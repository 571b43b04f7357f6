"""Claim table of a ChannelSet: which frontend process holds which channel.
Owns the small shm segment of (pid, start time, generation) entries and the file lock that serialises claims."""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory

from .errors import IpcError, NoFreeChannel
from .procs import own_identity, process_alive
from .segments import open_segment, remove_file, side_path, unlink_segment

MAGIC = int.from_bytes(b"DLXCLAIM", "little")
# int64 words: header first, then one (pid, start time, generation) entry per channel.
H_MAGIC, H_COUNT, H_NUM_SLOTS, H_SLOT_BYTES = 0, 1, 2, 3
ENTRY_BASE, ENTRY_WORDS = 8, 3
E_PID, E_START, E_GENERATION = 0, 1, 2
# Claims take microseconds; a lock held this long means something is badly wrong, not busy.
LOCK_TIMEOUT = 10.0
LOCK_RETRY_SLEEP = 0.002


@dataclass(frozen=True)
class ClaimInfo:
    """Who holds a channel. pid 0 means free. generation grows with every claim, so the engine can tell
    a restarted frontend on the same channel from the one whose requests it is still serving."""

    pid: int
    generation: int


class ClaimTable:
    """The launcher creates it with the channels; frontends claim and release entries; the engine reads them."""

    def __init__(self, shm: SharedMemory, lock_path: str) -> None:
        self._shm = shm
        self._words = shm.buf.cast("q")
        self._lock_path = lock_path
        if self._words[H_MAGIC] != MAGIC:
            self.close()
            raise ValueError(f"{shm.name!r} is not a dlx claim table")
        self.count = self._words[H_COUNT]
        self.num_slots = self._words[H_NUM_SLOTS]
        self.slot_bytes = self._words[H_SLOT_BYTES]

    @staticmethod
    def segment_name(prefix: str) -> str:
        return f"{prefix}_claims"

    @classmethod
    def create(cls, prefix: str, count: int, num_slots: int, slot_bytes: int) -> ClaimTable:
        name = cls.segment_name(prefix)
        shm = open_segment(name, create=True, size=8 * (ENTRY_BASE + ENTRY_WORDS * count))
        words = shm.buf.cast("q")
        words[H_COUNT], words[H_NUM_SLOTS], words[H_SLOT_BYTES] = count, num_slots, slot_bytes
        words[H_MAGIC] = MAGIC  # last: the table is only valid once the rest is written
        words.release()
        lock_path = side_path(name + ".lock")
        try:
            os.close(os.open(lock_path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        except BaseException:
            shm.close()
            unlink_segment(shm)
            raise
        return cls(shm, lock_path)

    @classmethod
    def open(cls, prefix: str) -> ClaimTable:
        name = cls.segment_name(prefix)
        return cls(open_segment(name, create=False), side_path(name + ".lock"))

    def info(self, index: int) -> ClaimInfo:
        base = self._entry(index)
        return ClaimInfo(self._words[base + E_PID], self._words[base + E_GENERATION])

    def claim(self) -> int:
        """Take the first free channel, or one whose claimer died; returns its index."""
        me, my_start = own_identity()
        with self._locked():
            for index in range(self.count):
                base = self._entry(index)
                pid, start = self._words[base + E_PID], self._words[base + E_START]
                if pid and process_alive(pid, start):
                    continue
                self._words[base + E_GENERATION] += 1
                self._words[base + E_START] = my_start
                self._words[base + E_PID] = me  # pid last: readers treat the entry as claimed from here
                return index
        raise NoFreeChannel(f"all {self.count} channels of {self._shm.name} are claimed by live processes")

    def release(self, index: int) -> bool:
        """Free `index` if this process holds it; False when someone else does (we were replaced)."""
        me, my_start = own_identity()
        with self._locked():
            base = self._entry(index)
            if (self._words[base + E_PID], self._words[base + E_START]) != (me, my_start):
                return False
            self._words[base + E_PID] = 0
            return True

    def _entry(self, index: int) -> int:
        if not 0 <= index < self.count:
            raise IndexError(f"channel index {index} out of range 0..{self.count - 1}")
        return ENTRY_BASE + ENTRY_WORDS * index

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on the table's lock file. A fresh open each time: flock belongs to the open
        file, which a forked child would otherwise share. Polls with LOCK_NB and a short sleep instead
        of blocking, so a gevent worker's loop keeps running (time.sleep is cooperative there)."""
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise IpcError(f"{self._shm.name} was removed (server shutting down?)") from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise IpcError(f"claim lock {self._lock_path} held for over {LOCK_TIMEOUT} s") from None
                    time.sleep(LOCK_RETRY_SLEEP)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def close(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
            self._shm.close()

    def __del__(self) -> None:
        # Release the view before SharedMemory.__del__ tries to unmap (a process exiting without release()).
        words = getattr(self, "_words", None)
        if words is not None:
            words.release()

    def unlink(self) -> None:
        unlink_segment(self._shm)
        remove_file(self._lock_path)
