"""The fused MoE's grouping of (token, slot) pairs by expert: the torch layout (sync-free, checked on meta tensors)
and the two Triton launches, equal to it bit for bit, with and without the stacked shared expert."""
import pytest
import torch

from triton_support import DEVICE, import_triton

triton = import_triton()

from dlx.kernels.moe_align import align_by_expert, align_by_expert_triton  # noqa: E402  (after the interpreter)
from dlx.kernels.moe_router import route_reference  # noqa: E402


def test_alignment_layout_and_no_host_sync():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [3, 2], [1, 3]], device=DEVICE)
    order, bounds, block_ends, block_experts, num_blocks = align_by_expert(ids, 5, block_m=2)
    assert order.tolist() == [1, 4, 3, 8, 7, 0, 2, 5, 6, 9]                # pairs (token*K + slot), stable
    assert bounds.tolist() == [0, 2, 4, 5, 10, 10]
    assert block_ends.tolist() == [1, 2, 3, 6, 6] and num_blocks.tolist() == [6]
    assert block_experts.tolist()[:6] == [0, 1, 2, 3, 3, 3] and set(block_experts.tolist()[6:]) <= {5}
    # Meta tensors have shapes and no values: an op that needs values on the host would raise here.
    meta = align_by_expert(torch.empty(32, 8, dtype=torch.long, device="meta"), 256, 16)
    assert [t.shape[0] for t in meta] == [256, 257, 256, (256 + 256 * 15) // 16, 1]
    logits = torch.empty(32, 256, device="meta")
    ids, _ = route_reference(logits, torch.empty(256, device="meta"), 8, 8, 4, 2.5, "sigmoid")
    assert ids.shape == (32, 8)


@pytest.mark.parametrize("tokens,top_k,experts,block_m,shared", [
    (5, 2, 5, 2, False), (32, 8, 256, 16, False), (32, 8, 257, 16, True), (70, 3, 13, 4, True),
    (300, 8, 64, 64, False), (1, 1, 3, 16, True), (2100, 2, 8, 16, False),   # 2100 x 2: chunks of 256 pairs
])
def test_triton_alignment_equals_the_torch_one(tokens, top_k, experts, block_m, shared):
    """Same order (the stable sort), bounds, block ends and block experts, bit for bit; with `shared` every
    token's extra last slot goes to the last expert."""
    gen = torch.Generator(device=DEVICE).manual_seed(tokens)
    routed = experts - shared
    ids = torch.rand(tokens, routed, generator=gen, device=DEVICE).argsort(-1)[:, :top_k].to(torch.int32)
    if tokens == 2100:   # crowded: most pairs on two experts
        ids = torch.where(ids < 6, ids % 2, ids)
    full = torch.cat([ids, torch.full((tokens, 1), experts - 1, dtype=torch.int32, device=DEVICE)], 1) \
        if shared else ids
    for want, got in zip(align_by_expert(full, experts, block_m), align_by_expert_triton(ids, experts, block_m,
                                                                                          shared)):
        assert want.shape == got.shape and torch.equal(want.to(got.dtype), got)
