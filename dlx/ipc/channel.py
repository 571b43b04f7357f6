"""Channels between frontend processes and the engine leader: a request ring and an event ring each.
Owns msgpack framing of dict messages, the ChannelSet the launcher creates, claiming, and wait_any."""
from __future__ import annotations

import time
from typing import Any

import msgpack

from .claims import ClaimInfo, ClaimTable
from .doorbell import wait_readable
from .errors import IpcError
from .ring import ShmRing
from .segments import require_own_name

FRONTEND, ENGINE = "frontend", "engine"


def encode_message(message: dict[str, Any]) -> bytes:
    if not isinstance(message, dict):
        raise TypeError(f"channel messages are dicts, got {type(message).__name__}")
    return msgpack.packb(message, use_bin_type=True)


def decode_message(payload: bytes) -> dict[str, Any]:
    # strict_map_key=False: engines may key maps by integer request id.
    message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if not isinstance(message, dict):
        raise IpcError(f"channel carried a {type(message).__name__}, not a dict")
    return message


class Channel:
    """One frontend's line to the engine. The frontend sends on `requests` and receives on `events`;
    the engine does the opposite. Each ring has one producer process and one consumer process."""

    def __init__(self, index: int, side: str, requests: ShmRing, events: ShmRing, claims: ClaimTable) -> None:
        self.index = index
        self.side = side
        self.requests = requests
        self.events = events
        self._claims = claims
        self._outbox, self._inbox = (requests, events) if side == FRONTEND else (events, requests)

    def send(self, msg: dict[str, Any], timeout: float | None = None) -> None:
        """Queue one dict for the other side; RingTimeout/PeerDead as for ShmRing.put."""
        self._outbox.put(encode_message(msg), timeout)

    def recv(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Next dict from the other side, None on timeout; PeerDead once empty with the sender gone.

        PeerDead comes at once while the sender stays gone, so a loop that waits for a restarted
        engine must pace itself (e.g. re-check peer_alive() every half second)."""
        payload = self._inbox.get(timeout)
        return None if payload is None else decode_message(payload)

    def sleep_until_incoming(self, timeout: float) -> None:
        """Sleep until a message arrives, wake() rings, or `timeout` passes, without the peer checks recv()
        makes every LIVENESS_INTERVAL: an idle reader has no request to fail when the peer dies, so it need
        not wake for them. Only the one reader of this side may call it; follow it with recv()."""
        if not self._inbox.has_data() and not self._inbox.closed:
            self._inbox.data_bell.wait(timeout)

    def wake(self) -> None:
        """End this side's sleep_until_incoming() early (from another greenlet of the same process)."""
        self._inbox.data_bell.ring()

    def has_incoming(self) -> bool:
        return self._inbox.has_data()

    def peer_alive(self) -> bool:
        """True while the process at the other end is attached and running."""
        return self._inbox.peer_alive()

    def claim_info(self) -> ClaimInfo:
        """Current claimer of this channel (pid 0 when free) and its claim generation."""
        return self._claims.info(self.index)

    def release(self) -> None:
        """Detach from both rings; a frontend also gives its claim back so a successor can take it."""
        if self._inbox is None:
            return
        self.requests.close()  # rings first: the claim must not look free while we are still attached
        self.events.close()
        if self.side == FRONTEND:
            self._claims.release(self.index)
            self._claims.close()
        self._inbox = self._outbox = None

    close = release

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Channel({self.index}, side={self.side}, {self.requests.name})"


def ring_names(prefix: str, index: int) -> tuple[str, str]:
    """(request ring, event ring) names of channel `index`."""
    return f"{prefix}_c{index}_req", f"{prefix}_c{index}_evt"


class ChannelSet:
    """All channels of one server. Three ways to hold one:
    - `create` (launcher): owns the segments; `shutdown` wakes everyone, `unlink_all` removes them.
    - `attach` (engine leader): the engine end of every channel in `channels`; `ready` waits on all.
    - `claim` (a frontend worker): returns just that worker's Channel."""

    def __init__(self, prefix: str, claims: ClaimTable, channels: list[Channel], rings: list[ShmRing]) -> None:
        self.prefix = prefix
        self.channels = channels
        self._claims = claims
        self._rings = rings  # every ring this object opened, engine ends included

    @classmethod
    def create(cls, prefix: str, count: int, num_slots: int, slot_bytes: int) -> ChannelSet:
        """Create `count` channels named `<prefix>_c<i>_req|evt`; prefix must be `dlx_<this pid>_<tag>`
        (run_prefix) so cleanup_stale can tell when its creator is gone."""
        require_own_name(prefix + "_")
        if count < 1:
            raise ValueError("a ChannelSet needs at least one channel")
        claims = ClaimTable.create(prefix, count, num_slots, slot_bytes)
        owner = cls(prefix, claims, [], [])
        try:
            for index in range(count):
                for name in ring_names(prefix, index):
                    owner._rings.append(ShmRing.create(name, num_slots, slot_bytes))
        except BaseException:
            owner.unlink_all()
            raise
        return owner

    @classmethod
    def attach(cls, prefix: str) -> ChannelSet:
        """Attach as the engine: consumer of every request ring, producer of every event ring."""
        claims = ClaimTable.open(prefix)
        engine = cls(prefix, claims, [], [])
        try:
            for index in range(claims.count):
                request_name, event_name = ring_names(prefix, index)
                requests = ShmRing.attach(request_name, "consumer")
                engine._rings.append(requests)
                events = ShmRing.attach(event_name, "producer")
                engine._rings.append(events)
                engine.channels.append(Channel(index, ENGINE, requests, events, claims))
        except BaseException:
            engine.close()
            raise
        return engine

    @staticmethod
    def claim(prefix: str) -> Channel:
        """Claim a free channel (or one whose claimer died) for this frontend process.

        Events still queued for a previous claimer are discarded; NoFreeChannel if all are taken."""
        claims = ClaimTable.open(prefix)
        try:
            index = claims.claim()
        except BaseException:
            claims.close()
            raise
        request_name, event_name = ring_names(prefix, index)
        opened: list[ShmRing] = []
        try:
            opened.append(ShmRing.attach(request_name, "producer"))
            opened.append(ShmRing.attach(event_name, "consumer"))
            opened[1].discard_pending()
        except BaseException:
            for ring in opened:
                ring.close()
            claims.release(index)
            claims.close()
            raise
        return Channel(index, FRONTEND, opened[0], opened[1], claims)

    def ready(self, timeout: float) -> list[Channel]:
        """Engine side: channels with at least one request waiting, sleeping up to `timeout` if none."""
        by_ring = {id(channel.requests): channel for channel in self.channels}
        return [by_ring[id(ring)] for ring in wait_any([c.requests for c in self.channels], timeout)]

    def shutdown(self) -> None:
        """Set every ring's closed flag and wake all waiters (server shutdown)."""
        for ring in self._rings:
            ring.shutdown()

    def close(self) -> None:
        """Unmap everything this object opened (an engine's ends are marked departed)."""
        for ring in self._rings:
            ring.close()
        self._claims.close()

    def unlink_all(self) -> None:
        """Close, then remove every segment, FIFO and lock file of this set (owner only)."""
        self.close()
        for ring in self._rings:
            ring.unlink()
        self._claims.unlink()

    def __enter__(self) -> ChannelSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_any(rings: list[ShmRing], timeout: float) -> list[ShmRing]:
    """Rings (attached as consumer) that hold a message, waiting up to `timeout` seconds on all their
    doorbells in one poll, so a leader serving many channels sleeps while every channel is idle.

    Peer liveness is the caller's business here (ShmRing.peer_alive); an empty result means timeout."""
    if any(ring.role != "consumer" for ring in rings):
        raise ValueError("wait_any needs rings attached as consumer")
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        ready = [ring for ring in rings if ring.has_data()]
        remaining = deadline - time.monotonic()
        if ready or remaining <= 0:
            return ready
        by_fd = {ring.data_bell.fileno(): ring for ring in rings}
        for fd in wait_readable(list(by_fd), remaining):
            by_fd[fd].data_bell.drain()  # stale rings drained here cannot make the next poll spin
