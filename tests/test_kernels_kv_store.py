"""Triton KV-cache store against store_kv_reference: scattered slots, skipped rows (-1), dtype casts.
On CPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1 is set here before Triton is imported)."""
import pytest
import torch

from triton_support import DEVICE, ON_GPU, import_triton

triton = import_triton()

from dlx.kernels import kv_store  # noqa: E402  (must follow the interpreter set-up)


def make_store_case(rows: int, kv_heads: int, head_dim: int, num_pages: int, page_size: int,
                    dtype: torch.dtype, cache_dtype: torch.dtype, seed: int = 0):
    """Fresh k/v as views of a fused QKV (strided rows, as the model produces them), random slots with
    every third row skipped."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(rows, 3 * kv_heads, head_dim, generator=gen).to(dtype).to(DEVICE)
    k, v = qkv[:, kv_heads:2 * kv_heads], qkv[:, 2 * kv_heads:]
    slots = torch.randperm(num_pages * page_size, generator=gen)[:rows]
    slots[::3] = -1
    cache = torch.randn(2, num_pages, page_size, kv_heads, head_dim, generator=gen).to(cache_dtype).to(DEVICE)
    return k, v, cache[0].clone(), cache[1].clone(), slots.to(DEVICE)


def run_both(case):
    k, v, k_cache, v_cache, slots = case
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    kv_store.store_kv_reference(k, v, expected_k, expected_v, slots)
    kv_store.store_kv_triton(k, v, k_cache, v_cache, slots)
    return (k_cache, v_cache), (expected_k, expected_v)


@pytest.mark.parametrize("kv_heads,head_dim", [(1, 16), (2, 64), (4, 128), (3, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_matches_reference(kv_heads, head_dim, dtype):
    got, expected = run_both(make_store_case(23, kv_heads, head_dim, 7, 8, dtype, dtype, seed=head_dim))
    # A copy: bit-exact, and rows with slot -1 leave the cache untouched.
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_store_casts_to_cache_dtype():
    got, expected = run_both(make_store_case(9, 2, 32, 4, 4, torch.float32, torch.bfloat16))
    # GPUs round fp32 -> bf16 to nearest like torch; Triton's interpreter (3.6 to 3.9) truncates.
    ulp = 0.0 if ON_GPU else 2.0 ** -7
    for cache, reference in zip(got, expected):
        torch.testing.assert_close(cache.float(), reference.float(), atol=0.0, rtol=ulp)


def test_all_rows_skipped_and_empty_batch():
    k, v, k_cache, v_cache, slots = make_store_case(5, 2, 16, 2, 4, torch.float32, torch.float32)
    before = k_cache.clone(), v_cache.clone()
    kv_store.store_kv_triton(k, v, k_cache, v_cache, torch.full_like(slots, -1))
    kv_store.store_kv_triton(k[:0], v[:0], k_cache, v_cache, slots[:0])
    assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])


def test_dispatcher():
    case = make_store_case(11, 2, 16, 3, 8, torch.float32, torch.float32)
    k, v, k_cache, v_cache, slots = case
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    kv_store.store_kv(k, v, expected_k, expected_v, slots, impl="naive")
    kv_store.store_kv(k, v, k_cache, v_cache, slots, impl="triton_grouped")
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    with pytest.raises(ValueError, match="unknown kv store impl"):
        kv_store.store_kv(k, v, k_cache, v_cache, slots, impl="cuda")


@pytest.mark.gpu
def test_llada2_mini_shapes_bf16():
    # 64 requests x 32 tokens, 4 KV heads of 128, page 32, a 1,000-page cache.
    got, expected = run_both(make_store_case(64 * 32, 4, 128, 1000, 32, torch.bfloat16, torch.bfloat16))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
