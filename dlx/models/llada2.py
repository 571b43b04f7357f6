"""The LLaDA2 mixture-of-experts transformer (model_type `llada2_moe`), every choice read from config.json.
Forward over a ragged batch of new tokens; logits at position i predict the token at position i."""
from dataclasses import dataclass

import torch
from torch import nn

from dlx.kernels import KERNEL_IMPLS, fused_impl
from dlx.kernels.attention import AttentionMetadata, paged_attention
from dlx.kernels.kv_store import store_kv
from dlx.kernels.rotary import qk_norm_rotary
from dlx.models.layers import QKVParallelLinear, ReplicatedLinear, RMSNorm, RotaryEmbedding, \
    RowParallelLinear, SwiGLU, copy_full
from dlx.models.interface import KVLayout
from dlx.models.moe import Router, SparseMoE


@dataclass
class LLaDA2Config:
    """Architecture read from config.json; missing keys take the reference configuration's defaults."""
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int | None
    rms_norm_eps: float
    rope_theta: float
    rotary_dim: int
    max_position_embeddings: int
    use_qk_norm: bool
    use_qkv_bias: bool
    use_bias: bool
    tie_word_embeddings: bool
    num_experts: int | None
    num_experts_per_tok: int
    num_shared_experts: int
    moe_intermediate_size: int | None
    first_k_dense_replace: int
    n_group: int
    topk_group: int
    routed_scaling_factor: float
    score_function: str
    expert_bias: bool | None  # None: use the tensor if the checkpoint has it
    eos_token_id: int | None
    torch_dtype: str | None

    @classmethod
    def from_hf(cls, cfg: dict) -> "LLaDA2Config":
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            if key not in cfg:
                raise ValueError(f"config.json has no '{key}'")
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"rope type '{rope_type}' in config.json is not supported")
        partial = rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.5))
        rotary_dim = cfg.get("rotary_dim") or int(head_dim * partial)
        eos = cfg.get("eos_token_id")
        enable_bias = cfg.get("moe_router_enable_expert_bias")
        return cls(
            vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads, head_dim=head_dim,
            intermediate_size=cfg.get("intermediate_size"), rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)), rotary_dim=rotary_dim,
            max_position_embeddings=cfg.get("max_position_embeddings", 16384),
            use_qk_norm=cfg.get("use_qk_norm", True), use_qkv_bias=cfg.get("use_qkv_bias", False),
            use_bias=cfg.get("use_bias", True), tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            num_experts=cfg.get("num_experts"), num_experts_per_tok=cfg.get("num_experts_per_tok", 2),
            num_shared_experts=cfg.get("num_shared_experts") or 0,
            moe_intermediate_size=cfg.get("moe_intermediate_size"),
            first_k_dense_replace=cfg.get("first_k_dense_replace", 0),
            n_group=cfg.get("n_group") or 1, topk_group=cfg.get("topk_group") or 1,
            routed_scaling_factor=cfg.get("routed_scaling_factor", 1.0),
            score_function=cfg.get("score_function", "sigmoid"),
            expert_bias=None if enable_bias is None else bool(enable_bias),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
        )

    def is_moe_layer(self, index: int) -> bool:
        return bool(self.num_experts) and index >= self.first_k_dense_replace


