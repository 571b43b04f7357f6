"""The engine with every Triton kernel (attention, KV store, norms, rotary, sampling, MoE) gives the same
greedy tokens as the PyTorch path (fp32); on CPU the kernels run in Triton's interpreter, on a GPU compiled
(and also in bf16)."""
import pytest
import torch

from dlx.config import Config
from dlx.engine.engine import LLMEngine
from dlx.kernels import fused_impl
from dlx.params import SamplingParams
from dlx.models import load_model
from test_engine import mixed_prompts, run
from triton_support import DEVICE, ON_GPU, import_triton

import_triton()


def engine_with(tiny_dir, impl: str, dtype: str, model=None) -> LLMEngine:
    cfg = Config(model=tiny_dir, dtype=dtype, device=DEVICE, max_model_len=256, buffer_size=2,
                 num_kv_pages=64).finalize(cuda_available=ON_GPU)
    # The CPU fallback picks naive; the interpreter runs the kernels anyway. MoE follows attention.
    cfg.attn_impl, cfg.moe_impl = impl, fused_impl(impl)
    return LLMEngine(cfg, model=model)


def test_greedy_tokens_identical_naive_vs_triton_fp32(tiny_dir):
    """On the GPU the trained embedded model decodes 12 prompts: a random model's near-uniform logits turn
    last-bit differences of fused reductions (rsqrt, summation order) into different argmaxes (seen on the
    H100 after 32 tokens), while a trained model's decisions are the ones that must not move."""
    from dlx.config import EMBEDDED_MODEL_DIR
    model_dir = EMBEDDED_MODEL_DIR if ON_GPU else tiny_dir
    model = load_model(model_dir, "float32", DEVICE)
    count, max_tokens = (12, 48) if ON_GPU else (2, 12)
    prompts = [p for p in mixed_prompts(count, seed=31) if len(p) < 120][:count]
    if ON_GPU:
        prompts = held_out_prompts(count)
    # The trained model's answers end in EOS; what it writes past EOS is not a decision worth comparing.
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=not ON_GPU)
    naive = run(engine_with(model_dir, "naive", "float32", model), prompts, params)
    triton_run = run(engine_with(model_dir, "triton_grouped", "float32", model), prompts, params)
    assert [r.output for r in triton_run] == [r.output for r in naive]
    assert [r.nfe for r in triton_run] == [r.nfe for r in naive]


def held_out_prompts(count: int) -> list[list[int]]:
    """Questions the embedded model was not trained on, through its own tokenizer and chat-free."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import tiny_corpus
    from dlx.config import EMBEDDED_MODEL_DIR
    from transformers import AutoTokenizer   # the Python API's tokenizer: GPU machines need no web packages
    tok = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_DIR)
    kinds = ("add3", "sub3", "mul", "compare")
    return [tok.encode(q, add_special_tokens=False) for kind in kinds
            for q, _ in tiny_corpus.heldout_questions(kind, count)][::len(kinds)][:count]


@pytest.mark.gpu
def test_bf16_logits_agree_on_the_embedded_model():
    """bf16 on a trained model (a random one amplifies rounding through its sharp attention): the kernel
    path's logits agree with the PyTorch path to bf16 tolerance across 8 layers (the kernel multiplies
    probabilities by V in bf16, as flash attention does; the PyTorch path in fp32) and pick the same tokens."""
    from dlx.config import EMBEDDED_MODEL_DIR
    from dlx.kernels.attention import AttentionMetadata
    model = load_model(EMBEDDED_MODEL_DIR, "bfloat16", "cuda")
    ids = torch.arange(5, 90, device="cuda")
    meta = AttentionMetadata.single(len(ids), 32, "cuda")
    outs = {}
    for impl in ("naive", "triton_grouped"):
        model.set_kernels(impl, fused_impl(impl))
        outs[impl] = model.compute_logits(model(ids, torch.arange(len(ids), device="cuda"), meta))
    naive, fused = outs["naive"], outs["triton_grouped"]
    assert (naive - fused).abs().max() <= 0.1 * naive.abs().max()
    assert (naive.argmax(-1) == fused.argmax(-1)).float().mean() >= 0.95


@pytest.mark.gpu
def test_bf16_greedy_answer_independent_of_the_batch():
    """SPEC §5: greedy output does not depend on what else is in the batch. In bf16 with every kernel on the
    GPU, batch size changes launch plans (attention splits, MoE tiles, cuBLAS algorithms) and so low bits;
    the trained model's answers, which end in EOS, must not change."""
    from dlx.config import EMBEDDED_MODEL_DIR
    model = load_model(EMBEDDED_MODEL_DIR, "bfloat16", "cuda")
    engine = engine_with(EMBEDDED_MODEL_DIR, "triton_grouped", "bfloat16", model)
    prompts = held_out_prompts(12)   # 12 x ~3 pages of 32: no preemption in the 64-page pool
    params = SamplingParams(temperature=0, max_tokens=48)
    alone = [run(engine, [p], params)[0].output for p in prompts[:4]]
    crowd = run(engine, prompts, params)
    assert [r.output for r in crowd[:4]] == alone
