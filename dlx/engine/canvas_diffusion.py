"""DiffusionGemma's decoding strategy and sampler: each request denoises one canvas after another with its own
generator, one denoising step per engine step, drawing exactly what diffusion_gemma_sampler.generate() draws."""
import dataclasses
from dataclasses import dataclass

import torch

from dlx.config import Config
from dlx.engine.request import Request
from dlx.engine.strategy import StepPlan, finish_by_stop_rules
from dlx.models.diffusion_gemma import DiffusionGemmaConfig, EncodedPrompt
from dlx.models.diffusion_gemma_sampler import (CanvasState, SamplingSettings, make_generator, start_canvas,
                                                step)
from dlx.params import CANVAS_FIELDS, SamplingParams


@dataclass
class CanvasDecoding:
    """One request's canvas decoding between engine steps (kept in Request.decoding)."""
    settings: SamplingSettings       # the checkpoint's generation_config.json with the request's fields over it
    generator: torch.Generator       # the request's own stream: every canvas, sample and renoising draw
    context: torch.Tensor            # [L] the prompt and every finished canvas: what the encoder reads
    state: CanvasState | None = None      # the canvas being refined; None between two canvases
    encoded: EncodedPrompt | None = None  # the encoder's pass over `context`, made by the runner, once per canvas
    pending: CanvasState | None = None    # this step's next state: the sampler's, installed by commit
    committed: int = 0               # generated tokens decided (whole canvases, the last cut to max_tokens)

    def release(self) -> None:
        """Drop the tensors a finished request no longer needs (an unfinished canvas's logits are C x vocab)."""
        self.state = self.encoded = self.pending = None


