"""bench/forward.py's accounting on the CPU (the benchmark itself runs on a GPU): the roofline bytes count every
dense weight once and the experts a step touches, and a measured round reports steady steps and their experts."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from forward import measure, step_bytes  # noqa: E402

from dlx.config import Config  # noqa: E402
from dlx.engine.engine import LLMEngine  # noqa: E402
from dlx.models.moe import SparseMoE  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_dir):
    cfg = Config(model=tiny_dir, load_format="dummy", device="cpu", dtype="float32", max_model_len=256,
                 max_num_reqs=4, num_kv_pages=64).finalize(cuda_available=False)
    return LLMEngine(cfg)


def test_step_bytes_counts_touched_experts_only(engine):
    model = engine.model
    moe = [m for m in model.modules() if isinstance(m, SparseMoE)]
    experts = moe[0].w13.shape[0]
    expert_bytes = sum(m.w13.numel() * m.w13.element_size() + m.w2.numel() * m.w2.element_size() for m in moe)
    all_bytes = step_bytes(model, [experts] * len(moe), tokens=0, kv_tokens=0, logit_rows=0)
    one_bytes = step_bytes(model, [1] * len(moe), tokens=0, kv_tokens=0, logit_rows=0)
    assert all_bytes - one_bytes == expert_bytes * (experts - 1) // experts
    attn = model.attention_layers()[0]
    per_kv_token = 2 * len(model.attention_layers()) * attn.num_kv_heads * attn.head_dim * 4
    assert step_bytes(model, [1] * len(moe), 0, kv_tokens=10, logit_rows=0) - one_bytes == 10 * per_kv_token
    assert step_bytes(model, [1] * len(moe), 0, 0, logit_rows=3) - one_bytes == 2 * 3 * model.config.vocab_size * 4


def test_measure_reports_steady_steps(engine):
    result = measure(engine, batch=2, context=64, rounds=1, seed=0)
    experts = [m for m in engine.model.modules() if isinstance(m, SparseMoE)]
    assert result["steps"] >= 20 and result["step_ms"] > 0 and result["bytes"] > 0
    assert len(result["distinct"]) == len(experts) and all(1 <= d <= experts[0].w13.shape[0]
                                                          for d in result["distinct"])
    assert engine.kv.num_used == 0 and not engine.has_work()


def test_step_profile_groups_kernels_into_families():
    from step_profile import OTHER, family_table, kernel_family
    assert kernel_family("_paged_attention_kernel") == "attention"
    assert kernel_family("_qk_norm_rotary_rows") == "q/k norms + rotary"
    assert kernel_family("_rms_norm_rows") == "norms"
    assert kernel_family("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64") == "dense GEMMs (cuBLAS)"
    assert kernel_family("void at::native::vectorized_elementwise_kernel<4, float>") == OTHER
    rows = family_table([("_gate_up_kernel", 30.0), ("_gate_up_kernel", 10.0), ("copy", 60.0)], steps=2)
    assert rows == [(OTHER, 30.0, 0.5, 0.6), ("MoE gate/up (grouped GEMM + SwiGLU)", 20.0, 1.0, 0.4)]
    assert kernel_family("_place_kernel") == kernel_family("_count_kernel") == "MoE routing (sort, search, align)"


def test_step_profile_splits_idle_time_into_launch_spacing_and_host_gaps():
    from step_profile import gaps_us
    kernels = [("a", 0.0, 10.0), ("b", 12.0, 20.0), ("c", 15.0, 30.0), ("d", 130.0, 140.0), ("e", 141.0, 150.0)]
    assert gaps_us(kernels) == (3.0, 100.0)   # 2 + 1 µs between kernels, 100 µs while the host worked
    assert gaps_us([]) == (0.0, 0.0)
