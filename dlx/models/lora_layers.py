"""LoRA adapters on LLaDA2's layers: each adapter's (A, B) cut to this rank's slice of its layer by the layer's own
weight loaders, then folded into the weights (pre-merge) or stacked per adapter and applied per batch row."""
import re

import torch

from dlx.models.layers import QKVParallelLinear, ReplicatedLinear, RowParallelLinear
from dlx.models.lora import LoRAAdapter, read_adapter
from dlx.models.moe import SparseMoE
from dlx.params import parse_lora_paths

MODULE = re.compile(r"^model\.layers\.(\d+)\.(attention\.query_key_value|attention\.dense|"
                    r"mlp(?:\.shared_experts|\.experts\.(\d+))?\.(gate|up|down)_proj)$")
Pair = tuple[torch.Tensor, torch.Tensor]


def zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float32)


def local_pairs(model: torch.nn.Module, adapter: LoRAAdapter) -> dict[tuple, Pair]:
    """This rank's (A [R, in_local], B [out_local, R]) per target, with delta W_local = B @ A. Targets: (module,)
    for a linear layer, (moe, 0 | 1, expert) for routed experts' w13 / w2. Gate and up, fused in one weight,
    stack their A rows and place their B blocks on the diagonal."""
    out: dict[tuple, Pair] = {}
    for name, (a, b) in adapter.pairs.items():
        m = MODULE.match(name)
        layer = model.layers[int(m.group(1))]
        r = a.shape[0]
        if m.group(2).startswith("attention"):
            module = layer.attention.query_key_value if "query" in m.group(2) else layer.attention.dense
            key = (module,)
        elif m.group(3) is None:
            mlp = layer.mlp.shared_experts if "shared" in m.group(2) else layer.mlp
            module = mlp.down_proj if m.group(4) == "down" else mlp.gate_up_proj
            key = (module,)
        else:
            module, expert = layer.mlp, int(m.group(3))
            key = (module, int(m.group(4) == "down"), expert)
        if isinstance(module, QKVParallelLinear):
            b_local = zeros(module.weight.shape[0], r)
            module.load_qkv(b_local, b)
            out[key] = (a, b_local)
        elif isinstance(module, RowParallelLinear):
            a_local = zeros(r, module.weight.shape[1])
            module.load_columns(a_local, a)
            out[key] = (a_local, b)
        elif isinstance(module, SparseMoE) and key[1] == 1:
            a_local = zeros(1, r, module.w2.shape[2])
            module.load_w2(a_local, a, 0)
            out[key] = (a_local[0], b)
        else:   # gate or up: one section of a fused gate_up weight
            part = int(m.group(4) == "up")
            rows = module.w13.shape[1] if isinstance(module, SparseMoE) else module.weight.shape[0]
            b_section = zeros(rows, r)
            if isinstance(module, SparseMoE):
                module.load_w13(b_section[None], b, 0, part)   # one expert's rows, as load_w13 places them
            else:
                module.load_section(b_section, b, part)
            a_old, b_old = out.get(key, (zeros(0, a.shape[1]), zeros(rows, 0)))
            out[key] = (torch.cat([a_old, a]), torch.cat([b_old, b_section], dim=1))
    return out


def merge_adapter(model: torch.nn.Module, adapter: LoRAAdapter) -> None:
    """--pre-merge-lora: W += scale·B·A on every targeted slice, in fp32, cast back to the weight's dtype."""
    with torch.no_grad():
        for key, (a, b) in local_pairs(model, adapter).items():
            weight = key[0].weight if len(key) == 1 else (key[0].w13, key[0].w2)[key[1]][key[2]]
            weight.copy_((weight.float() + b.to(weight.device) @ a.to(weight.device)).to(weight.dtype))


class LoRARows:
    """Which adapter each row of the current forward uses (-1: none), as the row's one-hot over the adapters; set
    once per forward from a device tensor, with no host sync, so a CUDA graph can hold every adapter product."""

    def __init__(self, adapters: int) -> None:
        self.adapters = adapters
        self.index: torch.Tensor | None = None    # [T] adapter per row
        self.onehot: torch.Tensor | None = None   # [T, N] 1.0 at the row's adapter, zeros for -1

    def set(self, index: torch.Tensor, dtype: torch.dtype) -> None:
        self.index = index
        self.onehot = (index[:, None] == torch.arange(self.adapters, device=index.device)).to(dtype)


