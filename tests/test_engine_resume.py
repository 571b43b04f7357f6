"""Resuming a request on a fresh engine (its first engine died) at every step it could have died after: greedy
requests retrace the uninterrupted run token for token (SingleBD and MultiBD, quota-bound blocks, repetition runs
that began before the resumption); sampled ones keep every stable token; streamed text never repeats or skips;
a request suspected of killing an engine is admitted in a step of its own."""
from types import SimpleNamespace

import pytest

from dlx.engine.request import Request
from dlx.engine.strategy import repetition_end
from dlx.frontend.decoding import Decoding
from dlx.params import Resumption, SamplingParams
from dlx.workers.leader import Leader
from test_engine import make_engine, mixed_prompts


def decode(engine, jobs: list[tuple[list[int], SamplingParams, int]]) -> list[list[dict]]:
    """Run (prompt, params, resumed) jobs together; each job's step events as the leader sends them."""
    leader = Leader(engine, SimpleNamespace(channels=[]), board=None, slot=1, generation=0)
    rids = [engine.add_request(prompt, params, resumption=Resumption(resumed) if resumed else None).rid
            for prompt, params, resumed in jobs]
    leader.owner = dict.fromkeys(rids, 0)
    while engine.has_work():
        for out in engine.step():
            leader.send_output(out)
    assert engine.kv.num_used == 0
    by_rid: dict[str, list[dict]] = {rid: [] for rid in rids}
    for msg in leader.outbox.pop(0):
        by_rid[msg["rid"]].append(msg)
    return [by_rid[rid] for rid in rids]


class Client:
    """A stream's view of one request: the Decoding, and the block_append text sent so far."""

    def __init__(self, tokenizer, mask_id: int, prompt: list[int], params: SamplingParams):
        self.prompt, self.params = prompt, params
        self.decoding = Decoding(tokenizer, mask_id, params.stop, len(prompt))
        self.sent = ""

    def receive(self, msgs: list[dict]) -> None:
        for msg in msgs:
            self.decoding.update(msg)
            self.sent += self.decoding.new_stable_text()[0]

    def resubmission(self) -> tuple[list[int], SamplingParams, int]:
        """What the frontend sends after the engine died: prompt + kept tokens, the rest of the budgets."""
        d = self.decoding
        nfe = d.nfe
        kept = d.resume(d.resume_point(self.params.greedy))
        return self.prompt + kept, self.params.remainder(len(kept), nfe), len(kept)


def resume_everywhere(tokenizer, engine, prompts: list[list[int]], params: SamplingParams):
    """For every request and every count of events it could have received before its engine died, the client
    that resumed there, after the resumed requests ran together on the engine; the uninterrupted clients too."""
    plain, resumed, jobs = [], [], []
    for prompt, msgs in zip(prompts, decode(engine, [(p, params, 0) for p in prompts])):
        plain.append(Client(tokenizer, engine.mask_id, prompt, params))
        plain[-1].receive(msgs)
        for seen in range(len(msgs)):      # the last event is the final one: nothing to resume after it
            client = Client(tokenizer, engine.mask_id, prompt, params)
            client.receive(msgs[:seen])
            jobs.append(client.resubmission())
            resumed.append(client)
    for client, msgs in zip(resumed, decode(engine, jobs)):
        client.receive(msgs)
    return plain, resumed, jobs


@pytest.mark.parametrize("block_size, buffer_size, max_tokens, threshold, count", [
    (8, 1, 40, 0.8, 4), (8, 2, 40, 0.8, 4), (16, 1, 20, 1.0, 1), (16, 3, 40, 0.5, 3)])
