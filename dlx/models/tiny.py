"""Tiny-checkpoint factory: random LLaDA2 and DiffusionGemma models in real Hugging Face layout, for tests and demos.
`python -m dlx.models.tiny OUT_DIR [--family llada2|diffusion_gemma] [--seed N] [--shards K] [--dtype D]`."""
import argparse
import json
import os
import random

import torch
from safetensors.torch import save_file

from dlx.models.llada2 import LLaDA2Config
from dlx.models.llada2_weights import checkpoint_shapes
from dlx.models.tokenizer_build import EOS_TOKEN, build_tokenizer, token_id

WORDS = ("the a one two three four five six seven eight nine ten plus minus equals answer is solve what "
         "which larger smaller count from to hello hi who are you dlx model diffusion block token mask "
         "number sum difference result yes no please thanks good day").split()


def tiny_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [f"Solve: {a} + {b}. {a} + {b} = {a + b}. The answer is {a + b}."
             for a, b in ((rng.randint(0, 99), rng.randint(0, 99)) for _ in range(200))]
    lines += [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(300)]
    lines += ["Héllo wörld, naïve café — 日本語 🙂"]
    return lines


def tiny_llada2_config(vocab_size: int, eos_id: int, dtype: str) -> dict:
    return {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "hidden_act": "silu", "use_qkv_bias": False, "use_bias": False, "use_qk_norm": True,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 4096,
        "rope_theta": 600000.0, "partial_rotary_factor": 0.5,
        "num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 1, "n_group": 4,
        "topk_group": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
        "routed_scaling_factor": 2.5, "score_function": "sigmoid", "norm_topk_prob": True,
        "moe_router_enable_expert_bias": True, "router_dtype": "fp32",
        "pad_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": dtype, "use_cache": False,
    }


def random_tensor(name: str, shape: tuple, gen: torch.Generator, embedding: torch.Tensor) -> torch.Tensor:
    """Scales chosen so greedy decoding is varied and confident: the output head is a scaled copy of
    the embedding (the model tends to reproduce what it attends to) plus noise."""
    if name.endswith("query_layernorm.weight") or name.endswith("key_layernorm.weight"):
        return 3.0 + 0.3 * torch.randn(shape, generator=gen)  # sharp, position-dependent attention
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if name.endswith("expert_bias"):
        return 0.01 * torch.randn(shape, generator=gen)
    if name == "model.word_embeddings.weight":
        return embedding
    if name == "lm_head.weight":
        return embedding + 0.5 * torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) * shape[-1] ** -0.5


def write_tiny_llada2(out_dir: str, seed: int = 0, shards: int = 1, dtype: str = "float32",
                      eos_boost: float = 0.0) -> str:
    """eos_boost > 0 raises the EOS logit everywhere, so tests can exercise stopping (1.0: about a third
    of random prompts stop early); the default checkpoint rarely emits EOS."""
    os.makedirs(out_dir, exist_ok=True)
    vocab = build_tokenizer(out_dir, tiny_corpus(seed), vocab_size=384, model_max_length=4096)
    raw = tiny_llada2_config(vocab, token_id(out_dir, EOS_TOKEN), dtype)
    cfg = LLaDA2Config.from_hf(raw)
    shapes = checkpoint_shapes(cfg)
    gen = torch.Generator().manual_seed(seed)
    embedding = torch.randn(vocab, cfg.hidden_size, generator=gen)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tensors = {n: random_tensor(n, s, gen, embedding) for n, s in shapes.items()}
    head = tensors["lm_head.weight"]
    common = head.mean(0) / head.mean(0).norm() * head.norm(dim=1).mean()
    head[raw["eos_token_id"]] += eos_boost * common
    tensors = {n: t.to(torch_dtype).contiguous() for n, t in tensors.items()}
    save_shards(out_dir, tensors, shards)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": raw["eos_token_id"], "pad_token_id": raw["pad_token_id"]}, f, indent=2)
    return out_dir


def save_shards(out_dir: str, tensors: dict[str, torch.Tensor], shards: int) -> None:
    if shards <= 1:
        save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    weight_map = {}
    for k in range(shards):
        part = names[k::shards]
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(out_dir, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--family", default="llada2", choices=["llada2", "diffusion_gemma"],
                        help="diffusion_gemma: written by transformers' own classes (needs transformers >= 5.11)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--eos-boost", type=float, default=0.0, help="raise EOS likelihood (tests of stopping)")
    args = parser.parse_args()
    if args.family == "diffusion_gemma":
        from dlx.models.tiny_gemma import write_tiny_diffusion_gemma
        if args.shards != 1 or args.eos_boost or args.dtype == "float16":
            parser.error("--family diffusion_gemma writes one float32 or bfloat16 shard (no --shards, --eos-boost)")
        print(write_tiny_diffusion_gemma(args.out_dir, args.seed, args.dtype, tokenizer=True))
        return
    print(write_tiny_llada2(args.out_dir, args.seed, args.shards, args.dtype, args.eos_boost))


if __name__ == "__main__":
    main()
