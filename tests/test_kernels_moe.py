"""Fused MoE and router kernels against their PyTorch references (Triton's interpreter on CPU): empty and
crowded experts, both tile configurations, sync-free alignment, a tiny LLaDA2 model's logits."""
import math

import pytest
import torch

from dlx.kernels.attention import AttentionMetadata
from triton_support import DEVICE, import_triton

triton = import_triton()

from dlx.kernels import moe_triton  # noqa: E402  (must follow the interpreter set-up)
from dlx.kernels.moe import moe_reference  # noqa: E402
from dlx.kernels.moe_router import route_reference, route_triton  # noqa: E402
from dlx.models import load_model  # noqa: E402
from dlx.models.moe import Router, SparseMoE  # noqa: E402

MINI = dict(hidden=2048, inter=512, experts=256, top_k=8, n_group=8, topk_group=4)  # LLaDA2.0-mini layer


def make_weights(hidden: int, inter: int, experts: int, dtype: torch.dtype, seed: int = 0):
    """x-scale-preserving weights: gate/up outputs and expert outputs are O(1)."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen, device=DEVICE) * hidden ** -0.5
    w2 = torch.randn(experts, hidden, inter, generator=gen, device=DEVICE) * inter ** -0.5
    return w13.to(dtype), w2.to(dtype)


def balanced_routing(tokens: int, experts: int, top_k: int, seed: int = 0):
    """Each token's experts drawn uniformly without replacement; weights positive, summing to 2.5."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    ids = torch.multinomial(torch.ones(tokens, experts, device=DEVICE), top_k, generator=gen)
    weights = torch.rand(tokens, top_k, generator=gen, device=DEVICE) + 0.1
    return ids, 2.5 * weights / weights.sum(-1, keepdim=True)


def assert_close_to_reference(x, w13, w2, ids, weights) -> torch.Tensor:
    # fp32: the kernel and the reference differ only in summation order, so 1e-5 is tight. bf16: the reference
    # rounds gate, up, SwiGLU and each expert's output to bf16, the kernel keeps them in fp32 until h and the
    # weighted slot rows; allowed: 4 bf16 ulps at the output's largest magnitude (observed: up to 3, H 32-1024).
    expected = moe_reference(x, w13, w2, ids, weights)
    got = moe_triton.fused_moe(x, w13, w2, ids, weights)
    assert got.dtype == x.dtype and got.shape == expected.shape
    if x.dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    else:
        scale = expected.float().abs().max().item()
        ulp = torch.finfo(x.dtype).eps * 2.0 ** math.floor(math.log2(scale))
        assert (got.float() - expected.float()).abs().max().item() <= 4 * ulp
    return got


@pytest.mark.parametrize("tokens,hidden,inter,experts,top_k,dtype", [
    (1, 32, 16, 4, 1, torch.float32),
    (5, 32, 24, 8, 2, torch.float32),     # I = 24: a partial column tile
    (33, 48, 32, 16, 4, torch.float32),   # H = 48: a partial K tile in the gate/up GEMM
    (70, 64, 32, 4, 4, torch.float32),    # 70 rows per expert: the 64-row tile configuration
    (5, 32, 16, 16, 4, torch.bfloat16),
    (33, 64, 24, 8, 2, torch.bfloat16),
    (70, 64, 32, 4, 4, torch.bfloat16),
])
def test_fused_moe_matches_reference(tokens, hidden, inter, experts, top_k, dtype):
    w13, w2 = make_weights(hidden, inter, experts, dtype, seed=tokens)
    x = torch.randn(tokens, hidden, device=DEVICE).to(dtype)
    assert_close_to_reference(x, w13, w2, *balanced_routing(tokens, experts, top_k, seed=tokens))


def test_empty_experts_crowded_expert_and_int32_ids():
    w13, w2 = make_weights(32, 16, 16, torch.float32)
    x = torch.randn(21, 32, device=DEVICE)
    ids, weights = balanced_routing(21, 3, 2)
    assert_close_to_reference(x, w13, w2, (ids * 7).int(), weights)        # experts 0, 7, 14 only
    crowded = torch.full((21, 1), 5, device=DEVICE)                         # every token on expert 5, K = 1
    assert_close_to_reference(x, w13, w2, crowded, weights[:, :1])


def test_strided_input_no_tokens_and_tensor_parallel_shards():
    w13, w2 = make_weights(32, 24, 4, torch.float32)
    x = torch.randn(9, 48, device=DEVICE)[:, :32]                          # rows 48 apart
    ids, weights = balanced_routing(9, 4, 2)
    full = assert_close_to_reference(x, w13, w2, ids, weights)
    # Two tensor-parallel ranks hold halves of the intermediate dimension; their partial sums add up.
    halves = [moe_triton.fused_moe(x, torch.cat([w13[:, part:part + 12], w13[:, 24 + part:36 + part]], 1),
                                   w2[:, :, part:part + 12], ids, weights) for part in (0, 12)]
    torch.testing.assert_close(halves[0] + halves[1], full, atol=1e-5, rtol=1e-5)
    assert moe_triton.fused_moe(x[:0], w13, w2, ids[:0], weights[:0]).shape == (0, 32)


