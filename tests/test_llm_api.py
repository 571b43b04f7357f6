"""Python API: `from dlx import LLM, SamplingParams`; batch generate, stop strings, streaming snapshots."""
import pytest

from dlx import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_dir):
    return LLM(tiny_dir, dtype="float32", device="cpu", max_model_len=256, buffer_size=2)


def test_generate_many_prompts_in_order(llm):
    prompts = ["Solve: 12 + 30.", "hello who are you", [5, 6, 7, 8]]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=40))
    singles = [llm.generate(p, SamplingParams(temperature=0, max_tokens=40))[0] for p in prompts]
    assert [o.token_ids for o in outs] == [s.token_ids for s in singles]
    for o in outs:
        assert o.text == llm.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert o.finish_reason in ("stop", "length") and o.nfe >= 1
    assert outs[2].prompt_token_ids == [5, 6, 7, 8]
    assert llm.engine.kv.num_used == 0


def test_stop_string_cuts_before_match(llm):
    params = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    (full,) = llm.generate("hello who are you", params)
    stop = full.text[10:14]
    assert stop and stop not in full.text[:10 + len(stop) - 1]
    (cut,) = llm.generate("hello who are you",
                          SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert llm.tokenizer.decode(cut.token_ids) == cut.text[:len(llm.tokenizer.decode(cut.token_ids))]
    assert llm.engine.kv.num_used == 0 and not llm.engine.has_work()


def test_stream_shows_masks_resolving(llm):
    events = list(llm.stream("Solve: 12 + 30.", SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)))
    assert events[-1].finished and events[-1].completion.finish_reason == "length"
    assert [e.nfe for e in events] == list(range(1, len(events) + 1))
    assert "<|mask|>" in events[0].text and "<|mask|>" not in events[-1].text
    stable = [e.stable_text for e in events]
    assert all(b.startswith(a) for a, b in zip(stable, stable[1:]))     # stable text only grows
    assert events[-1].completion.text == events[-1].stable_text


def test_stream_closed_early_aborts(llm):
    stream = llm.stream("hello", SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
    next(stream)
    stream.close()
    assert not llm.engine.has_work() and llm.engine.kv.num_used == 0


def test_chat_prompt_uses_template(llm):
    ids = llm.chat_prompt([{"role": "user", "content": "Solve: 12 + 30."}])
    assert llm.tokenizer.decode(ids) == "<role>HUMAN</role>Solve: 12 + 30.<|role_end|><role>ASSISTANT</role>"
