"""Hugging Face checkpoint loading: config.json → model, safetensors (single or sharded) → parameters.
Per-expert and stacked expert names both load; a missing, unexpected or mis-shaped tensor is one clear error."""
import json
import os
import re

import torch
from safetensors import safe_open
from tqdm import tqdm

from dlx.models.dummy import fill_dummy_weights
from dlx.models.llada2 import LLaDA2Config, LLaDA2Model

FAMILIES = {"llada2_moe": (LLaDA2Config, LLaDA2Model)}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
PROGRESS_BAR_BYTES = 1 << 30
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")
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


def resolve_dtype(name: str, cfg: LLaDA2Config) -> torch.dtype:
    name = dtype_name(name, cfg.torch_dtype)
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype '{name}' (choose auto, bfloat16, float16 or float32)")
    return DTYPES[name]


def expected_names(cfg: LLaDA2Config) -> list[str]:
    """Canonical checkpoint names (per-expert spelling) that together fill every parameter."""
    names = ["model.word_embeddings.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight",
                  p + "attention.query_key_value.weight", p + "attention.dense.weight"]
        names += [p + "attention.query_key_value.bias"] if cfg.use_qkv_bias else []
        names += [p + "attention.dense.bias"] if cfg.use_bias else []
        names += [p + "attention.query_layernorm.weight",
                  p + "attention.key_layernorm.weight"] if cfg.use_qk_norm else []
        mlps = [p + "mlp."]
        if cfg.is_moe_layer(i):
            names += [p + "mlp.gate.weight"] + ([p + "mlp.gate.expert_bias"] if cfg.expert_bias else [])
            mlps = [f"{p}mlp.experts.{j}." for j in range(cfg.num_experts)]
            mlps += [p + "mlp.shared_experts."] if cfg.num_shared_experts else []
        names += [m + f"{proj}_proj.weight" for m in mlps for proj in ("gate", "up", "down")]
    return names


class WeightRouter:
    """Maps a checkpoint tensor name to the parameter slice it fills and the canonical names it covers."""

    def __init__(self, model: LLaDA2Model):
        self.model, self.cfg = model, model.config
        self.params = dict(model.named_parameters(remove_duplicate=False))

    def load(self, name: str, tensor: torch.Tensor) -> list[str]:
        if IGNORED.match(name) or (name == "lm_head.weight" and self.cfg.tie_word_embeddings):
            return []
        m = re.match(r"model\.layers\.(\d+)\.mlp\.(experts|shared_experts)\."
                     r"(?:(\d+)\.)?(gate_up|gate|up|down)_proj(?:\.weight)?$", name)
        if m and int(m.group(1)) < self.cfg.num_hidden_layers and self.cfg.is_moe_layer(int(m.group(1))):
            return self.load_expert(int(m.group(1)), m.group(2), m.group(3), m.group(4), name, tensor)
        m = re.match(r"model\.layers\.(\d+)\.mlp\.(gate|up)_proj\.weight$", name)
        if m and int(m.group(1)) < self.cfg.num_hidden_layers and not self.cfg.is_moe_layer(int(m.group(1))):
            i = int(m.group(1))
            return self.fill(f"layers.{i}.mlp.gate_up_proj.weight", name, tensor,
                             (self.cfg.intermediate_size, self.cfg.hidden_size), 0 if m.group(2) == "gate" else 1)
        target = name[len("model."):] if name.startswith("model.") else name
        if target not in self.params:
            raise ValueError(f"unexpected tensor '{name}' in the checkpoint "
                             f"(no such parameter in {self.cfg.__class__.__name__[:-6]})")
        return self.fill(target, name, tensor, self.full_shape(target))

    def full_shape(self, target: str) -> tuple:
        cfg, param = self.cfg, self.params[target]
        qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
        if target.endswith("query_key_value.weight"):
            return (qkv_rows, cfg.hidden_size)
        if target.endswith("query_key_value.bias"):
            return (qkv_rows,)
        if target.endswith("attention.dense.weight"):
            return (cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim)
        if target.endswith("mlp.down_proj.weight"):
            return (cfg.hidden_size, cfg.intermediate_size)
        return tuple(param.shape)

    def load_expert(self, layer: int, kind: str, expert: str | None, proj: str, name: str,
                    tensor: torch.Tensor) -> list[str]:
        cfg, p = self.cfg, f"layers.{layer}.mlp."
        if kind == "shared_experts":
            width = cfg.moe_intermediate_size * cfg.num_shared_experts
            if proj == "down":
                return self.fill(p + "shared_experts.down_proj.weight", name, tensor, (cfg.hidden_size, width))
            return self.fill(p + "shared_experts.gate_up_proj.weight", name, tensor, (width, cfg.hidden_size),
                             0 if proj == "gate" else 1)
        width, experts = cfg.moe_intermediate_size, range(cfg.num_experts)
        j = None if expert is None else int(expert)
        if j is not None and j >= cfg.num_experts:
            raise ValueError(f"unexpected tensor '{name}': the config has {cfg.num_experts} experts")
        lead = () if j is not None else (cfg.num_experts,)
        covered = [f"model.{p}experts.{e}.{proj}_proj.weight" for e in (experts if j is None else [j])]
        if proj == "gate_up":
            if j is not None:
                raise ValueError(f"unexpected tensor '{name}' in the checkpoint")
            check_shape(name, tensor, lead + (2 * width, cfg.hidden_size))
            gate, up = tensor.split(width, dim=-2)
            for part, half in enumerate((gate, up)):
                self.params[p + "w13"].weight_loader(self.params[p + "w13"], half, None, part)
            return [c.replace("gate_up_proj", s) for s in ("gate_proj", "up_proj") for c in covered]
        if proj == "down":
            check_shape(name, tensor, lead + (cfg.hidden_size, width))
            self.params[p + "w2"].weight_loader(self.params[p + "w2"], tensor, j)
        else:
            check_shape(name, tensor, lead + (width, cfg.hidden_size))
            self.params[p + "w13"].weight_loader(self.params[p + "w13"], tensor, j, 0 if proj == "gate" else 1)
        return covered

    def fill(self, target: str, name: str, tensor: torch.Tensor, shape: tuple, *shard) -> list[str]:
        check_shape(name, tensor, shape)
        param = self.params[target]
        getattr(param, "weight_loader")(param, tensor, *shard)
        return [name if name.startswith(("model.", "lm_head")) else "model." + name]


