"""Engine-side counters and histograms, kept as plain numbers so the leader can publish them on the
status board every few steps; the frontend renders them as Prometheus text."""
import bisect

from dlx.engine.engine import StepMetrics, StepOutput

STEP_SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56]
TOKENS_PER_FORWARD_BUCKETS = [1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32]


class Histogram:
    def __init__(self, bounds: list[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # last bucket is +Inf
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict:
        return {"bounds": self.bounds, "counts": list(self.counts), "sum": self.sum, "count": self.count}


class EngineMetrics:
    def __init__(self):
        self.finished: dict[str, int] = {}
        self.generated_tokens = 0
        self.nfe = 0
        self.steps = 0
        self.step_seconds = Histogram(STEP_SECONDS_BUCKETS)
        self.tokens_per_forward = Histogram(TOKENS_PER_FORWARD_BUCKETS)
        self.admission_waits = {"caught": 0, "empty": 0}   # the leader's holds for follow-up requests
        self.admission_wait_seconds = 0.0

    def record_step(self, seconds: float, step: StepMetrics) -> None:
        self.steps += 1
        self.nfe += step.num_requests
        self.step_seconds.observe(seconds)
        for committed in step.per_request_tokens:
            self.tokens_per_forward.observe(committed)

    def record_admission_wait(self, caught: bool, seconds: float) -> None:
        self.admission_waits["caught" if caught else "empty"] += 1
        self.admission_wait_seconds += seconds

    def record_finish(self, out: StepOutput) -> None:
        self.finished[out.finish_reason] = self.finished.get(out.finish_reason, 0) + 1
        self.generated_tokens += len(out.output or [])

    def snapshot(self) -> dict:
        return {"finished": dict(self.finished), "generated_tokens": self.generated_tokens, "nfe": self.nfe,
                "steps": self.steps, "step_seconds": self.step_seconds.snapshot(),
                "tokens_per_forward": self.tokens_per_forward.snapshot(),
                "admission_waits": dict(self.admission_waits), "admission_wait_seconds": self.admission_wait_seconds}
