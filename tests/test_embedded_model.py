"""The embedded dlx-tiny model served by default (`python launch.py` with no --model): held-out questions
(operand pairs training excluded) answered through HTTP, greedy, on /generate and through the openai
client on /v1/chat/completions; the seed's prompt answers 42; tokens per forward far above 1."""
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from server_support import ROOT, ServerProcess

sys.path.insert(0, os.path.join(ROOT, "tools"))
import tiny_corpus  # noqa: E402

TARGETS = {"add2": 0.99, "sub2": 0.99, "add3": 0.95, "sub3": 0.95, "mixed": 0.90}
PER_KIND = 100


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(None, "--max-num-reqs", "32", test_defaults=False)
    yield srv
    assert srv.stop() == 0


def ask_generate(url: str, prompt: str) -> tuple[str, int, int]:
    out = requests.post(url + "/generate", json={"prompt": prompt, "temperature": 0, "max_tokens": 64}).json()
    return out["text"], len(out["token_ids"]), out["nfe"]


def ask_chat(client: openai.OpenAI, prompt: str) -> tuple[str, int, int]:
    out = client.chat.completions.create(model="dlx-tiny", messages=[{"role": "user", "content": prompt}],
                                         temperature=0, max_tokens=64)
    return out.choices[0].message.content, out.usage.completion_tokens, out.model_extra["nfe"]


def score(ask, questions) -> tuple[float, float]:
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda q: ask(q[0]), questions))
    right = sum(tiny_corpus.is_correct(text, answer) for (text, _, _), (_, answer) in zip(answers, questions))
    return right / len(questions), sum(a[1] for a in answers) / sum(a[2] for a in answers)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(TARGETS))
def test_heldout_accuracy_generate_and_chat(server, kind):
    questions = tiny_corpus.heldout_questions(kind, PER_KIND)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    raw, raw_tpf = score(lambda q: ask_generate(server.url, q), questions)
    chat, chat_tpf = score(lambda q: ask_chat(client, q), questions)
    print(f"\n{kind}: /generate {raw:.1%} ({raw_tpf:.1f} tokens per forward), "
          f"chat {chat:.1%} ({chat_tpf:.1f} tokens per forward)")
    assert raw >= TARGETS[kind] and chat >= TARGETS[kind], (raw, chat)
    assert raw_tpf > 4 and chat_tpf > 4   # parallel decoding: many tokens per forward


def test_seed_prompt_answers_42(server):
    text, _, _ = ask_generate(server.url, "Solve: 12 + 30.")
    assert "42" in text and text.strip().endswith("The answer is 42.")
    assert requests.get(server.url + "/v1/models").json()["data"][0]["id"] == "dlx-tiny"
