"""Dummy weights for DiffusionGemma (`--load-format dummy`): seeded random parameters made on the model's own device,
and the routing statistics (distinct experts per layer, the busiest expert's load) that show how balanced it routes."""
import contextlib

import torch

from dlx.models.diffusion_gemma_layers import GemmaRouter
from dlx.models.dummy import parameter_generator

# Unlike LLaDA2's, this router has no expert bias to solve: it is a softmax over independent Gaussian projections of
# the normed residual, scale and per-expert scale 1, so the init alone gives every expert the same chance. What could
# still skew it is rows that look alike, LLaDA2's block of mask tokens; a canvas starts from random tokens, so its
# rows differ by their own embeddings. routing_stats() measures the outcome on such a denoising step.
BALANCE_METHOD = ("dummy weights: N(0, 1/fan_in) matrices, N(0, 1/hidden) embeddings (scaled by sqrt(hidden) in "
                  "the forward, so RMS 1), every norm weight, router scale, per-expert scale and layer scalar 1; "
                  "routers balanced by the init alone (no expert bias in this family), measured on the step's "
                  "own canvases")
MEASURE_SEED = 1_000_003


@torch.no_grad()
def fill_dummy_gemma(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every parameter in place on its own device. Vectors (norm weights, router scales, layer scalars: the
    family has no biases) are 1; matrices and expert stacks N(0, 1/fan_in), fan_in their last dimension. No
    residual-stream scaling as LLaDA2's needs: every attention and feed-forward output is normed (the sandwich
    norms) before it is added, so its projection's scale, sliced or not under tensor parallelism, cancels."""
    for name, param in model.named_parameters():
        if param.dim() == 1:
            param.fill_(1.0)
            continue
        std = model.config.hidden_size ** -0.5 if name == "embed_tokens.weight" else param.shape[-1] ** -0.5
        param.normal_(0.0, std, generator=parameter_generator(name, param, seed))


@contextlib.contextmanager
def chosen_gemma_experts(model: torch.nn.Module):
    """Records, while open, the expert ids [tokens, top_k] each router chose in its latest call: a dict from the
    layer index to its choice (a decoder step's, when the step's encoder pass ran before it)."""
    chosen: dict[int, torch.Tensor] = {}
    routers = [m for m in model.modules() if isinstance(m, GemmaRouter)]
    handles = [r.register_forward_hook(lambda module, args, out, i=i: chosen.__setitem__(i, out[0]))
               for i, r in enumerate(routers)]
    try:
        yield chosen
    finally:
        for handle in handles:
            handle.remove()


def expert_stats(chosen: dict[int, torch.Tensor], num_experts: int) -> tuple[list[int], float]:
    """(distinct experts per layer, the busiest expert's load over the mean load, worst layer) of a recorded step."""
    distinct, worst = [], 0.0
    for i in sorted(chosen):
        load = torch.bincount(chosen[i].reshape(-1), minlength=num_experts).float()
        distinct.append(int((load > 0).sum()))
        worst = max(worst, (load.max() / load.mean()).item())
    return distinct, worst


@torch.no_grad()
def routing_stats(model: torch.nn.Module, prompt_len: int = 64, seed: int = MEASURE_SEED) -> tuple[list[int], float]:
    """expert_stats of one denoising step's decoder pass: a random prompt encoded, then a random canvas (as a
    canvas starts) at its first step."""
    cfg, device = model.config, model.embed_tokens.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    prompt = torch.randint(cfg.vocab_size, (prompt_len,), generator=gen, device=device)
    canvas = torch.randint(cfg.vocab_size, (cfg.canvas_length,), generator=gen, device=device)
    encoded = model.encode(prompt)
    with chosen_gemma_experts(model) as chosen:
        model.decode_step(canvas, encoded)
    return expert_stats(chosen, cfg.num_experts)
