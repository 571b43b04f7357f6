"""Triton paged block-diffusion attention, grouped by KV head, with a split-KV (flash-decoding) variant.
One program serves every query head of a KV group, so each K/V tile it loads is read once per group."""
import torch
import triton
import triton.language as tl

from dlx.kernels.attention import AttentionMetadata
from dlx.kernels.attention_combine import NEG_BIG, combine_splits
from dlx.kernels.attention_plan import host_summary, launch_plan, padded_head_dim
from dlx.kernels.device import overlaps_launches

LOG2E = 1.4426950408889634
# What the last split's in-flight tile costs in cached key tiles (its loads depend on the positions load and
# are not pipelined: 3.5 us against 1.5-2 us a cached tile at 8 requests x 4k, docs/benchmarks.md).
IN_FLIGHT_TILE_COST = tl.constexpr(2)
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _online_softmax_step(q, keys, values, visible, acc, row_max, row_sum, qk_scale,
                         DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr):
    """Fold one key tile into the running (max, sum, acc) of every query row; maxima in log2 units. The scale
    is applied inside the exponent (one fused multiply-add a score); `visible` is read only when MASKED."""
    scores = tl.dot(q, tl.trans(keys.to(q.dtype)), input_precision=DOT_PRECISION)
    if MASKED:
        scores = tl.where(visible, scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1) * qk_scale)
    correction = tl.exp2(row_max - new_max)
    probs = tl.exp2(scores * qk_scale - new_max[:, None])
    row_sum = row_sum * correction + tl.sum(probs, 1)
    acc = acc * correction[:, None] + tl.dot(probs.to(q.dtype), values.to(q.dtype),
                                             input_precision=DOT_PRECISION)
    return acc, new_max, row_sum


