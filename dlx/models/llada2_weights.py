"""LLaDA2's weight map: checkpoint tensor names (per-expert and stacked expert spellings) → the dlx parameter slices
they fill, the canonical names a complete checkpoint covers, and the default of the optional expert bias."""
import re

import torch

from dlx.models.interface import check_shape
from dlx.models.llada2 import LLaDA2Config, LLaDA2Model

IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


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


class LLaDA2WeightMap:
    """Maps a checkpoint tensor name to the parameter slice it fills and the canonical names it covers."""

    def __init__(self, model: LLaDA2Model):
        self.model, self.cfg = model, model.config
        self.params = dict(model.named_parameters(remove_duplicate=False))

    def expected(self) -> list[str]:
        return expected_names(self.cfg)

    def finish(self, covered: set[str]) -> None:
        """Without a config flag, an expert bias is used when present and is zero when absent."""
        if self.cfg.expert_bias is not None:
            return
        for i, layer in enumerate(self.model.layers):
            bias = getattr(layer.mlp, "gate", None) and layer.mlp.gate.expert_bias
            if bias is not None and f"model.layers.{i}.mlp.gate.expert_bias" not in covered:
                bias.data.zero_()

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


def checkpoint_shapes(cfg: LLaDA2Config) -> dict[str, tuple]:
    """Shape of every canonical tensor name of this config (per-expert spelling)."""
    h, d = cfg.hidden_size, cfg.head_dim
    shapes = {}
    for name in expected_names(cfg):
        leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") or name.endswith(".bias") else name
        shared_width = (cfg.moe_intermediate_size or 0) * cfg.num_shared_experts
        width = shared_width if ".shared_experts." in name else (
            cfg.moe_intermediate_size if ".experts." in name else cfg.intermediate_size)
        shapes[name] = {
            "word_embeddings": (cfg.vocab_size, h), "lm_head": (cfg.vocab_size, h),
            "query_key_value": ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * d, h),
            "dense": (h, cfg.num_attention_heads * d), "query_layernorm": (d,), "key_layernorm": (d,),
            "gate": (cfg.num_experts or 0, h), "gate_proj": (width, h), "up_proj": (width, h),
            "down_proj": (h, width),
        }.get(leaf, (h,))
        if name.endswith("expert_bias"):
            shapes[name] = (cfg.num_experts,)
        elif name.endswith(".bias"):
            shapes[name] = shapes[name][:1]
    return shapes
