"""The runner of dense canvas models (DiffusionGemma): each step's encoder and decoder passes for the scheduled
requests, with no paged KV cache; what the engine's loop calls in place of ModelRunner for that family."""
import torch

from dlx.engine.request import Request
from dlx.engine.strategy import StepPlan
from dlx.models.diffusion_gemma import DiffusionGemmaModel


class CanvasRunner:
    """Runs one denoising step for every request of a batch: the encoder over a request's context when its canvas
    starts (its keys and values then serve every step of that canvas), then one decoder forward over all the
    step's canvases (model.decode_steps), each with its previous step's logits for self-conditioning.

    For now each request's encoder KV is held in its own dense tensors and each encoder pass runs alone: exact
    against generate() and simple. Next, behind this same run(): the encoder KV in paged cache blocks (written once
    per canvas, a sliding layer keeping only its window) and the canvases' attention in one ragged kernel, which is
    when this runner takes buffers, graphs and a KV budget like ModelRunner's."""

    graphs = None   # no CUDA graphs on this path yet

    def __init__(self, model: DiffusionGemmaModel):
        self.model = model
        self.embed_dtype = model.embed_tokens.weight.dtype

    @torch.no_grad()
    def run(self, batch: list[Request], plans: dict[str, StepPlan], positions: list[list[int]]) -> list[torch.Tensor]:
        """fp32 logits [canvas_length, vocab] of each request's canvas, in batch order."""
        decodings = [req.decoding for req in batch]   # CanvasDecoding, set up by the strategy's plan()
        for decoding in decodings:
            if decoding.encoded is None:
                decoding.encoded = self.model.encode(decoding.context)
        # As generate(): the previous step's scaled logits, rounded to the embeddings' dtype (fp32: no-op).
        previous = [None if d.state.logits is None else d.state.logits.to(self.embed_dtype) for d in decodings]
        return self.model.decode_steps([d.state.canvas for d in decodings], [d.encoded for d in decodings], previous)
