"""Config-only model directories of the published LLaDA2 shapes: config.json and tokenizer files, no weights.
For benchmarks with `--load-format dummy`: `python -m dlx.models.shapes OUT_DIR --shape mini|flash [--layers N]`."""
import argparse
import json
import os

from dlx.models.tiny import tiny_corpus
from dlx.models.tokenizer_build import EOS_TOKEN, build_tokenizer, token_id

# LLaDA2.0-mini: MODELS.md's table (inclusionAI/dFactory's configs/model_configs/llada2_mini agrees).
LLADA2_MINI = {
    "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
    "vocab_size": 157184, "hidden_size": 2048, "intermediate_size": 5120, "num_hidden_layers": 20,
    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128, "hidden_act": "silu",
    "first_k_dense_replace": 1, "moe_intermediate_size": 512, "num_experts": 256, "num_experts_per_tok": 8,
    "num_shared_experts": 1, "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
    "score_function": "sigmoid", "norm_topk_prob": True, "moe_router_enable_expert_bias": True,
    "router_dtype": "fp32", "rope_theta": 600000, "partial_rotary_factor": 0.5, "rotary_dim": 64,
    "use_qk_norm": True, "use_qkv_bias": False, "use_bias": False, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "max_position_embeddings": 16384, "torch_dtype": "bfloat16", "use_cache": False,
}
# LLaDA2.0-flash (about 100B parameters, 6.1B active): the public config (inclusionAI/dFactory's
# configs/model_configs/llada2_flash) differs from mini only in these widths and depth.
LLADA2_FLASH = {**LLADA2_MINI, "hidden_size": 4096, "intermediate_size": 9216, "num_hidden_layers": 32,
                "num_attention_heads": 32, "moe_intermediate_size": 1024}
SHAPES = {"mini": LLADA2_MINI, "flash": LLADA2_FLASH}
TOKENIZER_VOCAB = 384


def shape_config(shape: str, layers: int | None = None) -> dict:
    """The named shape's config.json, optionally cut to `layers` layers (the first stays dense)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}' (choose {', '.join(SHAPES)})")
    raw = dict(SHAPES[shape])
    if layers is not None:
        if layers <= raw["first_k_dense_replace"]:
            raise ValueError(f"--layers must exceed first_k_dense_replace ({raw['first_k_dense_replace']}) "
                             "so that at least one layer is MoE")
        raw["num_hidden_layers"] = layers
    return raw


def write_shape_dir(out_dir: str, shape: str = "mini", layers: int | None = None) -> str:
    """config.json + generation_config.json + a small byte-level tokenizer. The tokenizer knows far fewer ids than
    vocab_size: ids beyond it are never produced by encoding, may be sampled, and decode to nothing. EOS and pad
    are the tokenizer's own ids (the checkpoint's 156892 would name no token of this tokenizer)."""
    raw = shape_config(shape, layers)
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer(out_dir, tiny_corpus(0), vocab_size=TOKENIZER_VOCAB,
                    model_max_length=raw["max_position_embeddings"])
    eos = token_id(out_dir, EOS_TOKEN)
    raw.update(eos_token_id=eos, pad_token_id=eos)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": eos, "pad_token_id": eos}, f, indent=2)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--shape", default="mini", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, same widths (default: the model's)")
    args = parser.parse_args()
    print(write_shape_dir(args.out_dir, args.shape, args.layers))


if __name__ == "__main__":
    main()
