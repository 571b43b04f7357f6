"""Request schemas: JSON bodies of /generate and the OpenAI endpoints → GenerateRequest (its sampling part a
dlx.params.SamplingParams). Owns every 400 (RequestError names the field) and the shared error body shape."""

from __future__ import annotations

from dataclasses import dataclass, field

from dlx.params import FIELD_NAMES, ParamError, SamplingParams, describe, is_int, is_text, one_of

STREAM_MODES = ("denoise", "block_append")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
INT_FIELDS = ("max_tokens", "top_k", "seed", "max_nfe", "max_repetition_run", "max_denoising_steps",
              "stability_threshold")


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
class GenerateRequest:
    kind: str  # "generate" | "chat" | "completion"
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None
    messages: list[dict] | None = None  # [{"role", "content": str}], ready for the chat template
    model: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
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
    _get(body, "n", 1, lambda v: is_int(_json_int(v)) and v == 1, "1 (one choice per request is supported)")
    options = _get(body, "stream_options", {}, lambda v: isinstance(v, dict), "an object")
    # max_completion_tokens is the newer OpenAI name; when both are sent it is the one that counts.
    limit_name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return GenerateRequest(
        kind=kind, model=_get(body, "model", None, is_text, "a string"),
        sampling=_sampling(body, max_model_len, vocab_size, limit_name),
        include_usage=_flag(options, "include_usage", where="stream_options.include_usage"),
        return_pieces=_flag(body, "return_pieces"), **_stream_fields(body, "block_append"), **inputs)


def _stream_fields(body: dict, default_mode: str) -> dict:
    return {"stream": _flag(body, "stream"), "user": _get(body, "user", None, is_text, "a string"),
            "stream_mode": _get(body, "stream_mode", default_mode, STREAM_MODES.__contains__, one_of(STREAM_MODES))}


def _sampling(body: dict, max_model_len: int, vocab_size: int, limit_name: str) -> SamplingParams:
    """SamplingParams from a body: JSON null means the default, 7.0 reads as 7, the newer OpenAI name of the
    token limit is accepted; the ranges are SamplingParams' own, the model-dependent ones are checked here."""
    values = {name: _json_int(body[name]) if name in INT_FIELDS else body[name]
              for name in FIELD_NAMES if name != "max_tokens" and body.get(name) is not None}
    limit = _json_int(body.get(limit_name))
    if limit is not None:
        # Beyond max_model_len the request ends `length` at the context limit anyway.
        values["max_tokens"] = min(limit, max_model_len) if is_int(limit) else limit
    if is_int(values.get("top_k")) and values["top_k"] >= vocab_size:
        values["top_k"] = 0   # keeping the whole vocabulary is the same as off
    if "stop_token_ids" in values:
        values["stop_token_ids"] = _token_ids(values["stop_token_ids"], "stop_token_ids", vocab_size, True)
    try:
        return SamplingParams(**values)
    except ParamError as exc:
        name = limit_name if exc.field == "max_tokens" else exc.field   # the limit under the name it was sent
        raise RequestError(str(exc).replace("'max_tokens'", f"'{name}'"), name) from None


def _json_int(value: object) -> object:
    """JSON has one number type, so 7.0 is accepted as 7."""
    return int(value) if type(value) is float and value.is_integer() else value


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError(f"'messages' must be a non-empty array of messages, got {describe(value)}", "messages")
    normalized = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object with 'role' and 'content', got {describe(message)}", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise RequestError(f"'{where}.role' must be {one_of(CHAT_ROLES)}, got {describe(role)}", f"{where}.role")
        content = _message_content(message.get("content"), f"{where}.content", role)
        # Chat templates know "system"; "developer" is OpenAI's newer name for the same turn.
        normalized.append({"role": "system" if role == "developer" else role, "content": content})
    return normalized


def _message_content(value: object, where: str, role: str) -> str:
    if is_text(value):
        return value
    if value is None and role == "assistant":
        return ""  # OpenAI allows an assistant turn without content (it carried tool calls)
    if isinstance(value, list) and value:
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not is_text(part.get("text")):
                raise RequestError(f"'{where}' part {j} is not supported (type {describe(kind)}); only "
                                   "{\"type\": \"text\", \"text\": \"...\"} parts are accepted", where)
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(f"'{where}' must be a string or a non-empty array of text parts (valid Unicode), "
                       f"got {describe(value)}", where)


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
        raise RequestError(f"'{where}' is required: a string or an array of token ids, got {describe(value)}", where)
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
        raise RequestError(f"'{where}' must be {rule}, got {describe(value)}", where)
    return value


def _require_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {describe(body)}", None)
    return body


def _flag(body: dict, name: str, where: str | None = None) -> bool:
    return _get(body, name, False, lambda v: isinstance(v, bool), "true or false", where)


def _nonempty_text(value: str, where: str) -> str:
    if not is_text(value) or not value:
        raise RequestError(f"'{where}' must be a non-empty string of valid Unicode", where)
    return value


def _token_ids(value: object, where: str, vocab_size: int, allow_empty: bool) -> list[int]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise RequestError(f"'{where}' must be a non-empty array of token ids, got {describe(value)}", where)
    for i, token in enumerate(value):
        if not is_int(_json_int(token)) or not 0 <= token < vocab_size:
            raise RequestError(f"'{where}[{i}]' must be a token id in [0, {vocab_size}), got {describe(token)}", where)
    return [int(token) for token in value]
