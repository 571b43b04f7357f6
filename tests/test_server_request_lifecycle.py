"""A request's life as a client sees it, on the embedded model: a non-streaming client that leaves is aborted,
`timing` is whole for every finish reason and stream mode, /metrics counts a request as soon as the client
hears back, and the per-request accept threshold."""
import json
import math
import re
import socket
import time

import pytest
import requests

from server_support import ServerProcess, sse_events

PROMPT = "Solve: 12 + 30."            # the embedded model answers 42 in one forward at the default threshold
TIMING_KEYS = {"queue_s", "prefill_s", "decode_s", "tokens_per_s", "tokens_per_forward"}
# A bound against a hung server, not a timing: a loaded 2-core CI machine once took over 60 s for 96 forwards.
LIMIT_S = 300


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(None, "--max-model-len", "2048", "--max-num-reqs", "4")
    yield srv
    assert srv.stop() == 0


def gauges(server) -> dict[str, float]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    names = ("dlx_requests_running", "dlx_requests_waiting", "dlx_kv_pages_used")
    return {name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1)) for name in names}


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def long_body(**extra) -> dict:
    """About 1,500 forwards (threshold 1 commits one token a forward): seconds of work on the CPU."""
    return {"prompt": PROMPT, "temperature": 0, "max_tokens": 1500, "ignore_eos": True, "threshold": 1.0, **extra}


def test_non_streaming_client_that_leaves_is_aborted(server):
    # Warm up the same path first: a fresh engine's first steps run far slower than the ones measured here.
    warm = requests.post(server.url + "/generate", json=long_body(max_tokens=96), timeout=LIMIT_S).json()
    assert warm["finish_reason"] == "length" and warm["nfe"] >= 96
    idle = gauges(server)
    body = json.dumps(long_body()).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert wait_for(lambda: gauges(server)["dlx_requests_running"] == 1, 30)
    sock.close()
    # Aborted within an engine step of noticing: the running count and the request's KV pages go back to idle
    # long before the ~1,500 forwards would have ended it.
    assert wait_for(lambda: gauges(server) == idle, 1.0), (gauges(server), idle)


def check_timing(timing: dict, tokens: int, nfe: int) -> None:
    assert set(timing) == TIMING_KEYS, timing
    for key, value in timing.items():
        assert isinstance(value, float) and math.isfinite(value) and value >= 0, (key, value)
    assert timing["tokens_per_forward"] == pytest.approx(tokens / nfe)   # the tokens returned, after any cut


CASES = {   # finish reason → request fields
    "stop": {},                                         # EOS, decided in the first forward
    "length": {"max_tokens": 1},
    "max_nfe": {"max_nfe": 2, "threshold": 1.0, "max_tokens": 16},
    "repetition": {"max_repetition_run": 1, "ignore_eos": True, "max_tokens": 64},
    "stop string": {"stop": "="},
    "stop strings": {"stop": ["nothing like it", "42"]},
}


@pytest.mark.parametrize("mode", ["none", "denoise", "block_append"])
@pytest.mark.parametrize("case", CASES)
def test_timing_is_whole_for_every_finish_and_mode(server, case, mode):
    body = {"prompt": PROMPT, "temperature": 0, **CASES[case]}
    if mode == "none":
        final = requests.post(server.url + "/generate", json=body, timeout=LIMIT_S).json()
    else:
        r = requests.post(server.url + "/generate", json={**body, "stream": True, "stream_mode": mode}, timeout=LIMIT_S)
        events = sse_events(r)
        assert events[-1] == "[DONE]"
        final = events[-2]
        assert final["event"] == "final"
    expected = {"stop string": "stop", "stop strings": "stop"}.get(case, case)
    assert final["finish_reason"] == expected, final
    check_timing(final["timing"], len(final["token_ids"]), final["nfe"])


@pytest.mark.parametrize("chat", [False, True])
def test_openai_timing_on_a_stop_string(server, chat):
    path, inputs = (("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}) if chat
                    else ("/v1/completions", {"prompt": PROMPT}))
    out = requests.post(server.url + path, json={**inputs, "temperature": 0, "stop": "="}, timeout=LIMIT_S).json()
    assert out["choices"][0]["finish_reason"] == "stop"
    check_timing(out["timing"], out["usage"]["completion_tokens"], out["nfe"])


def test_metrics_count_a_request_as_soon_as_the_client_hears_back(server):
    """The chat stream's first chunk follows the engine's acceptance; the denoise stream's first frame follows
    the request's first forward. A scrape right after either must find the request counted."""
    chat = requests.post(server.url + "/v1/chat/completions", stream=True, timeout=LIMIT_S, json={
        "messages": [{"role": "user", "content": PROMPT}], **long_body(), "stream": True})
    lines = chat.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")   # the role chunk
    now = gauges(server)
    assert now["dlx_requests_running"] + now["dlx_requests_waiting"] == 1, now
    chat.close()
    assert wait_for(lambda: gauges(server)["dlx_requests_running"] == 0, 5)

    stream = requests.post(server.url + "/generate", stream=True, timeout=LIMIT_S,
                           json={**long_body(), "stream": True, "stream_mode": "denoise"})
    assert next(line for line in stream.iter_lines() if line).startswith(b"data: ")   # after the first forward
    assert gauges(server)["dlx_requests_running"] == 1
    stream.close()
    assert wait_for(lambda: gauges(server)["dlx_requests_running"] == 0, 5)


def test_per_request_threshold(server):
    fast = requests.post(server.url + "/generate", json={"prompt": PROMPT, "temperature": 0}, timeout=LIMIT_S).json()
    assert fast["nfe"] == 1 and "42" in fast["text"]
    r = requests.post(server.url + "/generate", timeout=LIMIT_S, json={
        "prompt": PROMPT, "temperature": 0, "threshold": 1.0, "stream": True, "stream_mode": "denoise"})
    snapshots = [e for e in sse_events(r) if isinstance(e, dict) and e.get("event") == "buffer_snapshot"]
    final_nfe = snapshots[-1]["nfe"]
    assert final_nfe > 5   # nothing clears a threshold of 1: each forward commits its quota, one token
    assert any("<|mask|>" in s["text"] for s in snapshots[:-1])
    rejected = requests.post(server.url + "/generate", json={"prompt": PROMPT, "threshold": 2}, timeout=LIMIT_S)
    assert rejected.status_code == 400 and "threshold" in rejected.json()["error"]["message"]
