"""The written interface between a model family and the engine: what the runner calls on a model (forward, logits,
KV layout, cache binding, kernel switches) and what the loader asks of a family (its config, model and weight map)."""
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class KVLayout:
    """One rank's paged KV cache: [layers, 2 (K and V), pages, page_size, kv_heads, head_dim] in `dtype`."""
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def shape(self, num_pages: int, page_size: int) -> tuple[int, ...]:
        return (self.num_layers, 2, num_pages, page_size, self.num_kv_heads, self.head_dim)

    def page_bytes(self, page_size: int) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return self.num_layers * 2 * page_size * self.num_kv_heads * self.head_dim * itemsize


class ServedModel(Protocol):
    """What the runner needs of a model. `config` has vocab_size and hidden_size; `lora_rows` is None unless
    run-time LoRA adapters are attached, and then takes each step's adapter index per row (`set(tensor)`)."""
    config: Any
    lora_rows: Any

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: Any) -> torch.Tensor:
        """Final hidden states [rows, hidden] of one ragged batch (meta: dlx.kernels.attention.AttentionMetadata)."""

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits of `hidden`'s rows, or written into `out` (the model's dtype) when given."""

    def kv_layout(self) -> KVLayout:
        """The cache its attention layers read and write."""

    def bind_kv_cache(self, cache: torch.Tensor) -> None:
        """Point the attention layers at `cache`, shaped by kv_layout().shape()."""

    def set_kernels(self, attn_impl: str, moe_impl: str) -> None:
        """Choose every kernel path: attention (with the fused norms, rotary and KV store) and the MoE."""


class WeightMap(Protocol):
    """A family's checkpoint names → its parameters; built on a model, fed every tensor of the checkpoint."""

    def load(self, name: str, tensor: torch.Tensor) -> list[str]:
        """Fill what `name` holds; returns the canonical names it covered. Unknown or mis-shaped: ValueError."""

    def expected(self) -> list[str]:
        """Canonical names that together fill every parameter (what a complete checkpoint covers)."""

    def finish(self, covered: set[str]) -> None:
        """Defaults for optional tensors the checkpoint did not hold."""


@dataclass(frozen=True)
class Family:
    """A model family as the loader sees it: config.json dict → config → model, and the model's weight map."""
    config_from_hf: Callable[[dict], Any]
    model: Callable[[Any], torch.nn.Module]
    weight_map: Callable[[torch.nn.Module], WeightMap]
    dtype_of: Callable[[Any], str | None]   # the checkpoint's dtype named in its config, if any
    fill_dummy: Callable[[torch.nn.Module], None] | None = None   # --load-format dummy; None: dummy.py's (LLaDA2's)


def check_shape(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    """A weight map's shape check: one sentence naming the tensor."""
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"tensor '{name}' has shape {list(tensor.shape)} but the config implies {list(shape)}")
