"""LLaDA2 mixture-of-experts layer: the sigmoid group-limited router and stacked expert weights.
Experts are split across tensor-parallel ranks along their intermediate dimension."""
import torch
import torch.nn.functional as F
from torch import nn

from dlx.kernels import KERNEL_IMPLS
from dlx.kernels.moe import moe_reference
from dlx.kernels.moe_router import route_reference, route_triton
from dlx.models.layers import SwiGLU, copy_full
from dlx.models.parallel import all_reduce, divide, tp_rank, tp_size


class Router(nn.Module):
    """fp32 logits → scores; choose experts on scores + bias inside the best groups; weight by the
    unbiased scores of the chosen experts, normalised (top-k > 1) and scaled."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, n_group: int, topk_group: int,
                 scaling: float, score_function: str, has_bias: bool):
        super().__init__()
        self.num_experts, self.top_k, self.scaling = num_experts, top_k, scaling
        self.n_group, self.topk_group, self.score_function = n_group, topk_group, score_function
        self.weight = nn.Parameter(torch.empty(num_experts, hidden))
        self.weight.weight_loader = copy_full
        self.expert_bias = None
        if has_bias:
            self.expert_bias = nn.Parameter(torch.empty(num_experts, dtype=torch.float32))
            self.expert_bias.weight_loader = copy_full
        self.impl = "naive"  # or "triton": one fused kernel after the logits GEMM; set by the runner
        self.row_jitter: torch.Tensor | None = None   # dummy weights only: [rows, experts] (dlx/models/dummy.py)
        self.fp32_copy: tuple[int, int, torch.Tensor] | None = None   # (version, address, weight in fp32)

    def weight_fp32(self) -> torch.Tensor:
        """The weight in fp32, converted once instead of in every forward (a kernel and 3 MB a layer at the
        mini shape); converted again whenever the weight changes in place or moves."""
        weight = self.weight
        if weight.dtype == torch.float32:
            return weight
        key = (weight._version, weight.data_ptr())
        if self.fp32_copy is None or self.fp32_copy[:2] != key:
            self.fp32_copy = (*key, weight.detach().float())
        return self.fp32_copy[2]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """fp32 router logits; a dummy model adds its fixed offset per batch row (row i gets row_jitter[i])."""
        if self.row_jitter is None:
            return F.linear(x.float(), self.weight_fp32())
        table, rows = self.row_jitter, len(x)
        offsets = table[:rows] if rows <= len(table) else table[torch.arange(rows, device=x.device) % len(table)]
        return torch.addmm(offsets, x.float(), self.weight_fp32().t())   # the offset added inside the GEMM

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(x)
        bias = None if self.expert_bias is None else self.expert_bias.float()
        if self.impl not in KERNEL_IMPLS:
            raise ValueError(f"unknown router impl {self.impl!r}; expected one of {KERNEL_IMPLS}")
        route = route_triton if self.impl == "triton" else route_reference
        return route(logits, bias, self.top_k, self.n_group, self.topk_group, self.scaling, self.score_function)


class SparseMoE(nn.Module):
    """Routed experts plus an always-on shared expert; one all-reduce for both partial sums. A single shared
    expert has the routed experts' shape: its weights are stored right after theirs (`stacks`), so the fused
    kernels run it as one more expert that every token takes with weight 1."""

    def __init__(self, hidden: int, moe_intermediate: int, num_experts: int, top_k: int,
                 num_shared: int, router: Router):
        super().__init__()
        self.gate = router
        self.local_intermediate = divide(moe_intermediate, tp_size(), "moe_intermediate_size")
        stacked = num_experts + (num_shared == 1)
        w13 = torch.empty(stacked, 2 * self.local_intermediate, hidden)
        w2 = torch.empty(stacked, hidden, self.local_intermediate)
        self.w13, self.w2 = nn.Parameter(w13[:num_experts]), nn.Parameter(w2[:num_experts])
        self.w13.weight_loader = self.load_w13
        self.w2.weight_loader = self.load_w2
        self.shared_experts = SwiGLU(hidden, moe_intermediate * num_shared, reduce=False) if num_shared else None
        self.stacks = (w13, w2) if num_shared == 1 else None   # plain tensors: the parameters are their views
        if self.stacks is not None:
            share_storage(self.shared_experts.gate_up_proj, w13[num_experts])
            share_storage(self.shared_experts.down_proj, w2[num_experts])
        self.impl = "naive"  # or "triton" (fused_moe); the runner sets it, and the router's own impl beside it
        self.lora = None     # run-time LoRA: (w13's, w2's) LoRAWeights, applied inside either MoE path

    def load_w13(self, param: torch.Tensor, loaded: torch.Tensor, expert: int | None, part: int) -> None:
        """part 0 = gate rows, 1 = up rows; expert None = all experts stacked in `loaded`."""
        size = self.local_intermediate
        rows = loaded.narrow(-2, tp_rank() * size, size)
        target = param.data if expert is None else param.data[expert]
        target.narrow(-2, part * size, size).copy_(rows)

    def load_w2(self, param: torch.Tensor, loaded: torch.Tensor, expert: int | None) -> None:
        size = self.local_intermediate
        target = param.data if expert is None else param.data[expert]
        target.copy_(loaded.narrow(-1, tp_rank() * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        topk_ids, topk_weights = self.gate(x)
        if self.impl == "naive":
            delta = None if self.lora is None else \
                (lambda part, e, tokens, h: self.lora[part].expert_delta(e, tokens, h))
            y = moe_reference(x, self.w13, self.w2, topk_ids, topk_weights, delta=delta)
        elif self.impl == "triton":
            from dlx.kernels.moe_triton import MoELoRA, few_rows_per_expert, fused_moe  # first use: Triton
            if self.shared_stacked() and few_rows_per_expert(topk_ids.numel() + len(x), len(self.stacks[0])):
                return all_reduce(fused_moe(x, *self.stacks, topk_ids, topk_weights, shared=True))
            lora = None if self.lora is None else MoELoRA(self.lora[0].rows.index, self.lora[0].a, self.lora[0].b,
                                                          self.lora[1].a, self.lora[1].b)
            y = fused_moe(x, self.w13, self.w2, topk_ids, topk_weights, lora=lora)
        else:
            raise ValueError(f"unknown MoE impl {self.impl!r}; expected one of {KERNEL_IMPLS}")
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return all_reduce(y)

    def shared_stacked(self) -> bool:
        """Whether the fused kernels may run the shared expert as the last stacked one: no run-time adapter
        touches the MLP, and every parameter still views the stacks (nothing replaced a parameter's data)."""
        if self.stacks is None or self.lora is not None:
            return False
        shared = self.shared_experts
        if shared.gate_up_proj.lora is not None or shared.down_proj.lora is not None:
            return False
        w13, w2 = self.stacks
        return (self.w13.data_ptr() == w13.data_ptr() and self.w2.data_ptr() == w2.data_ptr()
                and shared.gate_up_proj.weight.data_ptr() == w13[-1].data_ptr()
                and shared.down_proj.weight.data_ptr() == w2[-1].data_ptr())


def share_storage(linear: nn.Module, stacked: torch.Tensor) -> None:
    """Make `linear`'s weight a view of `stacked` (its slot in the experts' stacks), keeping its loader."""
    loader = linear.weight.weight_loader
    assert linear.weight.shape == stacked.shape, (linear.weight.shape, stacked.shape)
    linear.weight = nn.Parameter(stacked)
    linear.weight.weight_loader = loader
