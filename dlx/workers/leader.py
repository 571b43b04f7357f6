"""Engine leader loop: drain the request rings → engine step → write token snapshots to the frontend
that owns each request; publishes liveness and metrics on the status board. Never spins while idle."""
import os
import time
from collections.abc import Callable

from dlx.engine.engine import LLMEngine, StepOutput
from dlx.ipc import ChannelSet, IpcError, messages
from dlx.ipc.board import StatusBoard
from dlx.params import Resumption, SamplingParams
from dlx.workers.admission import AdmissionPolicy
from dlx.workers.faults import ExitHook
from dlx.workers.metrics import EngineMetrics

IDLE_WAIT_S = 1.0   # an idle leader wakes this often: to notice a stop and to refresh its heartbeat
SEND_TIMEOUT_S = 10.0
EVENTS_PER_MESSAGE = 64   # a step's events for one frontend travel together, at most this many per message
MAX_ADMITTING = 128       # request ids a leader record names as being admitted (bounds the record's size)


def apply_commands(engine: LLMEngine, commands: list[dict]) -> list[tuple[dict, str | None, int]]:
    """Apply generate/abort commands to an engine; returns (command, error message, code) per generate.
    Tensor-parallel followers call this with the same commands, so their engines stay identical."""
    results = []
    for cmd in commands:
        if cmd["type"] == messages.ABORT:
            engine.abort(cmd["rid"])
            continue
        if len(engine.scheduler.waiting) >= engine.cfg.max_waiting_requests:
            results.append((cmd, "the server is overloaded: too many waiting requests; retry later", 429))
            continue
        try:
            params = SamplingParams.from_dict(cmd["params"])
            resumption = Resumption.from_dict(cmd["resume"]) if "resume" in cmd else None
            engine.add_request(cmd["prompt"], params, rid=cmd["rid"], resumption=resumption)
            results.append((cmd, None, 200))
        except (ValueError, TypeError) as exc:
            results.append((cmd, str(exc), 400))
    return results


