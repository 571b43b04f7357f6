"""Request schemas: parse JSON bodies of /generate and the OpenAI endpoints into normalized dataclasses.
Owns every 400 for bad input (RequestError, whose message names the field) and the shared error body shape."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

DEFAULT_MAX_TOKENS = 512
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # bounds the per-token cost of holding back possible stop-string prefixes
INT_CAP = 2**31 - 1  # larger counts mean "unbounded" anyway; capping keeps IPC values small
STREAM_MODES = ("denoise", "block_append")
SAMPLING_MODES = ("naive", "edit")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestError(Exception):
    """A client error: `status` and `type` go straight into the HTTP reply, `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.field, self.status, self.type = message, field, status, type

    def body(self) -> dict:
        return error_body(self.message, self.type, self.status)


def error_body(message: str, type: str, code: int) -> dict:
    return {"error": {"message": message, "type": type, "code": code}}


@dataclass
class SamplingOptions:
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    max_nfe: int | None = None
    max_repetition_run: int | None = None
    ignore_eos: bool = False
    sampling_mode: str | None = None

    def to_dict(self) -> dict:
        """A shallow copy with fresh lists, so the IPC message never aliases request state (asdict's
        recursive deep copy cost more than the rest of the submit)."""
        params = dict(self.__dict__)
        params["stop"], params["stop_token_ids"] = list(self.stop), list(self.stop_token_ids)
        return params


@dataclass
class GenerateRequest:
    kind: str  # "generate" | "chat" | "completion"
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict] | None = None  # [{"role", "content": str}], ready for the chat template
    model: str | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stream: bool = False
    stream_mode: str = "denoise"
    include_usage: bool = False
    user: str | None = None
    return_pieces: bool = False   # extension for the playground: per-token text in denoise snapshots


def check_prompt_length(num_prompt_tokens: int, max_model_len: int, field: str = "prompt") -> None:
    """The prompt must be non-empty and leave room for at least one generated token."""
    if num_prompt_tokens < 1:
        raise RequestError(f"'{field}' is empty after tokenization", field)
    if num_prompt_tokens >= max_model_len:
        raise RequestError(f"'{field}' is {num_prompt_tokens} tokens long; at most {max_model_len - 1} fit "
                           f"(max_model_len {max_model_len} must leave room for one generated token)", field)


def parse_generate(body: object, max_model_len: int, vocab_size: int) -> GenerateRequest:
    body = _require_object(body)
    text, ids = _prompt(body.get("prompt"), max_model_len, vocab_size, allow_wrapped=False)
    return GenerateRequest(
        kind="generate", prompt=text, prompt_token_ids=ids, return_pieces=_flag(body, "return_pieces"),
        sampling=_sampling(body, max_model_len, vocab_size, "max_tokens"), **_stream_fields(body, "denoise"))


def parse_chat(body: object, max_model_len: int, vocab_size: int) -> GenerateRequest:
    body = _require_object(body)
    return _openai_request(body, "chat", max_model_len, vocab_size, messages=_messages(body.get("messages")))


def parse_completion(body: object, max_model_len: int, vocab_size: int) -> GenerateRequest:
    body = _require_object(body)
    text, ids = _prompt(body.get("prompt"), max_model_len, vocab_size, allow_wrapped=True)
    return _openai_request(body, "completion", max_model_len, vocab_size, prompt=text, prompt_token_ids=ids)


def _openai_request(body: dict, kind: str, max_model_len: int, vocab_size: int, **inputs) -> GenerateRequest:
    _get(body, "n", 1, lambda v: _is_int(v) and v == 1, "1 (one choice per request is supported)")
    options = _get(body, "stream_options", {}, lambda v: isinstance(v, dict), "an object")
    # max_completion_tokens is the newer OpenAI name; when both are sent it is the one that counts.
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return GenerateRequest(
        kind=kind, model=_get(body, "model", None, _is_text, "a string"),
        sampling=_sampling(body, max_model_len, vocab_size, limit_name),
        include_usage=_flag(options, "include_usage", where="stream_options.include_usage"),
        return_pieces=_flag(body, "return_pieces"), **_stream_fields(body, "block_append"), **inputs)


def _stream_fields(body: dict, default_mode: str) -> dict:
    return {"stream": _flag(body, "stream"), "user": _get(body, "user", None, _is_text, "a string"),
            "stream_mode": _get(body, "stream_mode", default_mode, STREAM_MODES.__contains__, _one_of(STREAM_MODES))}


def _sampling(body: dict, max_model_len: int, vocab_size: int, limit_name: str) -> SamplingOptions:
    top_k, stop_ids = _count(body, "top_k", 0, minimum=0), body.get("stop_token_ids")
    seed = _get(body, "seed", None, lambda v: _is_int(v) and -(2**63) <= v < 2**64, "an integer in [-2^63, 2^64)")
    return SamplingOptions(
        # Beyond max_model_len the request ends `length` at the context limit anyway.
        max_tokens=min(_count(body, limit_name, DEFAULT_MAX_TOKENS, minimum=1), max_model_len),
        temperature=float(_get(body, "temperature", 1.0, lambda v: _is_number(v) and v >= 0, "a number >= 0")),
        top_p=float(_get(body, "top_p", 1.0, lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")),
        top_k=0 if top_k >= vocab_size else top_k,  # keeping the whole vocabulary is the same as off
        seed=None if seed is None else int(seed) % 2**64,  # one unsigned 64-bit range for the generator
        stop=_stop_strings(body.get("stop")),
        stop_token_ids=[] if stop_ids is None else _token_ids(stop_ids, "stop_token_ids", vocab_size, True),
        max_nfe=_count(body, "max_nfe", None, minimum=1),
        max_repetition_run=_count(body, "max_repetition_run", None, minimum=1),
        ignore_eos=_flag(body, "ignore_eos"),
        sampling_mode=_get(body, "sampling_mode", None, SAMPLING_MODES.__contains__, _one_of(SAMPLING_MODES)))


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"'messages' must be a non-empty array of messages, got {_show(value)}", "messages")
    normalized = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object with 'role' and 'content', got {_show(message)}", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise RequestError(f"'{where}.role' must be {_one_of(CHAT_ROLES)}, got {_show(role)}", f"{where}.role")
        content = _message_content(message.get("content"), f"{where}.content", role)
        # Chat templates know "system"; "developer" is OpenAI's newer name for the same turn.
        normalized.append({"role": "system" if role == "developer" else role, "content": content})
    return normalized


def _message_content(value: object, where: str, role: str) -> str:
    if _is_text(value):
        return value
    if value is None and role == "assistant":
        return ""  # OpenAI allows an assistant turn without content (it carried tool calls)
    if isinstance(value, list) and value:
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not _is_text(part.get("text")):
                raise RequestError(f"'{where}' part {j} is not supported (type {_show(kind)}); only "
                                   "{\"type\": \"text\", \"text\": \"...\"} parts are accepted", where)
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"'{where}' must be a string or a non-empty array of text parts (valid Unicode), "
                       f"got {_show(value)}", where)


def _prompt(value: object, max_model_len: int, vocab_size: int,
            allow_wrapped: bool) -> tuple[str | None, list[int] | None]:
    """A prompt is text or token ids; OpenAI completions may also wrap one of those in a one-element array."""
    where = "prompt"
    if allow_wrapped and isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        if len(value) > 1:
            raise RequestError(f"'prompt' holds {len(value)} prompts; one prompt per request is supported", where)
        value, where = value[0], "prompt[0]"
    if isinstance(value, str):
        return _nonempty_text(value, where), None
    if not isinstance(value, list):
        raise RequestError(f"'{where}' is required: a string or an array of token ids, got {_show(value)}", where)
    ids = _token_ids(value, where, vocab_size, allow_empty=False)
    check_prompt_length(len(ids), max_model_len, "prompt")
    return None, ids


def _get(body: dict, name: str, default: object, valid, rule: str, where: str | None = None):
    """Read one optional field: JSON null means "use the default"; anything `valid` rejects is a 400."""
    value = body.get(name)
    if value is None:
        return default
    if not valid(value):
        where = where or name
        raise RequestError(f"'{where}' must be {rule}, got {_show(value)}", where)
    return value


def _count(body: dict, name: str, default: int | None, minimum: int) -> int | None:
    value = _get(body, name, default, lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")
    return None if value is None else min(int(value), INT_CAP)


def _require_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {_show(body)}", None)
    return body


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f"'{choice}'" for choice in choices)


def _show(value: object) -> str:
    """Short description of a bad value for an error message (never echoes a huge input)."""
    text = {list: "an array", dict: "an object"}.get(type(value)) or json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 24 else text[:21] + "..."


def _flag(body: dict, name: str, where: str | None = None) -> bool:
    return _get(body, name, False, lambda v: isinstance(v, bool), "true or false", where)


def _is_number(value: object) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value))  # bools are not numbers


def _is_int(value: object) -> bool:
    # JSON has one number type, so 7.0 is accepted as 7.
    return type(value) is int or (type(value) is float and value.is_integer())


def _is_text(value: object) -> bool:
    # JSON may smuggle lone surrogates, which no tokenizer (nor UTF-8) accepts.
    return isinstance(value, str) and not _SURROGATE.search(value)


def _nonempty_text(value: str, where: str) -> str:
    if not _is_text(value) or not value:
        raise RequestError(f"'{where}' must be a non-empty string of valid Unicode", where)
    return value


def _token_ids(value: object, where: str, vocab_size: int, allow_empty: bool) -> list[int]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise RequestError(f"'{where}' must be a non-empty array of token ids, got {_show(value)}", where)
    for i, token in enumerate(value):
        if not _is_int(token) or not 0 <= token < vocab_size:
            raise RequestError(f"'{where}[{i}]' must be a token id in [0, {vocab_size}), got {_show(token)}", where)
    return [int(token) for token in value]


def _stop_strings(value: object) -> list[str]:
    strings = [value] if isinstance(value, str) else [] if value is None else value
    if not isinstance(strings, list) or len(strings) > MAX_STOP_STRINGS:
        raise RequestError(f"'stop' must be a string or an array of at most {MAX_STOP_STRINGS} strings, "
                           f"got {_show(value)}", "stop")
    for i, stop in enumerate(strings):
        if not _is_text(stop) or not 0 < len(stop) <= MAX_STOP_CHARS:
            raise RequestError(f"'stop[{i}]' must be a non-empty string of at most {MAX_STOP_CHARS} characters, "
                               f"got {_show(stop)}", "stop")
    return list(dict.fromkeys(strings))  # duplicates change nothing; keep the first of each
