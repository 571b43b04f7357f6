"""GET /metrics: Prometheus text built with prometheus-client from the status board, so every frontend
worker reports the same totals (engine gauges, counters and histograms; request outcomes of all workers)."""
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


class BoardCollector:
    def __init__(self, client):
        self.client = client

    def collect(self):
        engines = self.client.engine_records()
        frontends = self.client.frontend_records()
        requests = CounterMetricFamily("dlx_requests", "Requests by outcome", labels=["status"])
        outcomes: dict[str, float] = {}
        for rec in frontends:
            for status, n in rec.get("requests", {}).items():
                outcomes[status] = outcomes.get(status, 0) + n
        for rec in engines:
            for reason, n in rec.get("finished", {}).items():
                outcomes[f"finished_{reason}"] = outcomes.get(f"finished_{reason}", 0) + n
        for status, n in sorted(outcomes.items()):
            requests.add_metric([status], n)
        yield requests
        yield CounterMetricFamily("dlx_requests_resumed", "Requests resubmitted to a restarted worker pool",
                                  value=sum(rec.get("resumed", 0) for rec in frontends))
        yield CounterMetricFamily("dlx_engine_restarts", "Worker pools restarted after a worker died",
                                  value=self.client.control_record().get("restarts", 0))
        gauges = {"running": "Requests being decoded", "waiting": "Requests waiting for admission",
                  "kv_pages_used": "KV pages referenced by requests", "kv_pages_free": "KV pages free to allocate",
                  "kv_pages_cached": "Free KV pages still holding a reusable prefix"}
        for key, doc in gauges.items():
            name = "dlx_requests_" + key if key in ("running", "waiting") else "dlx_" + key
            yield GaugeMetricFamily(name, doc, value=sum(r.get("gauges", {}).get(key, 0) for r in engines))
        yield CounterMetricFamily("dlx_generated_tokens", "Tokens returned to clients",
                                  value=sum(r.get("generated_tokens", 0) for r in engines))
        yield CounterMetricFamily("dlx_nfe", "Forward evaluations summed over requests",
                                  value=sum(r.get("nfe", 0) for r in engines))
        waits = CounterMetricFamily("dlx_admission_waits", "Steps held for follow-up requests "
                                    "(--admission-wait-ms), by whether one arrived", labels=["outcome"])
        for outcome in ("caught", "empty"):
            waits.add_metric([outcome], sum(r.get("admission_waits", {}).get(outcome, 0) for r in engines))
        yield waits
        yield CounterMetricFamily("dlx_admission_wait_seconds", "Time steps were held for follow-up requests",
                                  value=sum(r.get("admission_wait_seconds", 0.0) for r in engines))
        for key, doc in (("step_seconds", "Engine step time"),
                         ("tokens_per_forward", "Tokens committed per request per forward")):
            yield merged_histogram("dlx_" + key, doc, [r[key] for r in engines if key in r])


def merged_histogram(name: str, doc: str, parts: list[dict]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc)
    if not parts:
        family.add_metric([], buckets=[("+Inf", 0)], sum_value=0)
        return family
    bounds = parts[0]["bounds"]
    counts = [sum(p["counts"][i] for p in parts) for i in range(len(bounds) + 1)]
    cumulative, running = [], 0
    for bound, n in zip([str(float(b)) for b in bounds] + ["+Inf"], counts):
        running += n
        cumulative.append((bound, running))
    family.add_metric([], buckets=cumulative, sum_value=sum(p["sum"] for p in parts))
    return family


def render_metrics(client) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BoardCollector(client))
    return generate_latest(registry)
