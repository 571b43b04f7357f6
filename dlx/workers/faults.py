"""Test-only fault hook: DLX_TEST_EXIT_AT makes the engine leader exit at a chosen point of its work, so tests
can kill the engine at exact moments (mid-prefill, mid-block, between blocks, while requests wait to be admitted).

Grammar (read once when a leader starts; never set it in production):
    DLX_TEST_EXIT_AT=POINT[,POINT...]
    POINT = EVENT:N     the N-th step with that event, counted from the pool's start over requests on their
                        first submission (a pool recovering resubmitted requests does not count their steps);
                        the i-th such point arms the i-th pool of the launcher run, so each fires once and the
                        restarted pool recovers
          | prompt_token:T   every step that admits a request whose prompt holds token id T, in every pool:
                        a request that kills the engine each time it is admitted
    EVENT = step      a step that runs such a request
          | prefill   a step that admits one (its first forward)
          | decode    a step that continues a block one has already begun (mid-block)
          | block     a step that opens one's next block after its previous block was finished (between blocks)
          | waiting   a step taken while one waits for admission
The leader exits (status EXIT_STATUS) once the step's batch is chosen, before its forward: the engine dies in
the middle of that step, and the step's events never leave."""
import os
import sys

ENV = "DLX_TEST_EXIT_AT"
EVENTS = ("step", "prefill", "decode", "block", "waiting")
EXIT_STATUS = 17


def parse(spec: str) -> tuple[list[tuple[str, int]], set[int]]:
    """(counted points in order, prompt tokens); a ValueError names what is wrong."""
    counted, tokens = [], set()
    for point in filter(None, (p.strip() for p in spec.split(","))):
        event, _, number = point.partition(":")
        if not number.isdigit() or (event not in EVENTS and event != "prompt_token"):
            raise ValueError(f"{ENV}: '{point}' is not EVENT:N ({', '.join(EVENTS)}) or prompt_token:T")
        if event == "prompt_token":
            tokens.add(int(number))
        elif int(number) < 1:
            raise ValueError(f"{ENV}: '{point}' counts from 1")
        else:
            counted.append((event, int(number)))
    return counted, tokens


def step_events(scheduler) -> set[str]:
    """The events of a step whose batch the scheduler has just chosen, over requests on their first submission."""
    events = set()
    if any(req.resumption is None for req in scheduler.admitted):
        events.add("prefill")
    if any(req.resumption is None for req in scheduler.waiting):
        events.add("waiting")
    for req in scheduler.running:
        plan = scheduler.plans.get(req.rid)
        if plan is None or req.resumption is not None:
            continue
        events.add("step")
        active = req.active_blocks()
        if any(req.block_steps[b] > 0 for b in active):
            events.add("decode")
        if plan.activated is not None and active == [plan.activated] and plan.activated > req.prompt_len // req.B:
            events.add("block")
    return events


class ExitHook:
    def __init__(self, spec: str, generation: int):
        counted, self.tokens = parse(spec)
        self.point = counted[generation - 1] if 0 < generation <= len(counted) else None
        self.seen = 0

    @classmethod
    def from_env(cls, generation: int) -> "ExitHook | None":
        spec = os.environ.get(ENV, "")
        return cls(spec, generation) if spec.strip() else None

    def at_step(self, scheduler) -> None:
        """Called with the step's batch chosen, before its forward; exits the process when the point is reached."""
        if self.point is not None and self.point[0] in step_events(scheduler):
            self.seen += 1
            if self.seen == self.point[1]:
                self.exit(f"{self.point[0]}:{self.point[1]}")
        for req in scheduler.admitted:
            original = req.tokens[:req.prompt_len - req.resumed]   # kept output is not the prompt
            if self.tokens.intersection(original):
                self.exit(f"prompt_token in request {req.rid}")

    def exit(self, why: str) -> None:
        print(f"dlx: {ENV} ({why}): the engine leader exits now (test-only fault hook)", file=sys.stderr, flush=True)
        os._exit(EXIT_STATUS)
