"""CUDA graphs of the decode step: the model body captured per (requests, rows) bucket and the logits head (lm_head
on the wanted rows + the greedy argmax/probability) per logit-row bucket, all reading StepBuffers' device views."""
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dlx.engine.step_io import LogitRows, StepBuffers, StepInputs
from dlx.kernels.attention import AttentionMetadata
from dlx.kernels.sampling import argmax_prob
from dlx.models.interface import ServedModel

MAX_GRAPH_REQUESTS = 128   # beyond this a step's GPU time dwarfs its launches; larger batches run eagerly


def request_buckets(limit: int) -> list[int]:
    """Batch sizes a graph is captured for: 1, 2, 4, 8, then every 16, and `limit` itself."""
    return sorted({s for s in (1, 2, 4, 8) if s < limit} | set(range(16, limit, 16)) | {limit})


def logit_buckets(limit: int) -> list[int]:
    """Logit-row counts of the head graphs: powers of two up to 256, then every 256, and `limit` itself."""
    return sorted({1 << k for k in range(9) if 1 << k < limit} | set(range(512, limit, 256)) | {limit})


def smallest_at_least(sizes: Sequence[int], value: int) -> int | None:
    return next((s for s in sizes if s >= value), None)


@dataclass(frozen=True)
class GraphPlan:
    """Which buckets exist: a step of R requests, T rows and L logit rows replays body (R_b, T_b) and head L_b."""
    block_size: int
    max_query_len: int            # a request with more rows (a prefill) sends its step to the eager path
    requests: tuple[int, ...]
    rows: tuple[int, ...]         # row buckets, in multiples of the block size
    logit_rows: tuple[int, ...]

    @classmethod
    def build(cls, max_requests: int, block_size: int, buffer_size: int, max_rows: int) -> "GraphPlan":
        """Decode steps only: a request computes its open blocks plus at most one finished block that the step
        stores, so (buffer_size + 1) blocks of rows at most; rows and logit rows stay within the buffers."""
        max_requests = min(max_requests, MAX_GRAPH_REQUESTS)
        max_query_len = (buffer_size + 1) * block_size
        row_limit = min(max_rows, max_requests * max_query_len) // block_size
        rows = tuple(block_size * n for n in request_buckets(row_limit)) if row_limit else ()
        return cls(block_size, max_query_len, tuple(request_buckets(max_requests)), rows,
                   tuple(logit_buckets(max_requests * block_size * buffer_size)))

    def body_key(self, inputs: StepInputs) -> tuple[int, int] | None:
        if not inputs.query_lens or max(inputs.query_lens) > self.max_query_len:
            return None
        requests = smallest_at_least(self.requests, len(inputs.query_lens))
        rows = smallest_at_least(self.rows, inputs.num_rows)
        return None if requests is None or rows is None else (requests, rows)

    def head_key(self, inputs: StepInputs) -> int | None:
        return smallest_at_least(self.logit_rows, max(1, len(inputs.logit_rows)))

    def body_keys(self) -> list[tuple[int, int]]:
        """Every (requests, rows) bucket a step can land in: R_b requests need between (the previous bucket + 1)
        blocks and R_b × max_query_len rows."""
        keys, previous = [], 0
        for requests in self.requests:
            low = smallest_at_least(self.rows, (previous + 1) * self.block_size)
            high = smallest_at_least(self.rows, requests * self.max_query_len) or (self.rows or (0,))[-1]
            keys += [(requests, rows) for rows in self.rows if low is not None and low <= rows <= high]
            previous = requests
        return keys


