"""The frontend's line to the engine: claims one channel per data-parallel group, routes each request to
the least busy group, fans engine events out to per-request queues (gevent-friendly, no threads), and
hands a request whose engine died back to its handler, which resubmits it to the restarted pool."""
import time
import uuid

import gevent
from gevent.queue import Empty, Queue

from dlx.ipc import ChannelSet, IpcError, PeerDead, messages, process_alive
from dlx.ipc.board import StatusBoard
from dlx.params import Resumption, SamplingParams

ENGINE_WAIT_S = 30.0      # how long a new request waits for a restarting engine before a 503
HEARTBEAT_STALE_S = 10.0
# A group found ready stays trusted this long, so a burst of submits shares one check (two /proc reads,
# two board reads). A death inside the window still reaches the request: the reader fails its channel.
READY_CACHE_S = 0.05
# A reader whose channel has no request in flight sleeps this long between looks at the engine; submit()
# wakes it at once, so a request never waits on this (each wake-up of an idle server costs CPU).
IDLE_READER_S = 30.0
# A busy reader checks this often that its group's leader is still the one its requests went to: a pool that
# restarted before the reader noticed the old leader's death looks alive on the rings.
GENERATION_CHECK_S = 1.0
# An engine death is not retried for a request once the engine died this many times while admitting it (the
# request's first forward: most likely it kills the engine), or once it was in flight for this many deaths.
MAX_ADMISSION_DEATHS = 2
MAX_DEATHS = 3


class EngineUnavailable(Exception):
    pass


class EngineFailed(Exception):
    """The engine ended a request with an error after accepting it, or died too often with it in flight: a 500."""


class RequestHandle:
    def __init__(self, rid: str, prompt: list[int], params: SamplingParams):
        self.rid, self.prompt, self.params, self.events = rid, prompt, params, Queue()
        self.channel = None
        self.generation: int | None = None   # of the pool the request was sent to
        self.done = False
        self.deaths = self.admission_deaths = 0
        self.submitted_at = time.monotonic()

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
        self.resumed = 0                          # requests resubmitted to a restarted pool
        self.ready_until: dict[int, float] = {}   # group → monotonic time its last good check expires
        self.generations: dict[int, int] = {}     # group → pool generation of its last good check

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
        handle = RequestHandle(uuid.uuid4().hex, prompt, params)
        self.send_generate(handle, channel, messages.generate(handle.rid, prompt, params.to_dict()))
        return handle

    def resubmit(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, generated: int) -> None:
        """Send what is left of a request whose engine died (`prompt` ends with the `generated` tokens it keeps)
        to the restarted pool, waiting for it as a new request would; EngineFailed when it is not retried."""
        if handle.deaths >= MAX_DEATHS:
            raise EngineFailed(f"the engine died {handle.deaths} times while this request ran; it is not retried")
        try:
            channel = self.pick_channel()
        except EngineUnavailable as exc:
            raise EngineFailed(f"an engine worker died and the engine did not come back ({exc})") from None
        # The pool is back, so the control record names the requests blamed for the latest death.
        if handle.rid in self.control_record().get("blamed", ()):
            handle.admission_deaths += 1
        if handle.admission_deaths >= MAX_ADMISSION_DEATHS:
            raise EngineFailed(f"the engine died {handle.admission_deaths} times while admitting this request; "
                               "it is not retried")
        resume = Resumption(generated, time.monotonic() - handle.submitted_at, handle.admission_deaths > 0)
        try:
            self.send_generate(handle, channel, messages.generate(handle.rid, prompt, params.to_dict(),
                                                                  resume.to_dict()))
        except EngineUnavailable as exc:
            raise EngineFailed(str(exc)) from None
        self.resumed += 1
        self.publish_counters()

    def send_generate(self, handle: RequestHandle, channel, msg: messages.Generate) -> None:
        handle.channel, handle.generation = channel, self.generations.get(self.channels.index(channel))
        self.inflight[handle.rid] = handle
        try:
            channel.send(msg, timeout=10.0)
        except IpcError as exc:
            self.inflight.pop(handle.rid, None)
            raise EngineUnavailable(f"the engine did not take the request ({exc})") from exc
        channel.wake()   # an idle reader goes back to checking the engine's liveness for this request

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
        group, checked = self.channels.index(channel), time.monotonic()
        while True:
            try:
                msg = channel.recv(timeout=1.0)
            except PeerDead:
                self.lose(channel, [h for h in self.inflight.values() if h.channel is channel])
                gevent.sleep(0.5)
                continue
            except IpcError:
                gevent.sleep(0.5)
                continue
            if time.monotonic() - checked > GENERATION_CHECK_S:
                checked = time.monotonic()
                generation = (self.board.read(1 + group) or {}).get("generation")
                stale = [h for h in self.inflight.values() if h.channel is channel
                         and None not in (h.generation, generation) and h.generation != generation]
                if stale:   # lose() also drops the group's readiness, which a healthy group keeps
                    self.lose(channel, stale)
            if msg is None:   # a quiet second: sleep long unless a request of ours is in flight
                if not any(h.channel is channel for h in self.inflight.values()):
                    channel.sleep_until_incoming(IDLE_READER_S)
                continue
            for event in messages.unbatch(msg):
                handle = self.inflight.get(event.get("rid"))
                if handle is not None:
                    handle.events.put(event)

    def lose(self, channel, handles: list[RequestHandle]) -> None:
        """The engine that had these requests died: each handler gets a `lost` event (and resubmits)."""
        self.ready_until.pop(self.channels.index(channel), None)
        for handle in handles:
            self.inflight.pop(handle.rid, None)
            handle.deaths += 1
            handle.events.put(messages.lost(handle.rid))

    # ---- health and metrics -----------------------------------------------------------------------
    def group_ready(self, group: int) -> bool:
        control = self.control_record()
        rec = self.board.read(1 + group) or {}
        ready = (control.get("state") == "ready" and rec.get("generation") == control.get("generation")
                 and rec.get("ready", False) and process_alive(rec.get("pid", 0))
                 and time.time() - rec.get("heartbeat", 0) < HEARTBEAT_STALE_S)
        if ready:
            self.generations[group] = rec["generation"]
        return ready

    def healthy(self) -> bool:
        return all(self.group_ready(g) for g in range(self.groups))

    def count(self, status: str) -> None:
        self.counters[status] = self.counters.get(status, 0) + 1
        self.publish_counters()

    def publish_counters(self) -> None:
        if self.channels:
            self.board.write(self.board_slot, {"pid": 0, "requests": self.counters, "resumed": self.resumed})

    def control_record(self) -> dict:
        return self.board.read(0) or {}

    def engine_records(self) -> list[dict]:
        return [self.board.read(1 + g) or {} for g in range(self.groups)]

    def frontend_records(self) -> list[dict]:
        return [r for r in (self.board.read(i) for i in range(1 + self.groups, self.board.slots)) if r]
