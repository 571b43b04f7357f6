"""Triton paged block-diffusion attention against attention_reference: ragged batches, pages, GQA, split-KV.
On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1 is set here before Triton is imported)."""
import pytest
import torch

from triton_support import DEVICE, import_triton

triton = import_triton()

from dlx.kernels import attention_plan, attention_triton, device  # noqa: E402  (must follow the interpreter set-up)
from dlx.kernels.attention import AttentionMetadata, attention_reference, paged_attention  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def make_case(query_lens: list[int], context_lens: list[int], heads: int, kv_heads: int, head_dim: int,
              block_size: int, page_size: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random q/k/v and caches; each request's pages are scattered over a shuffled pool (never contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    rows = sum(query_lens)
    pages_per_request = [-(-ctx // page_size) for ctx in context_lens]
    num_pages = sum(pages_per_request) + 3
    pool = torch.randperm(num_pages, generator=gen)
    table = torch.full((len(query_lens), max(pages_per_request + [1]) + 2), -1, dtype=torch.int32)
    used = 0
    for r, count in enumerate(pages_per_request):
        table[r, :count] = pool[used:used + count].int()
        used += count

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)
    q, k, v = rand(rows, heads, head_dim), rand(rows, kv_heads, head_dim), rand(rows, kv_heads, head_dim)
    k_cache, v_cache = rand(num_pages, page_size, kv_heads, head_dim), rand(num_pages, page_size, kv_heads, head_dim)
    positions = torch.cat([torch.arange(ctx, ctx + n) for n, ctx in zip(query_lens, context_lens)]).to(DEVICE)
    cu_seqlens = torch.tensor([0] + query_lens).cumsum(0).to(DEVICE)
    meta = AttentionMetadata(cu_seqlens_q=cu_seqlens, context_lens=torch.tensor(context_lens).to(DEVICE),
                             page_tables=table.to(DEVICE), slot_mapping=None, block_size=block_size,
                             query_lens=list(query_lens), context_lens_host=list(context_lens))
    return (q, k, v, positions, k_cache, v_cache, meta, head_dim ** -0.5)


def assert_matches_reference(case, rows: int | None = None, **kwargs) -> torch.Tensor:
    expected = attention_reference(*case)
    got = attention_triton.paged_attention_triton(*case, **kwargs)
    rows = sum(case[6].query_lens) if rows is None else rows
    tolerance = TOLERANCE[case[0].dtype]
    torch.testing.assert_close(got[:rows].float(), expected[:rows].float(), atol=tolerance, rtol=tolerance)
    return got


@pytest.mark.parametrize("block_size", [4, 8, 32, 64])
@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (8, 2), (8, 1)])
def test_ragged_paged_batch_fp32(block_size, heads, kv_heads):
    # Query lengths span several blocks and end mid-block; contexts are 0 or not page multiples.
    page_size = max(8, block_size)
    query_lens = [2 * block_size + 3, 5, block_size + 1]
    context_lens = [0, 3 * page_size + 5, page_size - 1]
    case = make_case(query_lens, context_lens, heads, kv_heads, 16, block_size, page_size, seed=block_size + heads)
    for splits in (1, 3):
        assert_matches_reference(case, num_splits=splits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (8, 1), (6, 2)])
def test_ragged_paged_batch_16bit(heads, kv_heads, dtype):
    # (6, 2) is a group of 3: padded to 4 rows per query inside the tile.
    case = make_case([19, 8, 1, 12], [13, 0, 40, 64], heads, kv_heads, 32, 8, 16, dtype, seed=heads)
    assert_matches_reference(case)


@pytest.mark.parametrize("seed", range(8))
def test_random_batches(seed):
    gen = torch.Generator().manual_seed(seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]
    block_size = pick([4, 8, 32, 64])
    heads, kv_heads = pick([(2, 2), (8, 2), (8, 1)])
    num_requests = int(torch.randint(1, 5, (1,), generator=gen))
    query_lens = torch.randint(1, min(3 * block_size, 72), (num_requests,), generator=gen).tolist()
    context_lens = torch.randint(0, 150, (num_requests,), generator=gen).tolist()
    case = make_case(query_lens, context_lens, heads, kv_heads, 16, block_size, block_size * pick([1, 2]), seed=seed)
    for splits in (None, 1, pick([2, 3, 7])):
        assert_matches_reference(case, num_splits=splits)


@pytest.mark.parametrize("head_dim", [8, 16, 48, 64, 96, 128])   # 8, 48, 96 are padded inside the kernel
def test_head_dims(head_dim):
    case = make_case([9, 17], [21, 7], 8, 2, head_dim, 4, 8, seed=head_dim)
    assert_matches_reference(case)
    assert_matches_reference(case, num_splits=3)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 12])   # 12: past FEW_SPLITS, the wide combine variant
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_forced(num_splits, dtype):
    # Contexts of very different length: some splits of the short request own no keys at all.
    case = make_case([6, 11, 3], [301, 17, 0], 8, 2, 16, 4, 16, dtype, seed=num_splits)
    assert_matches_reference(case, num_splits=num_splits)