def check_shape(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"tensor '{name}' has shape {list(tensor.shape)} but the config implies {list(shape)}")


def load_model(model_dir: str, dtype: str = "auto", device: str | torch.device = "cpu",
               load_format: str = "auto") -> LLaDA2Model:
    """Build the model family named by config.json's model_type and fill it from the safetensors files, or with
    load_format "dummy" from seeded random values made on `device` (no weight file is looked for or read)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load format '{load_format}' (choose {' or '.join(LOAD_FORMATS)})")
    raw = read_config(model_dir)
    family = raw.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"model_type '{family}' in {model_dir}/config.json is not supported "
                         f"(supported: {', '.join(FAMILIES)})")
    config_cls, model_cls = FAMILIES[family]
    cfg = config_cls.from_hf(raw)
    files = [] if load_format == "dummy" else checkpoint_files(model_dir)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(resolve_dtype(dtype, cfg))
    try:
        with torch.device(device):
            model = model_cls(cfg)
    finally:
        torch.set_default_dtype(previous)
    if load_format == "dummy":
        fill_dummy_weights(model)
        return model.eval()
    router, covered = WeightRouter(model), set()
    total = sum(os.path.getsize(f) for f in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="loading weights",
              disable=total < PROGRESS_BAR_BYTES) as bar:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    tensor = f.get_tensor(name)
                    covered.update(router.load(name, tensor))
                    bar.update(tensor.numel() * tensor.element_size())
    finish_optional_bias(model, cfg, covered)
    missing = [n for n in expected_names(cfg) if n not in covered]
    if missing:
        raise ValueError(f"tensor '{missing[0]}' is missing from the checkpoint in {model_dir}"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return model.eval()


def finish_optional_bias(model: LLaDA2Model, cfg: LLaDA2Config, covered: set) -> None:
    """Without a config flag, an expert bias is used when present and is zero when absent."""
    if cfg.expert_bias is not None:
        return
    for i, layer in enumerate(model.layers):
        bias = getattr(layer.mlp, "gate", None) and layer.mlp.gate.expert_bias
        if bias is not None and f"model.layers.{i}.mlp.gate.expert_bias" not in covered:
            bias.data.zero_()