class Leader:
    def __init__(self, engine: LLMEngine, channels: ChannelSet, board: StatusBoard, slot: int,
                 generation: int, sync: Callable[[list[dict] | None], None] | None = None):
        self.engine, self.channels, self.board, self.slot = engine, channels, board, slot
        self.generation, self.sync = generation, sync
        self.owner: dict[str, int] = {}              # request id → channel index
        self.outbox: dict[int, list[dict]] = {}      # channel index → events queued until flush()
        self.sent: dict[str, tuple[int, list[int]]] = {}  # request id → (stable length, region) last sent
        self.internal_aborts: list[dict] = []
        self.early: list[dict] = []                  # commands drained while waiting for followers
        self.admission = AdmissionPolicy()
        self.last_step_s = 0.0
        self.metrics = EngineMetrics()
        self.parent = os.getppid()
        self.last_publish = 0.0
        self.published_counts = (-1, -1)
        self.published_admitting: list[str] = []
        self.exit_hook = ExitHook.from_env(generation)   # test-only (dlx.workers.faults)

    def run(self) -> None:
        for channel in self.channels.channels:   # requests queued for a previous engine are stale
            channel.requests.discard_pending()
        self.publish(force=True)
        try:
            while not self.should_stop():
                if self.idle():
                    self.channels.ready(IDLE_WAIT_S)
                commands = self.early + self.drain() + self.internal_aborts
                self.early, self.internal_aborts = [], []
                if commands or self.engine.has_work():
                    if self.sync:
                        self.sync(commands)
                    self.answer(apply_commands(self.engine, commands))
                    for cmd in commands:
                        if cmd["type"] == messages.ABORT:
                            self.forget(cmd["rid"])
                    # Gauges first: a client that hears back from us must find itself counted in /metrics.
                    self.publish()
                    self.flush()   # acceptances go out before the step, so streams can start meanwhile
                    if self.engine.has_work():
                        finished = self.step()
                        self.publish()
                        self.flush()
                        self.wait_for_followers(finished)
                self.publish(force=not self.engine.has_work())
        finally:
            if self.sync:
                self.sync(None)   # followers stop too

    def idle(self) -> bool:
        """Nothing to step and no command in hand (followers gathered by wait_for_followers count)."""
        return not self.engine.has_work() and not self.early

    def should_stop(self) -> bool:
        control = self.board.read(0) or {}
        return control.get("stop", False) or os.getppid() != self.parent

    def drain(self) -> list[dict]:
        commands = []
        for channel in self.channels.channels:
            while channel.has_incoming():
                try:
                    msg = channel.recv(timeout=0)
                except IpcError:
                    break
                if msg is None:
                    break
                if msg.get("type") == messages.GENERATE:
                    self.owner[msg["rid"]] = channel.index
                    commands.append(msg)
                elif msg.get("type") == messages.ABORT and msg.get("rid") in self.owner:
                    commands.append(messages.abort(msg["rid"]))
        return commands

    def answer(self, results: list[tuple[dict, str | None, int]]) -> None:
        for cmd, error, code in results:
            if error is None:
                self.send(cmd["rid"], messages.accepted(cmd["rid"]))
            else:
                self.send(cmd["rid"], messages.error(cmd["rid"], error, code))
                self.forget(cmd["rid"])

    def step(self) -> int:
        """One engine step and its snapshots; returns how many requests finished."""
        started = time.perf_counter()
        outputs = self.engine.step(on_scheduled=self.scheduled)
        self.last_step_s = time.perf_counter() - started
        self.metrics.record_step(self.last_step_s, self.engine.last_metrics)
        finished = 0
        for out in outputs:
            if out.finished:
                self.metrics.record_finish(out)
                finished += 1
            self.send_output(out)
        return finished

    def scheduled(self) -> None:
        """The step's batch is chosen, its forward not run yet: publish the counts of requests moved from waiting
        to running, and which requests this step admits (should the engine die now, the supervisor blames them,
        so the board names exactly this step's admissions), then give the test-only fault hook its turn."""
        admitting = [req.rid for req in self.engine.scheduler.admitted[:MAX_ADMITTING]]
        self.publish(force=bool(admitting or self.published_admitting), admitting=admitting)
        if self.exit_hook is not None:
            self.exit_hook.at_step(self.engine.scheduler)

    def wait_for_followers(self, finished: int) -> None:
        """After a step that finished requests, give the clients' next requests a moment to arrive (a
        closed-loop client answers within a few milliseconds) so they join the next step rather than the
        one after: at most follower_window(), and only where AdmissionPolicy finds that holding pays. The
        window is polled: it is short and follows a step, so it is never idle time. Also when nothing else
        runs: requests that finished together are followed by a burst, and a step started on its first
        arrival would leave the rest a step behind."""
        limit = self.follower_window()
        others = len(self.engine.scheduler.running) + len(self.engine.scheduler.waiting)
        room = self.engine.cfg.max_num_reqs - others
        if finished == 0 or limit <= 0 or room <= 0 or not self.admission.should_wait(finished, others):
            return
        started = time.perf_counter()
        deadline = started + limit
        arrived = 0
        while arrived < min(finished, room) and time.perf_counter() < deadline:
            # Polled, not slept: this window is a few milliseconds right after a step, and a leader that
            # sleeps in it runs its next step measurably slower (docs/benchmarks.md, "idle gaps"). Yielding
            # leaves the core to a frontend that shares it.
            if not self.channels.ready(0):
                os.sched_yield()
                continue
            got = self.drain()
            self.early += got
            arrived += sum(cmd["type"] == messages.GENERATE for cmd in got)
        self.admission.record(arrived > 0)
        self.metrics.record_admission_wait(arrived > 0, time.perf_counter() - started)

    def follower_window(self) -> float:
        """Longest wait for follow-ups: admission_wait_ms, and never more than a quarter of the last step."""
        return min(self.engine.cfg.admission_wait_ms / 1000, self.last_step_s / 4)

    def send_output(self, out: StepOutput) -> None:
        last_stable, last_region = self.sent.get(out.rid, (0, None))
        if not out.finished and out.token_ids == last_region:
            return   # nothing changed for this request in this step
        self.sent[out.rid] = (out.stable_len, out.token_ids)
        self.send(out.rid, messages.step(out.rid, last_stable, out.token_ids[last_stable:], out.stable_len, out.nfe,
                                         out.finished, out.finish_reason, out.timing))
        if out.finished:
            self.forget(out.rid)

    def send(self, rid: str, msg: dict) -> None:
        """Queue an event for the frontend that owns `rid`; flush() delivers it."""
        index = self.owner.get(rid)
        if index is not None:
            self.outbox.setdefault(index, []).append(msg)

    def flush(self) -> None:
        """Deliver the queued events, one ring message per frontend (and per EVENTS_PER_MESSAGE): a step
        costs each frontend one wake-up instead of one per request."""
        outbox, self.outbox = self.outbox, {}
        for index, events in outbox.items():
            try:
                for start in range(0, len(events), EVENTS_PER_MESSAGE):
                    msg = messages.batch(events[start:start + EVENTS_PER_MESSAGE])
                    self.channels.channels[index].send(msg, timeout=SEND_TIMEOUT_S)
            except IpcError:
                # The frontend is gone or stuck: abort everything it owns (through the command path,
                # so tensor-parallel followers abort too).
                for other, owner in list(self.owner.items()):
                    if owner == index:
                        self.internal_aborts.append(messages.abort(other))
                        self.forget(other)

    def forget(self, rid: str) -> None:
        self.owner.pop(rid, None)
        self.sent.pop(rid, None)

    def publish(self, force: bool = False, admitting: list[str] | None = None) -> None:
        """Liveness and metrics for /health and /metrics: whenever the running or waiting count changed, else at
        most every 0.1 s while busy, and when idle (a board write, not a loop: idle leaders still sleep)."""
        now = time.time()
        counts = (len(self.engine.scheduler.running), len(self.engine.scheduler.waiting))
        if not force and counts == self.published_counts and now - self.last_publish < 0.1:
            return
        self.last_publish, self.published_counts = now, counts
        self.published_admitting = admitting or []
        gauges = {"running": counts[0], "waiting": counts[1],
                  "kv_pages_used": self.engine.kv.num_used, "kv_pages_free": self.engine.kv.num_free,
                  "kv_pages_cached": self.engine.kv.num_cached}
        self.board.write(self.slot, {"pid": os.getpid(), "generation": self.generation, "ready": True,
                                     "heartbeat": now, "gauges": gauges, "admitting": self.published_admitting,
                                     **self.metrics.snapshot()})