def test_split_kv_chosen_automatically():
    # One request, two KV heads: 2 programs on a 132-SM card; 700 cached keys give 2 splits of >= 256.
    case = make_case([20], [700], 8, 2, 16, 4, 16, seed=11)
    assert attention_plan.launch_plan(case[0], 2, case[6], cached=True)[2] == 2
    assert_matches_reference(case)


def test_single_request_without_cache():
    q, k, v, positions, _, _, _, scale = make_case([37], [0], 4, 2, 16, 8, 16)
    meta = AttentionMetadata.single(37, block_size=8, device=DEVICE)
    assert_matches_reference((q, k, v, positions, None, None, meta, scale))


def test_empty_request_in_batch_and_host_values_cached():
    case = make_case([7, 0, 9], [12, 30, 0], 4, 1, 16, 4, 8)
    assert_matches_reference(case)
    assert case[6].kernel_cache["host_summary"] == (9, 30, 16)


def test_padding_rows_are_invisible():
    # Request 0 gets 3 tail rows at position -1 and the batch 4 trailing rows past cu_seqlens; all padding
    # holds NaN, which must not reach the real rows.
    q, k, v, positions, k_cache, v_cache, meta, scale = make_case([10, 6], [9, 20], 8, 2, 16, 4, 8, seed=3)
    expected = attention_reference(q, k, v, positions, k_cache, v_cache, meta, scale)
    pad_inside, pad_after = 3, 4

    def padded(tensor, fill):
        parts = [tensor[:10], tensor.new_full((pad_inside, *tensor.shape[1:]), fill), tensor[10:],
                 tensor.new_full((pad_after, *tensor.shape[1:]), fill)]
        return torch.cat(parts)
    meta_padded = AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, 13, 19], device=DEVICE), context_lens=meta.context_lens,
        page_tables=meta.page_tables, slot_mapping=None, block_size=4, query_lens=[13, 6], context_lens_host=[9, 20])
    for splits in (1, 3):
        got = attention_triton.paged_attention_triton(
            padded(q, float("nan")), padded(k, float("nan")), padded(v, float("nan")), padded(positions, -1),
            k_cache, v_cache, meta_padded, scale, num_splits=splits)
        real = torch.cat([got[:10], got[13:19]])
        torch.testing.assert_close(real, expected, atol=1e-4, rtol=1e-4)


def test_split_heuristic():
    choose = attention_plan.choose_num_splits
    assert choose(num_programs=4, max_context_len=8192, num_sms=132) == 32
    assert choose(num_programs=32, max_context_len=8192, num_sms=132) == 4
    assert choose(num_programs=4, max_context_len=1024, num_sms=132) == 4
    assert choose(num_programs=67, max_context_len=8192, num_sms=132) == 1
    assert choose(num_programs=256, max_context_len=8192, num_sms=132) == 1
    assert choose(num_programs=4, max_context_len=300, num_sms=132) == 1


def test_dispatcher():
    case = make_case([5, 9], [4, 0], 4, 2, 16, 4, 8)
    torch.testing.assert_close(paged_attention(*case, impl="naive"), attention_reference(*case))
    got = paged_attention(*case, impl="triton_grouped")
    torch.testing.assert_close(got, attention_reference(*case), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown attention impl"):
        paged_attention(*case, impl="flash")


@pytest.mark.gpu
@pytest.mark.parametrize("num_requests,context_len", [(1, 8192), (1, 1024), (8, 4096), (64, 1024), (64, 8192)])
def test_llada2_mini_shapes_bf16(num_requests, context_len):
    # LLaDA2.0-mini: 16 query heads, 4 KV heads, head dim 128; page 32, block 32, 32 new tokens per request.
    gen = torch.Generator().manual_seed(num_requests)
    others = torch.randint(0, context_len // 32 + 1, (num_requests - 1,), generator=gen).mul(32).tolist()
    contexts = [context_len] + others
    case = make_case([32] * num_requests, contexts, 16, 4, 128, 32, 32, torch.bfloat16, seed=num_requests)
    for splits in (None, 1):
        assert_matches_reference(case, num_splits=splits)


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("splits", [1, 3])
def test_page_prefetch_on_and_off_match_reference(splits, prefetch):
    """The PREFETCH_PAGES launch option (page numbers of the next key tile loaded one tile ahead; on by
    default) and the plain loads it replaces: several tiles per split, scattered pages, contexts ending
    mid-page and mid-tile, one request without cache."""
    block_size, page_size = 8, 8
    case = make_case([9, 4, 17], [5 * page_size + 3, 0, 11 * page_size - 1], 8, 2, 16, block_size, page_size, seed=11)
    tile = {**attention_plan.tile_shape(4, 16, 17, torch.float32), "BLOCK_N": 16, "PREFETCH_PAGES": prefetch}
    assert_matches_reference(case, num_splits=splits, tile=tile)


def test_dependent_launch_needs_a_hopper_gpu():
    assert not device.overlaps_launches(torch.device("cpu"))


@pytest.mark.gpu
def test_combine_launched_early_matches_plain_launch(monkeypatch):
    """On sm_90 the combine is launched while the split kernel drains and waits for its partials in-kernel:
    the same bits as a plain launch, eagerly and through CUDA-graph replays."""
    case = make_case([32] * 8, [4096, 100, 2048, 31, 4000, 0, 1024, 777], 16, 4, 128, 32, 32, torch.bfloat16, seed=9)
    monkeypatch.setattr(attention_triton, "overlaps_launches", lambda dev: False)
    plain = assert_matches_reference(case, num_splits=4)
    monkeypatch.setattr(attention_triton, "overlaps_launches", device.overlaps_launches)
    early = attention_triton.paged_attention_triton(*case, num_splits=4)
    assert device.overlaps_launches(early.device) == (torch.cuda.get_device_capability()[0] >= 9)
    assert torch.equal(early, plain)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):   # warm-up off the default stream, as graph capture wants
        attention_triton.paged_attention_triton(*case, num_splits=4)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = attention_triton.paged_attention_triton(*case, num_splits=4)
    for _ in range(5):
        captured.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, plain)


