"""DiffusionGemma's canvas sampler against transformers' DiffusionGemmaForBlockDiffusion.generate() on the tiny
random checkpoint (CPU, fp32): the same seed gives the same tokens, settings resolve like the reference's.

How exactness is tested. With bit-equal logits the two samplers agree draw for draw (checked unpatched on the first
block below). But the logits are not always bit-equal: for some prompt lengths (3 here) dlx's fused projections and
einsum attention round differently from transformers' separate projections and matmuls (~1e-6), and from the second
block on the reference encodes each canvas incrementally against its KV cache while dlx re-encodes the whole context,
which again changes reduction lengths (~1e-6). The draw order was checked step by step and is not the cause: canvases
agree at every step while the logits drift, and self-conditioning on the previous step's temperature-scaled logits
amplifies the drift (7e-6, 3e-4, 3e-3, 6e-2, 5 in five steps) until a multinomial draw flips. So the multi-block,
multi-prompt comparison runs transformers' own generate() loop (its canvas draws, temperature schedule, acceptance,
renoising, adaptive stop, block loop and EOS handling) with the decoder pass swapped for dlx's on the same inputs
(`reference_on_dlx_logits`); the model math itself is checked against transformers in test_models_diffusion_gemma."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from dlx.models.diffusion_gemma_sampler import (SamplingSettings, entropy_bounded_acceptance, generate, start_canvas,
                                                step, temperature)
from dlx.models.diffusion_gemma_weights import load_diffusion_gemma
from dlx.models.tiny_gemma import TINY_CANVAS, TINY_TEXT, write_tiny_diffusion_gemma
from test_models_diffusion_gemma import eager_oracle

try:
    from transformers import (DiffusionGemmaForBlockDiffusion, EntropyBoundSamplerConfig,
                              StableAndConfidentStoppingCriteria)
except ImportError:  # transformers < 5.11 (requirements.txt allows 4.56)
    DiffusionGemmaForBlockDiffusion = None

pytestmark = pytest.mark.skipif(DiffusionGemmaForBlockDiffusion is None,
                                reason="transformers < 5.11 has no DiffusionGemmaForBlockDiffusion")
VOCAB = TINY_TEXT["vocab_size"]
# (prompt length, seed, max_new_tokens): within and past the sliding window, one and two and three canvases
CASES = [(1, 0, 32), (2, 11, 16), (3, 1, 32), (5, 7, 20), (6, 3, 32), (8, 4, 16), (9, 5, 48), (13, 2, 32),
         (17, 8, 32), (20, 9, 16), (27, 6, 32), (34, 10, 17)]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> str:
    return write_tiny_diffusion_gemma(str(tmp_path_factory.mktemp("gemma")), seed=0)


@pytest.fixture(scope="module")
def model(gemma_dir):
    return load_diffusion_gemma(gemma_dir, dtype="float32")


@pytest.fixture(scope="module")
def reference(gemma_dir):
    return eager_oracle(gemma_dir)


def prompt_of(length: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(1000 + length))


def new_tokens(sequences: torch.Tensor, prompt_length: int, eos: set[int]) -> list[int]:
    """The reference's generated tokens, through the first EOS (it pads the rest of that canvas)."""
    tokens = sequences[0, prompt_length:].tolist()
    cut = next((i for i, t in enumerate(tokens) if t in eos), None)
    return tokens if cut is None else tokens[:cut + 1]


def reference_generate(reference, prompt: torch.Tensor, seed: int, dlx_model=None, **kwargs) -> tuple[list[int], int]:
    """transformers' generate() after torch.manual_seed(seed): its new tokens and its decoder-pass count. With
    dlx_model, each decoder pass returns dlx's logits for the same context, canvas and self-conditioning logits."""
    context, passes = [], []
    encoder, forward = reference.model.encoder, reference.forward

    def recording_encoder(input_ids, **kw):  # the prompt on prefill, then each finished canvas
        context.append(input_ids[0].clone())
        return type(encoder).forward(encoder, input_ids=input_ids, **kw)

    def decoder_pass(decoder_input_ids, self_conditioning_logits=None, **kw):
        passes.append(1)
        if dlx_model is None:
            return forward(decoder_input_ids=decoder_input_ids, self_conditioning_logits=self_conditioning_logits, **kw)
        encoded = dlx_model.encode(torch.cat(context))
        conditioning = None if self_conditioning_logits is None else self_conditioning_logits[0]
        return SimpleNamespace(logits=dlx_model.decode_step(decoder_input_ids[0], encoded, conditioning)[None])

    encoder.forward, reference.forward = recording_encoder, decoder_pass
    try:
        torch.manual_seed(seed)
        out = reference.generate(prompt[None], **kwargs)
    finally:
        del encoder.forward, reference.forward
    eos = kwargs.get("eos_token_id", reference.generation_config.eos_token_id)
    eos = set() if eos is None else set(eos) if isinstance(eos, list) else {eos}
    return new_tokens(out.sequences, len(prompt), eos), len(passes)


