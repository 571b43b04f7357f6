"""Samplers: turn logits of a request's open positions into commits. `naive` fills masks (threshold,
else the step's quota of most confident); `edit` also rewrites filled tokens of open blocks."""
import itertools

import torch

from dlx.engine.request import Request
from dlx.engine.step_io import LogitRows


def quota(step: int, masked_at_start: int, steps: int) -> int:
    """Tokens a block must commit at its `step`-th step: masked_at_start spread over `steps`, ≥ 1."""
    scheduled = masked_at_start // steps + (1 if step < masked_at_start % steps else 0)
    return max(1, scheduled if step < steps else 0)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p   # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample_tokens(logits: torch.Tensor, req: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled token and its probability for each row (temperature, top-k, top-p, the request's seed)."""
    p = req.params
    if req.generator is None and p.seed is not None:
        req.generator = torch.Generator(device=logits.device).manual_seed(p.seed)
    probs = filter_logits(logits / p.temperature, p.top_k, p.top_p).softmax(-1)
    tokens = torch.multinomial(probs, 1, generator=req.generator).squeeze(-1)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)


class Sampler:
    def __init__(self, mask_id: int, accept_threshold: float, semi_complete_threshold: float,
                 edit_threshold: float, max_post_edit_steps: int):
        self.mask_id = mask_id
        self.accept, self.semi = accept_threshold, semi_complete_threshold
        self.edit, self.max_post_edit = edit_threshold, max_post_edit_steps

    def logit_positions(self, req: Request) -> list[int]:
        """Positions whose logits this step needs: masks of open blocks (and filled tokens in edit mode)."""
        out = []
        for b in req.active_blocks():
            lo = max(b * req.B, req.prompt_len)
            out += [i for i in range(lo, (b + 1) * req.B) if req.edit_mode or req.tokens[i] == self.mask_id]
        return out

    @torch.no_grad()
    def choose(self, batch: list[Request], rows: LogitRows, sizes: list[int]) -> list[tuple[list, list]]:
        """(token, probability) lists for every request's rows of the step. Greedy requests take the runner's
        argmax, copied to the host once for the whole batch; sampled ones draw from their logits with their own
        generators."""
        chosen: list[tuple[list, list] | None] = [None] * len(batch)
        starts = [0, *itertools.accumulate(sizes)]   # request i owns rows starts[i]:starts[i + 1]
        if any(req.params.greedy for req in batch):
            # One device-to-host copy; float64 holds every token id and fp32 probability exactly.
            host_tokens, host_conf = torch.stack([rows.tokens.double(), rows.probs.double()]).tolist()
            for i, req in enumerate(batch):
                if req.params.greedy:
                    span = slice(starts[i], starts[i + 1])
                    chosen[i] = ([int(t) for t in host_tokens[span]], host_conf[span])
        for i, req in enumerate(batch):
            if chosen[i] is None:   # sampled: the request's own generator
                logits = rows.logits[starts[i]:starts[i + 1]].to(torch.float32, copy=True)
                logits[:, self.mask_id] = float("-inf")
                tokens, conf = sample_tokens(logits, req)
                chosen[i] = (tokens.tolist(), conf.tolist())
        return chosen

    def apply(self, req: Request, positions: list[int], tokens: list[int], conf: list[float]) -> int:
        """Commit this step's tokens (chosen for `positions`) into req.tokens; returns how many masks were filled."""
        active = req.active_blocks()
        before = {b: req.progress(b) for b in [active[0] - 1] + active}
        by_block: dict[int, list[int]] = {}
        for row, pos in enumerate(positions):
            by_block.setdefault(pos // req.B, []).append(row)
        filled = 0
        accept = self.accept if req.params.threshold is None else req.params.threshold
        for b in active:
            rows = by_block.get(b, [])
            masked = [r for r in rows if req.tokens[positions[r]] == self.mask_id]
            need = quota(req.block_steps[b], req.masked_at_start[b], req.steps)
            confident = [r for r in masked if conf[r] > accept]
            forced = b == active[0] or before.get(b - 1, 1.0) >= self.semi
            if len(confident) < need and forced:
                confident = sorted(masked, key=lambda r: (-conf[r], positions[r]))[:need]
            for r in confident:
                req.tokens[positions[r]] = tokens[r]
            filled += len(confident)
            if req.edit_mode:
                self.edit_filled(req, b, rows, masked, tokens, conf, positions)
            req.block_steps[b] += 1
        return filled

    def edit_filled(self, req: Request, b: int, rows: list[int], masked: list[int], tokens: list[int],
                    conf: list[float], positions: list[int]) -> None:
        """Rewrite filled tokens whose prediction changed with confidence above the edit threshold;
        a block with no masks settles once an edit-free step passes or its post-edit budget runs out."""
        changed = 0
        for r in rows:
            pos = positions[r]
            if r not in masked and tokens[r] != req.tokens[pos] and conf[r] > self.edit:
                req.tokens[pos] = tokens[r]
                changed += 1
        if req.block_masks(b) == 0:
            filled_at = req.filled_at.setdefault(b, req.block_steps[b])
            if not masked and (changed == 0 or req.block_steps[b] - filled_at >= self.max_post_edit):
                req.settled.add(b)