@pytest.mark.gpu
def test_llada2_mini_ragged_queries_bf16():
    case = make_case([32, 64, 5, 96, 1], [8000, 0, 4096, 31, 2049], 16, 4, 128, 32, 32, torch.bfloat16, seed=7)
    for splits in (None, 1, 8):
        assert_matches_reference(case, num_splits=splits)


def test_tile_shape_uses_the_swept_launch_options():
    """LLaDA2.0-mini (group 4, head dim 128, 32-token blocks) in bf16: a full-height 128-row tile and the
    launch options bench/attention_sweep.py measured best on the H100; short tiles keep 4 warps."""
    shape = attention_plan.tile_shape(4, 128, 32, torch.bfloat16)
    assert shape["BLOCK_Q"] * 4 == 128 and shape["BLOCK_N"] == 64
    assert (shape["num_warps"], shape["num_stages"], shape["PREFETCH_PAGES"]) == (8, 3, True)
    assert attention_plan.tile_shape(4, 16, 4, torch.bfloat16)["num_warps"] == 4


def test_split_grids_use_half_height_tiles():
    """A split grid of full-height 16-bit tiles runs 64-row tiles on 4 warps (two programs an SM); short,
    fp32 and wide-head tiles keep their shape. The half-height launch matches the reference, with two query
    tiles for the 32-token request and one for the 20-token one."""
    full = attention_plan.tile_shape(4, 128, 32, torch.bfloat16)
    half = attention_plan.split_tile_shape(full, 4, 128)
    assert (half["BLOCK_Q"], half["num_warps"], half["num_stages"], half["BLOCK_N"]) == (16, 4, 3, 64)
    short = attention_plan.tile_shape(4, 128, 8, torch.bfloat16)
    assert attention_plan.split_tile_shape(short, 4, 128) == short
    assert attention_plan.split_tile_shape(full, 4, 256) == full
    fp32 = attention_plan.tile_shape(4, 128, 32, torch.float32)
    assert attention_plan.split_tile_shape(fp32, 4, 128) == fp32
    case = make_case([32, 20], [300, 70], 8, 2, 16, 32, 16, torch.bfloat16, seed=4)
    assert attention_plan.split_tile_shape(attention_plan.tile_shape(4, 16, 32, torch.bfloat16), 4, 16)["BLOCK_Q"] == 16
    assert_matches_reference(case, num_splits=3)


def test_launch_plan_is_made_once_per_forward(monkeypatch):
    """Every layer of a forward shares one plan (the first layer's); a caller that overrides a launch option
    changes its own copy only; another split count or layer shape gets its own plan."""
    case = make_case([32, 20], [300, 70], 8, 2, 16, 32, 16, torch.bfloat16, seed=4)
    q, meta = case[0], case[6]
    planned = []
    plan = attention_plan._plan
    monkeypatch.setattr(attention_plan, "_plan", lambda *args: planned.append(args) or plan(*args))
    first = attention_plan.launch_plan(q, 2, meta, True)
    first[0]["BLOCK_N"] = 1
    assert attention_plan.launch_plan(q, 2, meta, True) == plan(q, 2, meta, True, None)
    assert len(planned) == 1
    attention_plan.launch_plan(q, 2, meta, True, num_splits=1)
    attention_plan.launch_plan(q[:, :4], 1, meta, True)
    assert len(planned) == 3
    for _ in range(2):   # the kernel's own calls (two layers) reuse the first plan
        assert_matches_reference(case)
    assert len(planned) == 3
