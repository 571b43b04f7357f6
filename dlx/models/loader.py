"""Hugging Face checkpoint loading: config.json's model_type picks the family, safetensors (single or sharded) fill
its parameters through the family's weight map; a missing, unexpected or mis-shaped tensor is one clear error."""
import json
import os

import torch
from safetensors import safe_open
from tqdm import tqdm

from dlx.models.diffusion_gemma_weights import FAMILY as DIFFUSION_GEMMA
from dlx.models.dummy import fill_dummy_weights
from dlx.models.interface import Family
from dlx.models.llada2 import LLaDA2Config, LLaDA2Model
from dlx.models.llada2_weights import LLaDA2WeightMap

FAMILIES = {"llada2_moe": Family(LLaDA2Config.from_hf, LLaDA2Model, LLaDA2WeightMap, lambda cfg: cfg.torch_dtype),
            "diffusion_gemma": DIFFUSION_GEMMA}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
PROGRESS_BAR_BYTES = 1 << 30
LOAD_FORMATS = ("auto", "dummy")


def read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{model_dir} is not a model directory: it has no config.json")
    with open(path) as f:
        return json.load(f)


def checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise ValueError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")


def dtype_name(requested: str, checkpoint_dtype: str | None) -> str:
    """The dtype the weights load in, by its torch name: the one asked for, or with auto the checkpoint's
    (config.json's torch_dtype), else bfloat16. The launcher names it at start-up before any worker loads."""
    name = (checkpoint_dtype or "bfloat16") if requested == "auto" else requested
    return DTYPE_ALIASES.get(name, name)


def resolve_dtype(name: str, checkpoint_dtype: str | None) -> torch.dtype:
    name = dtype_name(name, checkpoint_dtype)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype '{name}' (choose auto, bfloat16, float16 or float32)")
    return DTYPES[name]


def load_model(model_dir: str, dtype: str = "auto", device: str | torch.device = "cpu",
               load_format: str = "auto") -> torch.nn.Module:
    """Build the model family named by config.json's model_type and fill it from the safetensors files, or with
    load_format "dummy" from seeded random values made on `device` (no weight file is looked for or read)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load format '{load_format}' (choose {' or '.join(LOAD_FORMATS)})")
    raw = read_config(model_dir)
    family = raw.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"model_type '{family}' in {model_dir}/config.json is not supported "
                         f"(supported: {', '.join(FAMILIES)})")
    return load_family(model_dir, FAMILIES[family], raw, dtype, device, load_format)


def load_family(model_dir: str, family: Family, raw: dict, dtype: str = "auto", device: str | torch.device = "cpu",
                load_format: str = "auto") -> torch.nn.Module:
    """Build `family`'s model from its config.json dict `raw` in `dtype` on `device` and fill it through the
    family's weight map (or with dummy weights)."""
    cfg = family.config_from_hf(raw)
    files = [] if load_format == "dummy" else checkpoint_files(model_dir)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(resolve_dtype(dtype, family.dtype_of(cfg)))
    try:
        with torch.device(device):
            model = family.model(cfg)
    finally:
        torch.set_default_dtype(previous)
    if load_format == "dummy":
        (family.fill_dummy or fill_dummy_weights)(model)
        return model.eval()
    weights, covered = family.weight_map(model), set()
    total = sum(os.path.getsize(f) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading weights",
              disable=total < PROGRESS_BAR_BYTES) as bar:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    covered.update(weights.load(name, tensor))
                    bar.update(tensor.numel() * tensor.element_size())
    weights.finish(covered)
    missing = [n for n in weights.expected() if n not in covered]
    if missing:
        raise ValueError(f"tensor '{missing[0]}' is missing from the checkpoint in {model_dir}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return model.eval()
