"""LLaDA2's decoding strategy: block diffusion over a buffer of masked blocks (MultiBD), with two commit policies,
FillMasks (naive) and FillAndEdit (edit), that a request picks by its sampling_mode."""
from dlx.config import Config
from dlx.engine.request import Request
from dlx.engine.strategy import StepPlan, finish_by_stop_rules
from dlx.params import SamplingParams


def quota(step: int, masked_at_start: int, steps: int) -> int:
    """Tokens a block must commit at its `step`-th step: masked_at_start spread over `steps`, ≥ 1."""
    scheduled = masked_at_start // steps + (1 if step < masked_at_start % steps else 0)
    return max(1, scheduled if step < steps else 0)


def block_positions(req: Request, b: int) -> range:
    """Generated positions of block b (the prompt's part of its first block excluded)."""
    return range(max(b * req.B, req.prompt_len), (b + 1) * req.B)


class FillMasks:
    """Naive: only masks are predicted and filled; a block settles as soon as it has no masks left."""

    def positions(self, req: Request, b: int) -> list[int]:
        return [i for i in block_positions(req, b) if req.tokens[i] == req.mask_id]

    def after_fill(self, req: Request, b: int, rows: list[int], masked: list[int], tokens: list[int],
                   probs: list[float], positions: list[int]) -> None:
        """Called once block b's masks of this step are filled."""
        if req.block_masks(b) == 0:
            req.settled.add(b)

    def stable_len(self, req: Request) -> int:
        """Filled tokens never change: everything before the first mask."""
        return req.filled_prefix_len()


class FillAndEdit:
    """Edit: every position of an open block is predicted; filled tokens whose prediction changed with probability
    above `edit_threshold` are rewritten. A block with no masks settles once an edit-free step passes or
    `max_post_edit_steps` steps have run since its masks ran out."""

    def __init__(self, edit_threshold: float, max_post_edit_steps: int):
        self.edit_threshold, self.max_post_edit_steps = edit_threshold, max_post_edit_steps

    def positions(self, req: Request, b: int) -> list[int]:
        return list(block_positions(req, b))

    def after_fill(self, req: Request, b: int, rows: list[int], masked: list[int], tokens: list[int],
                   probs: list[float], positions: list[int]) -> None:
        """Rewrite the confident changes of block b's filled tokens, then settle the block if its edits stopped."""
        changed = 0
        for r in rows:
            pos = positions[r]
            if r not in masked and tokens[r] != req.tokens[pos] and probs[r] > self.edit_threshold:
                req.tokens[pos] = tokens[r]
                changed += 1
        if req.block_masks(b) == 0:
            filled_at = req.filled_at.setdefault(b, req.block_steps[b])
            if not masked and (changed == 0 or req.block_steps[b] - filled_at >= self.max_post_edit_steps):
                req.settled.add(b)

    def stable_len(self, req: Request) -> int:
        """Filled tokens of an open block may still be edited: nothing from the first open block on is stable."""
        n = req.filled_prefix_len()
        first_open = min(req.active_blocks(), default=None)
        return n if first_open is None else min(n, max(0, first_open * req.B - req.prompt_len))


