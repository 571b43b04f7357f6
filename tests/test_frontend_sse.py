"""Tests for dlx.frontend.sse: exact SSE bytes, the /generate frames and the OpenAI chunk objects.
Frames are parsed back from bytes, the way a client reads them."""

import json

import pytest

from dlx.frontend.sse import (SSE_DONE, chat_chunk, completion_chunk, error_frame, final_frame,
                              finish_reason_openai, generate_append_frame, generate_snapshot_frame,
                              openai_error_frame, sse_data, usage_chunk)


def parse(frame: bytes) -> dict:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # one data line, one blank line
    return json.loads(frame[len(b"data: "):-2].decode("utf-8"))


def test_sse_data_bytes_are_compact_utf8_json():
    assert sse_data({"a": 1, "b": [1, 2], "c": None}) == b'data: {"a":1,"b":[1,2],"c":null}\n\n'
    assert sse_data({"text": "café 日本語 🙂"}) == 'data: {"text":"café 日本語 🙂"}\n\n'.encode("utf-8")
    assert sse_data({"text": "line one\nline two"}) == b'data: {"text":"line one\\nline two"}\n\n'
    assert sse_data("[DONE]") == SSE_DONE == b"data: [DONE]\n\n"


def test_sse_data_rejects_multiline_strings_and_survives_lone_surrogates():
    with pytest.raises(ValueError):
        sse_data("two\nlines")
    with pytest.raises(ValueError):
        sse_data("carriage\rreturn")
    assert parse(sse_data({"text": "a\ud800b"})) == {"text": "a?b"}


def test_snapshot_frame():
    frame = generate_snapshot_frame("req-1", [5, 6, 9], "12<|mask|>", nfe=3, finished=False)
    assert parse(frame) == {"event": "buffer_snapshot", "id": "req-1", "token_offset": 0, "text": "12<|mask|>",
                            "token_ids": [5, 6, 9], "nfe": 3, "finished": False}
    assert frame.startswith(b'data: {"event":"buffer_snapshot",')


def test_append_frame():
    frame = generate_append_frame("req-1", token_offset=4, text=" so", token_ids=[7, 8], nfe=5, finished=True)
    assert parse(frame) == {"event": "append", "id": "req-1", "token_offset": 4, "text": " so",
                            "token_ids": [7, 8], "nfe": 5, "finished": True}


def test_final_frame_is_the_response_tagged_final():
    response = {"id": "req-1", "text": "42", "token_ids": [1], "nfe": 2, "finish_reason": "stop",
                "full_text": "Q 42", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "timing": {"queue_s": 0.0}}
    frame = final_frame(response)
    assert parse(frame) == {**response, "event": "final"}
    assert "event" not in response  # the caller's dict is not modified


def test_error_frames():
    assert parse(error_frame("req-1", "worker died")) == {"event": "error", "id": "req-1", "message": "worker died"}
    assert parse(openai_error_frame("worker died")) == {
        "error": {"message": "worker died", "type": "server_error", "code": 500}}


def test_chat_chunks():
    first = parse(chat_chunk("chatcmpl-1", 1700000000, "llada2_mini", {"role": "assistant", "content": ""}, None))
    assert first["object"] == "chat.completion.chunk" and first["id"] == "chatcmpl-1"
    assert first["created"] == 1700000000 and first["model"] == "llada2_mini"
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                 "finish_reason": None}]
    last = parse(chat_chunk("chatcmpl-1", 1700000001, "m", {}, "length"))
    assert last["choices"][0]["finish_reason"] == "length" and "snapshot" not in last["choices"][0]
    snapshot = {"text": "4<|mask|>", "token_ids": [3, 9], "nfe": 2}
    denoise = parse(chat_chunk("chatcmpl-1", 1, "m", {"content": "4"}, None, snapshot=snapshot))
    assert denoise["choices"][0]["snapshot"] == snapshot and denoise["choices"][0]["delta"] == {"content": "4"}


def test_completion_chunks():
    chunk = parse(completion_chunk("cmpl-1", 5, "m", "hello", None))
    assert chunk == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                     "choices": [{"index": 0, "text": "hello", "logprobs": None, "finish_reason": None}]}
    snapshot = {"text": "_", "token_ids": [9], "nfe": 1}
    assert parse(completion_chunk("cmpl-1", 5, "m", "", "stop", snapshot))["choices"][0]["snapshot"] == snapshot


def test_usage_chunks():
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    chat = parse(usage_chunk("chatcmpl-1", 9, "m", usage))
    assert chat == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 9, "model": "m",
                    "choices": [], "usage": usage}
    assert parse(usage_chunk("cmpl-1", 9, "m", usage, chat=False))["object"] == "text_completion"


@pytest.mark.parametrize("reason, expected", [
    ("stop", "stop"), ("length", "length"), ("max_nfe", "length"), ("repetition", "length"),
    ("abort", "length"), (None, "stop"), ("something_new", "stop"),
])
def test_finish_reason_openai(reason, expected):
    assert finish_reason_openai(reason) == expected
