"""The HTTP API against a real server process: the seed's curl commands verbatim, every endpoint and
field, the official openai client, SSE framing, block_append reassembly, and 4xx for bad input."""
import json
import shutil
import subprocess

import openai
import pytest
import requests

from server_support import ServerProcess, sse_events


SEED_FLAGS = ("--model-name llada2_mini --decoding-strategy multi_bd --sampling-mode naive --tensor-parallel-size 1 "
              "--data-parallel-size 1 --max-model-len 4096 --max-num-batched-tokens 4096 --max-num-reqs 1 "
              "--block-size 32 --buffer-size 1 --page-size 32 --gpu-memory-utilization 0.45 "
              "--attn-impl triton_grouped --host 127.0.0.1").split()


@pytest.fixture(scope="module")
def server(tiny_dir):
    """Started with the seed's own launch flags, flag for flag (GPU choices fall back to the CPU)."""
    srv = ServerProcess(tiny_dir, *SEED_FLAGS, "--max-request-bytes", "200000", test_defaults=False)
    yield srv
    assert srv.stop() == 0
    assert srv.shm_entries() == []


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", "-N", "--max-time", "60", *args],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_curl_commands_verbatim(server):
    body = curl(f"{server.url}/generate", "-H", "Content-Type: application/json", "-d",
                '{"prompt":"Solve: 12 + 30.","temperature":0.0,"max_tokens":64,"max_nfe":256}')
    result = json.loads(body)
    assert {"text", "token_ids", "nfe", "finish_reason", "full_text"} <= result.keys()
    denoise = curl(f"{server.url}/generate", "-H", "Content-Type: application/json", "-d",
                   '{"prompt":"Solve: 12 + 30.","temperature":0.0,"max_tokens":64,"stream":true,'
                   '"stream_mode":"denoise"}')
    assert '"event":"buffer_snapshot"' in denoise and '"event":"final"' in denoise
    assert denoise.endswith("data: [DONE]\n\n")
    chat = curl(f"{server.url}/v1/chat/completions", "-H", "Content-Type: application/json", "-d",
                '{"messages": [{"role": "user", "content": "Solve: 12 + 30."}], "temperature": 0.0, '
                '"max_tokens": 64, "stream": true, "stream_mode": "block_append"}')
    assert '"object":"chat.completion.chunk"' in chat and chat.endswith("data: [DONE]\n\n")


def test_generate_response_fields(server):
    r = requests.post(server.url + "/generate", json={"prompt": "Solve: 12 + 30.", "temperature": 0, "max_tokens": 40,
                                                      "ignore_eos": True, "unknown_field": 1})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    out = r.json()
    assert out["finish_reason"] == "length" and len(out["token_ids"]) == 40
    assert out["full_text"] == "Solve: 12 + 30." + out["text"]
    assert out["usage"] == {"prompt_tokens": out["usage"]["prompt_tokens"], "completion_tokens": 40,
                            "total_tokens": out["usage"]["prompt_tokens"] + 40}
    assert set(out["timing"]) == {"queue_s", "prefill_s", "decode_s", "tokens_per_s", "tokens_per_forward"}
    assert out["nfe"] >= 1 and out["id"]
    again = requests.post(server.url + "/generate", json={"prompt": "Solve: 12 + 30.", "temperature": 0,
                                                          "max_tokens": 40, "ignore_eos": True}).json()
    assert again["token_ids"] == out["token_ids"]   # greedy is deterministic


def test_token_id_prompt_and_same_text_across_endpoints(server):
    ids = [5, 17, 99, 230, 41]
    a = requests.post(server.url + "/generate", json={"prompt": ids, "temperature": 0, "max_tokens": 24}).json()
    c = requests.post(server.url + "/v1/completions", json={"prompt": ids, "temperature": 0, "max_tokens": 24}).json()
    assert c["choices"][0]["text"] == a["text"] and c["usage"]["prompt_tokens"] == 5


def test_denoise_stream_frames(server):
    r = requests.post(server.url + "/generate", json={"prompt": "hello", "temperature": 0, "max_tokens": 48,
                                                      "stream": True, "ignore_eos": True}, stream=True)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["event"] == "final"
    snaps = [e for e in events[:-2] if e["event"] == "buffer_snapshot"]
    assert snaps and "<|mask|>" in snaps[0]["text"]
    assert all(s["token_offset"] == 0 for s in snaps)
    nfes = [s["nfe"] for s in snaps]
    assert nfes == sorted(nfes) and len(set(nfes)) == len(nfes)
    assert set(snaps[0]) == {"event", "id", "token_offset", "text", "token_ids", "nfe", "finished"}
    assert events[-2]["text"] == snaps[-1]["text"] and snaps[-1]["finished"]