def test_greedy_resumption_retraces_the_uninterrupted_run(tiny_dir, tiny_model, tiny_tokenizer, block_size,
                                                          buffer_size, max_tokens, threshold, count):
    """(16, 1, 20, 1.0): one token a forward, so a resumed block commits by the quota of the whole request."""
    engine = make_engine(tiny_dir, tiny_model, block_size=block_size, buffer_size=buffer_size,
                         accept_threshold=threshold)
    prompts = [p for p in mixed_prompts(10, seed=5) if len(p) < 150][:count]
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    plain, resumed, jobs = resume_everywhere(tiny_tokenizer, engine, prompts, params)
    by_prompt = {tuple(c.prompt): c.decoding for c in plain}
    for client in resumed:
        d, whole = client.decoding, by_prompt[tuple(client.prompt)]
        assert (d.token_ids, d.finish_reason) == (whole.token_ids, whole.finish_reason)
        assert client.sent == d.text == whole.text
        assert d.nfe >= whole.nfe
    assert max(k for _, _, k in jobs) > 0
    assert all(k == 0 or (len(p) % block_size == 0) for p, _, k in jobs), "kept tokens end on a block boundary"
    if count > 3:
        assert {c.decoding.finish_reason for c in plain} >= {"stop", "length"}


def test_a_repetition_run_may_begin_in_the_kept_tokens():
    params = SamplingParams(temperature=0, max_tokens=8, max_repetition_run=3)

    def request(prompt: list[int], resumed: int, generated: list[int]) -> Request:
        req = Request(prompt, params, block_size=4, max_model_len=64, mask_id=0, eos_id=None,
                      resumption=Resumption(resumed))
        req.tokens[len(prompt):len(prompt) + len(generated)] = generated
        return req
    assert repetition_end(request([5, 6, 9, 9], 2, [9, 1, 1, 1]), 4) == 1
    assert repetition_end(request([5, 9, 9, 9], 1, [9, 2]), 2) is None   # the prompt's own 9s do not count
    assert repetition_end(request([5, 9, 9, 9], 0, [9, 2, 2]), 3) is None
    assert repetition_end(request([5, 6, 7, 9], 3, [9, 9, 3]), 1) is None   # the run is not stable yet
    # Checked step after step as tokens become stable, the run is found where one check over all finds it.
    req = request([5, 6, 7, 8], 0, [1, 2, 2, 4, 4, 4, 4])
    assert [repetition_end(req, stable) for stable in (2, 3, 5)] == [None, None, None]
    assert repetition_end(req, 7) == 6


@pytest.mark.parametrize("seed", [7, None])
def test_sampled_resumption_keeps_what_was_stable(tiny_dir, tiny_model, tiny_tokenizer, seed):
    engine = make_engine(tiny_dir, tiny_model, block_size=8)
    prompts = [p for p in mixed_prompts(6, seed=2) if len(p) < 150][:2]
    params = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True, seed=seed, threshold=0.3)
    _, resumed, jobs = resume_everywhere(tiny_tokenizer, engine, prompts, params)
    for client in resumed:
        d = client.decoding
        assert d.finish_reason == "length" and len(d.token_ids) == 20
        assert client.sent == d.text and d.token_ids[:len(d.kept)] == d.kept
    assert any(k % 8 for _, _, k in jobs), "some resumptions keep part of a block"
    if seed is not None:   # the part decoded again is reproducible
        again = []
        for msgs in decode(engine, jobs):
            region: list[int] = []
            for msg in msgs:
                region = region[:msg["offset"]] + msg["tokens"]
            again.append(region)
        assert again == [c.decoding.token_ids[len(c.decoding.kept):] for c in resumed]


def test_a_suspect_is_admitted_in_a_step_of_its_own(tiny_dir, tiny_model):
    """An engine died while admitting it: no other request joins in the step that admits it."""
    engine = make_engine(tiny_dir, tiny_model, block_size=8)
    params = SamplingParams(temperature=0, max_tokens=8)
    first = engine.add_request([5, 6, 7], params)
    suspect = engine.add_request([5, 6, 8], params, resumption=Resumption(alone=True))
    last = engine.add_request([5, 6, 9], params)
    admitted = []
    while engine.has_work():
        engine.step()
        admitted.append([req.rid for req in engine.scheduler.admitted])
    assert admitted[:3] == [[first.rid], [suspect.rid], [last.rid]]
