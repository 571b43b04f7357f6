"""Server-Sent Events framing and the frame objects of /generate and OpenAI streams (SPEC §4.2, §4.3).
Owns the exact bytes on the wire; every builder returns one ready-to-write `data: ...\\n\\n` frame."""

from __future__ import annotations

import json

from dlx.frontend.schemas import error_body

SSE_DONE = b"data: [DONE]\n\n"

# OpenAI clients know only stop/length (plus tool/filter reasons we never produce). Every early end that
# leaves the answer incomplete maps to "length" so clients do not mistake a cut-off for a natural end.
_OPENAI_FINISH = {"stop": "stop", "length": "length", "max_nfe": "length", "repetition": "length",
                  "abort": "length"}


def sse_data(obj: dict | str) -> bytes:
    """One SSE frame: a dict becomes compact UTF-8 JSON; a string is sent as an already encoded payload."""
    payload = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if "\n" in payload or "\r" in payload:
        raise ValueError("an SSE data payload must be a single line")  # JSON never has raw newlines
    # "replace" turns a lone surrogate (never valid in UTF-8) into "?" instead of failing mid-stream.
    return b"data: " + payload.encode("utf-8", "replace") + b"\n\n"


def finish_reason_openai(reason: str | None) -> str:
    """Engine finish reason -> OpenAI's; an unknown or missing reason reads as a normal stop."""
    return _OPENAI_FINISH.get(reason, "stop")


def generate_snapshot_frame(rid: str, token_ids: list[int], text: str, nfe: int, finished: bool,
                            token_offset: int = 0, pieces: list[str | None] | None = None) -> bytes:
    """`denoise` frame: the whole generated region so far, masks included (the client replaces its view).
    `pieces` (each token's own text, None for masks) is the playground's opt-in extension."""
    frame = {"event": "buffer_snapshot", "id": rid, "token_offset": token_offset, "text": text,
             "token_ids": token_ids, "nfe": nfe, "finished": finished}
    if pieces is not None:
        frame["pieces"] = pieces
    return sse_data(frame)


def generate_append_frame(rid: str, token_offset: int, text: str, token_ids: list[int], nfe: int,
                          finished: bool) -> bytes:
    """`block_append` frame: only newly stable text; `token_offset` counts the tokens sent before it."""
    return sse_data({"event": "append", "id": rid, "token_offset": token_offset, "text": text,
                     "token_ids": token_ids, "nfe": nfe, "finished": finished})


def final_frame(response: dict) -> bytes:
    """The non-streaming /generate response, tagged as the stream's last event."""
    return sse_data({"event": "final", **response})


def error_frame(rid: str | None, message: str) -> bytes:
    """An error after a /generate stream started (status is already 200); `[DONE]` must follow."""
    return sse_data({"event": "error", "id": rid, "message": message})


def openai_error_frame(message: str, type: str = "server_error", code: int = 500) -> bytes:
    """An error after an OpenAI stream started, in the shape the openai client raises from."""
    return sse_data(error_body(message, type, code))


def chat_chunk(rid: str, created: int, model: str, delta: dict, finish_reason: str | None,
               snapshot: dict | None = None) -> bytes:
    """One `chat.completion.chunk`; `snapshot` ({text, token_ids, nfe}) rides along in denoise mode."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    if snapshot is not None:
        choice["snapshot"] = snapshot
    return sse_data({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [choice]})


def completion_chunk(rid: str, created: int, model: str, text: str, finish_reason: str | None,
                     snapshot: dict | None = None) -> bytes:
    """One streamed `text_completion` object carrying the newly stable text."""
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if snapshot is not None:
        choice["snapshot"] = snapshot
    return sse_data({"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [choice]})


def usage_chunk(rid: str, created: int, model: str, usage: dict, chat: bool = True) -> bytes:
    """The last chunk under `stream_options.include_usage`: empty `choices`, filled `usage`."""
    return sse_data({"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": created, "model": model, "choices": [], "usage": usage})
