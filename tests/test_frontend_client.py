"""The frontend's engine client picks a channel without re-reading /proc and the status board for every
submit of a burst, yet never trusts a group past READY_CACHE_S or after its channel failed; requests whose
engine died go back to their handlers and are resubmitted, unless the engine died twice admitting them or
three times with them in flight."""
import pytest

from dlx.frontend import client as client_module
from dlx.frontend.client import MAX_DEATHS, READY_CACHE_S, EngineClient, EngineFailed
from dlx.ipc import messages
from dlx.params import SamplingParams


class StubChannel:
    def __init__(self) -> None:
        self.peer_checks, self.index, self.sent = 0, 0, []

    def peer_alive(self) -> bool:
        self.peer_checks += 1
        return True

    def send(self, msg: dict, timeout: float) -> None:
        self.sent.append(msg)

    def wake(self) -> None:
        pass


class StubBoard:
    def __init__(self, control: dict) -> None:
        self.control, self.written = control, []

    def read(self, slot: int) -> dict:
        return self.control if slot == 0 else {}

    def write(self, slot: int, record: dict) -> None:
        self.written.append(record)


def client_with(channels: list[StubChannel], ready: list[bool]) -> tuple[EngineClient, list[int]]:
    client = EngineClient.__new__(EngineClient)   # no shared memory: the checks are stubbed
    client.channels, client.inflight, client.ready_until = channels, {}, {}
    client.generations, client.counters, client.resumed, client.groups = {}, {}, 0, 1
    checks: list[int] = []

    def group_ready(group: int) -> bool:
        checks.append(group)
        return ready[group]
    client.group_ready = group_ready
    return client, checks


def test_a_burst_of_submits_shares_one_readiness_check(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(client_module.time, "monotonic", lambda: now[0])
    channel = StubChannel()
    client, checks = client_with([channel], [True])
    for _ in range(10):
        assert client.pick_channel() is channel
    assert checks == [0] and channel.peer_checks == 1
    now[0] += READY_CACHE_S * 1.01            # the trust expires
    assert client.pick_channel() is channel and checks == [0, 0]
    client.lose(channel, [])                  # a dead leader is re-checked at once
    assert client.pick_channel() is channel and checks == [0, 0, 0]


def test_a_group_that_is_not_ready_is_asked_again_every_time():
    busy, ready = StubChannel(), StubChannel()
    client, checks = client_with([busy, ready], [False, True])
    assert [client.pick_channel() for _ in range(3)] == [ready] * 3
    assert checks == [0, 1, 0, 0]             # group 1 trusted after its first check, group 0 never


def test_a_lost_request_is_resubmitted_until_the_engine_died_twice_admitting_it():
    channel = StubChannel()
    client, _ = client_with([channel], [True])
    client.board = StubBoard({"blamed": []})
    handle = client.submit([5, 6], SamplingParams(temperature=0))
    client.lose(channel, [handle])
    assert handle.events.get_nowait() == messages.lost(handle.rid) and client.inflight == {}
    client.board.control["blamed"] = [handle.rid]   # it was being admitted when the engine died
    client.resubmit(handle, [5, 6, 7], SamplingParams(temperature=0, max_tokens=9), 1)
    resent = channel.sent[-1]
    assert resent["prompt"] == [5, 6, 7] and resent["params"]["max_tokens"] == 9
    assert resent["resume"]["generated"] == 1 and resent["resume"]["alone"]
    assert client.inflight == {handle.rid: handle} and client.board.written[-1]["resumed"] == 1
    client.lose(channel, [handle])
    with pytest.raises(EngineFailed, match="2 times while admitting this request"):
        client.resubmit(handle, [5, 6, 7], SamplingParams(temperature=0), 1)


def test_a_request_in_flight_during_three_deaths_is_not_retried():
    channel = StubChannel()
    client, _ = client_with([channel], [True])
    client.board = StubBoard({"blamed": ["someone else"]})
    handle = client.submit([5], SamplingParams())
    for _ in range(MAX_DEATHS - 1):
        client.lose(channel, [handle])
        client.resubmit(handle, [5], SamplingParams(), 0)
        assert not channel.sent[-1]["resume"]["alone"]
    client.lose(channel, [handle])
    with pytest.raises(EngineFailed, match="3 times while this request ran"):
        client.resubmit(handle, [5], SamplingParams(), 0)
    assert len(channel.sent) == MAX_DEATHS
