"""Shared-memory transport between HTTP frontend processes and the engine leader.
Owns SPSC rings with doorbell wake-ups, dict channels, channel claiming and /dev/shm cleanup."""
from .channel import Channel, ChannelSet, decode_message, encode_message, wait_any
from .claims import ClaimInfo
from .errors import IpcError, NoFreeChannel, PeerDead, RingClosed, RingTimeout
from .procs import process_alive
from .ring import ShmRing
from .segments import cleanup_stale, run_prefix

__all__ = [
    "Channel", "ChannelSet", "ClaimInfo", "IpcError", "NoFreeChannel", "PeerDead", "RingClosed",
    "RingTimeout", "ShmRing", "cleanup_stale", "decode_message", "encode_message", "process_alive",
    "run_prefix", "wait_any",
]
