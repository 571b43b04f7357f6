"""Trains dlx-tiny from nothing: the tiny_corpus examples, a byte-level BPE, a small LLaDA2 MoE, block diffusion.
`python tools/train_tiny.py --out dlx/assets/dlx-tiny --minutes 12 [--device cuda] [--seed 0] [--smoke]`."""
import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context

import torch
import torch.nn.functional as F

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (TOOLS_DIR, os.path.dirname(TOOLS_DIR)) if p not in sys.path]  # run as a script

from tiny_corpus import BLOCK, HELDOUT_KINDS, ROW_BLOCKS, build_chunk, heldout_questions, is_correct, \
    tokenizer_corpus, training_examples  # noqa: E402

from dlx.engine.reference import DecodeSettings, reference_generate  # noqa: E402
from dlx.models.llada2 import LLaDA2Config, LLaDA2Model  # noqa: E402
from dlx.models.llada2_weights import expected_names  # noqa: E402
from dlx.models.loader import load_model  # noqa: E402
from dlx.models.moe import SparseMoE  # noqa: E402
from dlx.models.tokenizer_build import EOS_TOKEN, MASK_TOKEN, build_tokenizer, token_id  # noqa: E402

MIN_MASK_RATIO = 0.05   # lower bound on t keeps the 1/t weights ≤ 20
FULL = dict(hidden=384, layers=8, heads=8, kv_heads=4, head_dim=48, dense=1024, experts=8, expert_width=160,
            chunk=200_000, chunks=50, workers=8, rows=128, steps=10 ** 9, per_kind=100, lr=2e-3, warmup=300,
            log_every=250)
SMOKE = dict(hidden=64, layers=3, heads=4, kv_heads=2, head_dim=16, dense=128, experts=8, expert_width=32,
             chunk=2_000, chunks=1, workers=0, rows=4, steps=6, per_kind=2, lr=2e-3, warmup=2, log_every=100)


def model_config(size: dict, vocab: int, eos: int) -> dict:
    """config.json with the real LLaDA2 key names: layer 0 dense, the rest MoE with one shared expert."""
    return {"architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "vocab_size": vocab,
            "hidden_size": size["hidden"], "intermediate_size": size["dense"], "num_hidden_layers": size["layers"],
            "num_attention_heads": size["heads"], "num_key_value_heads": size["kv_heads"], "head_dim": size["head_dim"],
            "hidden_act": "silu", "use_qkv_bias": False, "use_bias": False, "use_qk_norm": True, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "max_position_embeddings": 1024, "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5, "num_experts": size["experts"],
            "num_experts_per_tok": 2, "num_shared_experts": 1,
            "n_group": 4, "topk_group": 2, "moe_intermediate_size": size["expert_width"], "first_k_dense_replace": 1,
            "routed_scaling_factor": 2.5, "score_function": "sigmoid", "norm_topk_prob": True,
            "moe_router_enable_expert_bias": True, "router_dtype": "fp32", "pad_token_id": eos, "eos_token_id": eos,
            "torch_dtype": "bfloat16", "use_cache": False}


@torch.no_grad()
def build_model(raw: dict, device: torch.device, seed: int) -> LLaDA2Model:
    """The serving model class itself, initialised GPT-style; the expert bias is a buffer-like parameter."""
    with torch.device(device):
        model = LLaDA2Model(LLaDA2Config.from_hf(raw))
    gen, out_std = torch.Generator().manual_seed(seed), 0.02 / math.sqrt(2 * raw["num_hidden_layers"])
    for name, p in model.named_parameters():
        if name.endswith("expert_bias"):
            p.zero_().requires_grad_(False)  # moved by the balancing rule, never by the optimizer
        elif p.dim() == 1:
            p.fill_(1.0)
        else:  # residual-branch outputs start smaller so the stream's scale does not grow with depth
            std = out_std if name.endswith(("dense.weight", "down_proj.weight", "w2")) else 0.02
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def attention_train(attn, x: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, rows: int) -> torch.Tensor:
    """The layer's own projections, qk-norm and rotary; batched SDPA under an explicit visibility mask."""
    n, d = len(x), attn.head_dim
    q, k, v = attn.query_key_value(x).view(n, -1, d).split([attn.num_heads, attn.num_kv_heads, attn.num_kv_heads], 1)
    if attn.query_layernorm is not None:
        q, k = attn.query_layernorm(q), attn.key_layernorm(k)
    q, k = attn.rotary(q, positions), attn.rotary(k, positions)
    q, k, v = (t.to(v.dtype).view(rows, n // rows, -1, d).transpose(1, 2) for t in (q, k, v))
    k, v = (t.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1) for t in (k, v))  # grouped-query
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=attn.scale)
    return attn.dense(out.transpose(1, 2).reshape(n, -1))


