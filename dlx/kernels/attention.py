"""Paged block-diffusion attention: metadata describing a ragged batch, and the plain-PyTorch path.
A query sees its request's cached prefix and in-flight keys of its own or earlier blocks, optionally windowed."""
from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    """Shape of one ragged forward: request r owns rows cu_seqlens_q[r]:cu_seqlens_q[r+1]."""
    cu_seqlens_q: torch.Tensor        # [R+1] int64, on the model's device
    context_lens: torch.Tensor        # [R] cached prefix length per request (keys read from pages)
    page_tables: torch.Tensor | None  # [R, max_pages] int32, -1 padded; None when nothing is cached
    slot_mapping: torch.Tensor | None  # [N] int64 cache slot (page * page_size + offset) to store, -1 = skip
    block_size: int
    query_lens: list[int]             # host copies, so the PyTorch path needs no device sync
    context_lens_host: list[int]
    # Rows past the requests' rows exist (a CUDA graph's bucket padding): the Triton path zeroes the output it
    # leaves there, so no uninitialised value (a NaN) reaches the MoE router.
    pad_rows: bool = False
    # Sliding window: a key is visible only if key_pos > q_pos - window (cached and in-flight keys alike).
    window: int | None = None
    # Prefix tail: of the cached prefix only the last prefix_window keys (position >= context_len - prefix_window)
    # are visible; in-flight keys keep the block rule.
    prefix_window: int | None = None
    # Host-side launch values the Triton path derives once per forward (max lengths, row count),
    # so the per-layer calls repeat no Python work and never read the device.
    kernel_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_requests(self) -> int:
        return len(self.query_lens)

    @classmethod
    def single(cls, num_tokens: int, block_size: int, device: torch.device | str = "cpu") -> "AttentionMetadata":
        """One request, nothing cached: what a full-recompute forward uses."""
        return cls(
            cu_seqlens_q=torch.tensor([0, num_tokens], device=device),
            context_lens=torch.zeros(1, dtype=torch.long, device=device),
            page_tables=None, slot_mapping=None, block_size=block_size,
            query_lens=[num_tokens], context_lens_host=[0],
        )


def block_causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, block_size: int) -> torch.Tensor:
    """True where a query may see an in-flight key: same block (both ways) or an earlier block."""
    return (k_pos[None, :] // block_size) <= (q_pos[:, None] // block_size)


def gather_cached_kv(cache: torch.Tensor, page_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` cached tokens of one request, in order: [length, kv_heads, head_dim]."""
    page_size = cache.shape[1]
    num_pages = -(-length // page_size)
    pages = page_table[:num_pages].long()
    return cache[pages].reshape(-1, *cache.shape[2:])[:length]


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                        k_cache: torch.Tensor | None, v_cache: torch.Tensor | None,
                        meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q [N, Hq, D], k/v [N, Hkv, D]; caches [pages, page_size, Hkv, D]. Softmax in fp32."""
    out = torch.empty_like(q)
    group = q.shape[1] // k.shape[1]
    start = 0
    for r, (q_len, ctx) in enumerate(zip(meta.query_lens, meta.context_lens_host)):
        rows = slice(start, start + q_len)
        start += q_len
        if q_len == 0:
            continue
        keys, values, pos = k[rows], v[rows], positions[rows]
        visible = block_causal_mask(pos, pos, meta.block_size)
        if ctx > 0:
            table = meta.page_tables[r]
            keys = torch.cat([gather_cached_kv(k_cache, table, ctx), keys])
            values = torch.cat([gather_cached_kv(v_cache, table, ctx), values])
            cached = torch.arange(ctx, device=pos.device)   # a cached key's position is its index
            cached_visible = visible.new_ones(q_len, ctx)
            if meta.prefix_window is not None:
                cached_visible &= (cached >= ctx - meta.prefix_window)[None, :]
            visible = torch.cat([cached_visible, visible], dim=1)
            pos_k = torch.cat([cached, pos])
        else:
            pos_k = pos
        if meta.window is not None:
            visible &= pos_k[None, :] > pos[:, None] - meta.window
        keys = keys.float().repeat_interleave(group, dim=1)
        values = values.float().repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[rows].float(), keys) * scale
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[rows] = torch.einsum("hqk,khd->qhd", probs, values).to(q.dtype)
    return out


ATTENTION_IMPLS = ("naive", "triton_grouped")


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    k_cache: torch.Tensor | None, v_cache: torch.Tensor | None,
                    meta: AttentionMetadata, scale: float, impl: str) -> torch.Tensor:
    """Attention by `impl`: "naive" is attention_reference, "triton_grouped" the Triton kernel
    (imported on first use, so CPU-only installs without Triton keep working)."""
    if impl == "naive":
        return attention_reference(q, k, v, positions, k_cache, v_cache, meta, scale)
    if impl == "triton_grouped":
        from dlx.kernels.attention_triton import paged_attention_triton
        return paged_attention_triton(q, k, v, positions, k_cache, v_cache, meta, scale)
    raise ValueError(f"unknown attention impl {impl!r}; expected one of {ATTENTION_IMPLS}")
