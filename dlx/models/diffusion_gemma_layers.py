"""DiffusionGemma's building blocks: Gemma RMSNorm, per-layer-type rotary, attention whose values may be its keys,
the softmax router with its experts, and the sandwich-normed layer that the encoder and the decoder share."""
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from dlx.kernels.moe import moe_reference
from dlx.models.layers import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear, SwiGLU
from dlx.models.moe import SparseMoE
from dlx.models.parallel import all_reduce

if TYPE_CHECKING:
    from dlx.models.diffusion_gemma import DiffusionGemmaConfig


@dataclass
class LayerSpec:
    """What differs between a sliding-window layer and a full-attention layer."""
    sliding: bool
    head_dim: int
    num_kv_heads: int
    rope_type: str         # "default" or "proportional"
    rope_theta: float
    rotary_fraction: float  # partial_rotary_factor
    rope_factor: float


def gemma_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Normalise and scale in fp32, then round once to x's dtype (Gemma's order; LLaDA2 rounds before scaling)."""
    xf = x.float()
    normed = xf * torch.pow(xf.pow(2).mean(-1, keepdim=True) + eps, -0.5)
    return (normed if weight is None else normed * weight.float()).type_as(x)


class GemmaRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemma_rms_norm(x, self.weight, self.eps)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class GeluGatedMLP(SwiGLU):
    """down(gelu_tanh(gate(x)) * up(x)): the dense MLP beside the experts, and the self-conditioning MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(gelu_tanh(gate) * up)


