"""A real server (launch.py on a loopback port) on a tiny DiffusionGemma checkpoint written here: /generate and
/v1/completions return what generate() gives for a seeded request, and a denoise stream shows the canvas refine."""
import pytest
import requests

from server_support import ServerProcess
from test_engine_diffusion_gemma import expected, prompt_of

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("transformers < 5.11 has no DiffusionGemmaForBlockDiffusion", allow_module_level=True)

from dlx.models.tiny_gemma import TINY_CANVAS  # noqa: E402

FIELDS = {"max_denoising_steps": 5}


@pytest.fixture(scope="module")
def model(gemma_model):   # conftest's tiny DiffusionGemma, loaded once a session
    return gemma_model


@pytest.fixture(scope="module")
def tokenizer(gemma_dir):
    return transformers.AutoTokenizer.from_pretrained(gemma_dir)


@pytest.fixture(scope="module")
def server(gemma_dir):
    proc = ServerProcess(gemma_dir, "--dtype", "float32")
    yield proc
    proc.stop()


def sse_events(response: requests.Response) -> list:
    import json
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


@pytest.mark.parametrize("length,seed,max_tokens", [(3, 0, 32), (7, 5, 20), (12, 9, 16)])
def test_generate_and_completions_equal_generate(server, model, gemma_dir, tokenizer, length, seed, max_tokens):
    prompt = prompt_of(length, model.config.vocab_size)
    want = expected(model, gemma_dir, prompt, seed, max_tokens, **FIELDS)
    body = {"prompt": prompt, "seed": seed, "max_tokens": max_tokens, **FIELDS}
    out = requests.post(server.url + "/generate", json=body, timeout=120).json()
    assert out["token_ids"] == want
    assert out["finish_reason"] == ("length" if len(want) == max_tokens else "stop")
    completion = requests.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert completion["choices"][0]["text"] == out["text"] == tokenizer.decode(want, skip_special_tokens=True)
    assert completion["usage"]["completion_tokens"] == len(want)


def test_denoise_stream_shows_the_canvas_refining(server, model, gemma_dir):
    prompt = prompt_of(4, model.config.vocab_size)
    want = expected(model, gemma_dir, prompt, 2, 32, **FIELDS)
    body = {"prompt": prompt, "seed": 2, "max_tokens": 32, "stream": True, **FIELDS}
    events = sse_events(requests.post(server.url + "/generate", json=body, stream=True, timeout=120))
    assert events[-1] == "[DONE]" and events[-2]["event"] == "final" and events[-2]["token_ids"] == want
    snaps = [e for e in events[:-2] if e["event"] == "buffer_snapshot"]
    assert [s["nfe"] for s in snaps] == list(range(1, len(snaps) + 1))
    first_canvas = [tuple(s["token_ids"]) for s in snaps if s["nfe"] < FIELDS["max_denoising_steps"]]
    assert all(len(ids) == TINY_CANVAS for ids in first_canvas) and len(set(first_canvas)) > 1
    assert snaps[-1]["token_ids"] == want


def test_block_append_streams_whole_canvases(server, model, gemma_dir):
    prompt = prompt_of(6, model.config.vocab_size)
    want = expected(model, gemma_dir, prompt, 8, 40, **FIELDS)
    body = {"prompt": prompt, "seed": 8, "max_tokens": 40, "stream": True, "stream_mode": "block_append", **FIELDS}
    events = sse_events(requests.post(server.url + "/generate", json=body, stream=True, timeout=120))
    appends = [e["token_ids"] for e in events if isinstance(e, dict) and e.get("event") == "append"]
    assert sum(appends, []) == want and events[-2]["token_ids"] == want


def test_other_samplers_fields_are_a_400(server):
    r = requests.post(server.url + "/generate", json={"prompt": [1, 2], "temperature": 0}, timeout=60)
    assert r.status_code == 400 and "DiffusionGemma does not take 'temperature'" in r.json()["error"]["message"]
    # What the playground reads to leave those fields out.
    assert requests.get(server.url + "/v1/models", timeout=60).json()["data"][0]["decoding_strategy"] == "canvas"


def test_openai_client_chat_and_completions(server, model, gemma_dir, tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    messages = [{"role": "user", "content": "hello who are you"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    want = expected(model, gemma_dir, tokenizer.encode(text, add_special_tokens=False), 4, 24, **FIELDS)
    chat = client.chat.completions.create(model="unused", messages=messages, seed=4, max_tokens=24, extra_body=FIELDS)
    assert chat.choices[0].message.content == tokenizer.decode(want, skip_special_tokens=True)
    chunks = list(client.chat.completions.create(model="unused", messages=messages, seed=4, max_tokens=24,
                                                 extra_body=FIELDS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    prompt = prompt_of(5, model.config.vocab_size)
    comp = client.completions.create(model="unused", prompt=prompt, seed=6, max_tokens=16, extra_body=FIELDS)
    assert comp.choices[0].text == tokenizer.decode(expected(model, gemma_dir, prompt, 6, 16, **FIELDS),
                                                    skip_special_tokens=True)
