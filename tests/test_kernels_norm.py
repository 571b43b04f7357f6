"""Fused residual add + RMSNorm (Triton) against rms_norm_reference and the RMSNorm module's original formula.
On CPU the kernel runs in Triton's interpreter, its fp32 → bf16 casts rounded to nearest even as a GPU's are."""
import numpy as np
import pytest
import torch

from triton_support import DEVICE, ON_GPU, import_triton

triton = import_triton()

from dlx.kernels import norm  # noqa: E402  (must follow the interpreter set-up)
from dlx.models.layers import RMSNorm  # noqa: E402

EPS = 1e-6


def round_bf16_like_gpu():
    """Triton's interpreter (3.6 to 3.9) casts fp32 to bf16 by truncation; GPUs and PyTorch round to nearest even.
    Patch the interpreter to round, so the kernels' bf16 results can be held to PyTorch's bit for bit where
    the arithmetic agrees. Returns the undo."""
    import triton.language as tl
    from triton.runtime import interpreter
    builder = interpreter.InterpreterBuilder
    truncating = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.array(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(rounded.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return truncating(self, src, dst_type)
    builder.cast_impl = cast_impl
    return lambda: setattr(builder, "cast_impl", truncating)


@pytest.fixture(scope="module", autouse=True)
def gpu_like_rounding():
    """Module-scoped (other modules import it): other test modules keep the interpreter as it was."""
    undo = None if ON_GPU else round_bf16_like_gpu()
    yield
    if undo is not None:
        undo()


def assert_close_to_reference(got: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32: a few ulps (only the order of the sum of squares and rsqrt's rounding differ). bf16: the same fp32
    difference can flip a rounding, so at most one bf16 ulp of the normalised value (2**-7 relative, then
    scaled by the weight and rounded once more), and nearly every element bit-equal."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(got.float(), expected.float(), rtol=2 ** -6, atol=1e-5)
        assert (got == expected).float().mean() >= 0.98


def make_rows(rows: int, hidden: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(rows, hidden, generator=gen)).to(dtype).to(DEVICE)
    residual = torch.randn(rows, hidden, generator=gen).to(dtype).to(DEVICE)
    weight = (1 + 0.1 * torch.randn(hidden, generator=gen)).to(dtype).to(DEVICE)
    return x, residual, weight


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 33])
@pytest.mark.parametrize("hidden", [48, 384, 2048])   # 48 and 384 are padded to 64 and 512 inside the kernel
def test_matches_reference(hidden, rows, dtype, with_residual):
    x, residual, weight = make_rows(rows, hidden, dtype, seed=hidden + rows)
    residual = residual if with_residual else None
    expected = norm.rms_norm_reference(x, weight, EPS, residual)
    got = norm.rms_norm_triton(x, weight, EPS, residual)
    if with_residual:
        assert torch.equal(got[1], expected[1])   # one rounding of one add: bit-exact
        got, expected = got[0], expected[0]
    assert_close_to_reference(got, expected)


def test_strided_rows_and_heads():
    # Rows sliced out of wider rows (kept as a view), and a [N, heads, D] view of a fused QKV (per head).
    x, residual, weight = make_rows(9, 96, torch.float32, seed=1)
    wide_x, wide_r = x[:, :48], residual[:, 48:]
    got_out, got_sum = norm.rms_norm_triton(wide_x, weight[:48], EPS, wide_r)
    expected_out, expected_sum = norm.rms_norm_reference(wide_x, weight[:48], EPS, wide_r)
    assert torch.equal(got_sum, expected_sum)
    assert_close_to_reference(got_out, expected_out)
    qkv = x.view(9, 6, 16)
    heads = qkv[:, 1:4]
    expected = norm.rms_norm_reference(heads, weight[:16], EPS)
    assert_close_to_reference(norm.rms_norm_triton(heads, weight[:16], EPS), expected)


def test_mixed_weight_dtype_promotes_like_torch():
    # An fp32 weight on bf16 activations: `weight * x.to(bf16)` promotes to fp32; the kernel output does too.
    x, _, weight = make_rows(5, 64, torch.bfloat16, seed=2)
    got = norm.rms_norm_triton(x, weight.float(), EPS)
    assert got.dtype == torch.float32
    assert_close_to_reference(got, norm.rms_norm_reference(x, weight.float(), EPS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_naive_is_the_original_formula(dtype):
    """The naive path is bit-identical to the module's formula before the kernels existed."""
    x, residual, weight = make_rows(11, 48, dtype, seed=3)
    module = RMSNorm(48, EPS).to(DEVICE)
    module.weight.data = weight

    def original(t):
        tf = t.float()
        tf = tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + EPS)
        return weight * tf.to(t.dtype)
    assert torch.equal(module(x), original(x))
    normed, summed = module(x, residual)
    assert torch.equal(summed, residual + x) and torch.equal(normed, original(residual + x))
    module.impl = "triton"
    normed_triton, summed_triton = module(x, residual)
    assert torch.equal(summed_triton, summed)
    assert_close_to_reference(normed_triton, normed)
    assert_close_to_reference(module(x), original(x))


def test_dispatch():
    x, residual, weight = make_rows(3, 32, torch.float32, seed=4)
    assert torch.equal(norm.rms_norm(x, weight, EPS), norm.rms_norm_reference(x, weight, EPS))
    assert_close_to_reference(norm.rms_norm(x, weight, EPS, impl="triton"), norm.rms_norm_reference(x, weight, EPS))
    with pytest.raises(ValueError, match="unknown norm impl"):
        norm.rms_norm(x, weight, EPS, impl="cuda")
    with pytest.raises(ValueError, match="does not match"):
        norm.rms_norm_triton(x, weight, EPS, residual.to(torch.bfloat16))
    empty = norm.rms_norm_triton(x[:0], weight, EPS, residual[:0])
    assert empty[0].shape == (0, 32) and empty[1].shape == (0, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [32, 256, 2048])
def test_llada2_mini_shapes_bf16(rows):
    # LLaDA2.0-mini: hidden 2048, eps 1e-6, bf16; the residual add of every decoder layer.
    x, residual, weight = make_rows(rows, 2048, torch.bfloat16, seed=rows)
    got_out, got_sum = norm.rms_norm_triton(x, weight, EPS, residual)
    expected_out, expected_sum = norm.rms_norm_reference(x, weight, EPS, residual)
    assert torch.equal(got_sum, expected_sum)
    assert_close_to_reference(got_out, expected_out)
    assert_close_to_reference(norm.rms_norm_triton(x, weight, EPS), norm.rms_norm_reference(x, weight, EPS))