def moe_train(mlp: SparseMoE, x: torch.Tensor, load: torch.Tensor | None) -> torch.Tensor:
    """Same routing and result as SparseMoE.forward, but every expert runs on every token (two big matmuls)
    and unchosen experts get weight 0: no host sync and no per-expert loop, which a small model needs."""
    n, experts, width = len(x), mlp.w13.shape[0], mlp.local_intermediate
    with torch.autocast(x.device.type, enabled=False):
        ids, weights = mlp.gate(x.float())  # router logits in fp32, as when serving
    combine = torch.zeros(n, experts, device=x.device).scatter(1, ids, weights)
    if load is not None:  # tokens per expert, without bincount's host sync
        load += (combine > 0).sum(0)
    gate, up = F.linear(x, mlp.w13.reshape(experts * 2 * width, -1)).view(n, experts, 2 * width).split(width, -1)
    act = F.silu(gate) * up * combine.unsqueeze(-1).to(up.dtype)
    out = F.linear(act.reshape(n, experts * width), mlp.w2.permute(1, 0, 2).reshape(mlp.w2.shape[1], experts * width))
    return out + mlp.shared_experts(x) if mlp.shared_experts is not None else out


def training_forward(model: LLaDA2Model, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
                     load: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states [B, L, H] of packed rows, through the model's own modules; `allowed` [B, 1, L, L]."""
    rows, length = ids.shape
    x, flat_positions = model.word_embeddings(ids).view(rows * length, -1), positions.reshape(-1)
    loads = iter(load if load is not None else [])
    for layer in model.layers:
        h = x + attention_train(layer.attention, layer.input_layernorm(x), flat_positions, allowed, rows)
        normed = layer.post_attention_layernorm(h)
        if isinstance(layer.mlp, SparseMoE):
            x = h + moe_train(layer.mlp, normed, next(loads, None))
        else:
            x = h + layer.mlp(normed)
    return model.norm(x).view(rows, length, -1)


def visibility(doc: torch.Tensor, block: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Within one example: a clean block sees clean blocks up to itself; a noisy block sees itself and the
    clean blocks before it. That is exactly what serving shows the block it is decoding."""
    same = doc[:, :, None] == doc[:, None, :]
    qb, kb, qc, kc = block[:, :, None], block[:, None, :], clean[:, :, None], clean[:, None, :]
    sees_clean = kc & ((kb < qb) | ((kb == qb) & qc))
    return (same & (sees_clean | (~kc & ~qc & (kb == qb))))[:, None]  # a noisy block's only noisy keys: its own


def diffusion_loss(model: LLaDA2Model, batch: dict, mask_id: int, load: torch.Tensor | None) -> torch.Tensor:
    """Per noisy block a mask ratio t; response positions masked with probability t; CE on masked positions
    weighted 1/t, averaged over all maskable positions (the block-diffusion NELBO)."""
    (rows, length), tokens, maskable = batch["tokens"].shape, batch["tokens"], batch["maskable"]
    ratio = MIN_MASK_RATIO + (1 - MIN_MASK_RATIO) * torch.rand(rows, length // BLOCK, device=tokens.device)
    ratio = ratio.repeat_interleave(BLOCK, dim=1)  # one t per 32-token block
    masked = maskable & (torch.rand(rows, length, device=tokens.device) < ratio)
    allowed = visibility(batch["doc"], batch["positions"] // BLOCK, batch["clean"])
    hidden = training_forward(model, torch.where(masked, mask_id, tokens), batch["positions"], allowed, load)
    ce = F.cross_entropy(model.compute_logits(hidden).view(rows * length, -1), tokens.view(-1), reduction="none")
    return (ce.view(rows, length) * masked / ratio).sum() / maskable.sum().clamp(min=1)


def train(model: LLaDA2Model, chunks: list, size: dict, mask_id: int, deadline: float, log=print) -> dict:
    """AdamW with warmup and a cosine tied to the time budget; aux-free balancing nudges each expert bias
    against its load after every step. A data chunk (a Future) replaces the current one once it is ready."""
    device, moe = model.lm_head.weight.device, [layer.mlp for layer in model.layers if isinstance(layer.mlp, SparseMoE)]
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if (p.dim() > 1) == decay], "weight_decay": 0.1 * decay}
              for decay in (1, 0)]
    opt = torch.optim.AdamW(groups, lr=size["lr"], betas=(0.9, 0.95), fused=device.type == "cuda")
    load, recent = torch.zeros(2, len(moe), moe[0].w13.shape[0], device=device)
    loss_sum, step, since, seen, order, pool, start = torch.zeros((), device=device), 0, 0, 0, [], None, time.time()
    while (progress := max((time.time() - start) / max(deadline - start, 1e-9), step / size["steps"])) < 1:
        if not order:  # next epoch: a fresh chunk if one is ready, else the current one reshuffled
            if pool is None or (chunks and chunks[0].done()):
                pool = {k: torch.from_numpy(v).to(device) for k, v in chunks.pop(0).result().items()}
            order = list(torch.randperm(len(pool["tokens"]), device=device).split(size["rows"]))
        rows = order.pop()
        batch = {k: (v[rows].long() if v.dtype != torch.bool else v[rows]) for k, v in pool.items()}
        lr = size["lr"] * min(1.0, (step + 1) / size["warmup"]) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        load.zero_()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = diffusion_loss(model, batch, mask_id, load)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            for mlp, counts in zip(moe, load):  # underused experts become more likely to be chosen
                mlp.gate.expert_bias += 1e-3 * torch.sign(counts.mean() - counts)
        recent = 0.99 * recent + load  # expert load over about the last hundred steps
        loss_sum, step, since, seen = loss_sum + loss.detach(), step + 1, since + 1, seen + len(rows)
        if step % size["log_every"] == 0 or step == size["steps"]:
            log(f"step {step}  loss {loss_sum.item() / since:.4f}  lr {lr:.2e}  rows {seen}  "
                f"{time.time() - start:.0f}s")
            loss_sum, since = loss_sum * 0, 0
    for i, (mlp, row) in enumerate(zip(moe, (recent / recent.sum(-1, keepdim=True).clamp(min=1e-9)).cpu())):
        log(f"MoE layer {i + 1} expert load % " + " ".join(f"{100 * s:.0f}" for s in row) + f"  (max/mean "
            f"{row.max() / row.mean():.2f}, bias {mlp.gate.expert_bias.min():.3f}..{mlp.gate.expert_bias.max():.3f})")
    seconds = time.time() - start
    return {"steps": step, "steps_per_minute": round(60 * step / seconds), "train_seconds": round(seconds, 1),
            "rows": seen, "tokens_per_step": size["rows"] * ROW_BLOCKS * BLOCK, "last_loss": round(loss.item(), 4)}


def hf_tensors(model: LLaDA2Model) -> dict[str, torch.Tensor]:
    """Every parameter under its Hugging Face name (per-expert spelling) in bf16; the expert bias stays fp32."""
    out = {}
    for name, t in model.named_parameters():
        t, hf = t.detach().cpu(), ("" if name.startswith("lm_head") else "model.") + name
        if name.endswith("gate_up_proj.weight"):  # fused dense / shared-expert gate and up
            out.update(zip((hf.replace("gate_up", "gate"), hf.replace("gate_up", "up")), t.chunk(2)))
        elif name.endswith(("w13", "w2")):  # stacked routed experts; w13 rows are gate then up
            projs, prefix = ("down",) if name.endswith("w2") else ("gate", "up"), hf.rsplit(".", 1)[0] + ".experts."
            for j, w in enumerate(t):
                out.update({f"{prefix}{j}.{p}_proj.weight": part for p, part in zip(projs, w.chunk(len(projs)))})
        else:
            out[hf] = t
    out = {k: v.to(torch.float32 if k.endswith("expert_bias") else torch.bfloat16).contiguous() for k, v in out.items()}
    assert sorted(out) == sorted(expected_names(model.config)), "checkpoint names drifted from the loader's"
    return out


def save_checkpoint(model: LLaDA2Model, raw: dict, out_dir: str) -> int:
    """model.safetensors, config.json and generation_config.json beside the tokenizer; returns the bytes written."""
    from safetensors.torch import save_file
    save_file(hf_tensors(model), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    for name, content in (("config.json", raw),
                          ("generation_config.json",
                           {"eos_token_id": raw["eos_token_id"], "pad_token_id": raw["pad_token_id"]})):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(content, f, indent=2)
    return os.path.getsize(os.path.join(out_dir, "model.safetensors"))


def evaluate(model_dir: str, device: torch.device, per_kind: int, log=print) -> dict:
    """Greedy reference decoding of the saved checkpoint (as served: block 32, threshold 0.95, 32 tokens) on
    held-out questions: each kind as a raw prompt, then the mixed set rendered with the chat template."""
    from transformers import AutoTokenizer
    tok, model = AutoTokenizer.from_pretrained(model_dir), load_model(model_dir, device=device)
    settings = DecodeSettings(mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, block_size=BLOCK,
                              accept_threshold=0.95)

    def complete(prompt: str, chat: bool) -> tuple[str, int, int]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True) if chat else prompt
        out = reference_generate(model, tok.encode(text, add_special_tokens=False), 32, settings)
        return tok.decode(out.token_ids), len(out.token_ids), out.nfe

    graded, tokens, forwards = {}, 0, 0
    for kind, chat in [(k, False) for k in HELDOUT_KINDS] + [("mixed", True)]:
        for prompt, answer in heldout_questions(kind, per_kind):
            text, n, nfe = complete(prompt, chat)
            graded.setdefault(kind + ("_chat" if chat else ""), []).append(is_correct(text, answer))
            tokens, forwards = tokens + n, forwards + nfe
    graded["mixed_raw"] = [g for kind in HELDOUT_KINDS for g in graded[kind]]
    results = {k: round(sum(v) / len(v), 4) for k, v in graded.items()}
    results["tokens_per_forward"] = round(tokens / max(forwards, 1), 2)
    for prompt, chat in (("Solve: 12 + 30.", False), ("Solve: 12 + 30.", True), ("Who are you?", True)):
        log(f"{'chat' if chat else 'raw '} {prompt!r} -> {complete(prompt, chat)[0]!r}")
    log("held-out greedy accuracy: " + ", ".join(f"{k} {v}" for k, v in results.items()))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="checkpoint directory (e.g. dlx/assets/dlx-tiny)")
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock budget from start to saving")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few steps of a very small model (CPU, seconds)")
    args = parser.parse_args(argv)
    start, size, device = time.time(), SMOKE if args.smoke else FULL, torch.device(args.device)
    torch.manual_seed(args.seed)
    vocab = build_tokenizer(args.out, tokenizer_corpus(training_examples(args.seed, 20_000)), 1024,
                            model_max_length=1024)
    eos, mask_id = token_id(args.out, EOS_TOKEN), token_id(args.out, MASK_TOKEN)
    # Data chunks are built in worker processes while the GPU trains; chunk k is fixed by (seed, k).
    workers = (ProcessPoolExecutor(size["workers"], mp_context=get_context("spawn")) if size["workers"]
               else ThreadPoolExecutor(1))
    chunks = [workers.submit(build_chunk, args.seed * 100_003 + k, size["chunk"] if k else size["chunk"] // 8,
                             os.path.join(args.out, "tokenizer.json"), k == 0) for k in range(size["chunks"])]
    model = build_model(raw := model_config(size, vocab, eos), device, args.seed)
    total = sum(p.numel() for p in model.parameters())
    print(f"vocab {vocab}, {total / 1e6:.2f}M parameters ({total / 1e6 * 2:.1f} MB in bf16)")
    summary = train(model, chunks, size, mask_id, start + 60 * args.minutes)
    workers.shutdown(wait=False, cancel_futures=True)
    summary.update(parameters=total, checkpoint_bytes=save_checkpoint(model.eval(), raw, args.out), seed=args.seed)
    print(f"saved {args.out} ({summary['checkpoint_bytes'] / 2 ** 20:.1f} MiB) after {time.time() - start:.0f}s")
    summary.update(heldout=evaluate(args.out, device, size["per_kind"]), total_seconds=round(time.time() - start, 1))
    with open(os.path.join(args.out, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