def test_block_append_concatenates_to_final_text(server):
    for prompt in ("Solve: 12 + 30.", "hello who are you", "naïve café 日本語"):
        r = requests.post(server.url + "/generate", json={"prompt": prompt, "temperature": 0, "max_tokens": 64,
                                                          "stream": True, "stream_mode": "block_append"}, stream=True)
        events = sse_events(r)
        appends = [e for e in events if isinstance(e, dict) and e.get("event") == "append"]
        final = events[-2]
        assert final["event"] == "final" and events[-1] == "[DONE]"
        assert "".join(e["text"] for e in appends) == final["text"]
        assert all("<|mask|>" not in e["text"] for e in appends)   # (partial UTF-8: see the detokenizer tests)
        assert sum((e["token_ids"] for e in appends), []) == final["token_ids"]


def test_openai_client_chat_and_completions(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["llada2_mini"]
    chat = client.chat.completions.create(model="llada2_mini",
                                          messages=[{"role": "user", "content": "Solve: 12 + 30."}],
                                          temperature=0, max_tokens=32)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens >= 0
    chunks = list(client.chat.completions.create(model="llada2_mini", temperature=0, max_tokens=32, stream=True,
                                                 messages=[{"role": "user", "content": "Solve: 12 + 30."}],
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == chat.usage.total_tokens
    comp = client.completions.create(model="llada2_mini", prompt="Solve: 12 + 30.", temperature=0, max_tokens=32)
    streamed = list(client.completions.create(model="llada2_mini", prompt="Solve: 12 + 30.", temperature=0,
                                              max_tokens=32, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == comp.choices[0].text
    gen = requests.post(server.url + "/generate",
                        json={"prompt": "Solve: 12 + 30.", "temperature": 0, "max_tokens": 32}).json()
    assert gen["text"] == comp.choices[0].text


def test_chat_denoise_extension_and_parts(server):
    r = requests.post(server.url + "/v1/chat/completions", stream=True, json={
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Solve: "},
                                                  {"type": "text", "text": "12 + 30."}]}],
        "temperature": 0, "max_tokens": 32, "stream": True, "stream_mode": "denoise"})
    events = sse_events(r)
    snaps = [e["choices"][0]["snapshot"] for e in events[:-1] if e["choices"] and "snapshot" in e["choices"][0]]
    assert snaps and all({"text", "token_ids", "nfe"} <= s.keys() for s in snaps)
    assert events[-1] == "[DONE]"


def test_cpu_fallback_is_one_warning_line(server):
    warnings = [line for line in server.output().splitlines() if line.startswith("dlx: warning")]
    assert len(warnings) == 1 and "CPU" in warnings[0]


def test_models_health_metrics(server):
    assert requests.get(server.url + "/health").status_code == 200
    models = requests.get(server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "llada2_mini" and models["data"][0]["decoding_strategy"] == "multi_bd"
    text = requests.get(server.url + "/metrics").text
    for name in ("dlx_requests_total", "dlx_requests_running", "dlx_requests_waiting", "dlx_generated_tokens_total",
                 "dlx_nfe_total", "dlx_kv_pages_used", "dlx_kv_pages_free", "dlx_kv_pages_cached",
                 "dlx_step_seconds_bucket", "dlx_tokens_per_forward_bucket",
                 'dlx_admission_waits_total{outcome="caught"}', "dlx_admission_wait_seconds_total",
                 "dlx_requests_resumed_total 0.0", "dlx_engine_restarts_total 0.0"):
        assert name in text, name


BAD = [
    ("/generate", b"{not json", "JSON"),
    ("/generate", {"prompt": ""}, "prompt"),
    ("/generate", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ("/generate", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/generate", {"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ("/generate", {"prompt": [1, 2, 10 ** 7]}, "prompt"),
    ("/generate", {"prompt": "word " * 5000}, "prompt"),
    ("/generate", {"prompt": "x", "top_p": 0}, "top_p"),
    ("/generate", {"prompt": "x", "stream_mode": "sideways"}, "stream_mode"),
    ("/generate", [1, 2], None),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ("/v1/completions", {"prompt": "x", "stream": True, "max_tokens": -5}, "max_tokens"),
]


@pytest.mark.parametrize("path,body,field", BAD)
def test_bad_input_gets_400_naming_the_field(server, path, body, field):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("application/json")
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == 400
    if field:
        assert field in err["message"]
    assert requests.get(server.url + "/health").status_code == 200


def test_other_http_errors_use_the_error_shape(server):
    r = requests.post(server.url + "/generate", data=b"x" * 300000, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    assert requests.get(server.url + "/nope").json()["error"]["code"] == 404
    assert requests.get(server.url + "/generate").status_code == 405
    assert requests.get(server.url + "/health").status_code == 200
