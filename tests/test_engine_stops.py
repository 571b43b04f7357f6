"""Every stop condition: its finish_reason and the exact cut; aborts free their pages; the Python API's
stop strings, streaming snapshots and batch generation."""
import pytest

from dlx.params import SamplingParams
from test_engine import make_engine, mixed_prompts, run

GREEDY = dict(temperature=0, max_tokens=64)


@pytest.fixture(scope="module")
def engine(tiny_dir, tiny_model):
    return make_engine(tiny_dir, tiny_model, max_num_reqs=32)


@pytest.fixture(scope="module")
def baseline(engine):
    """Greedy outputs with EOS ignored: the text every cut below is measured against."""
    prompts = mixed_prompts(16, seed=21)
    prompts = [p for p in prompts if len(p) < 150]
    return prompts, run(engine, prompts, SamplingParams(**GREEDY, ignore_eos=True))


def test_eos_stops_and_is_cut(engine, baseline):
    prompts, full = baseline
    reqs = run(engine, prompts, SamplingParams(**GREEDY))
    stopped = [(r, f) for r, f in zip(reqs, full) if r.finish_reason == "stop"]
    assert stopped
    for req, ignoring in stopped:
        cut = ignoring.output.index(engine.eos_id)
        assert req.output == ignoring.output[:cut] and engine.eos_id not in req.output
    assert all(f.finish_reason == "length" and len(f.output) == 64 for f in full)


def test_stop_token_ids(engine, baseline):
    prompts, full = baseline
    ref = full[0].output
    k = next(i for i in range(5, 64) if ref[i] not in ref[:i] and ref[i] != engine.eos_id)
    (req,) = run(engine, [prompts[0]], SamplingParams(**GREEDY, ignore_eos=True, stop_token_ids=[ref[k]]))
    assert (req.finish_reason, req.output) == ("stop", ref[:k])


def test_max_tokens_and_context_limit(engine, baseline):
    prompts, _ = baseline
    (short,) = run(engine, [prompts[0]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert short.finish_reason == "length" and len(short.output) == 5
    (edge,) = run(engine, [list(range(10, 10 + 253))], SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    assert edge.finish_reason == "length" and len(edge.output) == 3   # 256-token context


def test_max_nfe_returns_only_stable_tokens(engine, baseline):
    prompts, full = baseline
    (req,) = run(engine, [prompts[0]], SamplingParams(**GREEDY, ignore_eos=True, max_nfe=3))
    assert req.finish_reason == "max_nfe" and req.nfe == 3
    assert engine.mask_id not in req.output and req.output == full[0].output[:len(req.output)]


def test_max_repetition_run(engine, baseline):
    prompts, full = baseline
    def first_run(out, n):
        return next((i + n for i in range(len(out) - n + 1) if len(set(out[i:i + n])) == 1), None)
    index, n = next(((i, n) for n in (4, 3, 2) for i, f in enumerate(full) if first_run(f.output, n)), (None, None))
    assert index is not None, "tiny model produced no repetition at all"
    (req,) = run(engine, [prompts[index]], SamplingParams(**GREEDY, ignore_eos=True, max_repetition_run=n))
    assert req.finish_reason == "repetition"
    assert req.output == full[index].output[:first_run(full[index].output, n)]


def test_abort_frees_pages_and_keeps_stable_text(engine, baseline):
    prompts, full = baseline
    i = next(i for i, p in enumerate(prompts) if len(p) >= 64)
    req = engine.add_request(prompts[i], SamplingParams(**GREEDY, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.kv.num_used > 0
    engine.abort(req.rid)
    assert req.finish_reason == "abort" and engine.kv.num_used == 0 and not engine.has_work()
    assert req.output == full[i].output[:len(req.output)]


def test_bad_requests_are_refused(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="max-model-len"):
        engine.add_request([5] * 256, SamplingParams())
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([5, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    assert not engine.has_work()


def test_stop_scans_resume_and_agree_with_one_scan_over_everything():
    """Stop tokens and the filled prefix are found by scans that resume where the last one ended; checked as a
    request's stable prefix grows they give what one scan over the whole output gives."""
    from dlx.engine.request import Request
    params = SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[7])
    req = Request([3, 4, 5], params, block_size=4, max_model_len=64, mask_id=0, eos_id=2)
    req.tokens[3:13] = [9, 9, 1, 1, 8, 8, 7, 2, 0, 0]   # a stop (7) at 6, EOS (2) at 7, masks from 8
    req.next_block = 4   # blocks 0-3 activated: positions up to 16
    assert [req.first_stop(stable) for stable in (2, 4, 6)] == [None, None, None]
    assert req.first_stop(8) == 6 and req.stop_token_seen()
    assert [req.filled_prefix_len() for _ in range(2)] == [8, 8]
    req.tokens[11] = 5
    assert req.filled_prefix_len() == 9
    quiet = Request([3, 4, 5], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True), block_size=4,
                    max_model_len=64, mask_id=0, eos_id=2)
    quiet.tokens[3:8] = [2, 2, 2, 2, 2]
    quiet.next_block = 2
    assert quiet.first_stop(5) is None and not quiet.stop_token_seen()   # EOS ignored: no stop at all
