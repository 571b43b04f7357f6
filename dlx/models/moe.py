"""LLaDA2 mixture-of-experts layer: the sigmoid group-limited router and stacked expert weights.
Experts are split across tensor-parallel ranks along their intermediate dimension."""
import torch
import torch.nn.functional as F
from torch import nn

from dlx.kernels.moe import moe_reference
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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float())
        scores = torch.sigmoid(logits) if self.score_function == "sigmoid" else torch.softmax(logits, -1)
        choice = scores if self.expert_bias is None else scores + self.expert_bias.float()
        if self.n_group > 1 and self.topk_group < self.n_group:
            grouped = choice.view(len(x), self.n_group, -1)
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
            best_groups = group_score.topk(self.topk_group, dim=-1, sorted=False).indices
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)
            choice = choice.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
        topk_ids = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, topk_ids)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_ids, weights * self.scaling


class SparseMoE(nn.Module):
    """Routed experts plus an always-on shared expert; one all-reduce for both partial sums."""

    def __init__(self, hidden: int, moe_intermediate: int, num_experts: int, top_k: int,
                 num_shared: int, router: Router):
        super().__init__()
        self.gate = router
        self.local_intermediate = divide(moe_intermediate, tp_size(), "moe_intermediate_size")
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * self.local_intermediate, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, self.local_intermediate))
        self.w13.weight_loader = self.load_w13
        self.w2.weight_loader = self.load_w2
        self.shared_experts = SwiGLU(hidden, moe_intermediate * num_shared, reduce=False) if num_shared else None

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
        y = moe_reference(x, self.w13, self.w2, topk_ids, topk_weights)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return all_reduce(y)
