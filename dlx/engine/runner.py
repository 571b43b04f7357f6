"""Model runner: owns the model, its paged KV cache, the step's input buffers and CUDA graphs; turns a scheduled
batch into one ragged forward and returns the logits of the rows the sampler needs with their greedy choice."""
import torch

from dlx.engine.graphs import GraphPlan, StepGraphs
from dlx.engine.request import Request
from dlx.engine.strategy import StepPlan
from dlx.engine.step_io import LogitRows, StepBuffers, StepInputs, gather_inputs
from dlx.kernels import fused_impl
from dlx.kernels.attention import AttentionMetadata
from dlx.kernels.sampling import argmax_prob
from dlx.models.interface import ServedModel


class ModelRunner:
    def __init__(self, model: ServedModel, block_size: int, page_size: int, num_pages: int, mask_id: int,
                 limits: tuple[int, int, int, int], attn_impl: str = "naive", moe_impl: str = "naive"):
        """limits: (rows, requests, pages per request, logit rows) a step can need, which sizes its buffers."""
        self.model, self.block_size, self.page_size, self.mask_id = model, block_size, page_size, mask_id
        self.device = next(model.parameters()).device
        layout = model.kv_layout()
        self.kv_cache = torch.zeros(layout.shape(num_pages, page_size), dtype=layout.dtype, device=self.device)
        model.bind_kv_cache(self.kv_cache)
        model.set_kernels(attn_impl, moe_impl)
        self.sampling_impl = fused_impl(attn_impl)
        self.buffers = StepBuffers(*limits, self.device)
        self.graphs: StepGraphs | None = None

    def use_graphs(self, max_requests: int, buffer_size: int, max_context_len: int,
                   capture: bool = True) -> tuple[int, float]:
        """Run decode steps through the graphs' buckets (they need the Triton attention, whose launch shapes come
        from the buckets); returns (graphs, seconds). capture False runs each bucket's function uncaptured (the
        same shapes and so the same tokens: --enforce-eager)."""
        if self.sampling_impl != "triton":
            raise ValueError("CUDA graphs need --attn-impl triton_grouped")
        plan = GraphPlan.build(max_requests, self.block_size, buffer_size, self.buffers.rows)
        self.graphs = StepGraphs(self.model, self.buffers, plan, max_context_len, self.mask_id, self.sampling_impl,
                                 capture)
        return self.graphs.capture_all()

    @torch.no_grad()
    def run(self, batch: list[Request], plans: dict[str, StepPlan], positions: list[list[int]]) -> LogitRows:
        """One forward for the whole batch: the logits at every request's `positions[i]`, request after request,
        with their greedy (token, probability); through a graph when the step fits one."""
        inputs = gather_inputs(batch, plans, positions, self.page_size)
        if self.graphs is not None:
            result = self.graphs.run(inputs)
            if result is not None:
                return result
        return self.run_eager(inputs)

    def run_eager(self, inputs: StepInputs) -> LogitRows:
        buffers = self.buffers if self.buffers.fits(inputs) else StepBuffers(
            inputs.num_rows, len(inputs.query_lens), max(map(len, inputs.tables)), len(inputs.logit_rows), self.device)
        dev = buffers.load(inputs)
        meta = AttentionMetadata(dev.cu_seqlens, dev.context_lens, dev.page_tables, dev.slots, self.block_size,
                                 inputs.query_lens, inputs.context_lens)
        if self.model.lora_rows is not None:   # run-time LoRA adapters
            self.model.lora_rows.set(dev.adapters, self.kv_cache.dtype)
        hidden = self.model(dev.ids, dev.positions, meta)
        logits = self.model.compute_logits(hidden.index_select(0, dev.logit_rows))
        return LogitRows(logits, *argmax_prob(logits, self.mask_id, self.sampling_impl))
