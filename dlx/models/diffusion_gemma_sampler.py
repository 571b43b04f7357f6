"""DiffusionGemma's canvas sampler for one request: its settings (generation_config.json), one denoising step
(entropy-bounded acceptance, renoising, adaptive stop) and the block-after-block driver, as transformers' generate()."""
import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import Categorical

from dlx.models.diffusion_gemma import DiffusionGemmaModel


@dataclass(frozen=True)
class SamplingSettings:
    """What one generate() call runs with. The defaults are the reference's, used for any key that
    generation_config.json leaves out (or writes as null). Its max_length is not read: the reference lets it win only
    while max_new_tokens stays at 256, a length bound per prompt that a request states as max_new_tokens instead."""
    max_new_tokens: int = 256            # rounded up to whole canvases, as the reference does
    max_denoising_steps: int = 48        # per canvas, unless the adaptive stop ends it earlier
    entropy_bound: float = 0.1           # sampler_config.entropy_bound: how much joint entropy one step may accept
    t_min: float = 0.4                   # temperature at the last step ...
    t_max: float = 0.8                   # ... and at the first
    stability_threshold: int = 1         # steps the argmax canvas must repeat for the adaptive stop (0: no need)
    confidence_threshold: float = 0.005  # mean token entropy under which the canvas counts as confident
    eos_token_ids: tuple[int, ...] = ()  # from generation_config.json only (the reference ignores config.json's)

    def __post_init__(self):
        if self.max_new_tokens <= 0 or self.max_denoising_steps <= 0:
            raise ValueError("max_new_tokens and max_denoising_steps must be positive")
        if self.entropy_bound <= 0 or self.confidence_threshold <= 0 or self.stability_threshold < 0:
            raise ValueError("entropy_bound and confidence_threshold must be > 0, stability_threshold >= 0")
        if not 0 <= self.t_min < self.t_max:
            raise ValueError(f"need 0 <= t_min < t_max (got t_min={self.t_min}, t_max={self.t_max})")

    @classmethod
    def from_generation_config(cls, cfg: dict[str, Any], **overrides: Any) -> "SamplingSettings":
        """From a parsed generation_config.json; `overrides` (field names) win over the file."""
        read: dict[str, Any] = {}
        for key in ("max_new_tokens", "max_denoising_steps", "t_min", "t_max", "stability_threshold",
                    "confidence_threshold"):
            if cfg.get(key) is not None:
                read[key] = cfg[key]
        sampler = cfg.get("sampler_config") or {}  # saved as a dict with the dataclass' name beside its fields
        if sampler.get("entropy_bound") is not None:
            read["entropy_bound"] = sampler["entropy_bound"]
        eos = cfg.get("eos_token_id")
        if eos is not None:
            read["eos_token_ids"] = tuple(eos) if isinstance(eos, list) else (eos,)
        return cls(**{**read, **overrides})

    @classmethod
    def from_pretrained(cls, model_dir: str, **overrides: Any) -> "SamplingSettings":
        """From model_dir/generation_config.json, or the reference defaults when the checkpoint has none."""
        path = os.path.join(model_dir, "generation_config.json")
        cfg = {}
        if os.path.exists(path):
            with open(path) as f:
                cfg = json.load(f)
        return cls.from_generation_config(cfg, **overrides)

    def replace(self, **overrides: Any) -> "SamplingSettings":
        """A per-call copy with some fields changed."""
        if "eos_token_ids" in overrides:
            overrides["eos_token_ids"] = tuple(overrides["eos_token_ids"])
        return dataclasses.replace(self, **overrides)


@dataclass
class CanvasState:
    """One canvas between denoising steps."""
    canvas: torch.Tensor           # [C] what the next decoder pass reads: accepted tokens, fresh noise elsewhere
    argmax: torch.Tensor           # [C] the latest step's most likely tokens: the block's output once it stops
    logits: torch.Tensor | None    # [C, vocab] the latest step's temperature-scaled logits (self-conditioning)
    history: torch.Tensor | None   # [stability_threshold, C] the last argmax canvases, oldest first
    steps_left: int                # the reference counts steps down: N at the first, 1 at the last
    accepted: torch.Tensor | None  # [C] bool, which positions the latest step accepted
    done: bool = False


