"""The leader's event delivery: a step's events for one frontend leave as one ring message (split past
EVENTS_PER_MESSAGE), other frontends get their own, and a frontend that cannot be reached has its requests aborted."""
from types import SimpleNamespace

from dlx.ipc import IpcError
from dlx.workers.leader import EVENTS_PER_MESSAGE, Leader


class RecordingChannel:
    def __init__(self, index: int, broken: bool = False):
        self.index, self.broken, self.sent = index, broken, []

    def send(self, msg: dict, timeout: float | None = None) -> None:
        if self.broken:
            raise IpcError("the frontend is gone")
        self.sent.append(msg)


def leader_with(channels: list[RecordingChannel]) -> Leader:
    return Leader(SimpleNamespace(), SimpleNamespace(channels=channels), board=None, slot=1, generation=0)


def test_events_of_a_step_travel_together_per_frontend():
    a, b = RecordingChannel(0), RecordingChannel(1)
    leader = leader_with([a, b])
    leader.owner = {"r1": 0, "r2": 0, "r3": 1}
    for rid in ("r1", "r2", "r3", "unknown"):
        leader.send(rid, {"type": "step", "rid": rid})
    leader.flush()
    assert a.sent == [{"type": "batch", "events": [{"type": "step", "rid": "r1"}, {"type": "step", "rid": "r2"}]}]
    assert b.sent == [{"type": "step", "rid": "r3"}]   # a lone event goes unwrapped
    leader.flush()
    assert len(a.sent) == 1 and len(b.sent) == 1       # nothing is sent twice


def test_large_steps_are_split():
    a = RecordingChannel(0)
    leader = leader_with([a])
    count = 2 * EVENTS_PER_MESSAGE + 3
    leader.owner = {f"r{i}": 0 for i in range(count)}
    for i in range(count):
        leader.send(f"r{i}", {"type": "step", "rid": f"r{i}"})
    leader.flush()
    sizes = [len(m["events"]) if m["type"] == "batch" else 1 for m in a.sent]
    assert sizes == [EVENTS_PER_MESSAGE, EVENTS_PER_MESSAGE, 3]
    delivered = [e["rid"] for m in a.sent for e in (m["events"] if m["type"] == "batch" else [m])]
    assert delivered == [f"r{i}" for i in range(count)]


def test_unreachable_frontend_gets_its_requests_aborted():
    good, gone = RecordingChannel(0), RecordingChannel(1, broken=True)
    leader = leader_with([good, gone])
    leader.owner = {"ok": 0, "lost1": 1, "lost2": 1}
    for rid in leader.owner:
        leader.send(rid, {"type": "step", "rid": rid})
    leader.flush()
    assert good.sent == [{"type": "step", "rid": "ok"}]
    assert sorted(cmd["rid"] for cmd in leader.internal_aborts) == ["lost1", "lost2"]
    assert leader.owner == {"ok": 0}
