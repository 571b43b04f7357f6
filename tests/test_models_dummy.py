"""Dummy weights (--load-format dummy): config-only directories load, every parameter is filled deterministically,
routers are balanced (and balancing is what balances them), the flag is validated, benchmark shapes are written."""
import argparse
import copy
import json
import os

import pytest
import torch

from dlx import LLM, SamplingParams
from dlx.cli import add_cli_arguments, config_from_args
from dlx.config import Config, ConfigError
from dlx.kernels.attention import AttentionMetadata
from dlx.models import load_model
from dlx.models.dummy import balance_routers, chosen_experts, distinct_experts_per_layer, init_std, random_batch, \
    routers_of, uniform_distinct_experts
from dlx.models.llada2 import LLaDA2Config
from dlx.models.shapes import write_shape_dir
from dlx.models.tiny import tiny_corpus, tiny_llada2_config
from dlx.models.tokenizer_build import EOS_TOKEN, build_tokenizer, token_id

# Enough experts for the distinct-experts statistic to mean something, group-limited like LLaDA2 (8 groups,
# best 4), a vocabulary larger than the tokenizer's, and a qkv bias so that biases are exercised too.
SHAPE = {"num_experts": 64, "num_experts_per_tok": 4, "n_group": 8, "topk_group": 4, "num_hidden_layers": 4,
         "vocab_size": 1024, "use_qkv_bias": True}
TOKENS = 16


def write_config_only(out_dir: str, **overrides) -> str:
    build_tokenizer(out_dir, tiny_corpus(0), vocab_size=384)
    raw = tiny_llada2_config(SHAPE["vocab_size"], token_id(out_dir, EOS_TOKEN), "float32") | SHAPE | overrides
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f)
    return out_dir


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> str:
    return write_config_only(str(tmp_path_factory.mktemp("config_only")))


@pytest.fixture(scope="module")
def model(config_dir):
    return load_model(config_dir, dtype="float32", load_format="dummy")


def load_cv(model) -> list[float]:
    """Coefficient of variation of the experts' loads over 2048 fresh tokens, per MoE layer
    (0.09 is the sampling noise of a perfectly uniform router at 64 experts x top-4)."""
    routers = routers_of(model)
    with torch.no_grad(), chosen_experts(model) as chosen:
        model(*random_batch(model.config.vocab_size, 64, 32, 7, "cpu"))
    loads = [torch.bincount(chosen[i].reshape(-1), minlength=r.num_experts).float() for i, r in enumerate(routers)]
    return [(load.std() / load.mean()).item() for load in loads]


def test_config_only_directory_loads_with_random_weights(config_dir, model):
    assert not [f for f in os.listdir(config_dir) if "safetensors" in f]
    with pytest.raises(ValueError, match="neither model.safetensors nor"):
        load_model(config_dir)
    ids = torch.arange(40)
    logits = model.compute_logits(model(ids, torch.arange(40), AttentionMetadata.single(40, 32)))
    assert logits.shape == (40, SHAPE["vocab_size"]) and torch.isfinite(logits).all()


def test_every_parameter_is_filled(model):
    layers = model.config.num_hidden_layers
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
        if name.endswith("norm.weight"):
            assert torch.equal(param, torch.ones_like(param)), name
        elif name.endswith(".bias"):
            assert torch.equal(param, torch.zeros_like(param)), name
        elif name.endswith("expert_bias"):
            assert param.abs().max() > 0, name   # solved by balancing, not left at zero
        else:
            std = init_std(name, param.shape[-1], layers)
            assert abs(param.std().item() / std - 1) < 0.1 and abs(param.mean().item()) < 0.1 * std, name


def test_two_dummy_loads_are_identical(config_dir, model):
    again = load_model(config_dir, dtype="float32", load_format="dummy")
    for (name, a), (_, b) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), name


def test_routing_is_balanced_by_the_expert_bias(model):
    uniform = uniform_distinct_experts(SHAPE["num_experts"], SHAPE["num_experts_per_tok"], TOKENS)
    balanced = distinct_experts_per_layer(model, TOKENS, sequences=16)
    assert len(balanced) == SHAPE["num_hidden_layers"] - 1
    assert all(d > 0.95 * uniform for d in balanced), (balanced, uniform)
    assert max(load_cv(model)) < 0.15   # every expert chosen about equally often


def mask_block_distinct(model, mask_id: int) -> list[int]:
    """Distinct experts per layer for one block of 32 mask tokens: what a decoding step's rows mostly are."""
    ids, positions, meta = random_batch(model.config.vocab_size, 1, 32, 3, "cpu")
    with torch.no_grad(), chosen_experts(model) as chosen:
        model(torch.full_like(ids, mask_id), positions, meta)
    return [chosen[i].unique().numel() for i in sorted(chosen)]


