"""Tiny random DiffusionGemma checkpoints in real Hugging Face layout, written by transformers' own classes.
From the command line: `python -m dlx.models.tiny OUT_DIR --family diffusion_gemma` (needs transformers >= 5.11)."""
import torch

# Two sliding and two full-attention layers; a window (8) shorter than the canvas (16) and than long prompts, so
# tests see the decoder keep only the prompt's last window - 1 keys while the canvas itself stays unwindowed.
TINY_TEXT = {
    "vocab_size": 160, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "global_head_dim": 32, "num_global_key_value_heads": 1, "sliding_window": 8,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "num_experts": 4, "top_k_experts": 2, "moe_intermediate_size": 32, "max_position_embeddings": 1024,
}
# The vision tower cannot be left out of the transformers model; this is the smallest it builds with.
TINY_VISION = {
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 2, "head_dim": 8, "position_embedding_size": 64, "patch_size": 4,
    "pooling_kernel_size": 2,
}
TINY_CANVAS = 16


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """transformers initialises every norm, scale and layer scalar to 1 and matrices at std 0.02, which leaves
    logits near uniform; draw them all instead, so a wrong op shows in the logits. The encoder's layer scalars
    (buffers, not tied) get other values than the decoder's, so mixing them up shows too."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".vision_tower." in name or ".embed_vision." in name:
                continue
            if name.endswith("embed_tokens.weight"):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))
            elif name.endswith(("norm.weight", "router.scale")):
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            elif name.endswith("per_expert_scale"):
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * param.shape[-1] ** -0.5)
        for name, buffer in model.named_buffers():
            if name.endswith("layer_scalar"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))


def write_tiny_diffusion_gemma(out_dir: str, seed: int = 0, dtype: str = "float32", tokenizer: bool = False) -> str:
    """A randomly initialised DiffusionGemmaForBlockDiffusion saved with save_pretrained: config.json,
    generation_config.json and model.safetensors (tied encoder names left out, as transformers writes them).
    tokenizer: also the tiny models' byte-level BPE tokenizer, the vocabulary sized to it and its EOS the
    model's EOS and padding (what `python -m dlx.models.tiny OUT --family diffusion_gemma` writes)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(TINY_TEXT)
    if tokenizer:
        from dlx.models.tiny import tiny_corpus
        from dlx.models.tokenizer_build import EOS_TOKEN, build_tokenizer, token_id
        vocab = build_tokenizer(out_dir, tiny_corpus(seed), vocab_size=384)
        eos = token_id(out_dir, EOS_TOKEN)
        text.update(vocab_size=vocab, eos_token_id=eos, pad_token_id=eos)
    config = DiffusionGemmaConfig(text_config=text, vision_config=dict(TINY_VISION), canvas_length=TINY_CANVAS)
    torch.manual_seed(seed)  # transformers' own initialisation of the vision tower
    model = DiffusionGemmaForBlockDiffusion(config)
    if tokenizer:
        model.generation_config.eos_token_id = text["eos_token_id"]
        model.generation_config.pad_token_id = text["pad_token_id"]
    randomize(model, torch.Generator().manual_seed(seed))
    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]).save_pretrained(out_dir)
    return out_dir

