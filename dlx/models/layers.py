"""Building blocks shared by model families: RMSNorm, partial rotary embedding, shard-aware linears.
Each parameter carries a `weight_loader(param, full_tensor, *shard)` that copies this rank's slice."""
import torch
import torch.nn.functional as F
from torch import nn

from dlx.kernels.norm import rms_norm
from dlx.kernels.rotary import qk_norm_rotary
from dlx.models.parallel import all_reduce, divide, tp_rank, tp_size


def copy_full(param: torch.Tensor, loaded: torch.Tensor) -> None:
    param.data.copy_(loaded)


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back, then scale: the order the LLaDA2 reference code uses. Given a residual,
    normalises x + residual and also returns that sum (the next residual), so the add fuses with the norm.
    `impl` ("naive" | "triton") is set by LLaDA2Model.set_kernel_impl."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))
        self.weight.weight_loader = copy_full
        self.impl = "naive"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return rms_norm(x, self.weight, self.eps, residual, self.impl)


class RotaryEmbedding(nn.Module):
    """Rotate-half rotary on the first `rotary_dim` dims; fp32 tables, applied in the activation dtype.
    `impl` ("naive" | "triton") is set by LLaDA2Model.set_kernel_impl."""

    def __init__(self, rotary_dim: int, theta: float, max_positions: int):
        super().__init__()
        self.rotary_dim = rotary_dim
        inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim)
        freqs = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.impl = "naive"

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [N, heads, head_dim]; positions [N]. Returns a new tensor (x is not modified)."""
        return qk_norm_rotary(x, None, None, None, self.cos, self.sin, positions, 0.0, self.impl, inplace=False)[0]


class ReplicatedLinear(nn.Module):
    """Every rank holds the whole weight (router, small projections)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.weight.weight_loader = copy_full
        self.lora = None   # run-time LoRA adapters (dlx.models.lora_layers.LoRAWeights), added to the output
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features))
            self.bias.weight_loader = copy_full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y if self.lora is None else self.lora.add(x, y)


class ColumnParallelLinear(ReplicatedLinear):
    """Output features split across ranks; `sections` are independently split sub-matrices
    (e.g. gate and up of a SwiGLU, fused row-wise), each loaded by its own shard id."""

    def __init__(self, in_features: int, sections: list[int], bias: bool = False):
        self.local_sections = [divide(s, tp_size(), "a column-parallel output size") for s in sections]
        super().__init__(in_features, sum(self.local_sections), bias)
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = self.load_section

    def load_section(self, param: torch.Tensor, loaded: torch.Tensor, section: int = 0) -> None:
        size = self.local_sections[section]
        offset = sum(self.local_sections[:section])
        param.data[offset:offset + size].copy_(loaded.narrow(0, tp_rank() * size, size))


class QKVParallelLinear(ReplicatedLinear):
    """Fused [Q | K | V] projection; query heads split across ranks, KV heads split or replicated
    when there are fewer KV heads than ranks."""

    def __init__(self, hidden: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool):
        self.head_dim, self.total_heads, self.total_kv_heads = head_dim, num_heads, num_kv_heads
        self.num_heads = divide(num_heads, tp_size(), "num_attention_heads")
        if num_kv_heads >= tp_size():
            self.num_kv_heads = divide(num_kv_heads, tp_size(), "num_key_value_heads")
        elif tp_size() % num_kv_heads:
            raise ValueError(f"tensor-parallel size {tp_size()} is not a multiple of "
                             f"num_key_value_heads {num_kv_heads}")
        else:
            self.num_kv_heads = 1
        super().__init__(hidden, (self.num_heads + 2 * self.num_kv_heads) * head_dim, bias)
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = self.load_qkv

    def load_qkv(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        d = self.head_dim
        q_rows = self.total_heads * d
        kv_rows = self.total_kv_heads * d
        kv_rank = tp_rank() * self.total_kv_heads // tp_size() if self.num_kv_heads == 1 and \
            self.total_kv_heads < tp_size() else tp_rank()
        q = loaded[:q_rows].narrow(0, tp_rank() * self.num_heads * d, self.num_heads * d)
        k = loaded[q_rows:q_rows + kv_rows].narrow(0, kv_rank * self.num_kv_heads * d, self.num_kv_heads * d)
        v = loaded[q_rows + kv_rows:].narrow(0, kv_rank * self.num_kv_heads * d, self.num_kv_heads * d)
        param.data.copy_(torch.cat([q, k, v]))


class RowParallelLinear(ReplicatedLinear):
    """Input features split across ranks; partial outputs are summed, bias added once."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__(divide(in_features, tp_size(), "a row-parallel input size"), out_features, bias)
        self.weight.weight_loader = self.load_columns

    def load_columns(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        size = param.shape[1]
        param.data.copy_(loaded.narrow(1, tp_rank() * size, size))

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's partial sum (adapters included: B·(A_local·x_local) sums over ranks to B·A·x)."""
        y = F.linear(x, self.weight)
        return y if self.lora is None else self.lora.add(x, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = all_reduce(self.partial(x))
        return y if self.bias is None else y + self.bias


class SwiGLU(nn.Module):
    """Dense gated MLP: down(silu(gate(x)) * up(x)), gate and up fused in one column-parallel matmul."""

    def __init__(self, hidden: int, intermediate: int, reduce: bool = True):
        super().__init__()
        self.gate_up_proj = ColumnParallelLinear(hidden, [intermediate, intermediate])
        self.down_proj = RowParallelLinear(intermediate, hidden)
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        h = F.silu(gate) * up
        if self.reduce:
            return self.down_proj(h)
        return self.down_proj.partial(h)  # caller sums partials with other terms first
