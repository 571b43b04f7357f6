"""One generation request's state: the canvas of prompt + masked blocks, which blocks are active or settled,
what is stored in the paged cache, its output and timing. The decoding strategy owns the rules that change it."""
import enum
import itertools
import time

from dlx.params import Resumption, SamplingParams

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Request:
    """Blocks are absolute: block b covers positions [b·B, (b+1)·B). A block is *activated* when it joins
    the buffer and *settled* (done) when it will never change again; done blocks at the front of the canvas are
    stored in the KV cache by the next forward and then only read through pages."""

    def __init__(self, prompt: list[int], params: SamplingParams, block_size: int, max_model_len: int,
                 mask_id: int, eos_id: int | None, denoising_steps: int = 32, rid: str | None = None,
                 resumption: Resumption | None = None):
        """A `resumption` (the engine that had the request died) ends the prompt with `resumed` tokens of the
        request's own output; max_tokens is already less those tokens."""
        self.rid = rid if rid is not None else f"req-{next(_ids)}"
        self.params, self.mask_id, self.eos_id, self.B = params, mask_id, eos_id, block_size
        self.adapter = -1   # run-time LoRA adapter of every row (-1: none); the engine sets it from params.lora
        self.resumption = resumption
        self.prompt_len, self.resumed = len(prompt), resumption.generated if resumption else 0
        self.max_tokens = min(params.max_tokens, max_model_len - len(prompt))
        self.gen_end = self.prompt_len + self.max_tokens
        self.canvas_end = -(-self.gen_end // block_size) * block_size
        self.tokens = list(prompt) + [mask_id] * (self.canvas_end - self.prompt_len)
        # The quota schedule is the whole request's: a resumed block must commit as the uninterrupted one did.
        self.steps = min(denoising_steps, self.max_tokens + self.resumed)
        self.admit_alone = bool(resumption and resumption.alone)
        self.block_steps: dict[int, int] = {}      # activated block → forwards it took part in
        self.masked_at_start: dict[int, int] = {}
        self.settled: set[int] = set()             # filled blocks that will not change again (the policy says when)
        self.filled_at: dict[int, int] = {}        # edit mode: block → its step count when masks ran out
        self.next_block = self.prompt_len // block_size
        # Scans that resume where they ended, so a step's bookkeeping does not grow with the output's length:
        # the first block that may be open, generated tokens before the first mask (committed tokens never turn
        # back into masks), and leading stable tokens known to hold no stop token (stable ones never change).
        self.first_open = self.next_block
        self.filled = 0
        self.stop_free = 0
        self.repetition: tuple[int, int, int | None] | None = None   # (tokens checked, run length, last token)
        stops = set(params.stop_token_ids)
        if not params.ignore_eos and eos_id is not None:
            stops.add(eos_id)
        self.stops = frozenset(stops)
        self.stored = 0                            # tokens whose KV is in this request's pages
        self.pages: list[int] = []
        self.page_hashes: list[bytes] = []
        self.nfe = 0
        self.status = Status.WAITING
        self.finish_reason: str | None = None
        self.output: list[int] | None = None
        self.arrival = time.monotonic() - (resumption.spent_s if resumption else 0.0)
        self.first_scheduled: float | None = None
        self.first_step_done: float | None = None
        self.finished_time: float | None = None
        self.generator = None                      # torch.Generator for seeded sampling, made by the sampler
        self.decoding = None                       # state a strategy keeps beyond the block state (a canvas)

    # ---- block state -------------------------------------------------------------------------------
    def block_masks(self, b: int) -> int:
        return self.tokens[b * self.B:(b + 1) * self.B].count(self.mask_id)

    def block_done(self, b: int) -> bool:
        """A block wholly in the prompt, or one its commit policy has settled."""
        return b < self.prompt_len // self.B or b in self.settled

    def progress(self, b: int) -> float:
        return 1.0 if b < self.prompt_len // self.B else 1.0 - self.block_masks(b) / self.B

    def active_blocks(self) -> list[int]:
        """Activated blocks not yet done, in order. Blocks are activated one after another (block_steps' keys run
        up to next_block - 1) and a done block stays done, so only those from the first open one are looked at."""
        while self.first_open < self.next_block and self.block_done(self.first_open):
            self.first_open += 1
        return [b for b in range(self.first_open, self.next_block) if not self.block_done(b)]

    def filled_prefix_len(self) -> int:
        """Generated tokens before the first mask."""
        start = self.prompt_len + self.filled
        try:
            end = self.tokens.index(self.mask_id, start, self.gen_end)
        except ValueError:
            end = self.gen_end
        self.filled = end - self.prompt_len
        return self.filled

    # ---- stop tokens ------------------------------------------------------------------------------
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len:self.gen_end]

    def first_stop(self, stable: int) -> int | None:
        """Index of the first stop token among the first `stable` generated tokens, if any."""
        if self.stops:
            for i in range(self.prompt_len + self.stop_free, self.prompt_len + stable):
                if self.tokens[i] in self.stops:
                    return i - self.prompt_len
        self.stop_free = max(self.stop_free, stable)
        return None

    def stop_token_seen(self) -> bool:
        """A stop token anywhere in the generated tokens (stable or not); past the activated blocks all are masks."""
        end = min(self.gen_end, self.next_block * self.B)
        return bool(self.stops) and any(t in self.stops for t in self.tokens[self.prompt_len + self.stop_free:end])

    # ---- timing (engine clock) -------------------------------------------------------------------------
    def start_timing(self) -> dict:
        """Time in the queue and in the first forward, known once that forward is done."""
        started = self.first_scheduled or self.arrival
        return {"queue_s": started - self.arrival, "prefill_s": (self.first_step_done or started) - started}

    def timing(self) -> dict:
        """The whole timing of a finished request; every value finite and >= 0."""
        timing = self.start_timing()
        first = self.first_step_done or self.finished_time
        tokens = len(self.output or ())
        timing["decode_s"] = self.finished_time - first
        timing["tokens_per_s"] = tokens / max(timing["prefill_s"] + timing["decode_s"], 1e-9)
        timing["tokens_per_forward"] = tokens / max(self.nfe, 1)
        return timing

    def finish(self, reason: str, output: list[int]) -> bool:
        """The output is decided: whatever the strategy kept for the next steps (a canvas's logits, its encoded
        prompt) goes now, not when the last reference to the request does."""
        self.finish_reason, self.output = reason, list(output)
        if self.decoding is not None:
            self.decoding.release()
        self.status = Status.FINISHED
        self.finished_time = time.monotonic()
        return True
