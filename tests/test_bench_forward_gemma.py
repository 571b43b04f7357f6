"""bench/forward_gemma.py on the CPU (the benchmark itself runs on a GPU): the roofline bytes of a denoising step
(weights once, touched experts, the prompt's kept KV per layer, the logits) and a measured round of a tiny shape."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from forward_gemma import gemma_engine, measure, step_bytes  # noqa: E402


@pytest.fixture(scope="module")
def engine(gemma_shape_dir):
    return gemma_engine(gemma_shape_dir, max_batch=2, longest_prompt=40, device="cpu", dtype="float32")


def test_step_bytes_counts_touched_experts_kept_kv_and_logits(engine):
    model = engine.model
    cfg = model.config
    layers = cfg.num_hidden_layers
    experts = sum(layer.moe.w13.numel() + layer.moe.w2.numel() for layer in model.layers) * 4
    every = step_bytes(model, [cfg.num_experts] * layers, prompt_len=0, batch=0)
    one = step_bytes(model, [1] * layers, prompt_len=0, batch=0)
    assert every - one == experts * (cfg.num_experts - 1) // cfg.num_experts
    assert every == sum(p.numel() for p in model.parameters()) * 4   # the tied head is counted once
    # A prompt of 5 (under the window of 8): every layer keeps all 5 keys and values; of 20 a sliding layer 7.
    per_token = {spec.sliding: 2 * spec.num_kv_heads * spec.head_dim * 4 for spec in cfg.layers}
    logits = 2 * cfg.canvas_length * cfg.vocab_size * 4
    sliding, full = (sum(s.sliding == kind for s in cfg.layers) for kind in (True, False))

    def kv(kept_sliding: int, kept_full: int) -> int:
        return sliding * kept_sliding * per_token[True] + full * kept_full * per_token[False]
    assert step_bytes(model, [1] * layers, prompt_len=5, batch=1) - one == kv(5, 5) + logits
    assert step_bytes(model, [1] * layers, prompt_len=20, batch=3) - one == 3 * (kv(7, 20) + logits)


def test_measure_reports_steady_denoising_steps(engine):
    result = measure(engine, batch=2, context=40, rounds=1, steps=4, seed=0)
    cfg = engine.model.config
    # 4 steps a canvas: the first runs the encoder, one steady step counts the experts, two are timed.
    assert result["steps"] == 2 and result["step_ms"] > 0 and result["first_ms"] > 0
    assert len(result["distinct"]) == cfg.num_hidden_layers
    assert all(cfg.top_k_experts <= d <= cfg.num_experts for d in result["distinct"]) and result["worst_load"] >= 1
    assert result["bytes"] == step_bytes(engine.model, result["distinct"], 40, 2)
    assert not engine.has_work() and engine.kv.num_used == 0
