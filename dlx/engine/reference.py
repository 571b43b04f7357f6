"""Reference block-diffusion decoder: full recompute of the whole canvas every step, no cache.
It is the oracle: buffer_size 1 is the model's own generate(); buffer_size ≥ 2 is MultiBD (SPEC §5)."""
from dataclasses import dataclass

import torch

from dlx.engine.block_diffusion import quota
from dlx.engine.sampler import filter_logits
from dlx.kernels.attention import AttentionMetadata


@dataclass
class DecodeSettings:
    mask_id: int
    eos_id: int | None
    block_size: int = 32
    steps: int = 32                      # denoising steps per block (quota schedule)
    accept_threshold: float = 0.95
    buffer_size: int = 1
    add_block_threshold: float = 0.1
    semi_complete_threshold: float = 0.9
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class DecodeResult:
    token_ids: list[int]
    nfe: int
    finish_reason: str  # "stop" (EOS) or "length"


def choose_tokens(logits: torch.Tensor, s: DecodeSettings,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and its probability per row; greedy takes the lowest id among equal maxima."""
    logits = logits.float()
    logits[:, s.mask_id] = float("-inf")
    if s.temperature == 0:
        probs = logits.softmax(-1)
        tokens = probs.argmax(-1)
    else:
        probs = filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(-1)
        tokens = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)


@torch.no_grad()
def reference_generate(model, prompt: list[int], max_tokens: int, s: DecodeSettings) -> DecodeResult:
    B, P = s.block_size, len(prompt)
    steps = min(s.steps, max_tokens)
    end = -(-(P + max_tokens) // B) * B
    device = next(model.parameters()).device
    x = torch.full((end,), s.mask_id, dtype=torch.long, device=device)
    x[:P] = torch.tensor(prompt, device=device)
    gen = torch.Generator(device=device).manual_seed(s.seed) if s.seed is not None else None
    block_steps: dict[int, int] = {}           # activated block → steps it has taken
    masked_at_start: dict[int, int] = {}
    next_block, nfe = P // B, 0

    def masked(b: int) -> torch.Tensor:
        return (x[b * B:(b + 1) * B] == s.mask_id).nonzero().squeeze(-1) + b * B

    def progress(b: int) -> float:
        return 1.0 - len(masked(b)) / B

    while True:
        active = [b for b in block_steps if len(masked(b)) > 0]
        span = (max(block_steps) - min(active) + 1) if active else 0
        eos_seen = not s.ignore_eos and s.eos_id is not None and bool((x[P:P + max_tokens] == s.eos_id).any())
        can_add = next_block * B < end and not eos_seen and span < s.buffer_size
        if can_add and (not active or progress(next_block - 1) >= s.add_block_threshold):
            block_steps[next_block], masked_at_start[next_block] = 0, len(masked(next_block))
            active.append(next_block)
            next_block += 1
        upto = (max(active) + 1) * B
        hidden = model(x[:upto], torch.arange(upto, device=device), AttentionMetadata.single(upto, B, device))
        before = {b: progress(b) for b in active}
        for b in active:
            rows = masked(b)
            tokens, conf = choose_tokens(model.compute_logits(hidden[rows]), s, gen)
            need = quota(block_steps[b], masked_at_start[b], steps)
            confident = conf > s.accept_threshold
            forced = b == active[0] or before.get(b - 1, 1.0) >= s.semi_complete_threshold
            if int(confident.sum()) >= need or not forced:
                pick = confident.nonzero().squeeze(-1)
            else:
                pick = torch.sort(conf, descending=True, stable=True).indices[:need]
            x[rows[pick]] = tokens[pick]
            block_steps[b] += 1
        nfe += 1
        out = x[P:P + max_tokens].tolist()
        cut = out.index(s.eos_id) if (not s.ignore_eos and s.eos_id in out) else None
        if cut is not None and s.mask_id not in out[:cut]:
            return DecodeResult(out[:cut], nfe, "stop")
        if s.mask_id not in out:
            return DecodeResult(out, nfe, "length")


def main() -> None:
    """`python -m dlx.engine.reference --model DIR "prompt"`: decode one prompt with the oracle."""
    import argparse

    from transformers import AutoTokenizer

    from dlx.models import load_model
    parser = argparse.ArgumentParser(description="Reference block-diffusion decode of one prompt")
    parser.add_argument("prompt")
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--buffer-size", type=int, default=1)
    args = parser.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    model = load_model(args.model)
    s = DecodeSettings(mask_id=tok.mask_token_id, eos_id=tok.eos_token_id, buffer_size=args.buffer_size)
    out = reference_generate(model, tok.encode(args.prompt), args.max_tokens, s)
    print(f"{tok.decode(out.token_ids)!r}  (nfe={out.nfe}, finish={out.finish_reason})")


if __name__ == "__main__":
    main()
