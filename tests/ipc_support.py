"""Shared set-up of the IPC test modules: a per-run name tag, a leftover-segment check after every test,
and fresh segment prefixes carrying the tag."""
import os
import uuid

import pytest

from dlx.ipc import run_prefix

# Every name a test creates carries this tag, so leftovers are attributable to this test run.
TAG = "ipc" + uuid.uuid4().hex[:8]
CHILD_WAIT = 30.0  # generous bound for a child's answer; only reached when something is broken


def ours() -> list[str]:
    return sorted(entry for entry in os.listdir("/dev/shm") if TAG in entry)


@pytest.fixture(autouse=True)
def no_leftover_shm():
    yield
    leftovers = ours()
    for entry in leftovers:  # clean up so one failure does not cascade into the next test
        os.unlink(os.path.join("/dev/shm", entry))
    assert leftovers == []


@pytest.fixture
def prefix() -> str:
    return run_prefix(TAG + uuid.uuid4().hex[:6])
