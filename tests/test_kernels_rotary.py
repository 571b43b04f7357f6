"""Fused qk RMSNorm + partial rotary (Triton) against qk_norm_rotary_reference on strided views of a fused QKV,
and model-level checks: the naive path is the original arithmetic, the Triton path gives the same logits (fp32)."""
import pytest
import torch

from test_kernels_norm import assert_close_to_reference as assert_norm_close, gpu_like_rounding  # noqa: F401
from triton_support import DEVICE, ON_GPU, import_triton

triton = import_triton()

from dlx.kernels import rotary  # noqa: E402  (must follow the interpreter set-up)
from dlx.kernels.attention import AttentionMetadata  # noqa: E402
from dlx.models import load_model  # noqa: E402
from dlx.models.layers import RotaryEmbedding  # noqa: E402

EPS, MAX_POSITIONS = 1e-6, 4096



def assert_close_to_reference(got: torch.Tensor, expected: torch.Tensor) -> None:
    """As the norm tests, except bf16 on the GPU. There the compiled kernel's last bf16 bit differs from
    PyTorch's separate ops for 12-28% of the rotated elements (H100, with and without the norm; the
    interpreter matches bit for bit), and x*cos - rot(x)*sin carries a one-ulp input difference into outputs
    near zero. So on the GPU: within one bf16 ulp of the largest value (measured: up to 0.0156 at ~4)."""
    if expected.dtype == torch.float32 or not ON_GPU:
        assert_norm_close(got, expected)
        return
    assert got.dtype == expected.dtype and got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -7,
                               atol=2 ** -7 * expected.float().abs().max().item())