class Attention(nn.Module):
    """Fused QKV, per-head qk RMSNorm, partial rotary, block-diffusion attention, output projection."""

    def __init__(self, cfg: LLaDA2Config, rotary: RotaryEmbedding):
        super().__init__()
        self.query_key_value = QKVParallelLinear(cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads,
                                                 cfg.num_key_value_heads, cfg.use_qkv_bias)
        self.num_heads = self.query_key_value.num_heads
        self.num_kv_heads = self.query_key_value.num_kv_heads
        self.head_dim, self.scale = cfg.head_dim, cfg.head_dim ** -0.5
        self.query_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.use_qk_norm else None
        self.key_layernorm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.use_qk_norm else None
        self.dense = RowParallelLinear(cfg.num_attention_heads * cfg.head_dim, cfg.hidden_size, cfg.use_bias)
        self.rotary = rotary
        self.k_cache: torch.Tensor | None = None  # [pages, page_size, kv_heads, head_dim], set by the runner
        self.v_cache: torch.Tensor | None = None
        self.attn_impl = "naive"                  # or "triton_grouped", set by the runner

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        qkv = self.query_key_value(x).view(len(x), -1, self.head_dim)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        # qk norm + rotary of q and k; the Triton kernel writes them in place into qkv, so q, k and v stay
        # views with one layout and the KV store and the Triton attention read them without a copy.
        weights = (None, None) if self.query_layernorm is None else \
            (self.query_layernorm.weight, self.key_layernorm.weight)
        eps = 0.0 if self.query_layernorm is None else self.query_layernorm.eps
        q, k = qk_norm_rotary(q, k, *weights, self.rotary.cos, self.rotary.sin, positions, eps, self.rotary.impl)
        if self.k_cache is not None and meta.slot_mapping is not None:
            store_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping, self.attn_impl)
        out = paged_attention(q, k, v, positions, self.k_cache, self.v_cache, meta, self.scale, self.attn_impl)
        return self.dense(out.reshape(len(x), -1))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLaDA2Config, index: int, rotary: RotaryEmbedding):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, rotary)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe_layer(index):
            router = Router(cfg.hidden_size, cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group,
                            cfg.topk_group, cfg.routed_scaling_factor, cfg.score_function,
                            cfg.expert_bias is not False)
            self.mlp = SparseMoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                                 cfg.num_experts_per_tok, cfg.num_shared_experts, router)
        else:
            self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream is carried beside the layer output, as vLLM does, so every residual add fuses
        with the norm after it: takes (previous MLP output, residual), or (embeddings, None) for the first
        layer; returns (MLP output, residual). Same arithmetic as h = x + attn(norm1(x)); out = h + mlp(norm2(h)):
        each sum is formed once, by the norm that consumes it (a + b == b + a exactly in floating point)."""
        if residual is None:
            residual, normed = x, self.input_layernorm(x)
        else:
            normed, residual = self.input_layernorm(x, residual)
        attn_out = self.attention(normed, positions, meta)
        normed, residual = self.post_attention_layernorm(attn_out, residual)
        return self.mlp(normed), residual


class LLaDA2Model(nn.Module):
    """Embedding → decoder layers → final norm; `compute_logits` only for the rows that need them."""

    def __init__(self, cfg: LLaDA2Config):
        super().__init__()
        self.config = cfg
        self.lora_rows = None   # run-time LoRA adapters attach a per-row selector here (dlx/models/lora_layers.py)
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.word_embeddings.weight.weight_loader = copy_full
        rotary = RotaryEmbedding(cfg.rotary_dim, cfg.rope_theta, cfg.max_position_embeddings)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, rotary) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = ReplicatedLinear(cfg.hidden_size, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        x, residual = self.word_embeddings(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, positions, meta, residual)
        return self.norm(x) if residual is None else self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits of `hidden`'s rows; into `out` instead (the lm_head's dtype) when given, as a CUDA graph
        writes them into its fixed buffer."""
        if out is None:
            return self.lm_head(hidden).float()
        return torch.matmul(hidden, self.lm_head.weight.t(), out=out)

    def attention_layers(self) -> list[Attention]:
        return [layer.attention for layer in self.layers]

    def kv_layout(self) -> KVLayout:
        first = self.layers[0].attention
        return KVLayout(len(self.layers), first.num_kv_heads, first.head_dim, first.query_key_value.weight.dtype)

    def bind_kv_cache(self, cache: torch.Tensor) -> None:
        for i, attn in enumerate(self.attention_layers()):
            attn.k_cache, attn.v_cache = cache[i, 0], cache[i, 1]

    def set_kernels(self, attn_impl: str, moe_impl: str) -> None:
        """Attention and its KV store, the fused ops that follow the attention's choice, the MoE and its router."""
        for attn in self.attention_layers():
            attn.attn_impl = attn_impl
        self.set_kernel_impl(fused_impl(attn_impl))
        for module in self.modules():
            if isinstance(module, (SparseMoE, Router)):
                module.impl = moe_impl

    def set_kernel_impl(self, impl: str) -> None:
        """Kernels of every RMSNorm (residual adds included) and of the shared rotary table, which the attention
        layers' fused qk norm + rotary follows: "naive" (PyTorch) or "triton". The MoE and the attention itself
        (attn_impl) are switched separately."""
        if impl not in KERNEL_IMPLS:
            raise ValueError(f"unknown kernel impl {impl!r}; expected one of {KERNEL_IMPLS}")
        for module in self.modules():
            if isinstance(module, (RMSNorm, RotaryEmbedding)):
                module.impl = impl
