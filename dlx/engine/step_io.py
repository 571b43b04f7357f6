"""What goes into and comes out of one forward: the batch flattened into rows, slots and page tables, staged in
pinned memory and sent in one copy (plus one for the page tables), padded to a graph's bucket; the logit rows out."""
from dataclasses import dataclass, field

import numpy as np
import torch

from dlx.engine.request import Request
from dlx.engine.strategy import StepPlan


@dataclass
class StepInputs:
    """One forward, request after request: request i owns rows sum(query_lens[:i]) + [0, query_lens[i])."""
    ids: list[int]
    positions: list[int]
    slots: list[int]               # KV cache slot of each row, -1 where the row is not stored
    query_lens: list[int]
    context_lens: list[int]        # cached tokens each request's rows attend to through its pages
    tables: list[list[int]]        # each request's pages
    logit_rows: list[int]          # rows whose logits the sampler needs
    adapters: list[int] = field(default_factory=list)   # run-time LoRA adapter of each row (-1: none)

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> "StepInputs":
        return cls([], [], [], [], [], [], [])


def gather_inputs(batch: list[Request], plans: dict[str, StepPlan], wanted: list[list[int]],
                  page_size: int) -> StepInputs:
    """Flatten the batch: each request's rows [plan.start, plan.end), stored up to plan.store_end, and the
    logits of the positions in `wanted` (one list per request)."""
    inputs = StepInputs.empty()
    offset, with_adapters = 0, any(req.adapter >= 0 for req in batch)   # without, the buffers pad adapters to -1
    for req, positions in zip(batch, wanted):
        plan = plans[req.rid]
        inputs.ids += req.tokens[plan.start:plan.end]
        inputs.positions += range(plan.start, plan.end)
        pages = req.pages
        inputs.slots += [pages[i // page_size] * page_size + i % page_size for i in range(plan.start, plan.store_end)]
        inputs.slots += [-1] * (plan.end - plan.store_end)
        inputs.query_lens.append(plan.end - plan.start)
        inputs.context_lens.append(plan.start)
        inputs.tables.append(pages)
        inputs.logit_rows += [offset + p - plan.start for p in positions]
        if with_adapters:
            inputs.adapters += [req.adapter] * (plan.end - plan.start)
        offset += plan.end - plan.start
    return inputs


@dataclass
class LogitRows:
    """The forward's result for the sampler: logits of the rows it asked for, with their greedy choice."""
    logits: torch.Tensor   # [rows, vocab]
    tokens: torch.Tensor   # [rows] argmax ids, the mask token excluded
    probs: torch.Tensor    # [rows] their softmax probabilities (fp32)


@dataclass
class DeviceInputs:
    """Device views of one forward's inputs (int64; page tables int32)."""
    ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    cu_seqlens: torch.Tensor
    context_lens: torch.Tensor
    page_tables: torch.Tensor
    logit_rows: torch.Tensor
    adapters: torch.Tensor   # run-time LoRA adapter per row (-1: none)


class StepBuffers:
    """Fixed buffers for a forward of up to `rows` rows, `requests` requests with `pages` pages each and
    `logit_rows` logit rows. Every field has a fixed place in one int64 vector, so a step's inputs reach the
    device in one copy from pinned memory (the page tables in a second), and a CUDA graph captured on these
    device views reads each step's values. Padding (to a graph's bucket): rows at position -1, slot -1, token
    0, adapter -1; requests with no rows and no context; logit rows pointing at row 0."""

    def __init__(self, rows: int, requests: int, pages: int, logit_rows: int, device: torch.device):
        self.rows, self.requests, self.pages, self.logit_capacity = rows, requests, pages, logit_rows
        sizes = {"ids": rows, "positions": rows, "slots": rows, "cu_seqlens": requests + 1,
                 "context_lens": requests, "adapters": rows,
                 "logit_rows": logit_rows}
        self.offsets, start = {}, 0
        for name, size in sizes.items():
            self.offsets[name] = (start, size)
            start += size
        pinned = device.type == "cuda"
        self.host = torch.zeros(start, dtype=torch.int64, pin_memory=pinned)
        self.host_tables = torch.zeros(requests, max(1, pages), dtype=torch.int32, pin_memory=pinned)
        self.host_np, self.tables_np = self.host.numpy(), self.host_tables.numpy()
        self.device_vector = torch.zeros_like(self.host, device=device)
        self.device_tables = torch.zeros_like(self.host_tables, device=device)
        # Set when the last copy left the pinned buffers: the next load must not overwrite them before that.
        self.copied = torch.cuda.Event() if pinned else None

    def fits(self, inputs: StepInputs) -> bool:
        return (inputs.num_rows <= self.rows and len(inputs.query_lens) <= self.requests
                and len(inputs.logit_rows) <= self.logit_capacity
                and all(len(t) <= self.pages for t in inputs.tables))

    def field(self, name: str, length: int) -> np.ndarray:
        start, size = self.offsets[name]
        return self.host_np[start:start + min(length, size)]

    def view(self, name: str, length: int) -> torch.Tensor:
        start, _ = self.offsets[name]
        return self.device_vector[start:start + length]

    def load(self, inputs: StepInputs, requests: int | None = None, rows: int | None = None,
             logit_rows: int | None = None) -> DeviceInputs:
        """Stage `inputs` padded to (requests, rows, logit_rows) (default: their own sizes), copy to the device
        without waiting, and return the device views."""
        if self.copied is not None:
            self.copied.synchronize()   # at once in a serving loop: the step's result was read since
        n, r, k = inputs.num_rows, len(inputs.query_lens), len(inputs.logit_rows)
        requests, rows, logit_rows = requests or r, rows or n, logit_rows or k
        for name, values, pad in (("ids", inputs.ids, 0), ("positions", inputs.positions, -1),
                                  ("slots", inputs.slots, -1), ("adapters", inputs.adapters, -1),
                                  ("logit_rows", inputs.logit_rows, 0)):
            length = rows if name != "logit_rows" else logit_rows
            target = self.field(name, length)
            target[:len(values)] = values
            target[len(values):] = pad
        cu = self.field("cu_seqlens", requests + 1)
        cu[0] = 0
        np.cumsum(inputs.query_lens, out=cu[1:r + 1])
        cu[r + 1:] = n   # padding requests own no rows; rows past n belong to nobody
        context = self.field("context_lens", requests)
        context[:r] = inputs.context_lens
        context[r:] = 0
        for i, table in enumerate(inputs.tables):
            self.tables_np[i, :len(table)] = table   # entries past a request's context are never read
        used = self.offsets["logit_rows"][0] + logit_rows
        self.device_vector[:used].copy_(self.host[:used], non_blocking=True)
        self.device_tables[:requests].copy_(self.host_tables[:requests], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        return DeviceInputs(self.view("ids", rows), self.view("positions", rows), self.view("slots", rows),
                            self.view("cu_seqlens", requests + 1), self.view("context_lens", requests),
                            self.device_tables[:requests], self.view("logit_rows", logit_rows),
                            self.view("adapters", rows))
