"""DiffusionGemma against transformers' DiffusionGemmaForBlockDiffusion on a tiny random checkpoint (CPU, fp32):
the encoder pass and one decoder step, with and without self-conditioning; config reading; weight-map errors."""
import json
import logging
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from dlx.models.diffusion_gemma import DiffusionGemmaConfig
from dlx.models.diffusion_gemma_weights import WeightMap, checkpoint_layout, load_diffusion_gemma
from dlx.models.tiny_gemma import TINY_CANVAS, TINY_TEXT, write_tiny_diffusion_gemma

try:
    from transformers import DiffusionGemmaForBlockDiffusion, DynamicCache
except ImportError:  # transformers < 5.11 (requirements.txt allows 4.56)
    DiffusionGemmaForBlockDiffusion = None

needs_oracle = pytest.mark.skipif(DiffusionGemmaForBlockDiffusion is None,
                                  reason="transformers < 5.11 has no DiffusionGemmaForBlockDiffusion")
# dlx follows transformers' eager attention and eager experts op for op (equal to the last bit on this CPU);
# transformers' own default (SDPA attention, grouped_mm experts) differs from its eager path by up to ~1.2e-4
# on these logits (|logits| up to ~10), so the stock model gets a looser bound.
EAGER_ATOL, STOCK_ATOL = 1e-5, 5e-4
WINDOW = TINY_TEXT["sliding_window"]
PROMPT_LENGTHS = (5, 2 * WINDOW + 3)  # within the sliding window, and past it


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory) -> str:
    if DiffusionGemmaForBlockDiffusion is None:
        pytest.skip("transformers < 5.11 has no DiffusionGemmaForBlockDiffusion")
    return write_tiny_diffusion_gemma(str(tmp_path_factory.mktemp("gemma")), seed=0)


def eager_oracle(model_dir: str):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                           experts_implementation="eager").eval()


@pytest.fixture(scope="module")
def oracle(gemma_dir):
    return eager_oracle(gemma_dir)


