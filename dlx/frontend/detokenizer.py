"""Token ids to text for responses and streams: incremental detokenizing, denoising-buffer snapshots, stop strings.
Owns the rule that streamed text never carries a partial UTF-8 character or the start of a stop string."""

from __future__ import annotations

REPLACEMENT_CHAR = "\ufffd"  # what a byte-level decoder makes of an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Turns a growing, append-only list of token ids into newly stable text, one push at a time.

    Decoding a suffix of the ids on its own can differ from the same span inside the full text
    (decoders strip a leading space, a character's bytes can straddle tokens), so each push decodes
    a short window that starts a few tokens back (the prefix window, whose text is already emitted)
    and emits only what the new tokens add. The window moves forward whenever its decode ends on a
    complete character, so the cost per push stays proportional to the newly pushed tokens.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []  # the caller's list as of the last push (never copied)
        self.num_tokens = 0  # how many of token_ids the last push covered
        self.prefix_offset = 0  # window start: tokens before it are emitted and never decoded again
        self.read_offset = 0  # end of the prefix window; tokens after it are not fully emitted yet
        self.emitted_past_read = 0  # characters already emitted from the text beyond read_offset

    def push(self, token_ids_so_far: list[int]) -> str:
        """Take the whole id list so far (it must extend the previous one); return the new stable text."""
        if len(token_ids_so_far) < self.num_tokens:
            raise ValueError("token ids must only grow between pushes")
        self.token_ids, self.num_tokens = token_ids_so_far, len(token_ids_so_far)
        return self._advance(final=False)

    def flush(self) -> str:
        """At the end of the stream: return what is still held back (an unfinished character, as U+FFFD)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self.num_tokens == self.read_offset:
            return ""
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        full_text = self._decode(self.prefix_offset, self.num_tokens)
        new_text = full_text[len(prefix_text):]
        complete = final or not full_text.endswith(REPLACEMENT_CHAR)
        # Text before a trailing U+FFFD is final: later bytes can only complete that last character.
        stable = new_text if complete else new_text.rstrip(REPLACEMENT_CHAR)
        delta = stable[self.emitted_past_read:]
        self.emitted_past_read = max(self.emitted_past_read, len(stable))
        if complete and new_text:
            # Every token up to num_tokens is emitted, so the window slides forward.
            self.prefix_offset, self.read_offset = self.read_offset, self.num_tokens
            self.emitted_past_read = 0
        return delta

    def _decode(self, start: int, end: int) -> str:
        if start == end:
            return ""
        return self.tokenizer.decode(self.token_ids[start:end], skip_special_tokens=self.skip_special_tokens)


def render_snapshot(tokenizer, token_ids: list[int], mask_id: int, mask_text: str,
                    skip_special_tokens: bool = True) -> str:
    """Text of a denoising buffer: runs of decoded tokens with `mask_text` at every still-masked position."""
    pieces: list[str] = []
    run_start = 0
    for position, token_id in enumerate(token_ids):
        if token_id != mask_id:
            continue
        if run_start < position:
            pieces.append(tokenizer.decode(token_ids[run_start:position], skip_special_tokens=skip_special_tokens))
        pieces.append(mask_text)
        run_start = position + 1
    if run_start < len(token_ids):
        pieces.append(tokenizer.decode(token_ids[run_start:], skip_special_tokens=skip_special_tokens))
    return "".join(pieces)


def find_stop(text: str, stops: list[str], start: int) -> int | None:
    """Index of the earliest stop string in `text` that ends after `start` (where new text begins).

    Searching from `start - longest + 1` finds matches that straddle old and new text without
    rescanning text already known to hold no stop string.
    """
    if not stops:
        return None
    search_from = max(0, start - max(len(stop) for stop in stops) + 1)
    found = [index for index in (text.find(stop, search_from) for stop in stops) if index != -1]
    return min(found) if found else None


def safe_prefix_len(text: str, stops: list[str]) -> int:
    """How much of `text` can be emitted now: holds back the longest suffix that begins some stop string."""
    held = 0
    for stop in stops:
        # Candidate starts are occurrences of the stop's first character in the last len(stop) chars;
        # the earliest one whose remainder is a prefix of the stop is the longest hold for this stop.
        index = text.find(stop[0], max(0, len(text) - len(stop))) if stop else -1
        while index != -1:
            if stop.startswith(text[index:]):
                held = max(held, len(text) - index)
                break
            index = text.find(stop[0], index + 1)
    return len(text) - held
