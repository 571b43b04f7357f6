"""The test-only fault hook (DLX_TEST_EXIT_AT): its grammar, one point per pool of a launcher run, events counted
over requests on their first submission only, and prompt_token in every pool."""
from types import SimpleNamespace

import pytest

from dlx.params import Resumption
from dlx.workers import faults
from dlx.workers.faults import ExitHook


def request(rid: str, prompt: list[int], resumption: Resumption | None = None, steps: int = 0, block: int = 1):
    """A stub request (blocks of 4) with one active block that has taken `steps` forwards."""
    return SimpleNamespace(rid=rid, tokens=prompt + [0] * 4, prompt_len=len(prompt), B=4, resumption=resumption,
                           resumed=resumption.generated if resumption else 0, block_steps={block: steps},
                           active_blocks=lambda: [block])


def scheduler(admitted=(), waiting=(), running=(), activated=None):
    plans = {r.rid: SimpleNamespace(activated=activated) for r in running}
    return SimpleNamespace(admitted=list(admitted), waiting=list(waiting), running=list(running), plans=plans)


@pytest.fixture
def exits(monkeypatch) -> list[int]:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
    monkeypatch.setattr(faults.os, "_exit", fake_exit)
    return codes


@pytest.mark.parametrize("spec", ["prefill", "prefill:x", "later:2", "decode:0", "prompt_token:-1"])
def test_bad_points_are_refused(spec):
    with pytest.raises(ValueError, match="DLX_TEST_EXIT_AT"):
        ExitHook(spec, 1)


def test_the_i_th_point_arms_the_i_th_pool_only(exits):
    spec = "waiting:2, prefill:1"
    fresh = request("a", [1, 2, 3, 4])
    assert ExitHook(spec, 1).point == ("waiting", 2) and ExitHook(spec, 2).point == ("prefill", 1)
    assert ExitHook(spec, 3).point is None
    first = ExitHook(spec, 1)
    first.at_step(scheduler(waiting=[fresh]))
    assert exits == []
    first.at_step(scheduler(waiting=[fresh]))
    assert exits == [faults.EXIT_STATUS]


def test_resubmitted_requests_do_not_count(exits):
    resumed = request("r", [1, 2, 3, 4, 5], Resumption(1), steps=2)
    hook = ExitHook("decode:1,prefill:1", 1)
    hook.at_step(scheduler(admitted=[resumed], waiting=[resumed], running=[resumed]))
    assert exits == []
    hook.at_step(scheduler(running=[request("f", [1, 2, 3, 4], steps=2)]))   # a first-time request mid-block
    assert exits == [faults.EXIT_STATUS]


def test_between_blocks_and_prompt_tokens(exits):
    hook = ExitHook("block:1", 1)
    hook.at_step(scheduler(running=[request("b", [1, 2, 3, 4])], activated=1))   # its first block: not between
    assert exits == []
    hook.at_step(scheduler(running=[request("b", [1, 2, 3, 4], block=2)], activated=2))
    assert exits == [faults.EXIT_STATUS]
    killer = ExitHook("prompt_token:9", 7)   # in every pool; kept output that holds 9 is not the prompt
    killer.at_step(scheduler(admitted=[request("k", [1, 9, 3, 4], Resumption(2))]))
    assert exits == [faults.EXIT_STATUS] * 2
    killer.at_step(scheduler(admitted=[request("k", [1, 2, 3, 9], Resumption(1))]))
    assert exits == [faults.EXIT_STATUS] * 2
    killer.at_step(scheduler(admitted=[request("k", [1, 2, 9, 4])]))
    assert exits == [faults.EXIT_STATUS] * 3