def test_a_block_of_masks_routes_like_a_trained_models_tokens(config_dir, model):
    """A random model gives a block's mask rows nearly one hidden state; the routers' per-row offsets make
    them choose as diversely as distinct tokens do, and without them the block collapses onto a few experts."""
    mask_id = token_id(config_dir, "<|mask|>")
    uniform = uniform_distinct_experts(SHAPE["num_experts"], SHAPE["num_experts_per_tok"], 32)
    assert min(mask_block_distinct(model, mask_id)) > 0.85 * uniform
    plain = copy.deepcopy(model)
    for router in routers_of(plain):
        router.row_jitter = None
    assert max(mask_block_distinct(plain, mask_id)) < 0.5 * uniform


def test_balancing_repairs_a_skewed_router(model):
    """Routers whose rows differ in scale favour the large rows (as a common hidden component favours some
    experts); solving the bias again brings the distinct experts back to uniform. Without the per-row offsets,
    which would hide the skew, so that the test holds the bias solver itself to account."""
    uniform = uniform_distinct_experts(SHAPE["num_experts"], SHAPE["num_experts_per_tok"], TOKENS)
    skewed = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for router in routers_of(skewed):
            router.weight.mul_(torch.exp(0.5 * torch.randn(router.num_experts, 1, generator=gen)))
            router.expert_bias.zero_()
            router.row_jitter = None
    before = distinct_experts_per_layer(skewed, TOKENS, sequences=16)
    assert sum(before) / len(before) < 0.85 * uniform, before
    balance_routers(skewed)
    after = distinct_experts_per_layer(skewed, TOKENS, sequences=16)
    assert all(d > 0.95 * uniform for d in after), (after, uniform)


def test_routers_without_expert_bias_keep_the_init(tmp_path):
    """No bias to solve (moe_router_enable_expert_bias false): the init alone routes within 10 % of uniform."""
    path = write_config_only(str(tmp_path), moe_router_enable_expert_bias=False)
    unbiased = load_model(path, dtype="float32", load_format="dummy")
    assert all(r.expert_bias is None for r in routers_of(unbiased))
    uniform = uniform_distinct_experts(SHAPE["num_experts"], SHAPE["num_experts_per_tok"], TOKENS)
    assert all(d > 0.9 * uniform for d in distinct_experts_per_layer(unbiased, TOKENS, sequences=16))


def test_llm_generates_deterministically_from_dummy_weights(config_dir):
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    runs = []
    for _ in range(2):
        llm = LLM(config_dir, load_format="dummy", dtype="float32", device="cpu", max_model_len=128)
        (out,) = llm.generate("hello who are you", params)
        runs.append(out)
    assert runs[0].token_ids == runs[1].token_ids and len(runs[0].token_ids) == 8
    # ids the config's vocabulary has and the tokenizer lacks are sampled, and decode to nothing
    assert max(runs[0].token_ids) >= len(llm.tokenizer)
    assert runs[0].text == llm.tokenizer.decode(runs[0].token_ids, skip_special_tokens=True)


def test_load_format_flag_is_validated(config_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser)
    assert config_from_args(parser.parse_args(["--load-format", "dummy"])).load_format == "dummy"
    assert Config(model=config_dir).load_format == "auto"
    with pytest.raises(ConfigError, match=r"^--load-format must be one of auto, dummy, not 'bogus'$"):
        Config(model=config_dir, load_format="bogus").finalize(cuda_available=False)
    with pytest.raises(ValueError, match="unknown load format 'bogus'"):
        load_model(config_dir, load_format="bogus")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        Config(model=str(empty), load_format="dummy").finalize(cuda_available=False)
    with pytest.raises(ValueError, match="has no config.json"):
        load_model(str(empty), load_format="dummy")


@pytest.mark.parametrize("shape,hidden,layers", [("mini", 2048, 20), ("flash", 4096, 32)])
def test_shape_directories_hold_only_config_and_tokenizer(tmp_path, shape, hidden, layers):
    out = write_shape_dir(str(tmp_path / shape), shape)
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "special_tokens_map.json",
                                       "tokenizer.json", "tokenizer_config.json"]
    raw = json.load(open(os.path.join(out, "config.json")))
    cfg = LLaDA2Config.from_hf(raw)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok) == (hidden, layers,
                                                                                                     256, 8)
    assert (cfg.vocab_size, cfg.rotary_dim, cfg.n_group, cfg.topk_group, cfg.expert_bias) == (157184, 64, 8, 4, True)
    assert cfg.eos_token_id == token_id(out, EOS_TOKEN)
    finalized = Config(model=out, load_format="dummy").finalize(cuda_available=False)
    assert finalized.max_model_len == 4096


def test_shape_layers_can_be_cut(tmp_path):
    out = write_shape_dir(str(tmp_path / "short"), "mini", layers=3)
    assert json.load(open(os.path.join(out, "config.json")))["num_hidden_layers"] == 3
    with pytest.raises(ValueError, match="at least one layer is MoE"):
        write_shape_dir(str(tmp_path / "dense"), "mini", layers=1)
