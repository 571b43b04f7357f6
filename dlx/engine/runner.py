"""Model runner: owns the model and its paged KV cache; turns a scheduled batch into one ragged forward
(input ids, positions, page tables, slot mapping) and returns the logits of the rows the sampler needs."""
import torch

from dlx.engine.request import Request
from dlx.engine.scheduler import StepPlan
from dlx.kernels.attention import AttentionMetadata
from dlx.models.moe import Router, SparseMoE


def fused_impl(attn_impl: str) -> str:
    """The Triton attention brings the fused norms, rotary and sampling reduction with it; "naive" attention
    means plain PyTorch everywhere."""
    return "triton" if attn_impl == "triton_grouped" else "naive"


def configure_kernels(model: torch.nn.Module, attn_impl: str, moe_impl: str) -> None:
    """Select every kernel path of a model: attention and KV store, the fused ops that follow it, the MoE."""
    for attn in model.attention_layers():
        attn.attn_impl = attn_impl
    model.set_kernel_impl(fused_impl(attn_impl))
    for module in model.modules():
        if isinstance(module, (SparseMoE, Router)):
            module.impl = moe_impl


class ModelRunner:
    def __init__(self, model: torch.nn.Module, block_size: int, page_size: int, num_pages: int,
                 attn_impl: str = "naive", moe_impl: str = "naive"):
        self.model, self.block_size, self.page_size = model, block_size, page_size
        self.device = next(model.parameters()).device
        layers = model.attention_layers()
        first = layers[0]
        dtype = first.query_key_value.weight.dtype
        shape = (len(layers), 2, num_pages, page_size, first.num_kv_heads, first.head_dim)
        self.kv_cache = torch.zeros(shape, dtype=dtype, device=self.device)
        for i, attn in enumerate(layers):
            attn.k_cache, attn.v_cache = self.kv_cache[i, 0], self.kv_cache[i, 1]
        configure_kernels(model, attn_impl, moe_impl)

    @staticmethod
    def page_bytes(model: torch.nn.Module, page_size: int) -> int:
        layers = model.attention_layers()
        first = layers[0]
        itemsize = first.query_key_value.weight.element_size()
        return len(layers) * 2 * page_size * first.num_kv_heads * first.head_dim * itemsize

    @torch.no_grad()
    def run(self, batch: list[Request], plans: dict[str, StepPlan], positions: list[list[int]]) -> torch.Tensor:
        """One forward for the whole batch; returns the logits at every request's `positions[i]`, request
        after request, as one [rows, vocab] tensor."""
        ids, pos, slots, query_lens, contexts, tables, logit_rows = [], [], [], [], [], [], []
        offset = 0
        for req, wanted in zip(batch, positions):
            plan = plans[req.rid]
            ids += req.tokens[plan.start:plan.end]
            pos += range(plan.start, plan.end)
            slots += [req.pages[i // self.page_size] * self.page_size + i % self.page_size
                      for i in range(plan.start, plan.store_end)]
            slots += [-1] * (plan.end - plan.store_end)
            query_lens.append(plan.end - plan.start)
            contexts.append(plan.start)
            tables.append(req.pages)
            logit_rows += [offset + p - plan.start for p in wanted]
            offset += plan.end - plan.start
        width = max(1, max(len(t) for t in tables))
        page_tables = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32)
        cu = torch.tensor([0] + query_lens).cumsum(0)
        meta = AttentionMetadata(cu.to(self.device), torch.tensor(contexts, device=self.device),
                                 page_tables.to(self.device), torch.tensor(slots, device=self.device),
                                 self.block_size, query_lens, contexts)
        hidden = self.model(torch.tensor(ids, device=self.device), torch.tensor(pos, device=self.device), meta)
        return self.model.compute_logits(hidden[torch.tensor(logit_rows, dtype=torch.long, device=self.device)])
