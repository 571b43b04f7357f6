"""The decoding-strategy interface: which rows a step computes, how chosen tokens become commits, when a request
is finished. The scheduler and the engine loop call only this; a model family's strategy lives in its own file."""
from dataclasses import dataclass
from typing import Protocol

from dlx.config import Config
from dlx.engine.request import Request
from dlx.params import SamplingParams


@dataclass
class StepPlan:
    """Rows [start, end) of this request run in the forward; rows [start, store_end) are stored. `activated` is
    the block this step added to the request's canvas (None if none), which `cancel` takes back."""
    start: int
    store_end: int
    end: int
    activated: int | None


class DecodingStrategy(Protocol):
    """How requests of one model family are decoded. Per-request state lives in `Request`; a strategy holds only
    settings and rules, so one object serves every request of an engine. `paged_kv`: its family's forward reads and
    writes the engine's paged KV cache through the ModelRunner; False: a dense runner of its own, no pages."""
    paged_kv: bool

    def check_params(self, params: SamplingParams) -> None:
        """Refuse (ValueError, one sentence) what a request sets that this strategy does not decode by."""

    def plan(self, req: Request) -> StepPlan:
        """Called by the scheduler when it considers `req` for a step: advance the request's canvas for the
        step (e.g. activate a block) and say which rows the forward computes and stores."""

    def cancel(self, req: Request, plan: StepPlan) -> None:
        """Called by the scheduler when the planned step will not run (no budget, no pages, preempted)."""

    def reusable_prefix_len(self, req: Request) -> int:
        """Leading tokens that will never change: what the scheduler may look up in the prefix cache."""

    def logit_positions(self, req: Request) -> list[int]:
        """Positions whose logits this step needs (the engine asks the runner for them, in this order)."""

    def commit(self, req: Request, positions: list[int], tokens: list[int], probs: list[float]) -> int:
        """Called by the engine with the sampler's token and probability for each of `positions`: write what the
        rules accept into req.tokens; returns how many tokens were committed."""

    def stable_len(self, req: Request) -> int:
        """Leading generated tokens that can no longer change (what a stream may show as final)."""

    def shown_tokens(self, req: Request) -> list[int]:
        """The generated region a stream shows after a step, masks at undecoded positions."""

    def finished(self, req: Request) -> bool:
        """Called by the scheduler after each step: finish the request (output, reason) once its text is decided."""


def finish_by_stop_rules(req: Request, stable: int) -> bool:
    """The stop rules every strategy shares, over the first `stable` generated tokens: a stop token, the whole
    length decided, a repetition run, the forward limit. Finishes the request and returns True when one holds."""
    cut = req.first_stop(stable)   # each check reads only what became stable since the last one
    if cut is not None:
        return req.finish("stop", req.generated()[:cut])
    if stable == req.gen_end - req.prompt_len:
        return req.finish("length", req.generated())
    run_end = repetition_end(req, stable)
    if run_end is not None:
        return req.finish("repetition", req.generated()[:run_end])
    if req.params.max_nfe and req.nfe >= req.params.max_nfe:
        return req.finish("max_nfe", req.generated()[:stable])
    return False


def repetition_end(req: Request, stable: int) -> int | None:
    """End of the first run of `max_repetition_run` identical tokens among the first `stable` generated ones, if
    any; a resumed request's run may have begun in the output it generated before. The run's state is kept on
    the request, so each call reads only the tokens that became stable since the last."""
    limit = req.params.max_repetition_run
    if not limit:
        return None
    if req.repetition is None:   # the run the resumed request's earlier output ends with
        length, last = 0, None
        for token in req.tokens[max(req.prompt_len - req.resumed, req.prompt_len - limit):req.prompt_len]:
            length, last = (length + 1 if token == last else 1), token
        req.repetition = (0, length, last)
    checked, length, last = req.repetition
    for i in range(checked, stable):
        token = req.tokens[req.prompt_len + i]
        length, last = (length + 1 if token == last else 1), token
        if length >= limit:
            return i + 1
    req.repetition = (max(checked, stable), length, last)
    return None


def strategy_for(cfg: Config) -> DecodingStrategy:
    """The strategy `--decoding-strategy` names (the config checks the name and fills it from the model_type)."""
    # Both build on this module's StepPlan and stop rules, so they are imported here.
    from dlx.engine.block_diffusion import BlockDiffusion
    from dlx.engine.canvas_diffusion import CanvasDiffusion
    if cfg.decoding_strategy == "multi_bd":
        return BlockDiffusion(cfg)
    if cfg.decoding_strategy == "canvas":
        return CanvasDiffusion(cfg)
    raise ValueError(f"unknown decoding strategy {cfg.decoding_strategy!r}")
