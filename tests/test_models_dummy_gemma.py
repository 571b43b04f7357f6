"""The DiffusionGemma shape (the released 26B-A4B text model's config.json, as transformers reads it) and its dummy
weights: made without any weight file, deterministic, normed where they must be, routing spread over the experts."""
import json
import os

import pytest
import torch

from dlx.models import load_model
from dlx.models.diffusion_gemma import DiffusionGemmaConfig, DiffusionGemmaModel
from dlx.models.diffusion_gemma_dummy import expert_stats, routing_stats
from dlx.models.diffusion_gemma_sampler import SamplingSettings
from dlx.models.shapes import shape_config, write_shape_dir
from dlx.models.tokenizer_build import EOS_TOKEN, token_id


@pytest.fixture(scope="module")
def shape_dir(tmp_path_factory) -> str:
    return write_shape_dir(str(tmp_path_factory.mktemp("diffusion_gemma")), "diffusion_gemma")


def test_shape_has_the_released_models_size(shape_dir):
    assert not [f for f in os.listdir(shape_dir) if "safetensors" in f]
    with open(os.path.join(shape_dir, "config.json")) as f:
        cfg = DiffusionGemmaConfig.from_hf(json.load(f))
    with torch.device("meta"):   # shapes only: 25B parameters are never allocated
        model = DiffusionGemmaModel(cfg)
    total = sum(p.numel() for p in model.parameters())
    experts = sum(layer.moe.w13.numel() + layer.moe.w2.numel() for layer in model.layers)
    active = total - experts + experts * cfg.top_k_experts // cfg.num_experts
    assert 25.0e9 < total < 25.5e9 and 3.7e9 < active < 4.0e9   # "26B-A4B"
    full = [i for i, spec in enumerate(cfg.layers) if not spec.sliding]
    assert full == [5, 11, 17, 23, 29] and cfg.canvas_length == 256 and cfg.sliding_window == 1024
    assert (cfg.layers[5].head_dim, cfg.layers[5].num_kv_heads, cfg.layers[0].num_kv_heads) == (512, 2, 8)


def test_shape_ids_and_sampler_settings_are_the_tokenizers(shape_dir):
    eos = token_id(shape_dir, EOS_TOKEN)
    with open(os.path.join(shape_dir, "config.json")) as f:
        raw = json.load(f)
    assert raw["eos_token_id"] == raw["text_config"]["eos_token_id"] == raw["text_config"]["pad_token_id"] == eos
    settings = SamplingSettings.from_pretrained(shape_dir)
    assert settings == SamplingSettings(eos_token_ids=(eos,))   # the checkpoint's settings are the defaults


def test_transformers_reads_the_shape_as_dlx_does(shape_dir):
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "DiffusionGemmaConfig"):
        pytest.skip("transformers < 5.11 has no DiffusionGemmaConfig")
    text = transformers.AutoConfig.from_pretrained(shape_dir).text_config
    specs = DiffusionGemmaConfig.from_hf(shape_config("diffusion_gemma")).layers
    assert [(text.per_layer_config[i].head_dim, text.per_layer_config[i].num_key_value_heads)
            for i in range(len(specs))] == [(s.head_dim, s.num_kv_heads) for s in specs]
    assert (text.num_experts, text.top_k_experts, text.moe_intermediate_size) == (128, 8, 704)


def test_shape_layers_can_be_cut(tmp_path):
    text = shape_config("diffusion_gemma", layers=3)["text_config"]
    assert text["num_hidden_layers"] == 3 and text["layer_types"][-1] == "full_attention"
    assert len(DiffusionGemmaConfig.from_hf(shape_config("diffusion_gemma", layers=3)).layers) == 3
    assert shape_config("diffusion_gemma")["text_config"]["num_hidden_layers"] == 30   # the table is untouched
    with pytest.raises(ValueError, match="at least 1"):
        shape_config("diffusion_gemma", layers=0)


@pytest.fixture(scope="module")
def model(gemma_shape_dir):
    return load_model(gemma_shape_dir, dtype="float32", load_format="dummy")


def test_dummy_weights_fill_every_parameter_deterministically(gemma_shape_dir, model):
    again = load_model(gemma_shape_dir, dtype="float32", load_format="dummy")
    for (name, param), (_, other) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(param, other), name
        if param.dim() == 1:   # norms, router scales, layer scalars
            assert torch.all(param == 1.0), name
        else:
            fan_in = model.config.hidden_size if name == "embed_tokens.weight" else param.shape[-1]
            assert abs(param.std().item() * fan_in ** 0.5 - 1.0) < 0.15, name
    assert model.lm_head.weight is model.embed_tokens.weight


def test_dummy_model_denoises_with_finite_logits(model):
    cfg = model.config
    encoded = model.encode(torch.arange(20))
    logits = model.decode_step(torch.arange(cfg.canvas_length), encoded)
    assert logits.shape == (cfg.canvas_length, cfg.vocab_size) and torch.isfinite(logits).all()
    assert logits.std() > 0.1   # not a flat distribution: the tied head reads a normed state of RMS 1


def test_routing_spreads_over_the_experts(model):
    distinct, worst = routing_stats(model, prompt_len=24)
    cfg = model.config
    # 16 tokens x top-2 over 16 experts: uniform routing touches 14.1 on average, a collapsed router 2.
    assert len(distinct) == cfg.num_hidden_layers and all(10 <= d <= cfg.num_experts for d in distinct)
    assert 1.0 <= worst < 5.0   # 32 picks: a busiest expert with 10 would be


def test_expert_stats_counts_loads():
    chosen = {1: torch.tensor([[0, 1], [0, 2]]), 0: torch.tensor([[3, 3]])}
    distinct, worst = expert_stats(chosen, num_experts=4)
    assert distinct == [1, 3] and worst == 4.0   # layer 0: expert 3 has both picks, mean 0.5
