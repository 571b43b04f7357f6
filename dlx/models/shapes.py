"""Config-only model directories of published model shapes (LLaDA2.0 mini and flash, DiffusionGemma 26B-A4B):
config.json, generation_config.json and tokenizer files, no weights. For benchmarks with `--load-format dummy`:
`python -m dlx.models.shapes OUT_DIR --shape mini|flash|diffusion_gemma [--layers N]`."""
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

# DiffusionGemma 26B-A4B's text model (google/diffusiongemma-26B-A4B-it, the checkpoint transformers' config classes
# name). Where each number comes from:
# - transformers 5.25's DiffusionGemmaTextConfig / DiffusionGemmaConfig defaults, which the checkpoint keeps:
#   vocab_size 262144, head_dim 256, global_head_dim 512 (popped in __post_init__), hidden_activation, rms_norm_eps,
#   final_logit_softcapping 30, rope_parameters (sliding: default, theta 1e4; full: proportional, 0.25 of the pairs,
#   theta 1e6), the 5:1 sliding/full pattern, tied embeddings, canvas_length 256, num_hidden_layers 30.
# - Not in transformers, whose other defaults describe a dense Gemma (hidden 2304, intermediate 9216, 8 heads, window
#   512) and leave num_experts/top_k_experts/moe_intermediate_size None: hidden 2816, intermediate 2112, 16 heads,
#   8 KV heads (sliding layers), 2 KV heads of full-attention layers, 128 experts, top-8, expert width 704, window
#   1024, max_position_embeddings 262144. These are the released checkpoint's config.json as a public port's test
#   quotes it verbatim, and Gemma 4 26B-A4B's text model as another public port tabulates it; transformers itself
#   names gemma-4-26B-A4B-it (and num_global_key_value_heads=2) in DiffusionGemmaTextConfig's expert-parallel plan.
#   A check: these widths give 25.3B parameters, 3.8B active per token (the "26B-A4B" of the name).
# - The checkpoint's own token ids (EOS 1, 106, 50; pad 0) are replaced by the shape tokenizer's, as for LLaDA2.
DIFFUSION_GEMMA_LAYER_TYPES = (["sliding_attention"] * 5 + ["full_attention"]) * 5
DIFFUSION_GEMMA_TEXT = {
    "model_type": "diffusion_gemma_text", "vocab_size": 262144, "hidden_size": 2816, "intermediate_size": 2112,
    "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
    "global_head_dim": 512, "num_global_key_value_heads": 2, "sliding_window": 1024,
    "layer_types": DIFFUSION_GEMMA_LAYER_TYPES, "num_experts": 128, "top_k_experts": 8, "moe_intermediate_size": 704,
    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0,
    "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                           "rope_theta": 1_000_000.0}},
    "max_position_embeddings": 262144, "attention_bias": False, "tie_word_embeddings": True,
    "use_bidirectional_attention": "vision", "dtype": "bfloat16",
}
DIFFUSION_GEMMA = {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
                   "canvas_length": 256, "tie_word_embeddings": True, "dtype": "bfloat16",
                   "text_config": DIFFUSION_GEMMA_TEXT}
# The checkpoint's generation_config.json as the same test quotes it (also diffusion_gemma_sampler's defaults).
DIFFUSION_GEMMA_GENERATION = {"max_new_tokens": 256, "max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8,
                              "stability_threshold": 1, "confidence_threshold": 0.005,
                              "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1}}
SHAPES = {"mini": LLADA2_MINI, "flash": LLADA2_FLASH, "diffusion_gemma": DIFFUSION_GEMMA}
TOKENIZER_VOCAB = 384


def shape_config(shape: str, layers: int | None = None) -> dict:
    """The named shape's config.json, optionally cut to `layers` layers (LLaDA2: the first stays dense;
    DiffusionGemma: the first `layers` layer types, the last made full attention as the model requires)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape '{shape}' (choose {', '.join(SHAPES)})")
    raw = dict(SHAPES[shape])
    if "text_config" in raw:
        return raw if layers is None else cut_text_layers(raw, layers)
    if layers is not None:
        if layers <= raw["first_k_dense_replace"]:
            raise ValueError(f"--layers must exceed first_k_dense_replace ({raw['first_k_dense_replace']}) "
                             "so that at least one layer is MoE")
        raw["num_hidden_layers"] = layers
    return raw


def cut_text_layers(raw: dict, layers: int) -> dict:
    """A text_config shape with only its first `layers` layers."""
    if layers < 1:
        raise ValueError("--layers must be at least 1")
    types = list(raw["text_config"]["layer_types"][:layers])
    types[-1] = "full_attention"
    return {**raw, "text_config": {**raw["text_config"], "num_hidden_layers": layers, "layer_types": types}}


def write_shape_dir(out_dir: str, shape: str = "mini", layers: int | None = None) -> str:
    """The named shape's directory (see write_config_dir)."""
    return write_config_dir(out_dir, shape_config(shape, layers))


def write_config_dir(out_dir: str, raw: dict) -> str:
    """config.json + generation_config.json + a small byte-level tokenizer. The tokenizer knows far fewer ids than
    vocab_size: ids beyond it are never produced by encoding, may be sampled, and decode to nothing. EOS and pad
    are the tokenizer's own ids (the checkpoint's would name no token of this tokenizer); a config with a
    text_config (DiffusionGemma) gets them there too, and its checkpoint's canvas sampler settings."""
    raw = json.loads(json.dumps(raw))   # a deep copy: the shape tables stay as they are
    text = raw.get("text_config")
    os.makedirs(out_dir, exist_ok=True)
    build_tokenizer(out_dir, tiny_corpus(0), vocab_size=TOKENIZER_VOCAB,
                    model_max_length=(text or raw)["max_position_embeddings"])
    eos = token_id(out_dir, EOS_TOKEN)
    raw.update(eos_token_id=eos, pad_token_id=eos)
    generation = {"eos_token_id": eos, "pad_token_id": eos}
    if text is not None:
        text.update(eos_token_id=eos, pad_token_id=eos)
        generation = {**DIFFUSION_GEMMA_GENERATION, **generation}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(raw, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation, f, indent=2)
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
