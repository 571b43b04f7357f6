"""Independent oracle for tests: a second, batch-style LLaDA2 implementation straight from MODELS.md
(per-expert modules, 4-D additive mask) and the official block-by-block greedy generate() loop."""
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def read_checkpoint(path: str) -> tuple[dict, dict]:
    cfg = json.load(open(os.path.join(path, "config.json")))
    index = os.path.join(path, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    weights = {}
    for f in files:
        weights.update({k: v.float() for k, v in load_file(os.path.join(path, f)).items()})
    return cfg, weights


class OracleLLaDA2:
    def __init__(self, path: str):
        self.cfg, self.w = read_checkpoint(path)

    def rms(self, x, weight):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"]))

    def mlp(self, x, prefix):
        w = self.w
        return (F.silu(x @ w[prefix + "gate_proj.weight"].T) * (x @ w[prefix + "up_proj.weight"].T)
                @ w[prefix + "down_proj.weight"].T)

    def moe(self, x, p):
        c, w = self.cfg, self.w
        scores = torch.sigmoid(x @ w[p + "gate.weight"].T)
        biased = scores + w.get(p + "gate.expert_bias", torch.zeros(c["num_experts"]))
        per_group = c["num_experts"] // c["n_group"]
        group_score = biased.view(-1, c["n_group"], per_group).topk(2, dim=-1).values.sum(-1)
        groups = group_score.topk(c["topk_group"], dim=-1).indices
        allowed = torch.zeros_like(group_score).scatter(1, groups, 1.0).repeat_interleave(per_group, 1).bool()
        chosen = biased.masked_fill(~allowed, -math.inf).topk(c["num_experts_per_tok"], dim=-1).indices
        weights = scores.gather(1, chosen)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * c["routed_scaling_factor"]
        out = torch.zeros_like(x)
        for t in range(len(x)):
            for k in range(chosen.shape[1]):
                out[t] += weights[t, k] * self.mlp(x[t:t + 1], f"{p}experts.{int(chosen[t, k])}.")[0]
        if c.get("num_shared_experts"):
            out = out + self.mlp(x, p + "shared_experts.")
        return out

    def attention(self, x, p, mask):
        c, w = self.cfg, self.w
        n, d = len(x), c["head_dim"]
        hq, hk = c["num_attention_heads"], c["num_key_value_heads"]
        qkv = (x @ w[p + "query_key_value.weight"].T).view(n, hq + 2 * hk, d)
        q, k, v = qkv[:, :hq], qkv[:, hq:hq + hk], qkv[:, hq + hk:]
        if c.get("use_qk_norm", True):
            q, k = self.rms(q, w[p + "query_layernorm.weight"]), self.rms(k, w[p + "key_layernorm.weight"])
        rd = int(d * c.get("partial_rotary_factor", 0.5))
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, rd, 2).float() / rd))
        ang = torch.arange(n).float()[:, None] * inv[None]
        cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

        def rope(t):
            r, rest = t[..., :rd], t[..., rd:]
            flipped = torch.cat([-r[..., rd // 2:], r[..., :rd // 2]], -1)
            return torch.cat([r * cos + flipped * sin, rest], -1)

        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(hq // hk, 1), v.repeat_interleave(hq // hk, 1)
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d) + mask
        o = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(n, hq * d)
        return o @ w[p + "dense.weight"].T

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, block: int) -> torch.Tensor:
        c, w = self.cfg, self.w
        n = len(ids)
        blk = torch.arange(n) // block
        mask = torch.where(blk[None, :] <= blk[:, None], 0.0, -math.inf)
        x = w["model.word_embeddings.weight"][ids]
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self.attention(self.rms(x, w[p + "input_layernorm.weight"]), p + "attention.", mask)
            h = self.rms(x, w[p + "post_attention_layernorm.weight"])
            x = x + (self.moe(h, p + "mlp.") if i >= c.get("first_k_dense_replace", 0) else self.mlp(h, p + "mlp."))
        return self.rms(x, w["model.norm.weight"]) @ w["lm_head.weight"].T


def oracle_generate(model: OracleLLaDA2, prompt: list[int], gen_length: int, mask_id: int, eos_id: int,
                    block: int = 32, steps: int = 32, threshold: float = 0.95) -> list[int]:
    """The official algorithm: every block in turn, quota schedule over min(steps, gen_length) steps."""
    steps = min(steps, gen_length)
    total = -(-(len(prompt) + gen_length) // block) * block
    x = torch.full((total,), mask_id)
    x[:len(prompt)] = torch.tensor(prompt)
    for b in range(len(prompt) // block, total // block):
        lo, hi = b * block, (b + 1) * block
        count = int((x[lo:hi] == mask_id).sum())
        schedule = [count // steps + (1 if i < count % steps else 0) for i in range(steps)]
        for i in range(steps):
            active = x[lo:hi] == mask_id
            if not active.any():
                break
            logits = model.logits(x[:hi], block)[lo:hi]
            logits[:, mask_id] = -math.inf
            probs = logits.softmax(-1)
            conf, tok = probs.max(-1)
            conf = torch.where(active, conf, -math.inf)
            high = conf > threshold
            take = (high if int(high.sum()) >= schedule[i]
                    else torch.zeros_like(high).index_fill(0, conf.topk(schedule[i]).indices, True))
            x[lo:hi][take] = tok[take]
        if (x[len(prompt):hi] == eos_id).any():
            break
    out = x[len(prompt):len(prompt) + gen_length].tolist()
    return out[:out.index(eos_id)] if eos_id in out else out
