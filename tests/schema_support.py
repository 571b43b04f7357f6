"""Shared by the request-schema tests: the parse calls with a small context and vocabulary, and the check that
a body is refused with a 400 naming its field."""
import pytest

from dlx.frontend.schemas import GenerateRequest, RequestError, parse_chat, parse_completion, parse_generate

MAX_LEN = 1000
VOCAB = 500


def generate(**fields) -> GenerateRequest:
    return parse_generate({"prompt": "hi", **fields}, MAX_LEN, VOCAB)


def chat(**fields) -> GenerateRequest:
    return parse_chat({"messages": [{"role": "user", "content": "hi"}], **fields}, MAX_LEN, VOCAB)


def completion(**fields) -> GenerateRequest:
    return parse_completion({"prompt": "hi", **fields}, MAX_LEN, VOCAB)


def rejected(parse, body, field) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse(body, MAX_LEN, VOCAB)
    error = caught.value
    assert error.field == field
    if field is not None:
        assert field in error.message
    assert error.status == 400 and error.type == "invalid_request_error"
    return error