class BlockDiffusion:
    """Blocks are absolute: block b covers positions [b·B, (b+1)·B). At most `buffer_size` blocks decode at once;
    a new block joins once the last one is `add_block_threshold` filled. Each block commits its masks above the
    accept threshold, or at least its quota when it leads the buffer or the block before it is semi-complete."""

    paged_kv = True

    def __init__(self, cfg: Config):
        self.buffer_size, self.add_block_threshold = cfg.buffer_size, cfg.add_block_threshold
        self.accept_threshold, self.semi_complete_threshold = cfg.accept_threshold, cfg.semi_complete_threshold
        self.default_mode = cfg.sampling_mode
        self.policies = {"naive": FillMasks(), "edit": FillAndEdit(cfg.edit_threshold, cfg.max_post_edit_steps)}

    def policy(self, req: Request) -> FillMasks | FillAndEdit:
        """The request's commit policy: its own sampling_mode, else the server's."""
        return self.policies[req.params.sampling_mode or self.default_mode]

    def check_params(self, params: SamplingParams) -> None:
        """The canvas sampler's fields belong to another family."""
        if params.canvas_settings():
            raise ValueError(f"'{next(iter(params.canvas_settings()))}' is a DiffusionGemma sampling field; "
                             "this model decodes by block diffusion")

    # ---- rows of a step ----------------------------------------------------------------------------
    def plan(self, req: Request) -> StepPlan:
        activated = self.activate_next_block(req)
        end = (max(req.active_blocks()) + 1) * req.B   # through the last active block
        store_end = req.stored   # done blocks right after the stored prefix are stored by this step's forward
        while store_end < end and req.block_done(store_end // req.B):
            store_end += req.B
        return StepPlan(req.stored, store_end, end, activated)

    def activate_next_block(self, req: Request) -> int | None:
        """At most one new block per step: when the buffer has room and the last block is far enough."""
        active = req.active_blocks()
        span = req.next_block - min(active) if active else 0   # the last activated block is next_block - 1
        can_add = req.next_block * req.B < req.canvas_end and not req.stop_token_seen() and span < self.buffer_size
        if can_add and (not active or req.progress(req.next_block - 1) >= self.add_block_threshold):
            b = req.next_block
            req.block_steps[b], req.masked_at_start[b] = 0, req.block_masks(b)
            req.next_block += 1
            return b
        return None

    def cancel(self, req: Request, plan: StepPlan) -> None:
        if plan.activated is not None:
            del req.block_steps[plan.activated], req.masked_at_start[plan.activated]
            req.next_block = plan.activated

    def reusable_prefix_len(self, req: Request) -> int:
        b = 0
        while b * req.B < req.canvas_end and req.block_done(b):
            b += 1
        return b * req.B

    # ---- commits -----------------------------------------------------------------------------------
    def logit_positions(self, req: Request) -> list[int]:
        policy = self.policy(req)
        return [pos for b in req.active_blocks() for pos in policy.positions(req, b)]

    def commit(self, req: Request, positions: list[int], tokens: list[int], probs: list[float]) -> int:
        """Fill each active block's masks by the thresholds and its quota, then let the policy edit and settle;
        returns how many masks were filled."""
        policy, active = self.policy(req), req.active_blocks()
        before = {b: req.progress(b) for b in [active[0] - 1] + active}
        by_block: dict[int, list[int]] = {}
        for row, pos in enumerate(positions):
            by_block.setdefault(pos // req.B, []).append(row)
        filled = 0
        accept = self.accept_threshold if req.params.threshold is None else req.params.threshold
        for b in active:
            rows = by_block.get(b, [])
            masked = [r for r in rows if req.tokens[positions[r]] == req.mask_id]
            need = quota(req.block_steps[b], req.masked_at_start[b], req.steps)
            confident = [r for r in masked if probs[r] > accept]
            forced = b == active[0] or before.get(b - 1, 1.0) >= self.semi_complete_threshold
            if len(confident) < need and forced:
                confident = sorted(masked, key=lambda r: (-probs[r], positions[r]))[:need]
            for r in confident:
                req.tokens[positions[r]] = tokens[r]
            filled += len(confident)
            policy.after_fill(req, b, rows, masked, tokens, probs, positions)
            req.block_steps[b] += 1
        return filled

    # ---- what is final -----------------------------------------------------------------------------
    def stable_len(self, req: Request) -> int:
        return self.policy(req).stable_len(req)

    def shown_tokens(self, req: Request) -> list[int]:
        """The activated region: blocks not yet activated are not shown."""
        return req.tokens[req.prompt_len:min(req.gen_end, req.next_block * req.B)]

    def finished(self, req: Request) -> bool:
        return finish_by_stop_rules(req, self.stable_len(req))
