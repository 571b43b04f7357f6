"""The frontend's line to the engine: claims one channel per data-parallel group, routes each request to
the least busy group, and fans engine events out to per-request queues (gevent-friendly, no threads)."""
import time
import uuid

import gevent
from gevent.queue import Empty, Queue

from dlx.ipc import ChannelSet, IpcError, PeerDead, messages, process_alive
from dlx.ipc.board import StatusBoard
from dlx.params import SamplingParams

ENGINE_WAIT_S = 30.0      # how long a new request waits for a restarting engine before a 503
HEARTBEAT_STALE_S = 10.0
# A group found ready stays trusted this long, so a burst of submits shares one check (two /proc reads,
# two board reads). A death inside the window still reaches the request: the reader fails its channel.
READY_CACHE_S = 0.05
# A reader whose channel has no request in flight sleeps this long between looks at the engine; submit()
# wakes it at once, so a request never waits on this (each wake-up of an idle server costs CPU).
IDLE_READER_S = 30.0


class EngineUnavailable(Exception):
    pass


class RequestHandle:
    def __init__(self, rid: str, channel):
        self.rid, self.channel, self.events = rid, channel, Queue()
        self.done = False

    def next_event(self, timeout: float) -> dict | None:
        try:
            return self.events.get(timeout=timeout)
        except Empty:
            return None


class EngineClient:
    def __init__(self, runtime: dict):
        self.prefix, self.groups = runtime["prefix"], runtime["data_parallel_size"]
        self.board = StatusBoard.attach(self.prefix)
        self.channels: list = []
        self.inflight: dict[str, RequestHandle] = {}
        self.counters: dict[str, int] = {}
        self.ready_until: dict[int, float] = {}   # group → monotonic time its last good check expires

    def start(self) -> None:
        """Claim channels and start the readers; called lazily in the serving process (after fork)."""
        if self.channels:
            return
        self.channels = [ChannelSet.claim(f"{self.prefix}dp{g}") for g in range(self.groups)]
        for channel in self.channels:
            gevent.spawn(self.read_events, channel)

    @property
    def board_slot(self) -> int:
        return 1 + self.groups + self.channels[0].index

    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        self.start()
        channel = self.pick_channel()
        handle = RequestHandle(uuid.uuid4().hex, channel)
        self.inflight[handle.rid] = handle
        try:
            channel.send(messages.generate(handle.rid, prompt, params.to_dict()), timeout=10.0)
        except IpcError as exc:
            self.inflight.pop(handle.rid, None)
            raise EngineUnavailable(f"the engine did not take the request ({exc})") from exc
        channel.wake()   # an idle reader goes back to checking the engine's liveness for this request
        return handle

    def pick_channel(self):
        deadline = time.monotonic() + ENGINE_WAIT_S
        while True:
            alive = [c for group, c in enumerate(self.channels) if self.accepting(group)]
            if alive:
                load = {id(c): 0 for c in alive}
                for h in self.inflight.values():
                    if id(h.channel) in load:
                        load[id(h.channel)] += 1
                return min(alive, key=lambda c: load[id(c)])
            if time.monotonic() > deadline:
                raise EngineUnavailable("the engine is not available (starting or restarting); retry later")
            gevent.sleep(0.25)

    def accepting(self, group: int) -> bool:
        """The group's leader is attached and its pool ready (remembered for READY_CACHE_S when true)."""
        now = time.monotonic()
        if self.ready_until.get(group, 0.0) > now:
            return True
        ready = self.channels[group].peer_alive() and self.group_ready(group)
        if ready:
            self.ready_until[group] = now + READY_CACHE_S
        return ready

    def abort(self, handle: RequestHandle) -> None:
        if handle.done:
            return
        handle.done = True
        self.inflight.pop(handle.rid, None)
        try:
            handle.channel.send(messages.abort(handle.rid), timeout=1.0)
        except IpcError:
            pass   # the engine is gone; it has forgotten the request already

    def finish(self, handle: RequestHandle) -> None:
        handle.done = True
        self.inflight.pop(handle.rid, None)

    def read_events(self, channel) -> None:
        while True:
            try:
                msg = channel.recv(timeout=1.0)
            except PeerDead:
                self.fail_channel(channel, "an engine worker died; the request was aborted")
                gevent.sleep(0.5)
                continue
            except IpcError:
                gevent.sleep(0.5)
                continue
            if msg is None:   # a quiet second: sleep long unless a request of ours is in flight
                if not any(h.channel is channel for h in self.inflight.values()):
                    channel.sleep_until_incoming(IDLE_READER_S)
                continue
            for event in messages.unbatch(msg):
                handle = self.inflight.get(event.get("rid"))
                if handle is not None:
                    handle.events.put(event)

    def fail_channel(self, channel, message: str) -> None:
        self.ready_until.pop(self.channels.index(channel), None)
        for handle in [h for h in self.inflight.values() if h.channel is channel]:
            handle.events.put(messages.error(handle.rid, message, 500))
            self.inflight.pop(handle.rid, None)

    # ---- health and metrics -----------------------------------------------------------------------
    def group_ready(self, group: int) -> bool:
        control = self.board.read(0) or {}
        rec = self.board.read(1 + group) or {}
        return (control.get("state") == "ready" and rec.get("generation") == control.get("generation")
                and rec.get("ready", False) and process_alive(rec.get("pid", 0))
                and time.time() - rec.get("heartbeat", 0) < HEARTBEAT_STALE_S)

    def healthy(self) -> bool:
        return all(self.group_ready(g) for g in range(self.groups))

    def count(self, status: str) -> None:
        self.counters[status] = self.counters.get(status, 0) + 1
        if self.channels:
            self.board.write(self.board_slot, {"pid": 0, "requests": self.counters})

    def engine_records(self) -> list[dict]:
        return [self.board.read(1 + g) or {} for g in range(self.groups)]

    def frontend_records(self) -> list[dict]:
        return [r for r in (self.board.read(i) for i in range(1 + self.groups, self.board.slots)) if r]