def counted_generate(model, prompt, settings, seed, **overrides) -> tuple[list[int], int]:
    """dlx's generate and its decoder-pass count."""
    passes, decode = [], model.decode_step

    def counting(*args):
        passes.append(1)
        return decode(*args)

    model.decode_step = counting
    try:
        return generate(model, prompt, settings, seed, **overrides), len(passes)
    finally:
        del model.decode_step


@pytest.mark.parametrize("prompt_length, seed, max_new", CASES)
def test_same_tokens_as_reference_generate(model, reference, gemma_dir, prompt_length, seed, max_new):
    prompt, settings = prompt_of(prompt_length), SamplingSettings.from_pretrained(gemma_dir)
    expected, expected_passes = reference_generate(reference, prompt, seed, model, max_new_tokens=max_new)
    tokens, passes = counted_generate(model, prompt, settings, seed, max_new_tokens=max_new)
    assert tokens == expected
    assert len(tokens) == -(-max_new // TINY_CANVAS) * TINY_CANVAS  # whole canvases, as the reference returns
    assert passes == expected_passes


@pytest.mark.parametrize("prompt_length, seed", [(5, 0), (5, 21), (19, 3), (19, 4)])
def test_first_block_matches_the_unpatched_reference(model, reference, prompt_length, seed):
    """Where dlx's logits are bit-equal to transformers' (prompt encoded in one pass, lengths the model test
    checks), the unpatched generate() agrees too: nothing else differs."""
    prompt = prompt_of(prompt_length)
    expected, _ = reference_generate(reference, prompt, seed, max_new_tokens=TINY_CANVAS)
    assert generate(model, prompt, SamplingSettings(), seed, max_new_tokens=TINY_CANVAS) == expected


@pytest.mark.parametrize("overrides", [
    dict(t_min=0.01, t_max=0.05, stability_threshold=0, confidence_threshold=0.5),  # stops after a few steps
    dict(max_denoising_steps=5, entropy_bound=0.7),
    dict(stability_threshold=2, t_min=0.05, t_max=0.1, confidence_threshold=0.5, max_denoising_steps=20),
])
def test_per_call_overrides_match_the_reference(model, reference, overrides):
    prompt = prompt_of(6)
    hf = {k: v for k, v in overrides.items() if k != "entropy_bound"}  # the reference nests the entropy bound
    if "entropy_bound" in overrides:
        hf["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=overrides["entropy_bound"])
    expected, expected_passes = reference_generate(reference, prompt, 5, model, max_new_tokens=32, **hf)
    settings = SamplingSettings()
    tokens, passes = counted_generate(model, prompt, settings, 5, max_new_tokens=32, **overrides)
    assert (tokens, passes) == (expected, expected_passes)
    assert settings == SamplingSettings()  # the call's overrides did not stick
    if "confidence_threshold" in overrides and overrides.get("stability_threshold") == 0:
        assert passes < 2 * SamplingSettings().max_denoising_steps  # the adaptive stop did end the blocks early


def test_eos_ends_generation_like_the_reference(model, reference):
    prompt = prompt_of(4)
    free = generate(model, prompt, SamplingSettings(), 3, max_new_tokens=48)
    eos = free[TINY_CANVAS + 5]  # a token of the second canvas: generation stops after that canvas
    eos_at = free.index(eos)
    expected, _ = reference_generate(reference, prompt, 3, model, max_new_tokens=48, eos_token_id=eos,
                                     pad_token_id=0)
    tokens = generate(model, prompt, SamplingSettings(eos_token_ids=(eos, VOCAB + 1)), 3, max_new_tokens=48)
    assert tokens == expected == free[:eos_at + 1]


def test_different_seeds_differ(model):
    outputs = {tuple(generate(model, prompt_of(5), SamplingSettings(), seed, max_new_tokens=16)) for seed in (0, 1)}
    assert len(outputs) == 2


def test_missing_settings_fall_back_to_reference_defaults(gemma_dir, tmp_path):
    """The written checkpoint sets no sampling key (all null); a hand-written file sets some. Each field must equal
    what the reference's generate() resolves."""
    partial_dir = str(tmp_path / "partial")
    shutil.copytree(gemma_dir, partial_dir)
    written = {"max_denoising_steps": 7, "t_max": 1.5, "eos_token_id": [1, 106],
               "sampler_config": {"entropy_bound": 0.25, "_cls_name": "EntropyBoundSamplerConfig"}}
    with open(os.path.join(partial_dir, "generation_config.json"), "w") as f:
        json.dump(written, f)
    no_file_dir = str(tmp_path / "none")
    shutil.copytree(gemma_dir, no_file_dir)
    os.remove(os.path.join(no_file_dir, "generation_config.json"))
    for model_dir in (gemma_dir, partial_dir, no_file_dir):
        resolved, _ = eager_oracle(model_dir)._prepare_generation_config(None)
        settings = SamplingSettings.from_pretrained(model_dir)
        eos = resolved.eos_token_id
        assert settings == SamplingSettings(
            max_new_tokens=resolved.max_new_tokens, max_denoising_steps=resolved.max_denoising_steps,
            entropy_bound=resolved.sampler_config.entropy_bound, t_min=resolved.t_min, t_max=resolved.t_max,
            stability_threshold=resolved.stability_threshold, confidence_threshold=resolved.confidence_threshold,
            eos_token_ids=() if eos is None else tuple(eos) if isinstance(eos, list) else (eos,))
    assert SamplingSettings.from_pretrained(gemma_dir) == SamplingSettings()
    partial = SamplingSettings.from_pretrained(partial_dir, t_min=0.2)
    assert (partial.max_denoising_steps, partial.t_max, partial.entropy_bound, partial.eos_token_ids,
            partial.t_min, partial.confidence_threshold) == (7, 1.5, 0.25, (1, 106), 0.2, 0.005)
    assert partial.replace(max_new_tokens=5).max_new_tokens == 5 and partial.max_new_tokens == 256


@pytest.mark.parametrize("stability_threshold", [0, 1, 2, 3])
def test_adaptive_stop_agrees_with_the_reference_criterion(stability_threshold):
    """The tiny random model never settles on one canvas, so the stability rule is checked here on made-up logits:
    two changing steps, then the same peaked logits; confident from the third step on."""
    gen = torch.Generator().manual_seed(0)
    peaked = torch.zeros(TINY_CANVAS, VOCAB).scatter_(1, torch.arange(TINY_CANVAS)[:, None], 30.0)
    sequence = [torch.randn(TINY_CANVAS, VOCAB, generator=gen) for _ in range(2)] + [peaked] * 4
    settings = SamplingSettings(stability_threshold=stability_threshold, confidence_threshold=0.01)
    criterion = StableAndConfidentStoppingCriteria(stability_threshold, 0.01)
    state = start_canvas(TINY_CANVAS, VOCAB, settings, gen)
    ours, theirs = [], []
    for logits in sequence:
        scaled = logits / temperature(settings, state.steps_left)
        theirs.append(bool(criterion(scaled.argmax(-1)[None], scaled[None])))
        state = step(state, logits, settings, gen)
        ours.append(state.done)
    assert ours == theirs
    assert ours.index(True) == 2 + stability_threshold  # the first peaked step, then that many repeats


def test_acceptance_takes_the_lowest_entropies_within_the_bound():
    entropy = torch.tensor([0.5, 0.01, 0.04, 2.0, 0.03])
    # sorted: 0.01, 0.03, 0.04, 0.5 -> sums minus max: 0, 0.01, 0.04, 0.08, then 0.58 + ... > 0.1
    assert entropy_bounded_acceptance(entropy, 0.1).tolist() == [True, True, True, False, True]
    assert entropy_bounded_acceptance(torch.tensor([3.0, 4.0]), 0.1).tolist() == [True, False]


@pytest.mark.parametrize("bad", [dict(t_min=0.9), dict(entropy_bound=0.0), dict(max_denoising_steps=0)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplingSettings(**bad)
