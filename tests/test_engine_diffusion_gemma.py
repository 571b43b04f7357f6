"""DiffusionGemma through LLMEngine and LLM (CPU, fp32, a tiny random checkpoint written here): with the same seed a
request decodes exactly what diffusion_gemma_sampler.generate() gives for its prompt alone, alone or batched."""
import json
import os
import shutil

import pytest
import torch

from dlx.config import Config
from dlx.engine.engine import LLMEngine
from dlx.models import load_model
from dlx.models.diffusion_gemma_sampler import SamplingSettings, generate
from dlx.params import SamplingParams

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("transformers < 5.11 has no DiffusionGemmaForBlockDiffusion", allow_module_level=True)

from dlx.models.tiny_gemma import TINY_CANVAS, write_tiny_diffusion_gemma  # noqa: E402

# (prompt length, seed, max_tokens): one, two and three canvases, some cut inside their last canvas
CASES = [(1, 0, 16), (2, 11, 32), (3, 1, 20), (5, 7, 32), (6, 3, 16), (8, 4, 40), (9, 5, 32), (13, 2, 17),
         (17, 8, 32), (20, 9, 16), (27, 6, 48), (34, 10, 31)]
# Few denoising steps keep the CPU time small; every other case stops early, its canvas stable and (with this
# loose threshold) confident, so the adaptive stop decides there.
STEPS = {"max_denoising_steps": 6}
EARLY = {**STEPS, "stability_threshold": 0, "confidence_threshold": 5.0}


def fields_of(i: int) -> dict:
    return EARLY if i % 2 else STEPS


@pytest.fixture(scope="module")
def model(gemma_model):   # conftest's tiny DiffusionGemma, loaded once a session
    return gemma_model


def make_engine(model_dir: str, model=None, **overrides) -> LLMEngine:
    return LLMEngine(Config(model=model_dir, dtype="float32", **overrides).finalize(cuda_available=False), model=model)


@pytest.fixture(scope="module")
def engine(gemma_dir, model):
    return make_engine(gemma_dir, model)


def prompt_of(length: int, vocab: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(1000 + length)).tolist()


def expected(model, model_dir: str, prompt: list[int], seed: int, max_tokens: int, **fields) -> list[int]:
    """generate()'s tokens as a dlx request returns them: the stop token left out, cut to max_tokens."""
    settings = SamplingSettings.from_pretrained(model_dir, max_new_tokens=max_tokens, **fields)
    tokens = generate(model, prompt, settings, seed=seed)
    if tokens and tokens[-1] in settings.eos_token_ids:
        tokens = tokens[:-1]
    return tokens[:max_tokens]


def run(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list:
    """Every request to the end: (request, its step outputs) in order; engine.widest_step: the largest batch."""
    reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params)]
    outputs, engine.widest_step = {}, 0
    while engine.has_work():
        step = engine.step()
        engine.widest_step = max(engine.widest_step, len(step))
        for out in step:
            outputs.setdefault(out.rid, []).append(out)
    return [(req, outputs[req.rid]) for req in reqs]


@pytest.fixture(scope="module")
def references(model, gemma_dir):
    vocab = model.config.vocab_size
    return [expected(model, gemma_dir, prompt_of(n, vocab), seed, m, **fields_of(i))
            for i, (n, seed, m) in enumerate(CASES)]


def test_one_forward_for_several_canvases_equals_one_each(model):
    """decode_steps: canvases after prompts of different lengths, some self-conditioned, bit for bit decode_step's."""
    vocab, gen = model.config.vocab_size, torch.Generator().manual_seed(0)
    prompts = [model.encode(torch.tensor(prompt_of(n, vocab))) for n in (3, 9, 20)]   # within and past the window
    canvases = [torch.randint(0, vocab, (TINY_CANVAS,), generator=gen) for _ in prompts]
    previous = [None, torch.randn(TINY_CANVAS, vocab, generator=gen), torch.randn(TINY_CANVAS, vocab, generator=gen)]
    with torch.no_grad():
        together = model.decode_steps(canvases, prompts, previous)
        alone = [model.decode_step(c, p, s) for c, p, s in zip(canvases, prompts, previous)]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))


def test_batched_requests_equal_generate(engine, model, references):
    vocab = model.config.vocab_size
    prompts = [prompt_of(n, vocab) for n, _, _ in CASES]
    params = [SamplingParams(seed=seed, max_tokens=m, **fields_of(i)) for i, (_, seed, m) in enumerate(CASES)]
    done = run(engine, prompts, params)
    assert engine.widest_step == len(CASES)
    for (req, outs), ref, (_, _, m) in zip(done, references, CASES):
        assert req.output == ref
        assert req.finish_reason == ("length" if len(ref) == m else "stop")
        assert outs[-1].finished and outs[-1].output == ref


