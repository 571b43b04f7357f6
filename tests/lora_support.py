"""LoRA test helpers: adapters written by the `peft` library itself for the tiny LLaDA2 checkpoint, on a mirror
model whose modules carry the checkpoint's names (the base weights loaded in), so peft's own merge is a reference."""
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dlx.models.llada2 import LLaDA2Config
from dlx.models.loader import read_config
from dlx.models.lora import LINEAR_LEAVES, base_linear_shapes


def mirror_model(model_dir: str) -> nn.Module:
    """Plain nn.Linear layers under the checkpoint's module names, holding the checkpoint's weights."""
    cfg = LLaDA2Config.from_hf(read_config(model_dir))
    root = nn.Module()
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    for name, (out_features, in_features) in base_linear_shapes(cfg).items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        linear = nn.Linear(in_features, out_features, bias=False)
        linear.weight.data.copy_(weights[name + ".weight"])
        parent.add_module(leaf, linear)
    return root


def write_peft_adapter(model_dir: str, out_dir: str, seed: int, rank: int = 4, alpha: float = 8.0,
                       targets: tuple = LINEAR_LEAVES, rslora: bool = False, zero_b: bool = False) -> nn.Module:
    """Save a peft LoRA adapter (random A and B, or B = 0) for the tiny checkpoint; returns the peft model."""
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), use_rslora=rslora,
                        init_lora_weights=zero_b)
    peft_model = get_peft_model(mirror_model(model_dir), config)
    if not zero_b:
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.05)   # peft's default B is small; make the adapter matter
    peft_model.save_pretrained(out_dir)
    return peft_model


def rewrite_tensor(adapter_dir: str, suffix: str, change) -> None:
    """Replace the adapter tensor whose name ends with `suffix` by change(tensor) (for error tests)."""
    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    tensors = load_file(path)
    key = next(k for k in tensors if k.endswith(suffix))
    tensors[key] = change(tensors[key]).contiguous()
    save_file(tensors, path)