def make_case(rows: int, q_heads: int, k_heads: int, head_dim: int, rotary_dim: int, dtype: torch.dtype,
              seed: int, norm: bool = True):
    """q, k, v as views of one fused QKV [rows, q + 2 kv heads, head_dim]; qk weights near 3 (sharp attention,
    as the tiny checkpoints have); positions unsorted, repeated, spread over the table."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(rows, q_heads + 2 * k_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    q, k, v = qkv.split([q_heads, k_heads, k_heads], dim=1)
    weights = [(3 + 0.3 * torch.randn(head_dim, generator=gen)).to(dtype).to(DEVICE) if norm else None
               for _ in range(2)]
    table = RotaryEmbedding(rotary_dim, 10000.0, MAX_POSITIONS).to(DEVICE)
    positions = torch.randint(0, MAX_POSITIONS, (rows,), generator=gen).to(DEVICE)
    return qkv, (q, k, *weights, table.cos, table.sin, positions, EPS)


SHAPES = [(8, 4, 48, 24),     # the embedded model: 48 and 24 are padded (halves of 12 → 16, rest 24 → 32)
          (4, 2, 16, 8),      # the test checkpoints
          (6, 2, 40, 40),     # rotary over the whole (non-power-of-two) head, groups of 3
          (16, 4, 128, 64)]   # LLaDA2.0-mini


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("q_heads,k_heads,head_dim,rotary_dim", SHAPES)
def test_in_place_matches_reference(q_heads, k_heads, head_dim, rotary_dim, rows, dtype, norm):
    # Tolerance: that of RMSNorm (test_kernels_norm); the rotary itself rounds exactly where PyTorch does.
    qkv, args = make_case(rows, q_heads, k_heads, head_dim, rotary_dim, dtype, seed=rows + head_dim, norm=norm)
    v_before = qkv[:, q_heads + k_heads:].clone()
    expected_q, expected_k = rotary.qk_norm_rotary_reference(*args)
    got_q, got_k = rotary.qk_norm_rotary_triton(*args)
    # Written into the fused buffer: the same views come back, V untouched.
    assert got_q.data_ptr() == qkv.data_ptr() and got_q.stride() == qkv.stride()
    assert got_k.data_ptr() == qkv[:, q_heads].data_ptr()
    assert torch.equal(qkv[:, q_heads + k_heads:], v_before)
    assert_close_to_reference(got_q, expected_q)
    assert_close_to_reference(got_k, expected_k)


@pytest.mark.parametrize("norm", [True, False])
def test_out_of_place_leaves_input(norm):
    qkv, args = make_case(13, 8, 4, 48, 24, torch.bfloat16, seed=5, norm=norm)
    before = qkv.clone()
    got_q, got_k = rotary.qk_norm_rotary_triton(*args, inplace=False)
    assert torch.equal(qkv, before) and got_q.is_contiguous() and got_k.is_contiguous()
    expected_q, expected_k = rotary.qk_norm_rotary_reference(*args)
    assert_close_to_reference(got_q, expected_q)
    assert_close_to_reference(got_k, expected_k)


def test_negative_positions_index_from_the_end():
    # Padding rows carry position -1: the table row is the last one, as cos[positions] picks.
    _, args = make_case(6, 4, 2, 16, 8, torch.float32, seed=6)
    positions = torch.tensor([-1, 0, 5, -1, MAX_POSITIONS - 1, 3], device=DEVICE)
    args = (*args[:6], positions, EPS)
    expected = rotary.qk_norm_rotary_reference(*args)
    got = rotary.qk_norm_rotary_triton(*args, inplace=False)
    for g, e in zip(got, expected):
        assert_close_to_reference(g, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_module_triton(dtype):
    qkv, (q, _, _, _, cos, sin, positions, _) = make_case(9, 8, 4, 48, 24, dtype, seed=7)
    module = RotaryEmbedding(24, 10000.0, MAX_POSITIONS).to(DEVICE)
    before = q.clone()
    expected = module(q, positions)
    module.impl = "triton"
    got = module(q, positions)
    assert torch.equal(q, before)   # the module never modifies its input
    assert_close_to_reference(got, expected)


def test_heads_per_program_and_validation():
    assert rotary.heads_per_program(16, 4, 128) == 4
    assert rotary.heads_per_program(8, 4, 64) == 4
    assert rotary.heads_per_program(6, 2, 64) == 2
    assert rotary.heads_per_program(5, 3, 64) == 1
    assert rotary.heads_per_program(16, 0, 1024) == 2   # tile cap
    _, args = make_case(3, 4, 2, 16, 8, torch.float32, seed=8)
    with pytest.raises(ValueError, match="unknown qk norm/rotary impl"):
        rotary.qk_norm_rotary(*args, impl="cuda")
    with pytest.raises(ValueError, match="activation dtype"):
        rotary.qk_norm_rotary_triton(*args[:2], args[2].to(torch.bfloat16), *args[3:])
    empty = rotary.qk_norm_rotary_triton(args[0][:0], args[1][:0], *args[2:6], args[6][:0], EPS)
    assert empty[0].shape == (0, 4, 16)


def forward_logits(model, ids: torch.Tensor, block: int = 8) -> torch.Tensor:
    positions = torch.arange(len(ids), device=ids.device)
    return model.compute_logits(model(ids, positions, AttentionMetadata.single(len(ids), block, ids.device)))


def original_forward(model, ids: torch.Tensor, block: int = 8) -> torch.Tensor:
    """The decoder loop as it was before the residual stream was carried: h = x + attn(norm1(x)), ..."""
    positions, meta = torch.arange(len(ids)), AttentionMetadata.single(len(ids), block)
    x = model.word_embeddings(ids)
    for layer in model.layers:
        h = x + layer.attention(layer.input_layernorm(x), positions, meta)
        x = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.compute_logits(model.norm(x))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_naive_model_is_bit_identical_to_the_original_loop(tiny_dir, dtype):
    model = load_model(tiny_dir, dtype)
    ids = torch.arange(10, 47)
    with torch.no_grad():
        assert torch.equal(forward_logits(model, ids), original_forward(model, ids))


@pytest.mark.skipif(ON_GPU, reason="the shared tiny model lives on the CPU; the GPU runs the embedded-model case")
def test_tiny_model_logits_naive_vs_triton_fp32(tiny_model):
    # fp32 through 3 layers, 4 heads of dim 16 (rotary 8): only summation order differs, ~1e-6 per op.
    ids = torch.arange(20, 61).to(DEVICE)
    try:
        with torch.no_grad():
            naive = forward_logits(tiny_model, ids)
            tiny_model.set_kernel_impl("triton")
            fused = forward_logits(tiny_model, ids)
    finally:
        tiny_model.set_kernel_impl("naive")
    torch.testing.assert_close(fused, naive, rtol=1e-4, atol=1e-4)
    assert all(m.impl == "naive" for m in tiny_model.modules() if hasattr(m, "impl"))
    assert all(a.attn_impl == "naive" for a in tiny_model.attention_layers())   # never touched


def test_embedded_model_logits_naive_vs_triton_fp32():
    # The trained dlx-tiny: 8 layers, 8 q / 4 kv heads of dim 48, rotary 24 (non-power-of-two tiles).
    from dlx.config import EMBEDDED_MODEL_DIR
    model = load_model(EMBEDDED_MODEL_DIR, "float32", DEVICE)
    ids = torch.arange(5, 29).to(DEVICE)
    with torch.no_grad():
        naive = forward_logits(model, ids, 32)
        model.set_kernel_impl("triton")
        fused = forward_logits(model, ids, 32)
    torch.testing.assert_close(fused, naive, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="unknown kernel impl"):
        model.set_kernel_impl("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [32, 256, 2048])
@pytest.mark.parametrize("norm", [True, False])
def test_llada2_mini_shapes_bf16(rows, norm):
    # LLaDA2.0-mini: 16 q / 4 kv heads, head_dim 128, rotary 64, eps 1e-6, bf16.
    qkv, args = make_case(rows, 16, 4, 128, 64, torch.bfloat16, seed=rows, norm=norm)
    expected_q, expected_k = rotary.qk_norm_rotary_reference(*args)
    got_q, got_k = rotary.qk_norm_rotary_triton(*args)
    assert got_q.data_ptr() == qkv.data_ptr()
    assert_close_to_reference(got_q, expected_q)
    assert_close_to_reference(got_k, expected_k)
