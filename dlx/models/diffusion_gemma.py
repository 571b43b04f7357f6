"""The DiffusionGemma text model (model_type `diffusion_gemma`): its config read from config.json, and the
full-recompute reference forward: encode(prompt) once, then decode_step(canvas) per denoising step (decode_steps:
several requests' canvases in one forward)."""
from dataclasses import dataclass

import torch
from torch import nn

from dlx.models.diffusion_gemma_layers import GeluGatedMLP, GemmaLayer, GemmaRMSNorm, LayerSpec, gemma_rms_norm
from dlx.models.layers import ReplicatedLinear

# What the reference configuration assumes when config.json leaves a key out.
DEFAULT_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                   "rope_theta": 1_000_000.0}}
SLIDING_PATTERN = 6        # without layer_types, every sixth layer is a full-attention layer
GLOBAL_HEAD_DIM = 512      # full-attention head_dim when config.json has neither per_layer_config nor global_head_dim
GELU_ACTIVATIONS = ("gelu_pytorch_tanh",)


@dataclass
class DiffusionGemmaConfig:
    """Architecture read from config.json (the text_config part; canvas and dtype from the top level)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    layers: list[LayerSpec]
    sliding_window: int
    rms_norm_eps: float
    final_logit_softcapping: float | None
    num_experts: int
    top_k_experts: int
    moe_intermediate_size: int
    canvas_length: int
    max_position_embeddings: int
    pad_token_id: int | None
    eos_token_ids: list[int]
    torch_dtype: str | None

    @classmethod
    def from_hf(cls, cfg: dict) -> "DiffusionGemmaConfig":
        text = cfg.get("text_config") or cfg
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_experts", "top_k_experts", "moe_intermediate_size"):
            if text.get(key) is None:
                raise ValueError(f"config.json has no '{key}' in its text_config")
        if text.get("use_bidirectional_attention") == "all":
            raise ValueError("use_bidirectional_attention 'all' (a bidirectional encoder) is not supported")
        if not cfg.get("tie_word_embeddings", True):
            raise ValueError("tie_word_embeddings false (separate encoder and decoder weights) is not supported")
        if text.get("attention_bias"):  # the reference does not tie biases: the encoder would need its own
            raise ValueError("attention_bias true (separate encoder and decoder biases) is not supported")
        if text.get("hidden_activation", "gelu_pytorch_tanh") not in GELU_ACTIVATIONS:
            raise ValueError(f"hidden_activation '{text['hidden_activation']}' is not supported")
        eos = cfg.get("eos_token_id", text.get("eos_token_id"))
        return cls(
            vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"], num_hidden_layers=text["num_hidden_layers"],
            num_attention_heads=text["num_attention_heads"], layers=layer_specs(text),
            sliding_window=text.get("sliding_window", 512), rms_norm_eps=text.get("rms_norm_eps", 1e-6),
            final_logit_softcapping=text.get("final_logit_softcapping", 30.0),
            num_experts=text["num_experts"], top_k_experts=text["top_k_experts"],
            moe_intermediate_size=text["moe_intermediate_size"], canvas_length=cfg.get("canvas_length", 256),
            max_position_embeddings=text.get("max_position_embeddings", 131_072),
            pad_token_id=text.get("pad_token_id", 0),
            eos_token_ids=[] if eos is None else list(eos) if isinstance(eos, list) else [eos],
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype") or text.get("dtype"),
        )


def layer_specs(text: dict) -> list[LayerSpec]:
    """Per layer: its type, its head_dim and KV heads (full-attention layers override them, from per_layer_config
    or else from global_head_dim and num_global_key_value_heads), and its type's rotary settings."""
    n = text["num_hidden_layers"]
    types = list(text.get("layer_types") or
                 ["full_attention" if (i + 1) % SLIDING_PATTERN == 0 else "sliding_attention" for i in range(n)])
    if len(types) != n:
        raise ValueError(f"config.json has {len(types)} layer_types for {n} layers")
    types[-1] = "full_attention"  # the reference forces it
    overrides = {int(i): o for i, o in (text.get("per_layer_config") or {}).items()}
    if "per_layer_config" not in text:
        full = {"head_dim": text.get("global_head_dim", GLOBAL_HEAD_DIM)}
        if text.get("num_global_key_value_heads") is not None and text.get("attention_k_eq_v", True):
            full["num_key_value_heads"] = text["num_global_key_value_heads"]
        overrides = {i: full for i, t in enumerate(types) if t == "full_attention"}
    rope = text.get("rope_parameters") or DEFAULT_ROPE
    specs = []
    for i, layer_type in enumerate(types):
        if layer_type not in DEFAULT_ROPE:
            raise ValueError(f"layer type '{layer_type}' in config.json is not supported")
        params = rope[layer_type]
        kind, fraction = params.get("rope_type", "default"), params.get("partial_rotary_factor", 1.0)
        if kind not in ("default", "proportional") or (kind == "default" and fraction != 1.0):
            raise ValueError(f"rope {params} of {layer_type} layers in config.json is not supported")
        shape = {"head_dim": text.get("head_dim", 256), "num_key_value_heads": text.get("num_key_value_heads", 4),
                 **overrides.get(i, {})}
        specs.append(LayerSpec(sliding=layer_type == "sliding_attention", head_dim=shape["head_dim"],
                               num_kv_heads=shape["num_key_value_heads"], rope_type=kind,
                               rope_theta=params["rope_theta"], rotary_fraction=fraction,
                               rope_factor=params.get("factor", 1.0)))
    return specs