@triton.jit
def _cached_tile(q, acc, row_max, row_sum, next_pages, key_start, key_hi, table_row, k_cache_ptr, v_cache_ptr,
                 kv_head, stride_cp, stride_cs, stride_ch, qk_scale, offs_n, offs_d, d_ok, PAGE_SIZE: tl.constexpr,
                 BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, PREFETCH_PAGES: tl.constexpr,
                 MASKED: tl.constexpr, q_pos, window, HAS_WINDOW: tl.constexpr):
    """One tile of cached keys read through the page table. Only the range's last tile can be ragged: whole
    tiles run without the key mask (fewer instructions a tile, and loads that need no predicate). With
    HAS_WINDOW a row sees key index (= position) j only if j > q_pos - window."""
    key_index = key_start + offs_n
    key_ok = key_index < key_hi
    if PREFETCH_PAGES:
        page = next_pages.to(tl.int64)
        next_pages = tl.load(table_row + (key_index + BLOCK_N) // PAGE_SIZE, mask=key_index + BLOCK_N < key_hi,
                             other=0)
    else:
        page = tl.load(table_row + key_index // PAGE_SIZE, mask=key_ok, other=0).to(tl.int64)
    in_page = key_index % PAGE_SIZE
    offsets = (page * stride_cp + in_page * stride_cs + kv_head * stride_ch)[:, None] + offs_d[None, :]
    if MASKED:
        keys = tl.load(k_cache_ptr + offsets, mask=key_ok[:, None] & d_ok, other=0.0)
        values = tl.load(v_cache_ptr + offsets, mask=key_ok[:, None] & d_ok, other=0.0)
    else:
        keys = tl.load(k_cache_ptr + offsets, mask=d_ok, other=0.0)
        values = tl.load(v_cache_ptr + offsets, mask=d_ok, other=0.0)
    visible = key_ok[None, :]
    if HAS_WINDOW:
        visible = visible & (key_index[None, :] > q_pos[:, None] - window)
    acc, row_max, row_sum = _online_softmax_step(q, keys, values, visible, acc, row_max, row_sum,
                                                 qk_scale, DOT_PRECISION, MASKED or HAS_WINDOW)
    return acc, row_max, row_sum, next_pages


# Integers that change with the batch (page-table width, split count, workspace strides) are not
# specialised on, so a new batch shape never stalls a step to compile another kernel variant.
BATCH_DEPENDENT_ARGS = ["num_splits", "stride_table", "stride_pout_split", "stride_pstat_split"]


@triton.jit(do_not_specialize=BATCH_DEPENDENT_ARGS)
def _paged_attention_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr, positions_ptr, k_cache_ptr, v_cache_ptr, cu_seqlens_ptr,
        context_lens_ptr, page_table_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, qk_scale, num_splits,
        window, prefix_window,
        stride_qn, stride_qh, stride_kvn, stride_kvh, stride_on, stride_oh, stride_cp, stride_cs, stride_ch,
        stride_table, stride_pout_split, stride_pout_row, stride_pout_head, stride_pstat_split, stride_pstat_row,
        BLOCK_SIZE: tl.constexpr, PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
        BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
        HAS_CACHE: tl.constexpr, SPLIT_KV: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
        PREFETCH_PAGES: tl.constexpr, PDL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_PREFIX_WINDOW: tl.constexpr):
    """Program (tile*splits + split, kv_head, request): BLOCK_Q query rows x GROUP heads against
    (1) its share of the request's cached keys, read page by page, then (2) for the last split, the
    request's in-flight keys up to the end of the tile's last block, masked by the block rule.
    HAS_WINDOW: keys at or below q_pos - window are hidden; HAS_PREFIX_WINDOW: of the cached keys only the
    last prefix_window are seen. Either one moves the scanned range's start past the hidden keys."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()   # the combine may be scheduled as soon as SMs free up
    tile, split = tl.program_id(0) // num_splits, tl.program_id(0) % num_splits
    kv_head, request = tl.program_id(1), tl.program_id(2)
    row_start = tl.load(cu_seqlens_ptr + request).to(tl.int64)
    query_len = tl.load(cu_seqlens_ptr + request + 1).to(tl.int64) - row_start
    tile_start = tile * BLOCK_Q
    if tile_start >= query_len:
        return
    context_len = tl.load(context_lens_ptr + request).to(tl.int32)  # int32 keeps key index math cheap

    # Row m of the tile is query (m // GROUP_PAD) and head (m % GROUP_PAD) of the group: adjacent
    # rows are adjacent heads of one token, contiguous in memory.
    offs_m = tl.arange(0, BLOCK_Q * GROUP_PAD)
    query_index = tile_start + offs_m // GROUP_PAD
    head = kv_head * GROUP + offs_m % GROUP_PAD
    row_ok = (query_index < query_len) & (offs_m % GROUP_PAD < GROUP)
    rows = row_start + query_index
    # Head dims that are not a power of two are padded; for powers of two the mask folds away, so
    # loads along the head dimension stay unmasked and vectorise.
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = ((offs_d < HEAD_DIM) | (HEAD_DIM == HEAD_DIM_PAD))[None, :]
    q_pos = tl.load(positions_ptr + rows, mask=row_ok, other=-1)
    q = tl.load(q_ptr + rows[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok, other=0.0).to(DOT_DTYPE)
    row_max = tl.full([BLOCK_Q * GROUP_PAD], NEG_BIG, tl.float32)
    row_sum = tl.zeros([BLOCK_Q * GROUP_PAD], tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)

    if HAS_CACHE:
        range_lo = 0   # the first cached key any row of the tile may see
        if HAS_WINDOW:
            range_lo = tl.minimum(tl.maximum(context_len + tile_start - window + 1, 0), context_len)
        if HAS_PREFIX_WINDOW:
            range_lo = tl.maximum(range_lo, tl.maximum(context_len - prefix_window, 0))
        if SPLIT_KV:
            # Whole tiles per split so only the request's last tile is ragged. The in-flight tile, which
            # only the last split runs, counts as IN_FLIGHT_TILE_COST tiles of the range to share, so the
            # last split gets that many fewer cached tiles and ends with the others.
            # A split whose share lies wholly below range_lo (past context_len) runs no tile: an empty partial.
            chunk = tl.cdiv(tl.cdiv(context_len - range_lo + IN_FLIGHT_TILE_COST * BLOCK_N, num_splits),
                            BLOCK_N) * BLOCK_N
            key_lo = tl.minimum(range_lo + split * chunk, context_len)
            key_hi = tl.minimum(key_lo + chunk, context_len)
        else:
            key_lo = range_lo
            key_hi = context_len
        table_row = page_table_ptr + request * stride_table
        next_pages = offs_n   # a stand-in of the right shape; only PREFETCH_PAGES loads and reads it
        if PREFETCH_PAGES:
            # The page numbers of tile i+1 are loaded while tile i is processed, so a K/V load never
            # waits on its own page-table load (a sweep option: bench/attention_sweep.py).
            next_pages = tl.load(table_row + (key_lo + offs_n) // PAGE_SIZE, mask=key_lo + offs_n < key_hi, other=0)
        whole_hi = key_lo + (key_hi - key_lo) // BLOCK_N * BLOCK_N
        for key_start in range(key_lo, whole_hi, BLOCK_N):
            acc, row_max, row_sum, next_pages = _cached_tile(
                q, acc, row_max, row_sum, next_pages, key_start, key_hi, table_row, k_cache_ptr, v_cache_ptr,
                kv_head, stride_cp, stride_cs, stride_ch, qk_scale, offs_n, offs_d, d_ok, PAGE_SIZE, BLOCK_N,
                DOT_PRECISION, PREFETCH_PAGES, False, q_pos, window, HAS_WINDOW)
        if whole_hi < key_hi:
            acc, row_max, row_sum, next_pages = _cached_tile(
                q, acc, row_max, row_sum, next_pages, whole_hi, key_hi, table_row, k_cache_ptr, v_cache_ptr,
                kv_head, stride_cp, stride_cs, stride_ch, qk_scale, offs_n, offs_d, d_ok, PAGE_SIZE, BLOCK_N,
                DOT_PRECISION, PREFETCH_PAGES, True, q_pos, window, HAS_WINDOW)

    if split == num_splits - 1:
        # In-flight rows sit at positions context_len + index; the tile's last query sees keys up to
        # the end of its block, nothing beyond.
        last_query = (tl.minimum(tile_start + BLOCK_Q, query_len) - 1).to(tl.int32)
        block_end = ((context_len + last_query) // BLOCK_SIZE + 1) * BLOCK_SIZE - context_len
        key_end = tl.minimum(block_end, query_len.to(tl.int32))
        inflight_lo = 0
        if HAS_WINDOW:   # in-flight keys below the tile's first query's window are skipped, not masked
            inflight_lo = tl.maximum(tile_start - window + 1, 0)
        for key_start in range(inflight_lo, key_end, BLOCK_N):
            key_index = key_start + offs_n
            key_ok = key_index < key_end
            key_rows = row_start + key_index
            k_pos = tl.load(positions_ptr + key_rows, mask=key_ok, other=-1)
            key_real = key_ok & (k_pos >= 0)  # padding rows (position -1) are never read, even as 0 * NaN
            visible = key_real[None, :] & ((k_pos[None, :] // BLOCK_SIZE) <= (q_pos[:, None] // BLOCK_SIZE))
            if HAS_WINDOW:
                visible = visible & (k_pos[None, :] > q_pos[:, None] - window)
            offsets = key_rows[:, None] * stride_kvn + kv_head * stride_kvh + offs_d[None, :]
            keys = tl.load(k_ptr + offsets, mask=key_real[:, None] & d_ok, other=0.0)
            values = tl.load(v_ptr + offsets, mask=key_real[:, None] & d_ok, other=0.0)
            acc, row_max, row_sum = _online_softmax_step(q, keys, values, visible, acc, row_max,
                                                         row_sum, qk_scale, DOT_PRECISION, True)

    out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]
    if SPLIT_KV:
        # The split's own normalised output in the input dtype (half the bytes of fp32 partials, for the
        # store and the combine's load), its running max and sum in fp32; the combine drops padding rows.
        split_wide = split.to(tl.int64)  # splits x rows x heads x dim can pass 2**31 elements
        stat_index = split_wide * stride_pstat_split + rows * stride_pstat_row + head
        tl.store(part_max_ptr + stat_index, row_max, mask=row_ok)
        tl.store(part_sum_ptr + stat_index, row_sum, mask=row_ok)
        out_index = split_wide * stride_pout_split + rows * stride_pout_row + head * stride_pout_head
        tl.store(part_out_ptr + out_index[:, None] + offs_d[None, :], out.to(part_out_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok)
    else:
        store_ok = (row_ok & (q_pos >= 0))[:, None] & d_ok
        tl.store(out_ptr + rows[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=store_ok)


def _shared_layout(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V are addressed with one set of strides and a contiguous head dimension; views split from a
    fused QKV and caches allocated together already qualify, anything else is copied."""
    if first.stride() == second.stride() and first.stride(-1) == 1:
        return first, second
    return first.contiguous(), second.contiguous()


