"""The sampler: a token and its probability for each logit row of a step, greedy (the runner's argmax) or drawn
with the request's temperature, top-k, top-p and seed. Which of them become commits is the strategy's rule."""
import itertools

import torch

from dlx.engine.request import Request
from dlx.engine.step_io import LogitRows


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
    def __init__(self, mask_id: int):
        self.mask_id = mask_id   # never sampled
        self.pinned: tuple[torch.Tensor, torch.Tensor] | None = None   # host landing buffers of the greedy choice

    def greedy_to_host(self, rows: LogitRows) -> tuple[list[int], list[float]]:
        """The runner's argmax tokens and probabilities as lists: from a GPU, two copies into pinned buffers and
        one wait for both (converting int64 and fp32 host tensors to lists is several times cheaper than going
        through one float64 tensor)."""
        if rows.tokens.device.type != "cuda":
            return rows.tokens.tolist(), rows.probs.tolist()
        n = len(rows.tokens)
        if self.pinned is None or len(self.pinned[0]) < n:
            size = max(n, 2 * len(self.pinned[0]) if self.pinned else 256)
            self.pinned = (torch.empty(size, dtype=torch.int64, pin_memory=True),
                           torch.empty(size, dtype=torch.float32, pin_memory=True))
        tokens, probs = self.pinned[0][:n], self.pinned[1][:n]
        tokens.copy_(rows.tokens, non_blocking=True)
        probs.copy_(rows.probs, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return tokens.tolist(), probs.tolist()

    @torch.no_grad()
    def choose(self, batch: list[Request], rows: LogitRows, sizes: list[int]) -> list[tuple[list, list]]:
        """(token, probability) lists for every request's rows of the step. Greedy requests take the runner's
        argmax, copied to the host once for the whole batch; sampled ones draw from their logits with their own
        generators."""
        chosen: list[tuple[list, list] | None] = [None] * len(batch)
        starts = [0, *itertools.accumulate(sizes)]   # request i owns rows starts[i]:starts[i + 1]
        if any(req.params.greedy for req in batch):
            host_tokens, host_conf = self.greedy_to_host(rows)
            for i, req in enumerate(batch):
                if req.params.greedy:
                    span = slice(starts[i], starts[i + 1])
                    chosen[i] = (host_tokens[span], host_conf[span])
        for i, req in enumerate(batch):
            if chosen[i] is None:   # sampled: the request's own generator
                logits = rows.logits[starts[i]:starts[i + 1]].to(torch.float32, copy=True)
                logits[:, self.mask_id] = float("-inf")
                tokens, conf = sample_tokens(logits, req)
                chosen[i] = (tokens.tolist(), conf.tolist())
        return chosen