class LoRAWeights:
    """One layer's adapters stacked: a [N, ..., R, in], b [N, ..., out, R] (zeros where an adapter skips it).
    Every row goes through all N adapters' A at once and keeps only its own adapter's product (the one-hot),
    then through all B: two GEMMs per layer whatever the mix, no grouping by adapter."""

    def __init__(self, rows: LoRARows, a: torch.Tensor, b: torch.Tensor):
        self.rows = rows
        if a.dim() == 3:   # a linear layer: kept only flattened, to [N*R, in] and [out, N*R]
            self.a_flat = a.reshape(-1, a.shape[-1])
            self.b_flat = b.permute(1, 0, 2).reshape(b.shape[1], -1).contiguous()
        else:              # routed experts [N, E, ...]: the fused MoE kernels read the stacks as they are
            self.a, self.b = a, b

    def add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y + each row's adapter applied to x (a linear layer)."""
        return y + self.product(x, self.rows.onehot, self.a_flat, self.b_flat).to(y.dtype)

    def expert_delta(self, expert: int, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Routed rows x (of batch rows `tokens`) through expert's adapters."""
        a, b = self.a[:, expert], self.b[:, expert]
        a_flat, b_flat = a.reshape(-1, a.shape[-1]), b.permute(1, 0, 2).reshape(b.shape[1], -1)
        return self.product(x, self.rows.onehot.index_select(0, tokens), a_flat, b_flat).to(x.dtype)

    @staticmethod
    def product(x: torch.Tensor, onehot: torch.Tensor, a_flat: torch.Tensor, b_flat: torch.Tensor) -> torch.Tensor:
        xa = (x.to(a_flat.dtype) @ a_flat.t()).view(len(x), onehot.shape[1], -1)
        return (xa * onehot[:, :, None].to(xa.dtype)).view(len(x), -1) @ b_flat.t()


def stack(pairs: list[Pair | None], shape_a: tuple, shape_b: tuple, dtype: torch.dtype,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapters' pairs padded to one rank R (zeros: the same product) and stacked on a leading adapter axis."""
    rank = max([p[0].shape[-2] for p in pairs if p is not None] + [1])
    a, b = zeros(len(pairs), *shape_a[:-1], rank, shape_a[-1]), zeros(len(pairs), *shape_b[:-1], rank)
    for i, pair in enumerate(pairs):
        if pair is not None:
            a[i, ..., :pair[0].shape[-2], :] = pair[0]
            b[i, ..., :pair[1].shape[-1]] = pair[1]
    return a.to(device, dtype), b.to(device, dtype)


def attach_adapters(model: torch.nn.Module, adapters: list[LoRAAdapter]) -> LoRARows:
    """Run-time adapters: every targeted layer gets `lora` (adapter i = index i of the returned rows' table)."""
    rows, per = LoRARows(len(adapters)), [local_pairs(model, adapter) for adapter in adapters]
    dtype, device = model.lm_head.weight.dtype, model.lm_head.weight.device
    for module in model.modules():
        if isinstance(module, ReplicatedLinear) and any((module,) in p for p in per):
            w = module.weight
            a, b = stack([p.get((module,)) for p in per], (w.shape[1],), (w.shape[0], 0), dtype, device)
            module.lora = LoRAWeights(rows, a, b)
        if isinstance(module, SparseMoE) and any(k[0] is module for p in per for k in p):
            experts, stacked = module.w13.shape[0], []
            for part, w in enumerate((module.w13, module.w2)):
                pairs = [expert_pairs(p, module, part, experts, w) for p in per]
                a, b = stack(pairs, (experts, w.shape[2]), (experts, w.shape[1], 0), dtype, device)
                stacked.append(LoRAWeights(rows, a, b))
            module.lora = tuple(stacked)
    model.lora_rows = rows
    return rows


def expert_pairs(pairs: dict[tuple, Pair], moe: SparseMoE, part: int, experts: int, w: torch.Tensor) -> Pair | None:
    """One adapter's routed-expert pairs of w13 (part 0) or w2 (part 1), stacked over experts with zero padding."""
    found = {k[2]: v for k, v in pairs.items() if k[0] is moe and k[1] == part}
    if not found:
        return None
    rank = max(a.shape[0] for a, _ in found.values())
    a, b = zeros(experts, rank, w.shape[2]), zeros(experts, w.shape[1], rank)
    for e, (ea, eb) in found.items():
        a[e, :ea.shape[0]], b[e, :, :eb.shape[1]] = ea, eb
    return a, b


def serve_adapters(model: torch.nn.Module, lora_path: str, pre_merge: bool) -> dict[str, int]:
    """--lora-path on a loaded model: fold the one adapter in (pre_merge), or attach every adapter for run-time use.
    Returns the adapter a request name picks (its index in each row's adapter id); "" is the unnamed adapter."""
    if not lora_path:
        return {}
    adapters = [read_adapter(path, model.config, name) for name, path in parse_lora_paths(lora_path)]
    if pre_merge:
        merge_adapter(model, adapters[0])
        return {}
    attach_adapters(model, adapters)
    return {adapter.name: i for i, adapter in enumerate(adapters)}
