"""Engine against the reference decoder: SingleBD and MultiBD, one at a time and batched, prefix caching
on and off, preemption under a tiny KV pool, batch invariance, seeded sampling, no leaked pages."""
import random

import pytest

from dlx.config import Config
from dlx.engine.engine import LLMEngine
from dlx.engine.reference import DecodeSettings, reference_generate
from dlx.params import SamplingParams

MAX_LEN = 256


def make_engine(tiny_dir, model, **overrides):
    args = dict(model=tiny_dir, dtype="float32", device="cpu", max_model_len=MAX_LEN, max_num_batched_tokens=4096,
                block_size=32, page_size=32, max_num_reqs=64)
    args.update(overrides)
    return LLMEngine(Config(**args).finalize(cuda_available=False), model=model)


def run(engine, prompts, params):
    params = params if isinstance(params, list) else [params] * len(prompts)
    reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    while engine.has_work():
        engine.step()
    assert engine.kv.num_used == 0, "pages still referenced after every request finished"
    return reqs


def mixed_prompts(count=22, seed=0):
    rng = random.Random(seed)
    lengths = [1, 2, 5, 17, 31, 32, 33, 63, 64, 65, 96, 100, MAX_LEN - 40, MAX_LEN - 3, MAX_LEN - 1]
    return [[rng.randrange(5, 380) for _ in range(lengths[i % len(lengths)])] for i in range(count)]


def reference(model, engine, prompt, max_tokens, **settings):
    s = DecodeSettings(mask_id=engine.mask_id, eos_id=engine.eos_id, **settings)
    return reference_generate(model, prompt, min(max_tokens, MAX_LEN - len(prompt)), s)


@pytest.fixture(scope="module")
def references(tiny_model, tiny_dir):
    engine = make_engine(tiny_dir, tiny_model)
    return {b: [reference(tiny_model, engine, p, 48, buffer_size=b, accept_threshold=0.8) for p in mixed_prompts()]
            for b in (1, 2, 4)}


@pytest.mark.parametrize("buffer_size", [1, 2, 4])
@pytest.mark.parametrize("prefix_caching", [True, False])
def test_batched_engine_equals_reference(tiny_dir, tiny_model, references, buffer_size, prefix_caching):
    engine = make_engine(tiny_dir, tiny_model, buffer_size=buffer_size, accept_threshold=0.8,
                         disable_prefix_caching=not prefix_caching)
    params = SamplingParams(temperature=0, max_tokens=48)
    reqs = run(engine, mixed_prompts(), params)
    for req, ref in zip(reqs, references[buffer_size]):
        assert (req.output, req.nfe) == (ref.token_ids, ref.nfe)
        assert req.finish_reason == ref.finish_reason
    assert {r.finish_reason for r in reqs} >= {"stop", "length"}
    # prompts sharing earlier prompts' prefixes (and a whole earlier prompt + its answer) reuse pages
    first = mixed_prompts()
    again = [first[12] + [7, 8, 9], first[13][:100], first[10] + reqs[10].output]
    for req, prompt in zip(run(engine, again, params), again):
        ref = reference(tiny_model, engine, prompt, 48, buffer_size=buffer_size, accept_threshold=0.8)
        assert (req.output, req.nfe) == (ref.token_ids, ref.nfe)
    assert (engine.scheduler.prefix_hit_tokens >= 64 + 96 + 96) == prefix_caching


@pytest.mark.parametrize("buffer_size", [1, 2, 4])
def test_one_at_a_time_equals_reference(tiny_dir, tiny_model, references, buffer_size):
    engine = make_engine(tiny_dir, tiny_model, buffer_size=buffer_size, accept_threshold=0.8)
    for prompt, ref in zip(mixed_prompts(), references[buffer_size]):
        (req,) = run(engine, [prompt], SamplingParams(temperature=0, max_tokens=48))
        assert (req.output, req.nfe) == (ref.token_ids, ref.nfe)


@pytest.mark.parametrize("buffer_size", [1, 2, 4])
def test_preemption_under_tiny_kv_pool_keeps_results(tiny_dir, tiny_model, references, buffer_size):
    engine = make_engine(tiny_dir, tiny_model, buffer_size=buffer_size, accept_threshold=0.8, num_kv_pages=12)
    reqs = run(engine, mixed_prompts(), SamplingParams(temperature=0, max_tokens=48))
    assert engine.scheduler.num_preemptions > 0
    for req, ref in zip(reqs, references[buffer_size]):
        assert req.output == ref.token_ids


def test_batch_invariance(tiny_dir, tiny_model):
    engine = make_engine(tiny_dir, tiny_model, buffer_size=2)
    target = [3, 141, 59, 26, 53]
    (alone,) = run(engine, [target], SamplingParams(temperature=0, max_tokens=64))
    crowd = run(engine, mixed_prompts(10, seed=5) + [target] + mixed_prompts(5, seed=6),
                SamplingParams(temperature=0, max_tokens=64))
    assert crowd[10].output == alone.output