class CanvasDiffusion:
    """Canvas diffusion (model_type diffusion_gemma). A request's tokens are decided a whole canvas at a time: a
    canvas refines from random tokens until the adaptive stop (stable and confident) or max_denoising_steps, then
    its argmax is the request's next canvas_length tokens and the context of the next canvas, until one holds a stop
    token or max_tokens (the reference's max_new_tokens) are decided. Request fields: the canvas-sampler fields of
    SamplingParams override generation_config.json; temperature, top_p, top_k, sampling_mode, threshold (and lora)
    are refused, as the family has its own temperature schedule (t_max down to t_min) and acceptance rule; `seed` seeds
    the request's generator (torch.manual_seed(seed) before generate() draws the same), no seed a random one.
    Outputs differ from generate()'s in two ways every dlx request shares: a stop token ends the output without
    being part of it, and the last canvas is cut to max_tokens."""

    paged_kv = False   # the encoder's KV is held per request, dense (paged encoder KV is the next step)

    def __init__(self, cfg: Config):
        model_cfg = DiffusionGemmaConfig.from_hf(cfg.hf_config)
        self.canvas_length, self.vocab_size = model_cfg.canvas_length, model_cfg.vocab_size
        self.defaults = SamplingSettings.from_pretrained(cfg.model)
        self.device = torch.device(cfg.device or "cpu")

    def check_params(self, params: SamplingParams) -> None:
        """Refuse the fields of other samplers (set to anything but their defaults) and bad canvas settings."""
        if params.lora is not None:
            raise ValueError("DiffusionGemma does not take 'lora': it is served without LoRA adapters")
        defaults = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
        for name in ("temperature", "top_p", "top_k", "sampling_mode", "threshold"):
            if getattr(params, name) != defaults[name]:
                raise ValueError(f"DiffusionGemma does not take '{name}': its canvas sampler has its own temperature "
                                 "schedule and acceptance rule (its fields: " + ", ".join(CANVAS_FIELDS) + ")")
        self.defaults.replace(**params.canvas_settings())   # t_min < t_max and the like, checked now

    def decoding(self, req: Request) -> CanvasDecoding:
        """The request's canvas state, made on its first plan: its settings, generator and prompt."""
        if req.decoding is None:
            settings = self.defaults.replace(**req.params.canvas_settings(), max_new_tokens=req.max_tokens)
            seed = req.params.seed if req.params.seed is not None else torch.Generator().seed()
            context = torch.tensor(req.tokens[:req.prompt_len], dtype=torch.long, device=self.device)
            req.decoding = CanvasDecoding(settings, make_generator(seed, self.device), context)
            req.stops = frozenset(self.stops(req))   # the family's EOS ids, which the shared stop rules read
        return req.decoding

    # ---- rows of a step ----------------------------------------------------------------------------
    def plan(self, req: Request) -> StepPlan:
        """Every step runs the whole canvas (its rows count against the token budget); a new canvas draws its
        random start here, after the previous one's last draw, as generate() does. Nothing is stored in pages."""
        decoding = self.decoding(req)
        if decoding.state is None:
            decoding.state = start_canvas(self.canvas_length, self.vocab_size, decoding.settings, decoding.generator)
        return StepPlan(0, 0, self.canvas_length, None)

    def cancel(self, req: Request, plan: StepPlan) -> None:
        """Nothing to take back: the canvas drawn by plan() is the one the next plan() uses."""

    def reusable_prefix_len(self, req: Request) -> int:
        return 0   # no paged KV, so no prefix cache

    # ---- commits -----------------------------------------------------------------------------------
    def logit_positions(self, req: Request) -> list[int]:
        """The canvas's positions, after the context."""
        start = len(self.decoding(req).context)
        return list(range(start, start + self.canvas_length))

    def commit(self, req: Request, positions: list[int], tokens: list[int], probs: list[float]) -> int:
        """Install the sampler's next state; when the canvas stopped, its argmax becomes the request's next tokens
        and the context of the next canvas. Returns the tokens decided."""
        decoding = req.decoding
        decoding.state, decoding.pending = decoding.pending, None
        if not decoding.state.done:
            return 0
        block = decoding.state.argmax
        start = req.prompt_len + decoding.committed
        kept = block[:max(0, req.gen_end - start)].tolist()
        req.tokens[start:start + len(kept)] = kept
        decoding.committed += len(kept)
        decoding.context = torch.cat([decoding.context, block])
        decoding.state, decoding.encoded = None, None
        return len(kept)

    # ---- what is final -----------------------------------------------------------------------------
    def stable_len(self, req: Request) -> int:
        """Finished canvases never change."""
        return req.decoding.committed if req.decoding is not None else 0

    def shown_tokens(self, req: Request) -> list[int]:
        """The finished canvases, then the refining canvas as it stands: the latest step's argmax, what the canvas
        would give if it stopped now (its random start before the first step)."""
        decided = req.generated()[:self.stable_len(req)]
        state = req.decoding.state if req.decoding is not None else None
        if state is None:
            return decided
        return decided + state.argmax[:req.max_tokens - len(decided)].tolist()

    def stops(self, req: Request) -> set[int]:
        """The request's stop tokens and the checkpoint's EOS tokens (generation_config.json), unless ignore_eos."""
        eos = set() if req.params.ignore_eos else set(req.decoding.settings.eos_token_ids)
        return eos | set(req.params.stop_token_ids)

    def finished(self, req: Request) -> bool:
        return finish_by_stop_rules(req, self.stable_len(req))


class CanvasSampler:
    """One denoising step of each request's canvas from its logits (diffusion_gemma_sampler.step): temperature
    schedule, a sample per position, entropy-bounded acceptance, renoising and the adaptive stop, drawn from the
    request's generator. The next state waits in CanvasDecoding.pending for the strategy's commit."""

    @torch.no_grad()
    def choose(self, batch: list[Request], rows: list[torch.Tensor], sizes: list[int]) -> list[tuple[list, list]]:
        """Per request: the step's argmax tokens and 1.0 where a position was accepted (0.0 where renoised)."""
        chosen = []
        for req, logits in zip(batch, rows):
            decoding = req.decoding
            decoding.pending = step(decoding.state, logits, decoding.settings, decoding.generator)
            chosen.append((decoding.pending.argmax.tolist(), decoding.pending.accepted.float().tolist()))
        return chosen
