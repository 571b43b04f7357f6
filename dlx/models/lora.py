"""LoRA adapters in the PEFT layout (adapter_config.json + adapter_model.safetensors) for LLaDA2: read one, check it
against the base model's linear layers, and hold its (A, scale·B) pairs by the checkpoint name of the layer."""
import os
import re
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from dlx.models.llada2 import LLaDA2Config
from dlx.models.llada2_weights import checkpoint_shapes
from dlx.params import LINEAR_LEAVES, lora_scale, read_adapter_config

TENSOR_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoRAAdapter:
    """One adapter: for each targeted layer (checkpoint module name, e.g. `model.layers.0.attention.dense`) its
    A [r, in] and B [out, r] with the scaling folded into B (fp32, full size: the layers slice them per rank)."""
    name: str
    path: str
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def rank(self) -> int:
        return max((a.shape[0] for a, _ in self.pairs.values()), default=0)


def read_adapter(path: str, cfg: LLaDA2Config, name: str = "") -> LoRAAdapter:
    """Read and check an adapter against the base model's config: every tensor names a linear layer of the base
    (else: unknown target module) with the shapes the base implies (else: made for another base model)."""
    config = read_adapter_config(path)
    scale = lora_scale(config)
    shapes = base_linear_shapes(cfg)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(os.path.join(path, "adapter_model.safetensors")).items():
        m = TENSOR_NAME.match(key)
        if not m:
            raise ValueError(f"LoRA adapter {path}: tensor '{key}' is not a lora_A or lora_B weight")
        module = m.group("module")
        if module not in shapes:
            raise ValueError(f"LoRA adapter {path}: tensor '{key}' targets module '{module}', "
                             "which is not a linear layer of this base model")
        out_features, in_features = shapes[module]
        r = tensor.shape[0] if m.group("part") == "A" else tensor.shape[-1]
        want = (r, in_features) if m.group("part") == "A" else (out_features, r)
        if tensor.dim() != 2 or tuple(tensor.shape) != want:
            raise ValueError(f"LoRA adapter {path}: tensor '{key}' has shape {list(tensor.shape)} but the base "
                             f"model's '{module}.weight' {[out_features, in_features]} implies {list(want)}: "
                             "the adapter was made for another base model")
        parts.setdefault(module, {})[m.group("part")] = tensor.float()
    pairs = {}
    for module, ab in parts.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise ValueError(f"LoRA adapter {path}: module '{module}' needs lora_A and lora_B of one rank")
        pairs[module] = (ab["A"], ab["B"] * scale)
    if not pairs:
        raise ValueError(f"LoRA adapter {path} holds no lora_A/lora_B tensors")
    return LoRAAdapter(name, path, pairs)


def base_linear_shapes(cfg: LLaDA2Config) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer an adapter may target, by checkpoint module name."""
    return {n[:-len(".weight")]: shape for n, shape in checkpoint_shapes(cfg).items()
            if n.endswith(".weight") and n.rsplit(".", 2)[-2] in LINEAR_LEAVES}
