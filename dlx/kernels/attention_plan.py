"""Launch planning for the paged attention kernel: tile shapes, warps and stages per dtype and grid size,
and how many splits of the cached range (flash-decoding) fill the GPU. Host-side numbers only."""
import torch
import triton

from dlx.kernels.attention import AttentionMetadata
from dlx.kernels.device import sm_count

MIN_KEYS_PER_SPLIT = 256   # below this a split costs more in launch and combine than it saves
MAX_SPLITS = 32
FEW_SPLITS = 8      # split counts up to this share a small combine variant


def padded_head_dim(head_dim: int) -> int:
    """Tiles span a power of two along the head dimension, at least 16 (the MMA minimum)."""
    return max(16, triton.next_power_of_2(head_dim))


def choose_num_splits(num_programs: int, max_context_len: int, num_sms: int) -> int:
    """Split the cached range only when the grid would leave SMs idle and there is context to share:
    as many splits as still fit one wave (a partial second wave would cost a whole one), each at
    least MIN_KEYS_PER_SPLIT keys, at most MAX_SPLITS."""
    if 2 * num_programs > num_sms or max_context_len < 2 * MIN_KEYS_PER_SPLIT:
        return 1
    by_sms = num_sms // num_programs
    by_context = max_context_len // MIN_KEYS_PER_SPLIT
    return max(1, min(by_sms, by_context, MAX_SPLITS))


def combine_launch(num_splits: int) -> dict:
    """Split padding and warps of the combine kernel. Two paddings keep two compiled variants whatever the
    batch's split count; the small one runs on one warp, so many more programs share an SM (the combine is
    latency-bound: 10.8 -> 4.3 us at 8 requests x 4 splits, docs/benchmarks.md)."""
    if num_splits <= FEW_SPLITS:
        return dict(SPLITS_PAD=FEW_SPLITS, num_warps=1)
    return dict(SPLITS_PAD=max(MAX_SPLITS, triton.next_power_of_2(num_splits)), num_warps=4)


def host_summary(meta: AttentionMetadata) -> tuple[int, int, int]:
    """(max query len, max context len, total rows), derived once per forward from host lists."""
    summary = meta.kernel_cache.get("host_summary")
    if summary is None:
        summary = (max(meta.query_lens, default=0), max(meta.context_lens_host, default=0),
                   sum(meta.query_lens))
        meta.kernel_cache["host_summary"] = summary
    return summary


def tile_shape(group_pad: int, head_dim: int, max_query_len: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch options. A tile holds up to 128 (query, head) rows, so one K/V tile feeds
    a full-height MMA even for short diffusion blocks, and at least 16 (the MMA minimum). fp32 dots
    run on FMA units and take far more registers: smaller tiles there (sm_90 ptxas: no spills).
    16-bit options come from the H100 sweep (bench/attention_sweep.py, docs/benchmarks.md): page numbers
    loaded one key tile ahead, 64-key tiles, 8 warps, 3 stages, for split and one-pass grids alike
    (90% of copy bandwidth at 64 requests x 8k keys, against 74% with 4 warps, 2 stages, no prefetch)."""
    wide = dtype == torch.float32
    rows_cap = 32 if wide else 128
    block_q = min(max(1, rows_cap // group_pad),
                  max(triton.next_power_of_2(max(max_query_len, 1)), 16 // group_pad, 1))
    big_tile = block_q * group_pad * head_dim >= (32 if wide else 64) * 128
    if wide:
        return dict(BLOCK_Q=block_q, BLOCK_N=16, num_warps=8 if big_tile else 4, num_stages=2, PREFETCH_PAGES=True)
    return dict(BLOCK_Q=block_q, BLOCK_N=64, num_warps=8 if big_tile else 4, num_stages=3, PREFETCH_PAGES=True)


def split_tile_shape(shape: dict, group_pad: int, head_dim: int) -> dict:
    """Split grids of full-height 16-bit tiles run half-height ones (64 rows, 4 warps, 3 stages) instead: two
    programs share an SM, so one's start and end overlap the other's streaming. H100 sweep, same split count:
    1 request x 4k 18.4 against 21.1 us, 8 requests within 3 % either way (docs/benchmarks.md)."""
    if shape["BLOCK_Q"] * group_pad != 128 or head_dim > 128 or shape["BLOCK_Q"] < 2:
        return shape
    return {**shape, "BLOCK_Q": shape["BLOCK_Q"] // 2, "num_warps": 4, "num_stages": 3}


def launch_plan(q: torch.Tensor, num_kv_heads: int, meta: AttentionMetadata, cached: bool,
                num_splits: int | None = None) -> tuple[dict, int, int]:
    """(tile shape, query tiles per request, split count) of one forward's attention calls. The split count is
    choose_num_splits' unless `num_splits` forces one; split grids take split_tile_shape's tiles. Planned once
    per forward and layer shape: every layer after the first reuses it (~13 us of Python a call)."""
    key = ("launch_plan", tuple(q.shape[1:]), q.dtype, q.device, num_kv_heads, cached, num_splits, meta.window,
           meta.prefix_window)
    plan = meta.kernel_cache.get(key)
    if plan is None:
        plan = meta.kernel_cache[key] = _plan(q, num_kv_heads, meta, cached, num_splits)
    shape, q_tiles, splits = plan
    return dict(shape), q_tiles, splits   # a copy: callers may override launch options


def _plan(q: torch.Tensor, num_kv_heads: int, meta: AttentionMetadata, cached: bool,
          num_splits: int | None) -> tuple[dict, int, int]:
    max_query_len, max_context_len, _ = host_summary(meta)
    for bound in (meta.window, meta.prefix_window):   # a query sees at most this many cached keys
        max_context_len = max_context_len if bound is None else min(max_context_len, bound)
    group_pad, head_dim_pad = triton.next_power_of_2(q.shape[1] // num_kv_heads), padded_head_dim(q.shape[2])
    shape = tile_shape(group_pad, head_dim_pad, max_query_len, q.dtype)
    if num_splits is None:
        num_splits = choose_num_splits(meta.num_requests * num_kv_heads * triton.cdiv(max_query_len, shape["BLOCK_Q"]),
                                       max_context_len if cached else 0, sm_count(q.device))
    if num_splits > 1:
        shape = split_tile_shape(shape, group_pad, head_dim_pad)
    return shape, triton.cdiv(max_query_len, shape["BLOCK_Q"]), num_splits
