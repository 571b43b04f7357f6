"""Status board: a shared-memory table of small dict records, one writer per slot, read by anyone.
Engine leaders publish liveness and metrics, frontends their request counters, the launcher control flags."""
from __future__ import annotations

import struct
import time
from typing import Any

import msgpack

from .segments import open_segment, require_own_name, unlink_segment

_HEADER = struct.Struct("<QI")   # sequence number (odd while a write is in progress), payload length


class StatusBoard:
    def __init__(self, shm, slots: int, slot_bytes: int) -> None:
        self._shm, self.slots, self.slot_bytes = shm, slots, slot_bytes
        self._sequence = [0] * slots

    @staticmethod
    def segment_name(prefix: str) -> str:
        return f"{prefix}_board"

    @classmethod
    def create(cls, prefix: str, slots: int, slot_bytes: int = 16384) -> StatusBoard:
        name = cls.segment_name(prefix)
        require_own_name(name)
        shm = open_segment(name, create=True, size=8 + slots * slot_bytes)
        struct.pack_into("<II", shm.buf, 0, slots, slot_bytes)
        return cls(shm, slots, slot_bytes)

    @classmethod
    def attach(cls, prefix: str) -> StatusBoard:
        shm = open_segment(cls.segment_name(prefix), create=False)
        slots, slot_bytes = struct.unpack_from("<II", shm.buf, 0)
        board = cls(shm, slots, slot_bytes)
        board._sequence = [_HEADER.unpack_from(shm.buf, board._offset(i))[0] for i in range(slots)]
        return board

    def _offset(self, slot: int) -> int:
        if not 0 <= slot < self.slots:
            raise IndexError(f"board slot {slot} out of range ({self.slots} slots)")
        return 8 + slot * self.slot_bytes

    def write(self, slot: int, record: dict[str, Any]) -> None:
        """Replace a slot's record; only one process may write a given slot."""
        payload = msgpack.packb(record, use_bin_type=True)
        if len(payload) > self.slot_bytes - _HEADER.size:
            raise ValueError(f"board record of {len(payload)} bytes does not fit a slot")
        base = self._offset(slot)
        seq = self._sequence[slot] | 1
        _HEADER.pack_into(self._shm.buf, base, seq, len(payload))
        self._shm.buf[base + _HEADER.size:base + _HEADER.size + len(payload)] = payload
        self._sequence[slot] = seq + 1
        _HEADER.pack_into(self._shm.buf, base, seq + 1, len(payload))

    def read(self, slot: int) -> dict[str, Any] | None:
        """The slot's last complete record (None if never written)."""
        base = self._offset(slot)
        for _ in range(100):
            seq, length = _HEADER.unpack_from(self._shm.buf, base)
            if seq == 0:
                return None
            if seq % 2 == 0:
                payload = bytes(self._shm.buf[base + _HEADER.size:base + _HEADER.size + length])
                if _HEADER.unpack_from(self._shm.buf, base)[0] == seq:
                    return msgpack.unpackb(payload, raw=False)
            time.sleep(0.0001)  # a writer is mid-update; it takes microseconds
        return None

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def unlink(self) -> None:
        shm = self._shm
        if shm is not None:
            unlink_segment(shm)
        self.close()
