"""Turns one request's engine events into text: the denoising buffer, the stable prefix detokenized
incrementally, stop strings (the frontend holds the tokenizer, so it ends requests on them), the result, and
where a request whose engine died resumes (its events from then on continue the same response)."""
import time

from dlx.frontend.detokenizer import IncrementalDetokenizer, find_stop, render_snapshot, safe_prefix_len
from dlx.ipc.messages import Step


class Decoding:
    def __init__(self, tokenizer, mask_id: int, stops: list[str], prompt_tokens: int):
        self.tokenizer, self.mask_id, self.stops = tokenizer, mask_id, stops
        self.mask_text = tokenizer.mask_token or "<|mask|>"
        self.prompt_tokens = prompt_tokens
        self.region: list[int] = []   # generated region so far, masks included
        self.stable = 0
        self.nfe = 0
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stable_text = ""
        self.emitted = ""              # block_append text already sent
        self.emitted_tokens = 0
        self.finished = False
        self.finish_reason: str | None = None
        self.token_ids: list[int] = []
        self.text = ""
        self.timing: dict = {}
        self.first_step_at: float | None = None   # when the first step event arrived (decode time starts)
        self.stopped_by_string = False
        # Resumption after an engine died: the generated tokens resubmitted with the prompt, the current engine's
        # region after them, and the forwards spent on engines that died.
        self.kept: list[int] = []
        self.engine_region: list[int] = []
        self.nfe_base = 0
        self.resumed_after_step = False
        # Where a fresh request retraces this one exactly: `clean` is the start of the latest block the engine
        # opened while every earlier block was final; `open_end` ends the opened blocks, all final if all_stable.
        self.clean = self.open_end = 0
        self.all_stable = True

    def update(self, msg: Step) -> None:
        """Apply one `step` event."""
        self.engine_region = self.engine_region[:msg["offset"]] + list(msg["tokens"])
        region = self.kept + self.engine_region if self.kept else self.engine_region
        stable = len(self.kept) + msg["stable"]
        if len(region) > self.open_end and self.all_stable:
            self.clean = self.open_end
        self.open_end, self.all_stable = len(region), stable >= len(region)
        # Tokens once stable never change, not even when a restarted engine decodes them again (one engine never
        # changes them, so only a request resumed after a step needs the merge).
        self.region = self.region[:self.stable] + region[self.stable:] if self.resumed_after_step else region
        self.stable, self.nfe = max(self.stable, stable), self.nfe_base + msg["nfe"]
        if self.first_step_at is None:
            self.first_step_at = time.monotonic()
            self.timing = dict(msg.get("timing") or {})   # queue_s and prefill_s, from the engine
        if msg["finished"]:
            # After a resumption the engine's clock covers only its own part: decode time is measured here.
            self.finish(self.region, msg["reason"],
                        self.timing if self.resumed_after_step else msg.get("timing") or self.timing)
            return
        self.stable_text += self.detok.push(self.region[:self.stable])
        if self.stops and find_stop(self.stable_text, self.stops, 0) is not None:
            self.finish(self.region[:self.stable], "stop", self.timing)
            self.stopped_by_string = True

    def resume_point(self, greedy: bool) -> int:
        """How many generated tokens a resubmission keeps after its engine died. Sampled: every stable token (the
        client may have seen them, and new draws could differ). Greedy: the tokens before the latest point where
        the engine had no block open; a fresh request from there opens the same absolute blocks with the same
        buffer and retraces the uninterrupted run, so what it decodes again equals what was seen."""
        if not greedy:
            return self.stable
        return self.open_end if self.all_stable else self.clean

    def resume(self, keep: int) -> list[int]:
        """The request goes to a restarted engine keeping `keep` generated tokens (returned): that engine's events
        count from there, its forwards add to those spent."""
        self.kept, self.engine_region = self.region[:keep], []
        self.nfe_base = self.nfe
        self.resumed_after_step = self.resumed_after_step or self.first_step_at is not None
        self.clean = self.open_end = keep
        self.all_stable = True
        return self.kept

    def finish(self, tokens: list[int], reason: str, timing: dict) -> None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = find_stop(text, self.stops, 0) if self.stops else None
        if cut is not None:
            text, reason = text[:cut], "stop"
            keep = len(tokens)
            while keep and len(self.tokenizer.decode(tokens[:keep], skip_special_tokens=True)) > cut:
                keep -= 1
            tokens = tokens[:keep]
        self.finished, self.finish_reason = True, reason
        self.token_ids, self.text = list(tokens), text
        self.stable_text = text
        self.timing = self.whole_timing(timing)

    def whole_timing(self, engine: dict) -> dict:
        """All five timing values. The engine's times where it has them (all of them when it ended the request,
        queue and prefill when this frontend ended it on a stop string: then decode time runs until now, since
        the first step event arrived); the rates count the tokens returned, after any stop-string cut."""
        queue, prefill = engine.get("queue_s", 0.0), engine.get("prefill_s", 0.0)
        decode = engine.get("decode_s")
        if decode is None:
            decode = time.monotonic() - self.first_step_at if self.first_step_at is not None else 0.0
        tokens = len(self.token_ids)
        return {"queue_s": queue, "prefill_s": prefill, "decode_s": decode,
                "tokens_per_s": tokens / max(prefill + decode, 1e-9), "tokens_per_forward": tokens / max(self.nfe, 1)}

    def snapshot_text(self) -> str:
        return render_snapshot(self.tokenizer, self.region, self.mask_id, self.mask_text)

    def new_stable_text(self) -> tuple[str, list[int], int]:
        """Stable text not yet sent (held back where it might start a stop string), its tokens, their offset."""
        if self.finished:
            text = self.text[len(self.emitted):] if self.text.startswith(self.emitted) else ""
            tokens, offset = self.token_ids[self.emitted_tokens:], self.emitted_tokens
        else:
            limit = safe_prefix_len(self.stable_text, self.stops) if self.stops else len(self.stable_text)
            text = self.stable_text[len(self.emitted):limit]
            tokens, offset = self.region[self.emitted_tokens:self.stable], self.emitted_tokens
        self.emitted += text
        self.emitted_tokens += len(tokens)
        return text, tokens, offset

    def usage(self) -> dict:
        completion = len(self.token_ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}