@pytest.fixture(scope="module")
def stock(gemma_dir):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(gemma_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(gemma_dir):
    return load_diffusion_gemma(gemma_dir, dtype="float32")


def random_inputs(prompt_length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vocab = TINY_TEXT["vocab_size"]
    return (torch.randint(0, vocab, (prompt_length,), generator=gen),
            torch.randint(0, vocab, (TINY_CANVAS,), generator=gen),
            3.0 * torch.randn(TINY_CANVAS, vocab, generator=gen))


@needs_oracle
@pytest.mark.parametrize("prompt_length", PROMPT_LENGTHS)
def test_encoder_matches_transformers(model, oracle, prompt_length):
    prompt, _, _ = random_inputs(prompt_length, seed=prompt_length)
    cache = DynamicCache(config=oracle.config.get_text_config(decoder=True))
    with torch.no_grad():
        expected = oracle.model.encoder(input_ids=prompt[None], cache=cache).last_hidden_state[0]
        encoded = model.encode(prompt)
    torch.testing.assert_close(encoded.hidden, expected, rtol=0, atol=EAGER_ATOL)
    for i, layer in enumerate(cache.layers):
        kept = layer.keys.shape[2]  # a sliding layer's cache holds the last window - 1 positions
        assert kept == (min(prompt_length, WINDOW - 1) if model.config.layers[i].sliding else prompt_length)
        torch.testing.assert_close(encoded.keys[i][-kept:], layer.keys[0].transpose(0, 1), rtol=0, atol=EAGER_ATOL)
        torch.testing.assert_close(encoded.values[i][-kept:], layer.values[0].transpose(0, 1),
                                   rtol=0, atol=EAGER_ATOL)


@needs_oracle
@pytest.mark.parametrize("self_conditioned", [False, True])
@pytest.mark.parametrize("prompt_length", PROMPT_LENGTHS)
def test_decoder_step_matches_transformers(model, oracle, stock, prompt_length, self_conditioned):
    prompt, canvas, previous_logits = random_inputs(prompt_length, seed=prompt_length + 100)
    previous_logits = previous_logits if self_conditioned else None
    inputs = dict(input_ids=prompt[None], decoder_input_ids=canvas[None],
                  self_conditioning_logits=None if previous_logits is None else previous_logits[None])
    with torch.no_grad():
        expected = oracle(**inputs).logits[0]
        logits = model.decode_step(canvas, model.encode(prompt), previous_logits)
        stock_logits = stock(**inputs).logits[0]
    assert logits.dtype == torch.float32 and logits.shape == (TINY_CANVAS, TINY_TEXT["vocab_size"])
    torch.testing.assert_close(logits, expected, rtol=0, atol=EAGER_ATOL)
    torch.testing.assert_close(logits, stock_logits, rtol=0, atol=STOCK_ATOL)


@needs_oracle
def test_self_conditioning_changes_the_step(model):
    prompt, canvas, previous_logits = random_inputs(7, seed=3)
    with torch.no_grad():
        encoded = model.encode(prompt)
        plain, conditioned = model.decode_step(canvas, encoded), model.decode_step(canvas, encoded, previous_logits)
    assert (plain - conditioned).abs().max() > 0.1


def test_config_reads_the_released_spelling():
    """Checkpoints on the Hub spell full-attention shapes as global_head_dim / num_global_key_value_heads."""
    cfg = DiffusionGemmaConfig.from_hf({"model_type": "diffusion_gemma", "canvas_length": TINY_CANVAS,
                                        "text_config": dict(TINY_TEXT)})
    full = [spec for spec in cfg.layers if not spec.sliding]
    sliding = [spec for spec in cfg.layers if spec.sliding]
    assert [spec.sliding for spec in cfg.layers] == [True, False, True, False]
    assert {(s.head_dim, s.num_kv_heads, s.rope_type) for s in full} == {(32, 1, "proportional")}
    assert {(s.head_dim, s.num_kv_heads, s.rope_type) for s in sliding} == {(16, 2, "default")}
    assert cfg.final_logit_softcapping == 30.0 and cfg.canvas_length == TINY_CANVAS and cfg.sliding_window == WINDOW


@needs_oracle
def test_config_reads_transformers_spelling_the_same(gemma_dir):
    with open(os.path.join(gemma_dir, "config.json")) as f:
        saved = json.load(f)
    assert "per_layer_config" in saved["text_config"]
    released = DiffusionGemmaConfig.from_hf({"canvas_length": TINY_CANVAS, "text_config": dict(TINY_TEXT)})
    assert DiffusionGemmaConfig.from_hf(saved).layers == released.layers


@pytest.mark.parametrize("change, message", [
    ({"text_config": {**TINY_TEXT, "use_bidirectional_attention": "all"}}, "bidirectional encoder"),
    ({"tie_word_embeddings": False}, "separate encoder and decoder weights"),
    ({"text_config": {**TINY_TEXT, "attention_bias": True}}, "separate encoder and decoder biases"),
    ({"text_config": {**TINY_TEXT, "num_experts": None}}, "'num_experts'"),
])
def test_unsupported_config_is_one_clear_error(change, message):
    with pytest.raises(ValueError, match=message):
        DiffusionGemmaConfig.from_hf({"text_config": dict(TINY_TEXT), **change})


@needs_oracle
def test_weight_map_covers_every_parameter(model):
    layout = checkpoint_layout(model.config)
    filled = {slot.param for slot in layout.values()}
    assert filled == {name for name, _ in model.named_parameters()}
    assert model.lm_head.weight is model.embed_tokens.weight


def rewritten_checkpoint(gemma_dir: str, out_dir: str, edit) -> str:
    """A copy of the checkpoint whose tensors `edit` (dict → dict) changed."""
    shutil.copytree(gemma_dir, out_dir)
    path = os.path.join(out_dir, "model.safetensors")
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})
    return out_dir


@needs_oracle
def test_encoder_spelling_of_tied_weights_loads_the_same(model, gemma_dir, tmp_path):
    def to_encoder_names(tensors):
        return {name.replace("model.decoder.layers.", "model.encoder.language_model.layers.")
                if not name.endswith("layer_scalar") else name: t for name, t in tensors.items()}
    other = load_diffusion_gemma(rewritten_checkpoint(gemma_dir, str(tmp_path / "enc"), to_encoder_names), "float32")
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters()):
        assert torch.equal(a, b), name