class GemmaRotary(nn.Module):
    """Rotate-half over the whole head. "proportional" rotates only the first fraction of the frequency pairs
    (pair j is dims j and j + head_dim/2) with exponents over the whole head_dim; the other pairs get frequency 0,
    so they pass through unchanged."""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        d = spec.head_dim
        if spec.rope_type == "proportional":
            pairs = int(spec.rotary_fraction * d // 2)
            rotated = 1.0 / spec.rope_theta ** (torch.arange(0, 2 * pairs, 2).float() / d)
            inv_freq = torch.cat([rotated, torch.zeros(d // 2 - pairs)]) / spec.rope_factor
        else:
            inv_freq = 1.0 / spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [N, heads, head_dim]; fp32 angles, cos/sin rounded to x's dtype, as the reference does."""
        angles = positions[:, None].float() * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos().to(x.dtype)[:, None], angles.sin().to(x.dtype)[:, None]
        half = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None
                      ) -> torch.Tensor:
    """q [Nq, Hq, D], k/v [Nk, Hkv, D], visible [Nq, Nk] or None (all). Scale 1: q and k are RMS-normed.
    Query head h reads KV head h // (Hq / Hkv); fp32 scores and softmax, the output in q's dtype."""
    kv_heads = k.shape[1]
    grouped = q.float().view(len(q), kv_heads, -1, q.shape[-1])
    scores = torch.einsum("qhgd,khd->hgqk", grouped, k.float())
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.einsum("hgqk,khd->qhgd", scores.softmax(dim=-1), v.float())
    return out.reshape(q.shape).to(q.dtype)


class GemmaAttention(nn.Module):
    """q, k (and v on sliding layers) in one column-parallel matmul; per-head q/k norms with weights, a weightless
    v norm. Full-attention layers have no v projection: their values are the raw keys, weightless-normed, unrotated."""

    def __init__(self, hidden: int, num_heads: int, spec: LayerSpec, window: int, eps: float):
        super().__init__()
        d, kv = spec.head_dim, spec.num_kv_heads
        self.qkv_proj = ColumnParallelLinear(hidden, [num_heads * d, kv * d] + ([kv * d] if spec.sliding else []))
        self.o_proj = RowParallelLinear(num_heads * d, hidden)
        self.q_norm, self.k_norm = GemmaRMSNorm(d, eps), GemmaRMSNorm(d, eps)
        self.eps, self.head_dim = eps, d
        self.window = window if spec.sliding else None
        self.rotary = GemmaRotary(spec)

    def project(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Rotated q and k, and v, each [N, heads, head_dim]."""
        parts = self.qkv_proj(x).split(self.qkv_proj.local_sections, dim=-1)
        q, k = (p.view(len(x), -1, self.head_dim) for p in parts[:2])
        v = parts[2].view(len(x), -1, self.head_dim) if len(parts) == 3 else k
        q = self.rotary(self.q_norm(q), positions)
        return q, self.rotary(self.k_norm(k), positions), gemma_rms_norm(v, None, self.eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> tuple[torch.Tensor, ...]:
        """Encoder (prompt_kv None): causal over x, within the window on sliding layers. Decoder: x holds one or
        more canvases of equal length, one per (keys, values) of prompt_kv; each canvas sees all of itself and its
        prompt's keys, of which a sliding layer keeps only the last window - 1 (what the reference's sliding cache
        holds). Returns (output, k, v) so the encoder can keep k and v."""
        q, k, v = self.project(x, positions)
        if prompt_kv is None:
            visible = positions[None, :] <= positions[:, None]
            if self.window is not None:
                visible &= positions[None, :] > positions[:, None] - self.window
            out = grouped_attention(q, k, v, visible)
        else:
            canvases = len(prompt_kv)
            out = torch.cat([self.read_prompt(*parts) for parts in
                             zip(q.chunk(canvases), k.chunk(canvases), v.chunk(canvases), prompt_kv)])
        return self.o_proj(out.reshape(len(x), -1)), k, v

    def read_prompt(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    prompt_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One canvas's attention over its prompt's kept keys and all of itself."""
        prompt_k, prompt_v = prompt_kv
        kept = len(prompt_k) if self.window is None else min(len(prompt_k), self.window - 1)
        keys = torch.cat([prompt_k[len(prompt_k) - kept:], k])
        values = torch.cat([prompt_v[len(prompt_v) - kept:], v])
        return grouped_attention(q, keys, values, None)


class GemmaRouter(nn.Module):
    """Top-k of a softmax over experts, computed from the scaled, weightless-normed layer input; the chosen
    probabilities renormalised, then multiplied by a learned per-expert scale."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, eps: float):
        super().__init__()
        self.top_k, self.eps, self.root = top_k, eps, hidden ** -0.5
        self.proj = ReplicatedLinear(hidden, num_experts)
        self.scale = nn.Parameter(torch.empty(hidden))
        self.per_expert_scale = nn.Parameter(torch.empty(num_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids, topk_weights), each [T, top_k], the order SparseMoE takes."""
        scaled = gemma_rms_norm(x, None, self.eps) * self.scale * self.root
        probs = F.softmax(self.proj(scaled), dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, k=self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return ids, weights * self.per_expert_scale[ids]


class GemmaExperts(SparseMoE):
    """SparseMoE's stacked, tensor-parallel expert weights with GELU-tanh experts and no shared expert. The router
    reads the layer's residual stream, the experts its separately normed copy, so forward takes both."""

    def __init__(self, hidden: int, moe_intermediate: int, num_experts: int, top_k: int, eps: float):
        router = GemmaRouter(hidden, num_experts, top_k, eps)
        super().__init__(hidden, moe_intermediate, num_experts, top_k, 0, router)
        self.w13.weight_loader = self.load_gate_up
        self.w2.weight_loader = partial(self.load_w2, expert=None)  # the checkpoint stacks every expert

    def load_gate_up(self, param: torch.Tensor, loaded: torch.Tensor) -> None:
        """The checkpoint stacks every expert's gate rows then its up rows in one [E, 2I, H] tensor."""
        for part, rows in enumerate(loaded.chunk(2, dim=-2)):
            self.load_w13(param, rows, None, part)

    def forward(self, x: torch.Tensor, routing_input: torch.Tensor) -> torch.Tensor:
        if self.impl != "naive":
            raise ValueError(f"MoE impl {self.impl!r}: the fused kernel is SwiGLU-only, these experts are GELU")
        topk_ids, topk_weights = self.gate(routing_input)
        return all_reduce(moe_reference(x, self.w13, self.w2, topk_ids, topk_weights, gelu_tanh))


NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm",
         "pre_feedforward_layernorm_2", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2")


class GemmaLayer(nn.Module):
    """Attention, then a dense MLP and the experts side by side, each sandwiched between norms; the output is
    scaled by a per-layer scalar, which the checkpoint gives separately for the encoder and the decoder pass."""

    def __init__(self, cfg: "DiffusionGemmaConfig", spec: LayerSpec):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.self_attn = GemmaAttention(h, cfg.num_attention_heads, spec, cfg.sliding_window, eps)
        self.mlp = GeluGatedMLP(h, cfg.intermediate_size)
        self.moe = GemmaExperts(h, cfg.moe_intermediate_size, cfg.num_experts, cfg.top_k_experts, eps)
        for name in NORMS:
            setattr(self, name, GemmaRMSNorm(h, eps))
        self.encoder_scalar = nn.Parameter(torch.empty(1))
        self.decoder_scalar = nn.Parameter(torch.empty(1))

    def forward(self, x: torch.Tensor, positions: torch.Tensor,
                prompt_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> tuple[torch.Tensor, ...]:
        """Encoder pass without prompt_kv, decoder pass with it (see GemmaAttention). Returns (x, k, v)."""
        attn, k, v = self.self_attn(self.input_layernorm(x), positions, prompt_kv)
        x = x + self.post_attention_layernorm(attn)
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm(x)))
        routed = self.post_feedforward_layernorm_2(self.moe(self.pre_feedforward_layernorm_2(x), routing_input=x))
        x = x + self.post_feedforward_layernorm(dense + routed)
        return x * (self.encoder_scalar if prompt_kv is None else self.decoder_scalar), k, v