def test_requests_alone_equal_generate(engine, model, references):
    vocab = model.config.vocab_size
    nfe = []
    for i, ((n, seed, m), ref) in enumerate(zip(CASES, references)):
        ((req, _),) = run(engine, [prompt_of(n, vocab)], [SamplingParams(seed=seed, max_tokens=m, **fields_of(i))])
        assert req.output == ref
        nfe.append(req.nfe)
    canvases = [-(-m // TINY_CANVAS) for _, _, m in CASES]
    assert all(n == 6 * c for n, c in zip(nfe[::2], canvases[::2]))
    assert any(n < 6 * c for n, c in zip(nfe[1::2], canvases[1::2])), "the adaptive stop ended a canvas early"


def test_snapshots_show_the_canvas_as_it_refines(engine, model):
    prompt = prompt_of(5, model.config.vocab_size)
    ((req, outs),) = run(engine, [prompt], [SamplingParams(seed=3, max_tokens=40, **STEPS)])
    for out in outs[:-1]:
        # A refining canvas is shown after the stable ones; the step that ends a canvas shows no next one yet.
        assert out.stable_len % TINY_CANVAS == 0
        assert len(out.token_ids) in (out.stable_len, min(40, out.stable_len + TINY_CANVAS))
        assert out.token_ids[:out.stable_len] == req.output[:out.stable_len]   # what is stable stays
    shown = [tuple(out.token_ids[:TINY_CANVAS]) for out in outs if out.stable_len == 0]
    assert len(set(shown)) > 1, "the first canvas changes from step to step"
    assert [out.nfe for out in outs] == list(range(1, len(outs) + 1))
    assert [out.stable_len for out in outs[5::6]] == [16, 32, 40]   # a canvas every 6 steps, the last cut


def test_stop_token_ends_the_request_before_it(engine, model, gemma_dir):
    prompt = prompt_of(9, model.config.vocab_size)
    ref = expected(model, gemma_dir, prompt, 5, 48, **STEPS)
    stop = ref[20]
    ((req, _),) = run(engine, [prompt], [SamplingParams(seed=5, max_tokens=48, stop_token_ids=[stop], **STEPS)])
    assert req.finish_reason == "stop" and req.output == ref[:ref.index(stop)]


def test_generation_config_is_the_default_and_request_fields_override_it(gemma_dir, model, tmp_path):
    model_dir = str(tmp_path / "tuned")
    shutil.copytree(gemma_dir, model_dir)
    path = os.path.join(model_dir, "generation_config.json")
    with open(path) as f:
        generation = json.load(f)
    # Many EOS tokens, so that the default max_tokens (512) ends early, at a stop.
    generation.update(max_denoising_steps=4, t_min=0.3, t_max=1.1, sampler_config={"entropy_bound": 0.5},
                      eos_token_id=list(range(0, 384, 6)))
    with open(path, "w") as f:
        json.dump(generation, f)
    engine = make_engine(model_dir, model)
    prompt = prompt_of(6, model.config.vocab_size)
    ((req, _),) = run(engine, [prompt], [SamplingParams(seed=4)])   # no sampling field but the seed
    assert req.output == expected(model, model_dir, prompt, 4, SamplingParams().max_tokens)
    assert req.finish_reason == "stop" and req.nfe == 4 * (len(req.output) // TINY_CANVAS + 1)
    fields = {"max_denoising_steps": 6, "t_max": 0.9, "entropy_bound": 0.2, "confidence_threshold": 0.01}
    ((req, _),) = run(engine, [prompt], [SamplingParams(seed=4, max_tokens=32, **fields)])
    assert req.output == expected(model, model_dir, prompt, 4, 32, **fields)


@pytest.mark.parametrize("fields,name", [({"temperature": 0.0}, "temperature"), ({"top_k": 5}, "top_k"),
                                         ({"sampling_mode": "edit"}, "sampling_mode")])
def test_fields_of_other_samplers_are_refused(engine, fields, name):
    with pytest.raises(ValueError, match=f"DiffusionGemma does not take '{name}'"):
        engine.add_request([1, 2, 3], SamplingParams(**fields))
    with pytest.raises(ValueError, match="t_min < t_max"):
        engine.add_request([1, 2, 3], SamplingParams(t_min=0.9, t_max=0.5))


def test_canvas_sampler_fields_are_read_from_a_body_and_checked():
    from dlx.frontend.schemas import RequestError, parse_generate

    def sampling(**fields) -> SamplingParams:
        return parse_generate({"prompt": "hi", **fields}, 1024, 384).sampling
    options = sampling(max_denoising_steps=7.0, t_min=0, t_max=1, entropy_bound=0.3)
    assert options.canvas_settings() == {"max_denoising_steps": 7, "t_min": 0.0, "t_max": 1.0, "entropy_bound": 0.3}
    assert sampling().canvas_settings() == {}
    for field, value in (("max_denoising_steps", 0), ("t_max", -1), ("entropy_bound", 0), ("stability_threshold", 0.5)):
        with pytest.raises(RequestError, match=f"'{field}' must be"):
            sampling(**{field: value})


def test_llada2_refuses_canvas_fields(tiny_dir, tiny_model):
    llada = LLMEngine(Config(model=tiny_dir).finalize(cuda_available=False), model=tiny_model)
    with pytest.raises(ValueError, match="'t_min' is a DiffusionGemma sampling field"):
        llada.add_request([1, 2, 3], SamplingParams(t_min=0.1))


def test_decoding_strategy_must_be_the_familys(gemma_dir):
    from dlx.config import ConfigError
    assert Config(model=gemma_dir).finalize(cuda_available=False).decoding_strategy == "canvas"
    with pytest.raises(ConfigError, match="--decoding-strategy multi_bd does not decode model_type 'diffusion_gemma'"):
        Config(model=gemma_dir, decoding_strategy="multi_bd").finalize(cuda_available=False)
    with pytest.raises(ConfigError, match="diffusion_gemma is served without tensor parallelism and LoRA"):
        Config(model=gemma_dir, tensor_parallel_size=2).finalize(cuda_available=False)


def test_a_checkpoint_without_tokenizer_or_mask_token_decodes(tmp_path, model):
    """No tokenizer.json (so no <|mask|>): the engine still starts, its EOS from generation_config.json."""
    bare = write_tiny_diffusion_gemma(str(tmp_path / "bare"), seed=0)
    bare_model = load_model(bare, "float32")
    prompt = prompt_of(7, bare_model.config.vocab_size)
    ((req, _),) = run(make_engine(bare, bare_model), [prompt], [SamplingParams(seed=1, max_tokens=24, **STEPS)])
    assert req.output == expected(bare_model, bare, prompt, 1, 24, **STEPS)


def test_llm_api_equals_generate(gemma_dir, model, references):
    from dlx.llm import LLM
    llm = LLM(gemma_dir, dtype="float32")
    vocab = model.config.vocab_size
    picked = [0, 3, 7]
    prompts = [prompt_of(CASES[i][0], vocab) for i in picked]
    params = [SamplingParams(seed=CASES[i][1], max_tokens=CASES[i][2], **fields_of(i)) for i in picked]
    completions = llm.generate(prompts, params, use_tqdm=False)
    assert [c.token_ids for c in completions] == [references[i] for i in picked]
    events = list(llm.stream(prompts[0], params[0]))   # one canvas, six steps
    assert events[-1].completion.token_ids == references[picked[0]] and not any(e.finished for e in events[:-1])
    assert len({e.text for e in events}) > 2   # the canvas's text changes as it refines


def test_a_budget_smaller_than_the_canvas_is_refused(gemma_dir, tmp_path):
    """A step computes a request's whole canvas: with a smaller token budget it would never be scheduled."""
    from dlx.config import ConfigError
    wide = shutil.copytree(gemma_dir, tmp_path / "wide")
    with open(wide / "config.json") as f:
        cfg = json.load(f)
    with open(wide / "config.json", "w") as f:
        json.dump(dict(cfg, canvas_length=128), f)
    with pytest.raises(ConfigError, match="must be at least the canvas length 128"):
        Config(model=str(wide), max_model_len=64, max_num_batched_tokens=64).finalize(cuda_available=False)
    Config(model=str(wide), max_model_len=64, max_num_batched_tokens=128).finalize(cuda_available=False)


def test_an_aborted_or_finished_request_drops_its_canvas_tensors(engine, model):
    vocab = model.config.vocab_size
    aborted = engine.add_request(prompt_of(4, vocab), SamplingParams(seed=1, max_tokens=40, **STEPS))
    done = engine.add_request(prompt_of(6, vocab), SamplingParams(seed=2, max_tokens=40, max_nfe=3, **STEPS))
    for _ in range(2):
        engine.step()
    assert aborted.decoding.state is not None and aborted.decoding.encoded is not None   # mid-canvas
    engine.abort(aborted.rid)
    while engine.has_work():
        engine.step()
    assert done.finish_reason == "max_nfe" and aborted.finish_reason == "abort"
    for req in (aborted, done):
        assert req.decoding.state is None and req.decoding.encoded is None and req.decoding.pending is None