def test_block_and_page_sizes_that_differ(tiny_dir, tiny_model):
    engine = make_engine(tiny_dir, tiny_model, block_size=8, page_size=16, buffer_size=2)
    prompts = mixed_prompts(8, seed=9)
    reqs = run(engine, prompts, SamplingParams(temperature=0, max_tokens=30))
    for req, prompt in zip(reqs, prompts):
        ref = reference(tiny_model, engine, prompt, 30, block_size=8, buffer_size=2)
        assert req.output == ref.token_ids


def test_seeded_sampling(tiny_dir, tiny_model):
    engine = make_engine(tiny_dir, tiny_model)
    prompts = mixed_prompts(4, seed=2)
    hot = dict(temperature=1.0, top_p=0.95, top_k=40, max_tokens=40, ignore_eos=True)
    a = run(engine, prompts, [SamplingParams(**hot, seed=i) for i in range(4)])
    b = run(engine, prompts[::-1], [SamplingParams(**hot, seed=i) for i in range(4)][::-1])[::-1]
    c = run(engine, prompts, [SamplingParams(**hot, seed=100 + i) for i in range(4)])
    assert [r.output for r in a] == [r.output for r in b]    # same seed, different batch order
    assert any(x.output != y.output for x, y in zip(a, c))


def test_edit_mode_runs_and_settles(tiny_dir, tiny_model):
    engine = make_engine(tiny_dir, tiny_model, sampling_mode="edit", accept_threshold=0.7, edit_threshold=0.5)
    reqs = run(engine, mixed_prompts(6, seed=4), SamplingParams(temperature=0, max_tokens=40))
    for req in reqs:
        assert engine.mask_id not in req.output and req.finish_reason in ("stop", "length")


def test_step_metrics(tiny_dir, tiny_model):
    engine = make_engine(tiny_dir, tiny_model, num_kv_pages=40)
    for p in mixed_prompts(3, seed=8):
        engine.add_request(p, SamplingParams(temperature=0, max_tokens=48, ignore_eos=True))
    engine.step()
    m = engine.last_metrics
    assert m.num_requests == 3 and m.running == 3 and m.waiting == 0
    assert m.tokens_committed == sum(m.per_request_tokens) >= 3
    assert m.kv_pages_used + m.kv_pages_free == 40 and m.step_seconds > 0
    while engine.has_work():
        engine.step()
    assert engine.last_metrics.running == 0 and engine.kv.num_used == 0


def test_per_request_threshold_in_one_batch(tiny_dir, tiny_model, references):
    """Requests with their own thresholds share a batch; each gets the reference's tokens at its threshold
    (the engine's own --accept-threshold is 0.95 here, and applies to the request that names none)."""
    engine = make_engine(tiny_dir, tiny_model)
    prompts = mixed_prompts()[:6]
    thresholds = [0.8, None, 0.3, 1.0, 0.8, 0.0]
    reqs = run(engine, prompts, [SamplingParams(temperature=0, max_tokens=48, threshold=t) for t in thresholds])
    for i, (req, prompt, threshold) in enumerate(zip(reqs, prompts, thresholds)):
        ref = (references[1][i] if threshold == 0.8 else
               reference(tiny_model, engine, prompt, 48, accept_threshold=0.95 if threshold is None else threshold))
        assert (req.output, req.nfe) == (ref.token_ids, ref.nfe)
    assert len({r.nfe for r in reqs}) > 1


def test_outputs_carry_timing(tiny_dir, tiny_model):
    """The first output of a request has its queue and prefill times; the final one all five, never negative,
    also when the first forward decides the whole answer."""
    engine = make_engine(tiny_dir, tiny_model)
    engine.add_request([5, 6, 7], SamplingParams(temperature=0, max_tokens=1))
    engine.add_request([5, 6, 8], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, threshold=1.0))
    first = engine.step()
    assert first[0].finished and set(first[0].timing) == {"queue_s", "prefill_s", "decode_s", "tokens_per_s",
                                                          "tokens_per_forward"}
    assert not first[1].finished and set(first[1].timing) == {"queue_s", "prefill_s"}
    last = None
    while engine.has_work():
        outputs = engine.step()
        assert all(out.timing is None for out in outputs if not out.finished)
        last = outputs[-1]
    for out in (first[0], last):
        assert out.finished and min(out.timing.values()) >= 0 and out.timing["tokens_per_forward"] > 0


def test_a_request_over_the_token_budget_evicts_no_cached_prefix(tiny_dir, tiny_model):
    """Prompts prefilled one a step (the budget holds one) all stay cached when the pool holds them all: a waiting
    request that does not fit this step takes no pages, so no cached prefix is pushed out early."""
    engine = make_engine(tiny_dir, tiny_model, num_kv_pages=64, max_model_len=224, max_num_batched_tokens=224)
    rng = random.Random(11)
    prompts = [[rng.randrange(5, 380) for _ in range(192)] for _ in range(8)]
    run(engine, prompts, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    hits = engine.scheduler.prefix_hit_tokens
    run(engine, prompts, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    assert engine.scheduler.prefix_hit_tokens - hits == 8 * 192