def test_rows_do_not_depend_on_the_rest_of_the_batch():
    w13, w2 = make_weights(32, 16, 8, torch.float32)
    x = torch.randn(40, 32, device=DEVICE)
    ids, weights = balanced_routing(40, 8, 2)
    alone = moe_triton.fused_moe(x[:3], w13, w2, ids[:3], weights[:3])
    crowd = moe_triton.fused_moe(x, w13, w2, ids, weights)
    assert torch.equal(alone, crowd[:3])
    assert torch.equal(crowd, moe_triton.fused_moe(x, w13, w2, ids, weights))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens,experts", [(11, 6), (40, 2)])   # few rows an expert (Triton grouping), many
def test_shared_expert_rides_in_the_grouped_gemms(dtype, tokens, experts):
    """fused_moe(shared=True) = the routed experts + the last stacked expert at weight 1 for every token."""
    hidden, inter, top_k = 32, 16, 2
    assert moe_triton.few_rows_per_expert(tokens * (top_k + 1), experts + 1) == (tokens == 11)
    w13, w2 = make_weights(hidden, inter, experts + 1, dtype)
    x = torch.randn(tokens, hidden, device=DEVICE).to(dtype)
    ids, weights = balanced_routing(tokens, experts, top_k)
    got = moe_triton.fused_moe(x, w13, w2, ids.to(torch.int32), weights, shared=True).float()
    routed = moe_reference(x.float(), w13[:experts].float(), w2[:experts].float(), ids, weights)
    gate, up = (x.float() @ w13[experts].float().t()).chunk(2, dim=-1)
    want = routed + (torch.nn.functional.silu(gate) * up) @ w2[experts].float().t()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    with pytest.raises(ValueError, match="shared expert apart"):
        moe_triton.fused_moe(x, w13, w2, ids, weights, shared=True, lora=object())


def test_tile_choice():
    choose = moe_triton.choose_tiles
    assert choose(32 * 8, 256, 2048, 512, torch.bfloat16)["gate_up"]["BLOCK_M"] == 16
    assert choose(256 * 8, 256, 2048, 512, torch.bfloat16)["down"]["BLOCK_M"] == 16
    assert choose(2048 * 8, 256, 2048, 512, torch.bfloat16)["gate_up"]["BLOCK_M"] == 64
    wide = choose(2048 * 8, 256, 2048, 512, torch.bfloat16)["gate_up"]
    assert (wide["BLOCK_N"], wide["num_stages"]) == (128, 4)   # measured the fastest at this size
    assert choose(2048 * 8, 256, 2048, 512, torch.bfloat16, lora=True)["gate_up"]["BLOCK_N"] == 64


def assert_routes_match(logits, bias, top_k, n_group, topk_group, score_function="sigmoid"):
    """ids compared as sets per token (tie order may differ), weights matched by expert id."""
    ids, weights = route_triton(logits, bias, top_k, n_group, topk_group, 2.5, score_function)
    ref_ids, ref_weights = route_reference(logits, bias, top_k, n_group, topk_group, 2.5, score_function)
    ids, order = ids.long().sort(dim=1)
    ref_ids, ref_order = ref_ids.sort(dim=1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights.gather(1, order), ref_weights.gather(1, ref_order), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("experts,top_k,n_group,topk_group,score_function,has_bias", [
    (256, 8, 8, 4, "sigmoid", True),     # LLaDA2.0-mini
    (8, 2, 4, 2, "sigmoid", True),       # the tiny test model
    (12, 3, 3, 1, "sigmoid", False),     # groups of 4 in a padded 4 x 4 tile
    (10, 1, 1, 1, "softmax", False),     # no groups, K = 1: weights are not normalised
    (16, 4, 4, 4, "sigmoid", True),      # every group kept: plain top-k
])
def test_router_kernel_matches_torch(experts, top_k, n_group, topk_group, score_function, has_bias):
    gen = torch.Generator(device=DEVICE).manual_seed(experts)
    logits = 2 * torch.randn(19, experts, generator=gen, device=DEVICE)
    bias = 0.1 * torch.randn(experts, generator=gen, device=DEVICE) if has_bias else None
    assert_routes_match(logits, bias, top_k, n_group, topk_group, score_function)


def test_router_kernel_ties_take_the_lowest_index():
    # Experts 1, 2, 3 tie for the third place: the kernel takes expert 1, torch may take any of them, so
    # only the weights (the tied scores) are compared with torch here.
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5, 2.0, 2.0, -1.0]], device=DEVICE)
    ids, weights = route_triton(logits, None, 3, 1, 1, 2.5, "sigmoid")
    assert ids.tolist() == [[5, 6, 1]]
    torch.testing.assert_close(weights, route_reference(logits, None, 3, 1, 1, 2.5, "sigmoid")[1])


