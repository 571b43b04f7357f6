"""When the leader should hold the next step for follow-up requests: only while holding pays off.
Remembers whether recent waits saw an arrival; after mostly empty waits it stops waiting, probing now and then."""
from collections import deque

HISTORY = 16       # waits remembered
PROBE_EVERY = 16   # while waits do not pay off, still try one opportunity in this many


class AdmissionPolicy:
    """Closed-loop clients (benchmarks, agents, batch jobs) send their next request a few milliseconds after
    an answer, and holding the step for them keeps batches full. Open traffic does not, and there every
    wait would be pure delay: so waiting continues only while at least half of the recent waits caught
    an arrival."""

    def __init__(self) -> None:
        self.recent: deque[bool] = deque(maxlen=HISTORY)
        self.skipped = 0

    def should_wait(self) -> bool:
        if len(self.recent) < HISTORY or 2 * sum(self.recent) >= len(self.recent):
            return True
        self.skipped += 1
        return self.skipped % PROBE_EVERY == 0

    def record(self, caught_arrival: bool) -> None:
        self.recent.append(caught_arrival)
