"""Run-time LoRA adapters inside the fused MoE kernels (Triton's interpreter on CPU) against moe_reference's delta:
mixed adapters and ranks, rows without an adapter, zero adapters, no host synchronisation."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from triton_support import DEVICE, import_triton

triton = import_triton()

from dlx.kernels import moe_triton  # noqa: E402  (must follow the interpreter set-up)
from dlx.kernels.moe import moe_reference  # noqa: E402
from dlx.kernels.moe_lora import MoELoRA, lora_args  # noqa: E402
from test_kernels_moe import balanced_routing, make_weights  # noqa: E402


def make_lora(tokens: int, hidden: int, inter: int, experts: int, ranks: tuple[int, int], adapters: int,
              seed: int = 0) -> MoELoRA:
    """Adapters whose deltas are O(0.1-1) of the base products; rows cycle through 0, .., adapters-1, -1. Adapter 0
    has half the rank of the others, zero-padded, as adapters of different ranks are stacked."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)

    def pair(rank: int, fan_in: int, fan_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.randn(adapters, experts, rank, fan_in, generator=gen, device=DEVICE) * fan_in ** -0.5
        b = torch.randn(adapters, experts, fan_out, rank, generator=gen, device=DEVICE) * 0.5 * rank ** -0.5
        a[0, :, rank // 2:], b[0, ..., rank // 2:] = 0.0, 0.0
        return a, b
    token_adapter = ((torch.arange(tokens, device=DEVICE) + 1) % (adapters + 1) - 1).to(torch.int32)
    return MoELoRA(token_adapter, *pair(ranks[0], hidden, 2 * inter), *pair(ranks[1], inter, hidden))


def reference_delta(lora: MoELoRA):
    """moe_reference's delta: each routed row through its token's adapter (none for -1)."""
    def delta(part: int, expert: int, tokens: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        a, b = (lora.a13, lora.b13) if part == 0 else (lora.a2, lora.b2)
        ids = lora.token_adapter[tokens]
        out = torch.zeros(len(inputs), b.shape[2], dtype=inputs.dtype, device=inputs.device)
        for n in range(a.shape[0]):
            mine = (ids == n)[:, None]
            out += torch.where(mine, inputs @ a[n, expert].t() @ b[n, expert].t(), 0.0)
        return out
    return delta


@pytest.mark.parametrize("tokens,hidden,inter,experts,top_k,ranks,adapters,dtype", [
    (1, 32, 16, 4, 2, (8, 8), 2, torch.float32),     # one row, of adapter 0
    (5, 32, 24, 4, 3, (4, 8), 3, torch.float32),     # I = 24: partial column and K tiles in the down GEMM's LoRA
    (33, 48, 16, 8, 2, (8, 4), 3, torch.float32),    # H = 48: a partial K tile in the gate/up GEMM's LoRA
    (5, 32, 16, 4, 2, (8, 8), 2, torch.bfloat16),
])
def test_fused_moe_lora_matches_reference(tokens, hidden, inter, experts, top_k, ranks, adapters, dtype):
    w13, w2 = make_weights(hidden, inter, experts, dtype, seed=tokens)
    x = torch.randn(tokens, hidden, device=DEVICE).to(dtype)
    ids, weights = balanced_routing(tokens, experts, top_k, seed=tokens)
    lora = make_lora(tokens, hidden, inter, experts, ranks, adapters, seed=tokens)
    lora = lora._replace(**{k: getattr(lora, k).to(dtype) for k in ("a13", "b13", "a2", "b2")})
    expected = moe_reference(x, w13, w2, ids, weights, delta=reference_delta(lora))
    got = moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    assert got.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    else:   # the reference rounds gate, up, h, x @ a^T and each product to bf16; the kernel keeps fp32 longer
        assert (got.float() - expected.float()).abs().max() <= 2e-2 * expected.float().abs().max()
    # The adapters matter: without them the adapter rows differ, the rows of adapter -1 do not.
    base = moe_triton.fused_moe(x, w13, w2, ids, weights)
    plain = lora.token_adapter < 0
    assert torch.equal(got[plain], base[plain])
    assert (got[~plain] - base[~plain]).abs().max() > 1e-2


def test_rows_without_adapter_and_zero_adapter():
    tokens, hidden, inter, experts = 9, 32, 16, 4
    w13, w2 = make_weights(hidden, inter, experts, torch.float32)
    x = torch.randn(tokens, hidden, device=DEVICE)
    ids, weights = balanced_routing(tokens, experts, 2)
    base = moe_triton.fused_moe(x, w13, w2, ids, weights)
    lora = make_lora(tokens, hidden, inter, experts, (8, 8), 2)
    # No row uses an adapter (int64 ids): exactly the kernel without LoRA.
    none = lora._replace(token_adapter=torch.full((tokens,), -1, dtype=torch.long, device=DEVICE))
    assert torch.equal(moe_triton.fused_moe(x, w13, w2, ids, weights, lora=none), base)
    # An adapter whose B is zero (what an adapter that skips the experts stacks as) adds nothing.
    zero = lora._replace(b13=torch.zeros_like(lora.b13), b2=torch.zeros_like(lora.b2))
    torch.testing.assert_close(moe_triton.fused_moe(x, w13, w2, ids, weights, lora=zero), base, atol=1e-6, rtol=0)


def test_strided_lora_weights():
    # b stored transposed (the last dim not contiguous) and a sliced out of a wider tensor.
    tokens, hidden, inter, experts = 6, 32, 16, 4
    w13, w2 = make_weights(hidden, inter, experts, torch.float32)
    x = torch.randn(tokens, hidden, device=DEVICE)
    ids, weights = balanced_routing(tokens, experts, 2)
    lora = make_lora(tokens, hidden, inter, experts, (4, 4), 2)
    wide = torch.cat([lora.a13, torch.ones_like(lora.a13)], dim=-1)[..., :hidden]
    strided = lora._replace(a13=wide, b2=lora.b2.transpose(-1, -2).contiguous().transpose(-1, -2))
    expected = moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    assert torch.equal(moe_triton.fused_moe(x, w13, w2, ids, weights, lora=strided), expected)


class SyncOps(TorchDispatchMode):
    """Records the aten ops that read device values on the host (.item(), nonzero, unique, masked selection)."""
    SYNCING = ("_local_scalar_dense", "nonzero", "unique", "masked_select", "is_nonzero", "equal", "repeat_interleave")

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(name in func.name() for name in self.SYNCING):
            self.found.append(func.name())
        return func(*args, **(kwargs or {}))


def test_no_host_sync():
    # Meta tensors have shapes and no values: the LoRA arguments are built from shapes alone.
    meta = MoELoRA(torch.empty(32, dtype=torch.int32, device="meta"),
                   *(torch.empty(shape, device="meta") for shape in
                     [(3, 256, 8, 2048), (3, 256, 1024, 8), (3, 256, 8, 512), (3, 256, 2048, 8)]))
    args, constexprs = lora_args(meta, 0, torch.empty(1, device="meta"))
    assert constexprs == dict(NUM_ADAPTERS=3, RANK=8, RANK_PAD=16) and args[3:] == (256 * 8 * 2048, 8 * 2048, 2048,
                                                                                   256 * 1024 * 8, 1024 * 8, 8)
    # The whole call issues no op that reads device values on the host (the interpreter's launches aside,
    # which a GPU does not make).
    w13, w2 = make_weights(32, 16, 4, torch.float32)
    x = torch.randn(5, 32, device=DEVICE)
    ids, weights = balanced_routing(5, 4, 2)
    lora = make_lora(5, 32, 16, 4, (8, 8), 2)
    with SyncOps() as mode:
        moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    assert mode.found == []


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_no_host_sync_cuda_graph_and_bf16(dtype):
    """bf16 within a few ulps of the reference; sync debugging set to error; a captured graph replayed on new
    rows and adapter choices gives what a fresh call gives."""
    tokens, hidden, inter, experts = 64, 256, 128, 16
    w13, w2 = (w.to(dtype) for w in make_weights(hidden, inter, experts, torch.float32))
    x = torch.randn(tokens, hidden, device="cuda").to(dtype)
    ids, weights = balanced_routing(tokens, experts, 4)
    lora = make_lora(tokens, hidden, inter, experts, (16, 8), 3)
    lora = lora._replace(**{k: getattr(lora, k).to(dtype) for k in ("a13", "b13", "a2", "b2")})
    expected = moe_reference(x, w13, w2, ids, weights, delta=reference_delta(lora))
    got = moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    scale = expected.float().abs().max().item()
    tol = 1e-4 * scale if dtype == torch.float32 else 3e-2 * scale   # tf32 MMAs; bf16 rounding of h and xa
    assert (got.float() - expected.float()).abs().max().item() <= tol
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora)
    x.copy_(torch.randn_like(x))
    lora.token_adapter.copy_(lora.token_adapter.flip(0))
    graph.replay()
    assert torch.equal(captured, moe_triton.fused_moe(x, w13, w2, ids, weights, lora=lora))
