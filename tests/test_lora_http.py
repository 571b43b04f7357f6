"""LoRA over HTTP: two adapters served at once on one base model, chosen per request through the openai SDK's
`model` or /generate's `lora`, listed by /v1/models; an unknown adapter is a 400 in the one error shape."""
import openai
import pytest
import requests

from dlx import LLM, SamplingParams
from server_support import ServerProcess

PROMPT = "Solve: 12 + 30."


@pytest.fixture(scope="module")
def spec(lora_adapters):
    return f"a={lora_adapters['a']},b={lora_adapters['b']}"


@pytest.fixture(scope="module")
def expected(tiny_dir, spec):
    """Greedy tokens of the prompt under a, b and the base model, from the Python API."""
    llm = LLM(tiny_dir, lora_path=spec, dtype="float32", device="cpu", max_model_len=256)
    params = {name: SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, lora=name) for name in ("a", "b")}
    params["base"] = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    return {name: llm.generate(PROMPT, p)[0].token_ids for name, p in params.items()}


def check_server(url: str, expected: dict) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["base", "a", "b"]
    texts = {}
    for name in ("a", "b", "base"):
        comp = client.completions.create(model=name, prompt=PROMPT, temperature=0, max_tokens=16,
                                         extra_body={"ignore_eos": True})
        assert comp.model == name
        texts[name] = comp.choices[0].text
    assert len(set(texts.values())) == 3
    for name, lora in (("a", "a"), ("b", "b"), ("base", None)):
        body = {"prompt": PROMPT, "temperature": 0, "max_tokens": 16, "ignore_eos": True}
        gen = requests.post(url + "/generate", json=dict(body, lora=lora) if lora else body).json()
        assert gen["token_ids"] == expected[name]
        assert gen["text"] == texts[lora or "base"]
    bad = requests.post(url + "/generate", json={"prompt": PROMPT, "lora": "c"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error" and "unknown LoRA adapter 'c'" in \
        bad.json()["error"]["message"]


def test_two_adapters_chosen_per_request(tiny_dir, spec, expected):
    server = ServerProcess(tiny_dir, "--model-name", "base", "--lora-path", spec, "--dtype", "float32")
    try:
        check_server(server.url, expected)
    finally:
        assert server.stop() == 0


@pytest.mark.slow
def test_tensor_parallel_server_with_adapters(tiny_dir, spec, expected):
    server = ServerProcess(tiny_dir, "--model-name", "base", "--lora-path", spec, "--dtype", "float32",
                           "--tensor-parallel-size", "2")
    try:
        check_server(server.url, expected)
    finally:
        assert server.stop() == 0
