"""When the leader should hold the next step for follow-up requests: only while holding pays off — when the
followers would be a good share of the next batch, and while recent waits caught arrivals (probing now and then)."""
from collections import deque

HISTORY = 16       # waits remembered
PROBE_EVERY = 16   # while waits do not pay off, still try one opportunity in this many
FOLLOWER_SHARE = 4   # hold only if the followers would be at least 1/FOLLOWER_SHARE of the next batch


class AdmissionPolicy:
    """Closed-loop clients (benchmarks, agents, batch jobs) send their next request a few milliseconds after
    an answer, and holding the step for them keeps batches full. Open traffic does not, and there every
    wait would be pure delay: so waiting continues only while at least half of the recent waits caught
    an arrival."""

    def __init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=HISTORY)
        self.skipped = 0

    def should_wait(self, finished: int, others: int) -> bool:
        """`finished` requests just ended (their clients may follow up); `others` would run in the next step
        anyway. A hold stalls all of those; not holding delays only the followers, by one step. With the hold
        capped at a quarter of a step, it pays when followers make up a quarter of the next batch: after a
        batch that finished together, yes; after one answer of 32 ending (varied lengths), no."""
        if finished * FOLLOWER_SHARE < finished + others:
            return False
        if len(self.recent) < HISTORY or 2 * sum(self.recent) >= len(self.recent):
            return True
        self.skipped += 1
        return self.skipped % PROBE_EVERY == 0

    def record(self, caught_arrival: bool) -> None:
        self.recent.append(caught_arrival)