@needs_oracle
@pytest.mark.parametrize("stale_first", [True, False])
def test_decoder_spelling_wins_when_a_checkpoint_has_both(gemma_dir, stale_first):
    name = "model.decoder.layers.2.mlp.up_proj.weight"
    up = load_file(os.path.join(gemma_dir, "model.safetensors"))[name]
    stale = (name.replace("model.decoder.", "model.encoder.language_model."), torch.zeros_like(up))
    fresh = load_diffusion_gemma(gemma_dir, "float32")
    weights = WeightMap(fresh)
    for spelling, tensor in [stale, (name, up)] if stale_first else [(name, up), stale]:
        weights.load(spelling, tensor)
    assert torch.equal(fresh.layers[2].mlp.gate_up_proj.weight[TINY_TEXT["intermediate_size"]:], up)


@needs_oracle
def test_vision_tensors_are_skipped_and_said_once(gemma_dir, caplog):
    with caplog.at_level(logging.INFO, logger="dlx.models.diffusion_gemma_weights"):
        load_diffusion_gemma(gemma_dir, "float32")
    said = [r.getMessage() for r in caplog.records if "vision" in r.getMessage()]
    assert len(said) == 1 and "text only" in said[0]


@needs_oracle
@pytest.mark.parametrize("name", ["model.decoder.layers.1.self_attn.k_proj.weight",
                                  "model.encoder.language_model.layers.2.layer_scalar"])
def test_missing_tensor_is_named(gemma_dir, tmp_path, name):
    broken = rewritten_checkpoint(gemma_dir, str(tmp_path / "missing"),
                                  lambda tensors: {n: t for n, t in tensors.items() if n != name})
    with pytest.raises(ValueError, match=rf"tensor '{name}' is missing from the checkpoint"):
        load_diffusion_gemma(broken, "float32")


@needs_oracle
def test_misshaped_tensor_is_named(gemma_dir, tmp_path):
    name = "model.decoder.layers.0.router.per_expert_scale"
    broken = rewritten_checkpoint(gemma_dir, str(tmp_path / "shape"),
                                  lambda tensors: {**tensors, name: torch.ones(TINY_TEXT["num_experts"] + 1)})
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \[5\] but the config implies \[4\]"):
        load_diffusion_gemma(broken, "float32")


@needs_oracle
def test_unexpected_tensor_is_named(gemma_dir, tmp_path):
    name = "model.decoder.layers.4.input_layernorm.weight"  # one layer more than the config has
    broken = rewritten_checkpoint(gemma_dir, str(tmp_path / "extra"),
                                  lambda tensors: {**tensors, name: torch.ones(TINY_TEXT["hidden_size"])})
    with pytest.raises(ValueError, match=rf"unexpected tensor '{name}'"):
        load_diffusion_gemma(broken, "float32")


@needs_oracle
def test_tiny_factory_writes_a_diffusion_gemma_with_its_tokenizer(tmp_path):
    """`python -m dlx.models.tiny OUT --family diffusion_gemma`: transformers' layout plus the tiny tokenizer, whose
    EOS is the model's; dlx loads it, and start-up takes it with the family's canvas strategy."""
    import subprocess
    import sys

    from dlx.config import Config
    from dlx.models.tokenizer_build import EOS_TOKEN, token_id
    out = str(tmp_path / "gemma")
    subprocess.run([sys.executable, "-m", "dlx.models.tiny", out, "--family", "diffusion_gemma"], check=True,
                   capture_output=True)
    raw = json.load(open(os.path.join(out, "config.json")))
    vocab = json.load(open(os.path.join(out, "tokenizer.json")))["model"]["vocab"]
    assert raw["model_type"] == "diffusion_gemma"
    assert raw["text_config"]["vocab_size"] >= len(vocab) > 256
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == token_id(out, EOS_TOKEN)
    model = load_diffusion_gemma(out, dtype="float32")
    assert model.config.eos_token_ids == [token_id(out, EOS_TOKEN)]
    assert Config(model=out).finalize(cuda_available=False).decoding_strategy == "canvas"
