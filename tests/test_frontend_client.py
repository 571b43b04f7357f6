"""The frontend's engine client picks a channel without re-reading /proc and the status board for every
submit of a burst, yet never trusts a group past READY_CACHE_S or after its channel failed."""
from dlx.frontend import client as client_module
from dlx.frontend.client import READY_CACHE_S, EngineClient


class StubChannel:
    def __init__(self) -> None:
        self.peer_checks = 0

    def peer_alive(self) -> bool:
        self.peer_checks += 1
        return True


def client_with(channels: list[StubChannel], ready: list[bool]) -> tuple[EngineClient, list[int]]:
    client = EngineClient.__new__(EngineClient)   # no shared memory: the checks are stubbed
    client.channels, client.inflight, client.ready_until = channels, {}, {}
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
    client.fail_channel(channel, "an engine worker died")   # a dead leader is re-checked at once
    assert client.pick_channel() is channel and checks == [0, 0, 0]


def test_a_group_that_is_not_ready_is_asked_again_every_time():
    busy, ready = StubChannel(), StubChannel()
    client, checks = client_with([busy, ready], [False, True])
    assert [client.pick_channel() for _ in range(3)] == [ready] * 3
    assert checks == [0, 1, 0, 0]             # group 1 trusted after its first check, group 0 never