def paged_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                           k_cache: torch.Tensor | None, v_cache: torch.Tensor | None,
                           meta: AttentionMetadata, scale: float, *, num_splits: int | None = None,
                           tile: dict | None = None) -> torch.Tensor:
    """Same contract as attention_reference. num_splits None picks split-KV by choose_num_splits;
    1 forces the single-pass kernel, more forces that many splits of the cached range. `tile`
    overrides launch options (BLOCK_N, num_warps, num_stages): for tuning sweeps."""
    q = q if q.stride(-1) == 1 else q.contiguous()
    (k, v), out = _shared_layout(k, v), torch.zeros_like(q) if meta.pad_rows else torch.empty_like(q)
    max_query_len, max_context_len, total_rows = host_summary(meta)
    (_, num_heads, head_dim), num_kv_heads = q.shape, k.shape[1]
    if total_rows == 0:
        return out
    has_cache = k_cache is not None and meta.page_tables is not None and max_context_len > 0
    shape, q_tiles, num_splits = launch_plan(q, num_kv_heads, meta, has_cache, num_splits)
    if tile:
        shape = {**shape, **tile}
        q_tiles = triton.cdiv(max_query_len, shape["BLOCK_Q"])
    k_cache, v_cache = _shared_layout(k_cache, v_cache) if has_cache else (k[:1, None], v[:1, None])
    table = meta.page_tables if has_cache else meta.cu_seqlens_q
    part_out = part_max = part_sum = out  # the single-pass variant never touches these
    if num_splits > 1:
        part_out = q.new_empty(num_splits, total_rows, num_heads, head_dim)
        part_max, part_sum = q.new_empty(2, num_splits, total_rows, num_heads, dtype=torch.float32).unbind(0)
    pdl = num_splits > 1 and overlaps_launches(q.device)
    group, head_dim_pad = num_heads // num_kv_heads, padded_head_dim(head_dim)
    # Triton's interpreter (3.6 to 3.9) multiplies bf16 as raw uint16 bits, so CPU runs do their MMAs in fp32.
    dot_dtype = tl.float32 if q.device.type == "cpu" and q.dtype == torch.bfloat16 else _TL_DTYPES[q.dtype]
    _paged_attention_kernel[(q_tiles * num_splits, num_kv_heads, meta.num_requests)](
        q, k, v, out, positions, k_cache, v_cache, meta.cu_seqlens_q, meta.context_lens, table,
        part_out, part_max, part_sum, scale * LOG2E, num_splits, meta.window or 0, meta.prefix_window or 0,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), out.stride(0), out.stride(1), *k_cache.stride()[:3],
        table.stride(0), *part_out.stride()[:3], *part_max.stride()[:2],
        BLOCK_SIZE=meta.block_size, PAGE_SIZE=k_cache.shape[1], GROUP=group,
        GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, HAS_CACHE=has_cache,
        SPLIT_KV=num_splits > 1, DOT_DTYPE=dot_dtype, DOT_PRECISION="ieee" if dot_dtype == tl.float32 else "tf32",
        PDL=pdl, HAS_WINDOW=meta.window is not None, HAS_PREFIX_WINDOW=meta.prefix_window is not None, **shape)
    if num_splits > 1:
        combine_splits(part_out, part_max, part_sum, out, positions, head_dim_pad, pdl)
    return out