@dataclass
class EncodedPrompt:
    """What the decoder reads of an encoded prompt: per layer the keys (normed, rotated) and values of every
    prompt position, [P, kv_heads, head_dim] each, and the encoder's final (normed) hidden states [P, hidden]."""
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: torch.Tensor

    @property
    def length(self) -> int:
        return len(self.hidden)


class SelfConditioning(nn.Module):
    """Adds a gated-MLP image of the previous step's soft embeddings to the canvas embeddings, then a weightless
    norm. Without a previous step the MLP's input is zero, so its output is exactly zero and is skipped."""

    def __init__(self, cfg: DiffusionGemmaConfig):
        super().__init__()
        self.pre_norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GeluGatedMLP(cfg.hidden_size, cfg.intermediate_size)
        self.eps = cfg.rms_norm_eps

    def forward(self, embeddings: torch.Tensor, soft_embeddings: torch.Tensor | None) -> torch.Tensor:
        if soft_embeddings is not None:
            embeddings = embeddings + self.mlp(self.pre_norm(soft_embeddings))
        return gemma_rms_norm(embeddings, None, self.eps)


class DiffusionGemmaModel(nn.Module):
    """Scaled embedding → layers → final norm → tied output head with tanh soft-capping. One stack of layers
    serves both passes, as the checkpoint ties them: the encoder runs it causally over the prompt (sliding layers
    within their window) and keeps each layer's keys and values; the decoder runs it bidirectionally over the canvas,
    each layer also reading the prompt's keys (a sliding layer only the last window - 1 of them)."""

    # Still to come for the engine: the prompt's KV in paged cache blocks, written once and read by every denoising
    # step of the request (a sliding layer needs only its last window - 1 positions); several requests' canvases in
    # one ragged forward; Triton attention for the windowed causal pass and the bidirectional canvas pass, with head
    # dims that differ by layer type; a GELU fused MoE; tensor parallelism (the loaders slice already, but KV heads
    # fewer than ranks and the vocabulary are not split); and the loader's family table pointing at this module.

    def __init__(self, cfg: DiffusionGemmaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(GemmaLayer(cfg, spec) for spec in cfg.layers)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_conditioning = SelfConditioning(cfg)
        self.lm_head = ReplicatedLinear(cfg.hidden_size, cfg.vocab_size)
        self.lm_head.weight = self.embed_tokens.weight

    def embed_scale(self) -> torch.Tensor:
        """sqrt(hidden), rounded to the weights' dtype as the reference does (53.07 becomes 53.0 in bf16)."""
        return torch.tensor(self.config.hidden_size ** 0.5).to(self.embed_tokens.weight.dtype)

    def encode(self, prompt_ids: torch.Tensor) -> EncodedPrompt:
        """prompt_ids [P] at positions 0..P-1 (the prompt and every accepted canvas after it, recomputed)."""
        x = self.embed_tokens(prompt_ids) * self.embed_scale()
        positions = torch.arange(len(prompt_ids), device=prompt_ids.device)
        keys, values = [], []
        for layer in self.layers:
            x, k, v = layer(x, positions)
            keys.append(k)
            values.append(v)
        return EncodedPrompt(keys, values, self.norm(x))

    def soft_embeddings(self, logits: torch.Tensor) -> torch.Tensor:
        """The expected embedding under softmax(logits) [C, vocab]: the self-conditioning input of the next step."""
        probs = logits.softmax(dim=-1, dtype=torch.float32).to(self.embed_tokens.weight.dtype)
        return torch.matmul(probs, self.embed_tokens.weight) * self.embed_scale()

    def decode_step(self, canvas_ids: torch.Tensor, prompt: EncodedPrompt,
                    self_conditioning_logits: torch.Tensor | None = None) -> torch.Tensor:
        """One denoising step: canvas_ids [C] at positions P..P+C-1 after the prompt; self_conditioning_logits
        [C, vocab] the previous step's logits, None on the first step. Returns fp32 logits [C, vocab]."""
        return self.decode_steps([canvas_ids], [prompt], [self_conditioning_logits])[0]

    def decode_steps(self, canvases: list[torch.Tensor], prompts: list[EncodedPrompt],
                     self_conditioning_logits: list[torch.Tensor | None]) -> list[torch.Tensor]:
        """decode_step for several requests in one forward: canvases of one length, each after its own prompt.
        Every op but attention runs on all rows at once; attention reads each canvas's own prompt."""
        x = self.embed_tokens(torch.cat(canvases)) * self.embed_scale()
        length = len(canvases[0])
        conditioned = [i for i, logits in enumerate(self_conditioning_logits) if logits is not None]
        if conditioned:   # the rows of canvases with a previous step; the others' MLP input would be exactly zero
            rows = torch.cat([torch.arange(i * length, (i + 1) * length) for i in conditioned]).to(x.device)
            soft = self.soft_embeddings(torch.cat([self_conditioning_logits[i] for i in conditioned]))
            x = x.index_add(0, rows, self.self_conditioning.mlp(self.self_conditioning.pre_norm(soft)))
        x = self.self_conditioning(x, None)
        positions = torch.cat([torch.arange(p.length, p.length + length, device=x.device) for p in prompts])
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, [(p.keys[i], p.values[i]) for p in prompts])[0]
        return list(self.compute_logits(self.norm(x)).split(length))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits, soft-capped: cap * tanh(logits / cap)."""
        logits = self.lm_head(hidden).float()
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap
