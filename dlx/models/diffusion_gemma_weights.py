"""DiffusionGemma's weight map: each transformers state-dict name → the dlx parameter (and fused section) it fills,
and the loader that reads a checkpoint through it; a missing, unexpected or mis-shaped tensor is one clear error."""
import logging
from typing import NamedTuple

import torch

from dlx.models.diffusion_gemma import DiffusionGemmaConfig, DiffusionGemmaModel
from dlx.models.diffusion_gemma_dummy import fill_dummy_gemma
from dlx.models.diffusion_gemma_layers import NORMS
from dlx.models.interface import Family, check_shape
from dlx.models.layers import copy_full

logger = logging.getLogger(__name__)

DECODER = "model.decoder."
ENCODER = "model.encoder.language_model."   # its weights are tied to their decoder twins; layer_scalar is not
VISION = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")
TIED_HEAD = "lm_head.weight"                # the embedding, transposed

# Checkpoint module → (dlx module, section of its fused output): q/k/v and gate/up load into one matmul each.
PACKED = {"self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", 1),
          "self_attn.v_proj": ("self_attn.qkv_proj", 2),
          "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", 1),
          "self_conditioning.gate_proj": ("self_conditioning.mlp.gate_up_proj", 0),
          "self_conditioning.up_proj": ("self_conditioning.mlp.gate_up_proj", 1)}
RENAMED = {"router.proj.weight": "moe.gate.proj.weight", "router.scale": "moe.gate.scale",
           "router.per_expert_scale": "moe.gate.per_expert_scale", "experts.gate_up_proj": "moe.w13",
           "experts.down_proj": "moe.w2", "layer_scalar": "decoder_scalar",
           "self_conditioning.down_proj.weight": "self_conditioning.mlp.down_proj.weight"}


class Slot(NamedTuple):
    param: str       # dlx parameter name
    shape: tuple     # the full (unsliced) shape the checkpoint tensor must have
    shard: tuple     # extra arguments of the parameter's weight_loader


def dlx_target(name: str) -> tuple[str, tuple]:
    """A decoder-side checkpoint name, without its prefix → (dlx parameter, weight_loader arguments)."""
    module, _, leaf = name.rpartition(".")
    layer = ""
    if module.startswith("layers."):
        index, _, module = module[len("layers."):].partition(".")
        layer = f"layers.{index}."
    if module in PACKED:
        target, section = PACKED[module]
        return f"{layer}{target}.{leaf}", (section,)
    local = f"{module}.{leaf}" if module else leaf
    return layer + RENAMED.get(local, local), ()


def checkpoint_layout(cfg: DiffusionGemmaConfig) -> dict[str, Slot]:
    """Every tensor a checkpoint must hold, by its decoder-side name (the encoder's own layer scalars by theirs)."""
    h, inter, experts, moe = cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.moe_intermediate_size
    shapes = {"embed_tokens.weight": (cfg.vocab_size, h), "norm.weight": (h,),
              "self_conditioning.pre_norm.weight": (h,), "self_conditioning.gate_proj.weight": (inter, h),
              "self_conditioning.up_proj.weight": (inter, h), "self_conditioning.down_proj.weight": (h, inter)}
    for i, spec in enumerate(cfg.layers):
        q_rows, kv_rows = cfg.num_attention_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        projections = {"q_proj": q_rows, "k_proj": kv_rows} | ({"v_proj": kv_rows} if spec.sliding else {})
        layer = {f"self_attn.{p}.weight": (rows, h) for p, rows in projections.items()}
        layer["self_attn.o_proj.weight"] = (h, q_rows)
        layer |= {"self_attn.q_norm.weight": (spec.head_dim,), "self_attn.k_norm.weight": (spec.head_dim,)}
        layer |= {f"{norm}.weight": (h,) for norm in NORMS}
        layer |= {"mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h),
                  "mlp.down_proj.weight": (h, inter), "router.proj.weight": (experts, h), "router.scale": (h,),
                  "router.per_expert_scale": (experts,), "experts.gate_up_proj": (experts, 2 * moe, h),
                  "experts.down_proj": (experts, h, moe), "layer_scalar": (1,)}
        shapes |= {f"layers.{i}.{name}": shape for name, shape in layer.items()}
    layout = {}
    for name, shape in shapes.items():
        param, shard = dlx_target(name)
        layout[DECODER + name] = Slot(param, shape, shard)
    for i in range(cfg.num_hidden_layers):
        layout[f"{ENCODER}layers.{i}.layer_scalar"] = Slot(f"layers.{i}.encoder_scalar", (1,), ())
    return layout


class WeightMap:
    """Fills a DiffusionGemmaModel tensor by tensor and remembers which checkpoint names it has seen."""

    def __init__(self, model: DiffusionGemmaModel):
        self.layout = checkpoint_layout(model.config)
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.filled: set[str] = set()
        self.skipped_vision = 0

    def canonical(self, name: str) -> str:
        """The encoder's copy of a tied weight stands for its decoder twin."""
        if name.startswith(ENCODER) and name not in self.layout:
            return DECODER + name[len(ENCODER):]
        return name

    def load(self, name: str, tensor: torch.Tensor) -> list[str]:
        if name.startswith(VISION):
            self.skipped_vision += 1
            return []
        if name == TIED_HEAD:
            return []
        key = self.canonical(name)
        if key not in self.layout:
            raise ValueError(f"unexpected tensor '{name}' in the checkpoint (no such DiffusionGemma parameter)")
        if key != name and key in self.filled:
            return []  # both spellings of a tied weight: the decoder's wins, as in transformers' tying
        slot = self.layout[key]
        check_shape(name, tensor, slot.shape)
        param = self.params[slot.param]
        getattr(param, "weight_loader", copy_full)(param, tensor, *slot.shard)
        self.filled.add(key)
        return [key]

    def expected(self) -> list[str]:
        return list(self.layout)

    def finish(self, covered: set[str]) -> None:
        if self.skipped_vision:
            logger.info("skipped %d vision-tower tensors: dlx serves DiffusionGemma as text only", self.skipped_vision)


FAMILY = Family(DiffusionGemmaConfig.from_hf, DiffusionGemmaModel, WeightMap, lambda cfg: cfg.torch_dtype,
                fill_dummy_gemma)


def load_diffusion_gemma(model_dir: str, dtype: str = "auto", device: str | torch.device = "cpu"
                         ) -> DiffusionGemmaModel:
    """Build the model from config.json and fill it from the safetensors files (single or sharded), as
    load_model does for a diffusion_gemma directory."""
    from dlx.models.loader import load_family, read_config   # the loader's family table imports this module
    return load_family(model_dir, FAMILY, read_config(model_dir), dtype, device)