def random_tokens(length: int, vocab_size: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise over the vocabulary; the one draw shape the reference uses for canvases and renoising."""
    return torch.randint(0, vocab_size, (length,), generator=generator, device=generator.device)


def start_canvas(canvas_length: int, vocab_size: int, settings: SamplingSettings,
                 generator: torch.Generator) -> CanvasState:
    """A block's first state: a fully random canvas, nothing accepted, no self-conditioning yet."""
    noise = random_tokens(canvas_length, vocab_size, generator)
    return CanvasState(canvas=noise, argmax=noise, logits=None, history=None,
                       steps_left=settings.max_denoising_steps, accepted=None)


def temperature(settings: SamplingSettings, steps_left: int) -> torch.Tensor:
    """The linear schedule, t_max at the first step down towards t_min. The reference holds the step as an int32
    tensor, so the whole expression is float32 tensor arithmetic; the same here keeps the scaled logits bit-equal
    (Python doubles round differently and shift later draws)."""
    fraction = torch.tensor(steps_left, dtype=torch.int32) / settings.max_denoising_steps
    return settings.t_min + (settings.t_max - settings.t_min) * fraction


def entropy_bounded_acceptance(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """Accept the k lowest-entropy positions for the largest k with (sum of their entropies - their largest) <= bound:
    an upper bound on their joint mutual information, so the accepted tokens are nearly independent. The lowest one
    always passes (its sum minus its max is 0), so every step accepts at least one position."""
    ordered, order = torch.sort(entropy)
    passes = entropy.new_zeros(entropy.shape, dtype=torch.bool)
    passes[order] = torch.cumsum(ordered, dim=-1) - ordered <= bound  # ascending: `ordered` is the running max
    return passes


def step(state: CanvasState, logits: torch.Tensor, settings: SamplingSettings,
         generator: torch.Generator) -> CanvasState:
    """From the decoder's logits [C, vocab] on state.canvas to the next state. Two draws, in the reference's order:
    one multinomial sample per position, then a full random canvas whose tokens fill the positions not accepted."""
    scaled = logits / temperature(settings, state.steps_left)
    probs = torch.softmax(scaled, dim=-1, dtype=torch.float32)
    sampled = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    argmax = torch.argmax(scaled, dim=-1)
    entropy = Categorical(logits=scaled).entropy()  # the reference's entropy op, so ties and thresholds agree
    accepted = entropy_bounded_acceptance(entropy, settings.entropy_bound)
    # The noise is drawn even when every position is accepted: skipping it would shift all later draws.
    noise = random_tokens(len(state.canvas), logits.shape[-1], generator)
    canvas = torch.where(accepted, sampled, noise)  # the reference's accept-then-renoise, in one select

    # Adaptive stop: the argmax canvas equals each of the last stability_threshold ones, and the mean entropy
    # of the scaled logits is under the confidence threshold. The history starts as -1s, so it cannot hold early.
    history, stable = state.history, True
    if settings.stability_threshold > 0:
        if history is None:
            history = torch.full((settings.stability_threshold, len(argmax)), -1, dtype=argmax.dtype,
                                 device=argmax.device)
        stable = bool((history == argmax).all())
        history = torch.cat([history[1:], argmax[None]])
    confident = bool(entropy.mean() < settings.confidence_threshold)
    steps_left = state.steps_left - 1
    return CanvasState(canvas=canvas, argmax=argmax, logits=scaled, history=history, steps_left=steps_left,
                       accepted=accepted, done=(stable and confident) or steps_left == 0)


def denoise_block(model: DiffusionGemmaModel, context_ids: torch.Tensor, settings: SamplingSettings,
                  generator: torch.Generator) -> torch.Tensor:
    """One canvas after context_ids [L] (the prompt and every earlier block): encode the context once, then
    decoder steps until the adaptive stop or the step limit. Returns the block's tokens [C]."""
    cfg = model.config
    encoded = model.encode(context_ids)
    state = start_canvas(cfg.canvas_length, cfg.vocab_size, settings, generator)
    embed_dtype = model.embed_tokens.weight.dtype
    while not state.done:
        # The reference rounds the self-conditioning logits to the embeddings' dtype (a no-op in fp32).
        previous = None if state.logits is None else state.logits.to(embed_dtype)
        logits = model.decode_step(state.canvas, encoded, previous)
        state = step(state, logits, settings, generator)
    return state.argmax


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The request's own random stream. torch.manual_seed(seed) seeds the global CPU generator to the same state,
    so on the CPU this stream repeats the reference's draws from the global one, draw for draw."""
    return torch.Generator(device=device).manual_seed(seed)


@torch.no_grad()
def generate(model: DiffusionGemmaModel, prompt_ids: torch.Tensor | list[int],
             settings: SamplingSettings | None = None, seed: int = 0, **overrides: Any) -> list[int]:
    """The new tokens for one prompt: blocks of canvas_length tokens, each appended to the context of the next,
    until a block holds an EOS token or ceil(max_new_tokens / canvas_length) blocks are done. Like the reference,
    the last block is not cut to max_new_tokens; unlike it, the tokens after the first EOS are dropped rather than
    replaced by pad tokens. `overrides` change fields of `settings` for this call only."""
    settings = (settings or SamplingSettings()).replace(**overrides)
    device = model.embed_tokens.weight.device
    context = torch.as_tensor(prompt_ids, dtype=torch.long, device=device).reshape(-1)
    generator = make_generator(seed, device)
    eos = set(settings.eos_token_ids)
    out: list[int] = []
    for _ in range(math.ceil(settings.max_new_tokens / model.config.canvas_length)):
        block = denoise_block(model, context, settings, generator)
        tokens = block.tolist()
        cut = next((i for i, t in enumerate(tokens) if t in eos), None)
        if cut is not None:
            return out + tokens[:cut + 1]
        out += tokens
        context = torch.cat([context, block])  # full recompute: the next block re-encodes everything
    return out