class StepGraphs:
    """Captures and replays. On a CUDA device each bucket is a torch.cuda.CUDAGraph sharing one memory pool; on
    the CPU (tests) and under --enforce-eager "replay" runs the same function eagerly on the same buffers, so the
    bucketing, padding and static-buffer logic is exercised everywhere and only the capture itself needs a GPU."""

    def __init__(self, model: ServedModel, buffers: StepBuffers, plan: GraphPlan, max_context_len: int,
                 mask_id: int, sampling_impl: str, capture: bool = True):
        self.model, self.buffers, self.plan = model, buffers, plan
        self.max_context_len, self.mask_id, self.sampling_impl = max_context_len, mask_id, sampling_impl
        dtype, device = model.kv_layout().dtype, buffers.device_vector.device
        hidden_size, vocab = model.config.hidden_size, model.config.vocab_size
        self.hidden = torch.zeros(buffers.rows, hidden_size, dtype=dtype, device=device)
        self.logits = torch.zeros(buffers.logit_capacity, vocab, dtype=dtype, device=device)
        self.tokens = torch.zeros(buffers.logit_capacity, dtype=torch.int64, device=device)
        self.probs = torch.zeros(buffers.logit_capacity, dtype=torch.float32, device=device)
        self.bodies: dict[tuple[int, int], Callable[[], None]] = {}
        self.heads: dict[int, Callable[[], None]] = {}
        self.pool = None
        self.on_gpu = device.type == "cuda"
        self.capturing = capture and self.on_gpu   # else each bucket's function runs uncaptured
        self.replays = 0   # steps that ran through the buckets

    def run(self, inputs: StepInputs) -> LogitRows | None:
        """The step's forward through its buckets' graphs; None when it fits none (run it eagerly)."""
        body, head = self.plan.body_key(inputs), self.plan.head_key(inputs)
        if body not in self.bodies or head not in self.heads:
            return None
        self.buffers.load(inputs, requests=body[0], rows=body[1], logit_rows=head)
        self.bodies[body]()
        self.heads[head]()
        self.replays += 1
        wanted = len(inputs.logit_rows)
        return LogitRows(self.logits[:wanted], self.tokens[:wanted], self.probs[:wanted])

    @torch.no_grad()   # a forward with autograd recording would keep its activations (and capture that)
    def capture_all(self) -> tuple[int, float]:
        """Capture every bucket, largest first (the shared pool is sized by the first); (graphs, seconds)."""
        started = time.perf_counter()
        for requests, rows in sorted(self.plan.body_keys(), reverse=True):
            self.bodies[(requests, rows)] = self.capture(lambda r=requests, n=rows: self.body(r, n), requests, rows, 1)
        for count in sorted(self.plan.logit_rows, reverse=True):
            self.heads[count] = self.capture(lambda k=count: self.head(k), 1, 1, count)
        if self.capturing:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()   # the warm-ups' blocks: what stays reserved is the graphs' pool
        return len(self.bodies) + len(self.heads), time.perf_counter() - started

    @torch.no_grad()
    def run_largest(self) -> None:
        """The largest body and head buckets once, eagerly, on an empty batch (to measure their memory)."""
        (requests, rows), count = max(self.plan.body_keys()), max(self.plan.logit_rows)
        self.buffers.load(StepInputs.empty(), requests=requests, rows=rows, logit_rows=count)
        self.body(requests, rows)
        self.head(count)

    def capture(self, forward: Callable[[], None], requests: int, rows: int, logit_rows: int) -> Callable[[], None]:
        if not self.capturing:   # run() loads each step's inputs before calling it
            return forward
        # Inputs of an empty batch: every row padding, every request empty, so the warm-up reads no page.
        self.buffers.load(StepInputs.empty(), requests=requests, rows=rows, logit_rows=logit_rows)
        forward()   # warm-up: compiles every kernel variant outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            forward()
        self.pool = graph.pool()
        return graph.replay

    def body(self, requests: int, rows: int) -> None:
        """Embedding → layers → final norm for a (requests, rows) bucket; launch shapes are the bucket's: every
        request may have max_query_len rows and the longest context (the split count of a long context)."""
        buffers, query_len = self.buffers, self.plan.max_query_len
        meta = AttentionMetadata(buffers.view("cu_seqlens", requests + 1), buffers.view("context_lens", requests),
                                 buffers.device_tables[:requests], buffers.view("slots", rows), self.plan.block_size,
                                 [query_len] * requests, [self.max_context_len] * requests, pad_rows=True)
        meta.kernel_cache["host_summary"] = (query_len, self.max_context_len, rows)
        if self.model.lora_rows is not None:   # run-time LoRA adapters: the one-hot is built inside the graph
            self.model.lora_rows.set(buffers.view("adapters", rows), self.hidden.dtype)
        hidden = self.model(buffers.view("ids", rows), buffers.view("positions", rows), meta)
        self.hidden[:rows].copy_(hidden)

    def head(self, count: int) -> None:
        rows = self.hidden.index_select(0, self.buffers.view("logit_rows", count))
        logits = self.model.compute_logits(rows, out=self.logits[:count])
        tokens, probs = argmax_prob(logits, self.mask_id, self.sampling_impl)
        self.tokens[:count].copy_(tokens)
        self.probs[:count].copy_(probs)
