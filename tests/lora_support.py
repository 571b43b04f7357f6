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


def adapter_logits(model_dir: str, lora_path: str = "", pre_merge: bool = False,
                   rows: list[int] | int | None = None) -> torch.Tensor:
    """Logits of a fixed 16-token prompt (one forward, blocks of 4) on the tiny model with `lora_path` served;
    `rows`: the run-time adapter of every row (or of each row), as the runner sets it."""
    from dlx.kernels.attention import AttentionMetadata
    from dlx.models import load_model
    from dlx.models.lora_layers import serve_adapters
    model = load_model(model_dir, dtype="float32")
    serve_adapters(model, lora_path, pre_merge)
    ids = torch.tensor([3, 17, 42, 5, 9, 11, 60, 2, 8, 81, 33, 7, 19, 4, 90, 6])
    if rows is not None:
        index = torch.tensor(rows) if isinstance(rows, list) else torch.full((len(ids),), rows)
        model.lora_rows.set(index, torch.float32)
    with torch.no_grad():
        return model.compute_logits(model(ids, torch.arange(len(ids)), AttentionMetadata.single(len(ids), 4)))


def tp_lora_worker(rank: int, size: int, model_dir: str, lora_path: str, port: int, rows: list[int],
                   out: str) -> None:
    """One tensor-parallel rank (gloo): adapter_logits with run-time adapters, saved by rank 0."""
    import torch.distributed as dist
    from dlx.models.parallel import set_tensor_parallel
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        set_tensor_parallel(dist.group.WORLD, rank, size)
        logits = adapter_logits(model_dir, lora_path, rows=rows)
        if rank == 0:
            torch.save(logits, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    os._exit(0)   # as tests/test_model_properties.py's TP worker: skip C++ static destructors at exit
