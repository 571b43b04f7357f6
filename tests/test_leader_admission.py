"""The leader's admission wait: follow-up requests arriving within the bound join the next step; no wait
without finishes or room, nor when followers would be a small part of the next batch, and none (but probes)
once recent waits mostly caught nobody."""
from types import SimpleNamespace

from dlx.workers.admission import HISTORY, PROBE_EVERY, AdmissionPolicy
from dlx.workers.leader import Leader


class StubChannel:
    def __init__(self, index: int, arrivals: list[dict]):
        self.index, self.arrivals, self.pending = index, list(arrivals), []

    def has_incoming(self) -> bool:
        return bool(self.pending)

    def recv(self, timeout: float = 0):
        return self.pending.pop(0) if self.pending else None


class StubChannels:
    """Each ready() poll delivers the next scheduled arrival (as a ring filling up would) and is recorded."""

    def __init__(self, arrivals: list[dict]):
        self.channels = [StubChannel(0, arrivals)]
        self.waits = []

    def ready(self, timeout: float) -> list:
        self.waits.append(timeout)
        channel = self.channels[0]
        if channel.arrivals:
            channel.pending.append(channel.arrivals.pop(0))
            return [channel]
        return []


def leader_with(arrivals: list[dict], running: int = 3, max_num_reqs: int = 8, wait_ms: float = 50.0) -> Leader:
    scheduler = SimpleNamespace(running=[object()] * running, waiting=[])
    engine = SimpleNamespace(cfg=SimpleNamespace(admission_wait_ms=wait_ms, max_num_reqs=max_num_reqs),
                             scheduler=scheduler, has_work=lambda: running > 0)
    leader = Leader(engine, StubChannels(arrivals), board=None, slot=1, generation=0)
    leader.last_step_s = 1.0
    return leader


def generate(rid: str) -> dict:
    return {"type": "generate", "rid": rid, "prompt": [1], "params": {}}


def test_followers_are_drained_before_the_next_step():
    leader = leader_with([generate("a"), generate("b"), generate("c")])
    leader.wait_for_followers(finished=2)
    assert [cmd["rid"] for cmd in leader.early] == ["a", "b"]   # stops once as many arrived as finished
    assert len(leader.channels.waits) == 2 and set(leader.channels.waits) == {0}   # polled, never slept
    assert leader.owner == {"a": 0, "b": 0}
    assert leader.metrics.admission_waits == {"caught": 1, "empty": 0}


def test_wait_ends_when_nobody_comes():
    leader = leader_with([])
    leader.wait_for_followers(finished=1)
    assert leader.early == [] and leader.channels.waits and set(leader.channels.waits) == {0}
    assert leader.metrics.admission_waits == {"caught": 0, "empty": 1} and leader.metrics.admission_wait_seconds > 0


def test_bounded_by_a_quarter_of_the_step():
    leader = leader_with([], wait_ms=50.0)
    leader.last_step_s = 0.004
    assert leader.follower_window() == 0.001
    leader.wait_for_followers(finished=1)
    assert leader.channels.waits and leader.metrics.admission_waits == {"caught": 0, "empty": 1}


def test_no_wait_without_finishes_room_or_setting():
    for leader, finished in ((leader_with([generate("a")]), 0),
                             (leader_with([generate("a")], running=8, max_num_reqs=8), 1),
                             (leader_with([generate("a")], wait_ms=0.0), 1)):
        leader.wait_for_followers(finished)
        assert leader.channels.waits == [] and leader.early == []
        assert leader.metrics.admission_waits == {"caught": 0, "empty": 0}


def test_no_hold_when_followers_would_be_a_small_part_of_the_batch():
    """One answer of 31 ended (answers of varied length): holding would stall 30 running requests to save
    one follower a step, so the next step starts at once. A quarter of the batch ending is worth the hold."""
    leader = leader_with([generate("a")], running=30, max_num_reqs=64)
    leader.wait_for_followers(finished=1)
    assert leader.channels.waits == [] and leader.early == []
    assert leader.metrics.admission_waits == {"caught": 0, "empty": 0}
    leader = leader_with([generate(f"r{i}") for i in range(10)], running=30, max_num_reqs=64)
    leader.wait_for_followers(finished=10)
    assert len(leader.early) == 10 and leader.metrics.admission_waits == {"caught": 1, "empty": 0}


def test_an_idle_engine_gathers_the_burst_that_follows_a_finished_batch():
    """Everything finished at once: the clients' next requests arrive together, and a step started on the
    first of them would leave the others a whole step behind. The gathered commands keep the leader from
    its idle wait, so the next step starts as soon as the wait ends."""
    leader = leader_with([generate("a"), generate("b"), generate("c")], running=0)
    assert leader.idle()
    leader.wait_for_followers(finished=3)
    assert [cmd["rid"] for cmd in leader.early] == ["a", "b", "c"]
    assert leader.metrics.admission_waits == {"caught": 1, "empty": 0}
    assert not leader.idle()


def test_policy_stops_waiting_for_open_traffic_and_probes():
    policy = AdmissionPolicy()
    for _ in range(HISTORY):
        assert policy.should_wait(1, 0)
        policy.record(False)
    decisions = [policy.should_wait(1, 0) for _ in range(2 * PROBE_EVERY)]
    assert decisions.count(True) == 2 and decisions[PROBE_EVERY - 1] and decisions[-1]
    for _ in range(HISTORY // 2):       # probes that catch arrivals bring waiting back
        policy.record(True)
    assert policy.should_wait(1, 0)


def test_policy_keeps_waiting_while_half_the_waits_pay_off():
    policy = AdmissionPolicy()
    for caught in [True, False] * HISTORY:
        assert policy.should_wait(1, 0)
        policy.record(caught)


def test_leader_skips_the_wait_after_empty_waits():
    leader = leader_with([], wait_ms=2.0)
    for _ in range(HISTORY):
        leader.wait_for_followers(finished=1)
    assert leader.metrics.admission_waits == {"caught": 0, "empty": HISTORY}
    polls = len(leader.channels.waits)
    leader.wait_for_followers(finished=1)
    assert len(leader.channels.waits) == polls   # open traffic: the next step starts at once
