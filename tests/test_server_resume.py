"""Engine deaths under load, on real servers: requests in flight when the engine dies at a chosen point (the
test-only DLX_TEST_EXIT_AT hook) complete on the restarted pool with the answers of a server never killed, in
every stream mode; sampled ones complete by the same length rules; a request that kills the engine each time
it is admitted fails after one retry while the others complete; no KV pages, shared memory or processes leak."""
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from server_support import ServerProcess, sse_events
from test_server_faults import metric, wait_for

FLAGS = ("--block-size", "8", "--page-size", "32", "--max-num-reqs", "16")
MODES = ("none", "denoise", "block_append")
KILLER = 7            # a prompt holding this token id kills the engine when admitted (prompt_token:7)


def bodies(count: int = 32, seed: int = 0, **fields) -> list[dict]:
    """Greedy requests of every stream mode, prompts of 3 to 40 tokens (block boundaries fall anywhere), some
    ending on EOS, some running to max_tokens, a few tokens a forward; no prompt holds KILLER."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(10, 380) for _ in range(rng.randrange(3, 41))]
        mode = MODES[i % 3]
        out.append({"prompt": prompt, "temperature": 0, "max_tokens": rng.choice((24, 40)), "ignore_eos": i % 4 < 2,
                    "threshold": 0.5, "stream": mode != "none", "stream_mode": "denoise" if mode == "none" else mode,
                    **fields})
    return out


def answer(url: str, body: dict) -> dict:
    """The response object (or the error) as a client sees it, checking each stream's own promises."""
    r = requests.post(url + "/generate", json=body, stream=body["stream"], timeout=300)
    if not body["stream"]:
        return {"status": r.status_code, **r.json()}
    events = sse_events(r)
    assert r.status_code == 200 and events[-1] == "[DONE]"
    frames = events[:-1]
    if frames[-1]["event"] == "error":
        return {"status": 500, "error": frames[-1]}
    final = frames[-1]
    assert final["event"] == "final"
    if body["stream_mode"] == "block_append":   # nothing repeated, nothing skipped
        appends = [f for f in frames if f["event"] == "append"]
        assert "".join(f["text"] for f in appends) == final["text"]
        assert sum((f["token_ids"] for f in appends), []) == final["token_ids"]
        assert [f["token_offset"] for f in appends] == [sum(len(a["token_ids"]) for a in appends[:i])
                                                         for i in range(len(appends))]
    else:
        nfes = [f["nfe"] for f in frames if f["event"] == "buffer_snapshot"]
        assert nfes == sorted(nfes)
    return {"status": 200, **final}


def answers(url: str, batch: list[dict]) -> list[dict]:
    with ThreadPoolExecutor(len(batch)) as pool:
        return list(pool.map(lambda body: answer(url, body), batch))


def settled_and_stopped(server: ServerProcess, workers: int = 1) -> None:
    """Nothing in flight, no KV page held, one engine worker; then a clean stop leaves nothing behind."""
    try:
        assert wait_for(lambda: metric(server, "dlx_kv_pages_used") == 0 and metric(server, "dlx_requests_running") == 0
                        and metric(server, "dlx_requests_waiting") == 0, 20)
        assert len(server.children_running(b"spawn_main")) == workers
    finally:
        assert server.stop() == 0, server.output()
    assert server.shm_entries() == [] and server.descendants() == []


def killed_server(tiny_dir: str, points: str) -> ServerProcess:
    return ServerProcess(tiny_dir, *FLAGS, env={"DLX_TEST_EXIT_AT": points})


def same_answer(got: dict, want: dict) -> None:
    assert got["status"] == 200, got
    for key in ("token_ids", "text", "finish_reason", "usage"):
        assert got[key] == want[key], key
    assert got["nfe"] >= want["nfe"]   # forwards lost with the engine count too


BODIES = bodies()


@pytest.fixture(scope="module")
def expected(tiny_dir) -> list[dict]:
    """The answers of a server that is never killed."""
    server = ServerProcess(tiny_dir, *FLAGS)
    try:
        results = answers(server.url, BODIES)
    finally:
        settled_and_stopped(server)
    assert all(r["status"] == 200 for r in results)
    assert {r["finish_reason"] for r in results} == {"stop", "length"}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("point", ["prefill:2", "decode:12", "block:5", "waiting:6"])
def test_in_flight_requests_continue_on_the_restarted_pool(tiny_dir, expected, point):
    """mid-prefill, mid-block, between blocks, while requests wait for admission (16 run, 16 wait)."""
    server = killed_server(tiny_dir, point)
    try:
        results = answers(server.url, BODIES)
        assert metric(server, "dlx_engine_restarts_total") == 1
        assert metric(server, "dlx_requests_resumed_total") >= 8
        for got, want in zip(results, expected):
            same_answer(got, want)
    finally:
        settled_and_stopped(server)


def test_sampled_requests_complete(tiny_dir):
    batch = [{**body, "temperature": 0.9, "ignore_eos": True, "seed": i if i % 2 else None}
             for i, body in enumerate(bodies(12, seed=1))]
    server = killed_server(tiny_dir, "decode:6")
    try:
        results = answers(server.url, batch)
        assert metric(server, "dlx_engine_restarts_total") == 1
        for got, body in zip(results, batch):
            assert got["status"] == 200 and got["finish_reason"] == "length"
            assert len(got["token_ids"]) == got["usage"]["completion_tokens"] == body["max_tokens"]
    finally:
        settled_and_stopped(server)


@pytest.mark.parametrize("mode", ["none", "block_append"])
def test_a_request_that_kills_the_engine_fails_after_one_retry(tiny_dir, expected, mode):
    killer = {**BODIES[0], "prompt": [KILLER] + BODIES[0]["prompt"], "stream": mode != "none",
              "stream_mode": "block_append"}
    server = killed_server(tiny_dir, f"prompt_token:{KILLER}")
    try:
        results = answers(server.url, BODIES[1:13] + [killer])
        for got, want in zip(results, expected[1:13]):
            same_answer(got, want)
        failed = results[-1]   # a 500 in the error shape, or an error frame and [DONE]
        assert failed["status"] == 500 and "admitting this request" in failed["error"]["message"]
        assert mode != "none" or failed["error"]["type"] == "server_error"
        assert metric(server, "dlx_engine_restarts_total") == 2
        ok = answer(server.url, BODIES[0])   # the pool serves on
        same_answer(ok, expected[0])
    finally:
        settled_and_stopped(server)
