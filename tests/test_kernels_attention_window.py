"""Sliding-window (window) and prefix-tail (prefix_window) visibility of paged attention: attention_reference
against a per-row masked softmax, then the Triton kernel (one pass and split-KV) against attention_reference."""
import dataclasses

import pytest
import torch

from test_kernels_attention import TOLERANCE, make_case
from triton_support import DEVICE, import_triton

triton = import_triton()

from dlx.kernels import attention_plan, attention_triton  # noqa: E402  (must follow the interpreter set-up)
from dlx.kernels.attention import AttentionMetadata, attention_reference  # noqa: E402


def windowed_case(query_lens, context_lens, heads, kv_heads, block_size, window=None, prefix_window=None,
                  dtype=torch.float32, page_size=8, seed=0):
    case = make_case(query_lens, context_lens, heads, kv_heads, 16, block_size, page_size, dtype, seed=seed)
    meta = dataclasses.replace(case[6], window=window, prefix_window=prefix_window, kernel_cache={})
    return (*case[:6], meta, case[7])


def masked_softmax_oracle(q, k, v, positions, k_cache, v_cache, meta, scale):
    """Row by row and head by head: list the keys the rules let a query see, then a plain softmax over them."""
    out = torch.zeros(q.shape, dtype=torch.float64)
    group, page_size, start = q.shape[1] // k.shape[1], k_cache.shape[1], 0
    for r, (n, ctx) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
        table = meta.page_tables[r].tolist()
        keys = [k_cache[table[j // page_size], j % page_size] for j in range(ctx)] + list(k[start:start + n])
        values = [v_cache[table[j // page_size], j % page_size] for j in range(ctx)] + list(v[start:start + n])
        key_pos = list(range(ctx)) + positions[start:start + n].tolist()
        for i in range(n):
            q_pos = int(positions[start + i])
            seen = []
            for j, k_pos in enumerate(key_pos):
                cached = j < ctx
                ok = cached or k_pos // meta.block_size <= q_pos // meta.block_size
                ok = ok and (meta.window is None or k_pos > q_pos - meta.window)
                ok = ok and (meta.prefix_window is None or not cached or k_pos >= ctx - meta.prefix_window)
                if ok:
                    seen.append(j)
            keys_i = torch.stack([keys[j] for j in seen]).double()
            values_i = torch.stack([values[j] for j in seen]).double()
            for h in range(q.shape[1]):
                probs = torch.softmax(keys_i[:, h // group] @ q[start + i, h].double() * scale, dim=0)
                out[start + i, h] = probs @ values_i[:, h // group]
        start += n
    return out


@pytest.mark.parametrize("window,prefix_window,block_size", [(5, None, 1), (3, None, 4), (None, 6, 16),
                                                             (None, 0, 16), (4, 2, 2)])
def test_reference_matches_masked_softmax_oracle(window, prefix_window, block_size):
    case = windowed_case([7, 5, 12], [0, 3, 21], 4, 2, block_size, window, prefix_window, seed=block_size)
    expected = masked_softmax_oracle(*case)
    torch.testing.assert_close(attention_reference(*case).double(), expected, atol=1e-5, rtol=1e-5)


def assert_triton_matches(case, **kwargs):
    expected = attention_reference(*case)
    got = attention_triton.paged_attention_triton(*case, **kwargs)
    tolerance = TOLERANCE[case[0].dtype]
    torch.testing.assert_close(got.float(), expected.float(), atol=tolerance, rtol=tolerance)


# Contexts: none, shorter than the window, longer (several pages and key tiles).
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (4, 1)])
@pytest.mark.parametrize("window", [1, 6])
def test_sliding_window_causal(window, heads, kv_heads):
    case = windowed_case([9, 5, 13], [0, 3, 45], heads, kv_heads, 1, window=window, seed=window + heads)
    for splits in (1, 3):
        assert_triton_matches(case, num_splits=splits)


def test_sliding_window_with_blocks_and_small_tiles():
    """Block size 4 on top of the window; 4-query tiles so later tiles start their cached scan past the
    window's lower bound or past the whole context (every split then empty), and in-flight keys skipped."""
    case = windowed_case([14, 6], [30, 2], 4, 2, 4, window=7, page_size=4, seed=5)
    tile = {**attention_plan.tile_shape(2, 16, 14, torch.float32), "BLOCK_Q": 4, "BLOCK_N": 16}
    for splits in (1, 3):
        assert_triton_matches(case, num_splits=splits, tile=tile)


@pytest.mark.parametrize("prefix_window", [0, 4, 19])
def test_prefix_tail_bidirectional_canvas(prefix_window):
    # The decoder's canvas is one block: bidirectional among itself; only the prefix's tail is seen.
    canvas = 12
    case = windowed_case([canvas] * 3, [0, 3, 37], 4, 2, canvas, prefix_window=prefix_window, seed=prefix_window)
    for splits in (1, 3):
        assert_triton_matches(case, num_splits=splits)


def test_window_bf16_gqa_split():
    case = windowed_case([8, 16], [50, 7], 8, 2, 1, window=9, dtype=torch.bfloat16, page_size=16, seed=2)
    assert_triton_matches(case, num_splits=3)
    case = windowed_case([16, 16], [50, 7], 8, 2, 16, prefix_window=8, dtype=torch.bfloat16, page_size=16)
    assert_triton_matches(case, num_splits=3)


@pytest.mark.parametrize("splits", [1, 3])
def test_keys_below_the_window_are_never_read(splits):
    """Cached K/V below every query's window (or before the prefix tail) hold NaN: skipped, not masked, they
    never reach the output (a masked NaN value would: 0 * NaN)."""
    for window, prefix_window in ((6, None), (None, 5)):
        case = windowed_case([4, 3], [40, 29], 4, 2, 1 if window else 16, window, prefix_window, seed=splits)
        q, k, v, positions, k_cache, v_cache, meta, scale = case
        expected = attention_reference(*case)
        poisoned_k, poisoned_v = k_cache.clone(), v_cache.clone()
        for r, ctx in enumerate(meta.context_lens_host):
            lowest = ctx - (window - 1 if window else prefix_window)
            for j in range(lowest):
                page, slot = int(meta.page_tables[r, j // k_cache.shape[1]]), j % k_cache.shape[1]
                poisoned_k[page, slot] = poisoned_v[page, slot] = float("nan")
        got = attention_triton.paged_attention_triton(q, k, v, positions, poisoned_k, poisoned_v, meta, scale,
                                                      num_splits=splits)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_padding_rows_with_window():
    q, k, v, positions, k_cache, v_cache, meta, scale = windowed_case([10, 6], [9, 20], 4, 2, 1, window=5, seed=3)
    expected = attention_reference(q, k, v, positions, k_cache, v_cache, meta, scale)

    def padded(tensor, fill):
        pad = tensor.new_full((3, *tensor.shape[1:]), fill)
        return torch.cat([tensor[:10], pad, tensor[10:], pad])
    meta_padded = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 13, 19], device=DEVICE), context_lens=meta.context_lens,
        page_tables=meta.page_tables, slot_mapping=None, block_size=1, query_lens=[13, 6],
        context_lens_host=[9, 20], pad_rows=True, window=5)
    for splits in (1, 3):
        got = attention_triton.paged_attention_triton(
            padded(q, float("nan")), padded(k, float("nan")), padded(v, float("nan")), padded(positions, -1),
            k_cache, v_cache, meta_padded, scale, num_splits=splits)
        torch.testing.assert_close(torch.cat([got[:10], got[13:19]]), expected, atol=1e-4, rtol=1e-4)
        assert not got[19:].any()


def test_no_cache_window():
    q, k, v, positions, _, _, _, scale = make_case([21], [0], 4, 2, 16, 1, 8)
    meta = dataclasses.replace(AttentionMetadata.single(21, block_size=1, device=DEVICE), window=4)
    assert_triton_matches((q, k, v, positions, None, None, meta, scale))


def test_window_bounds_the_split_count():
    # 700 cached keys would take 2 splits (test_split_kv_chosen_automatically); a query sees at most 100 of them.
    case = windowed_case([20], [700], 8, 2, 1, seed=11)
    assert attention_plan.launch_plan(case[0], 2, case[6], cached=True)[2] == 2
    for field in ("window", "prefix_window"):
        meta = dataclasses.replace(case[6], **{field: 100}, kernel_cache={})
        assert attention_plan.launch_plan(case[0], 2, meta, cached=True)[2] == 1
