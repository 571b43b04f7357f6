"""Byte layout of a ring segment: the int64 header words and the frame header at the start of each slot.
Owns every offset and constant that producer and consumer processes must agree on."""
from __future__ import annotations

import struct

ROLES = ("producer", "consumer")
MAGIC = int.from_bytes(b"DLXRING1", "little")
VERSION = 1
# Header as int64 words. head and tail get cache lines of their own: each has exactly one writer
# (head: producer, tail: consumer), and sharing a line would make the two sides fight over it.
W_MAGIC, W_VERSION, W_NUM_SLOTS, W_SLOT_BYTES, W_CLOSED = 0, 1, 2, 3, 4
W_PID = {"producer": (5, 6), "consumer": (7, 8)}  # (pid word, start-time word)
W_HEAD, W_TAIL = 16, 24
HEADER_BYTES = 256
# Per-slot frame: total message length, bytes of the message in this slot, FIRST/LAST flags.
FRAME = struct.Struct("<QII")
FIRST, LAST = 1, 2
MIN_SLOT_BYTES = 64


def init_header(buf: memoryview, num_slots: int, slot_bytes: int) -> None:
    """Write a fresh header; the magic goes last so an early attacher sees an unfinished header as invalid."""
    words = buf[:HEADER_BYTES].cast("q")
    try:
        words[W_VERSION], words[W_NUM_SLOTS], words[W_SLOT_BYTES] = VERSION, num_slots, slot_bytes
        words[W_MAGIC] = MAGIC
    finally:
        words.release()


def header_valid(buf: memoryview) -> bool:
    """True when `buf` starts with a complete header of this layout version."""
    if len(buf) < HEADER_BYTES:
        return False
    words = buf[:HEADER_BYTES].cast("q")
    try:
        return words[W_MAGIC] == MAGIC and words[W_VERSION] == VERSION
    finally:
        words.release()


class SlotCodec:
    """Splits messages into slot-sized frames and joins them back, for one ring geometry."""

    def __init__(self, num_slots: int, slot_bytes: int) -> None:
        self.num_slots = num_slots
        self.slot_bytes = slot_bytes
        self.chunk = slot_bytes - FRAME.size  # message bytes one slot carries

    def slots_for(self, size: int) -> int:
        """Slots a message of `size` bytes occupies; an empty message still takes one."""
        return max(1, -(-size // self.chunk))

    def offset(self, counter: int) -> int:
        return HEADER_BYTES + (counter % self.num_slots) * self.slot_bytes

    def write(self, buf: memoryview, counter: int, message: memoryview) -> int:
        """Write `message` into the slots starting at `counter`; returns the number of slots used."""
        needed = self.slots_for(message.nbytes)
        for index in range(needed):
            piece = message[index * self.chunk:(index + 1) * self.chunk]
            flags = (FIRST if index == 0 else 0) | (LAST if index == needed - 1 else 0)
            offset = self.offset(counter + index)
            FRAME.pack_into(buf, offset, message.nbytes, len(piece), flags)
            buf[offset + FRAME.size:offset + FRAME.size + len(piece)] = piece
        return needed

    def read(self, buf: memoryview, counter: int, published: int) -> tuple[bytes, int]:
        """Copy out the message starting at `counter` (`published` slots are readable); returns
        (message, slots used). ValueError if the frames are inconsistent."""
        total, _, flags = FRAME.unpack_from(buf, self.offset(counter))
        needed = self.slots_for(total)
        if not flags & FIRST or needed > published:
            raise ValueError(f"no message start at slot counter {counter}")
        parts = []
        try:
            for index in range(needed):
                offset = self.offset(counter + index)
                _, length, flags = FRAME.unpack_from(buf, offset)
                parts.append(buf[offset + FRAME.size:offset + FRAME.size + length])
            message = bytes(parts[0]) if needed == 1 else b"".join(parts)
        finally:
            for part in parts:  # views pin the mapping; release them so the ring can be unmapped
                part.release()
        if len(message) != total or not flags & LAST:
            raise ValueError(f"frames at slot counter {counter} do not add up to {total} bytes")
        return message, needed