def test_unknown_impl_rejected():
    router = Router(8, 4, 2, 1, 1, 1.0, "sigmoid", has_bias=False)
    moe = SparseMoE(8, 4, 4, 2, 0, router)
    router.impl = moe.impl = "cutlass"
    with pytest.raises(ValueError, match="unknown router impl"):
        router(torch.zeros(2, 8))
    router.impl = "naive"
    with pytest.raises(ValueError, match="unknown MoE impl"):
        moe(torch.zeros(2, 8))


def set_moe_impl(model, impl: str) -> None:
    """What the runner does: the MoE layers and their routers."""
    for module in model.modules():
        if isinstance(module, (SparseMoE, Router)):
            module.impl = impl


def test_tiny_model_logits_naive_vs_triton(tiny_dir):
    # A model of its own (on the GPU where there is one): the shared fixture is never switched.
    model = load_model(tiny_dir, "float32", DEVICE)
    ids = torch.arange(10, 46, device=DEVICE)
    meta = AttentionMetadata.single(len(ids), 8, DEVICE)
    logits = {}
    for impl in ("naive", "triton"):
        set_moe_impl(model, impl)
        logits[impl] = model.compute_logits(model(ids, torch.arange(len(ids), device=DEVICE), meta))
    moes = [m for m in model.modules() if isinstance(m, SparseMoE)]
    assert len(moes) == 2 and all(moe.shared_stacked() for moe in moes)   # the shared expert rides along
    torch.testing.assert_close(logits["triton"], logits["naive"], atol=1e-4, rtol=1e-4)
    # A parameter whose data was replaced no longer views the stacks: the shared expert runs apart, same logits.
    shared = moes[0].shared_experts.down_proj.weight
    shared.data = shared.data.clone()
    assert not moes[0].shared_stacked()
    unstacked = model.compute_logits(model(ids, torch.arange(len(ids), device=DEVICE), meta))
    torch.testing.assert_close(unstacked, logits["triton"], atol=1e-4, rtol=1e-4)


def test_router_converts_its_weight_once_and_again_after_a_change():
    router = Router(8, 4, 2, 1, 1, 1.0, "sigmoid", has_bias=False).to(torch.bfloat16)
    torch.nn.init.normal_(router.weight)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    first = router.weight_fp32()
    assert first.dtype == torch.float32 and router.weight_fp32() is first
    torch.testing.assert_close(router.logits(x), x.float() @ router.weight.float().t())
    with torch.no_grad():
        router.weight.mul_(2)   # in place: the version counter moves
    assert router.weight_fp32() is not first
    torch.testing.assert_close(router.logits(x), x.float() @ router.weight.float().t())


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [32, 256, 2048])
def test_llada2_mini_layer_bf16(tokens):
    w13, w2 = make_weights(MINI["hidden"], MINI["inter"], MINI["experts"], torch.bfloat16)
    x = torch.randn(tokens, MINI["hidden"], device="cuda", dtype=torch.bfloat16)
    assert_close_to_reference(x, w13, w2, *balanced_routing(tokens, MINI["experts"], MINI["top_k"], seed=tokens))
    # A router's own (unbalanced) choice, through the kernel router.
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    logits = torch.randn(tokens, MINI["experts"], device="cuda", generator=gen)
    bias = 0.1 * torch.randn(MINI["experts"], device="cuda", generator=gen)
    assert_routes_match(logits, bias, MINI["top_k"], MINI["n_group"], MINI["topk_group"])
    ids, weights = route_triton(logits, bias, MINI["top_k"], MINI["n_group"], MINI["topk_group"], 2.5, "sigmoid")
    assert_close_to_reference(x, w13, w2, ids, weights)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [32, 2048])
def test_no_host_sync_and_cuda_graph_replay(tokens):
    """The whole path (router kernel, alignment, GEMMs, slot sum) runs with sync debugging set to error, and
    a captured graph replayed on new routing gives what a fresh call gives."""
    w13, w2 = make_weights(MINI["hidden"], MINI["inter"], MINI["experts"], torch.bfloat16)
    x = torch.randn(tokens, MINI["hidden"], device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(tokens, MINI["experts"], device="cuda")
    args = (MINI["top_k"], MINI["n_group"], MINI["topk_group"], 2.5, "sigmoid")

    def layer():
        ids, weights = route_triton(logits, None, *args)
        return moe_triton.fused_moe(x, w13, w2, ids, weights)
    layer()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        layer()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = layer()
    logits.copy_(torch.randn_like(logits))
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(captured, layer())
