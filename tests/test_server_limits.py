"""Limits of a real server: API key (401 everywhere but /health) and a full queue (429 + Retry-After)."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from server_support import ServerProcess

KEY = "s3cret"


@pytest.fixture(scope="module")
def server(tiny_dir):
    srv = ServerProcess(tiny_dir, "--api-key", KEY, "--max-num-reqs", "1", "--max-waiting-requests", "1")
    yield srv
    assert srv.stop() == 0
    assert srv.shm_entries() == []


def auth(headers=None):
    return {"Authorization": f"Bearer {KEY}", **(headers or {})}


def test_api_key_required_except_health(server):
    assert requests.get(server.url + "/health").status_code == 200
    for method, path in (("get", "/v1/models"), ("get", "/metrics"),
                         ("post", "/generate"), ("post", "/v1/completions")):
        r = getattr(requests, method)(server.url + path, json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        wrong = getattr(requests, method)(server.url + path, json={"prompt": "x"},
                                          headers={"Authorization": "Bearer no"})
        assert wrong.status_code == 401
    ok = requests.post(server.url + "/generate", json={"prompt": "x", "max_tokens": 4}, headers=auth())
    assert ok.status_code == 200


def test_full_queue_gets_429_with_retry_after(server):
    body = {"prompt": list(range(10, 60)), "temperature": 0, "max_tokens": 120, "ignore_eos": True}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: requests.post(server.url + "/generate", data=json.dumps(body),
                                                          headers=auth({"Content-Type": "application/json"})),
                                  range(8)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 429 in codes and set(codes) <= {200, 429}
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["Retry-After"] and rejected.json()["error"]["type"] == "overloaded"
    assert requests.get(server.url + "/health").status_code == 200
