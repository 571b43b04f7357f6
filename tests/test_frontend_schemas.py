"""Tests for dlx.frontend.schemas: every request field's defaults, valid forms and 400s naming the field.
Pure-Python; no tokenizer or web server needed."""

import pytest

from dlx.frontend.schemas import RequestError, check_prompt_length, parse_chat, parse_completion, parse_generate
from dlx.params import SamplingParams
from schema_support import MAX_LEN, VOCAB, chat, completion, generate, rejected


def test_generate_defaults():
    request = generate()
    assert request.kind == "generate" and request.prompt == "hi" and request.prompt_token_ids is None
    assert request.sampling == SamplingParams()
    assert request.sampling.max_tokens == 512 and request.sampling.temperature == 1.0
    assert request.sampling.top_p == 1.0 and request.sampling.top_k == 0 and request.sampling.seed is None
    assert request.sampling.stop == [] and request.sampling.stop_token_ids == []
    assert request.sampling.max_nfe is None and request.sampling.max_repetition_run is None
    assert request.sampling.ignore_eos is False and request.sampling.sampling_mode is None
    assert request.stream is False and request.stream_mode == "denoise"
    assert request.include_usage is False and request.user is None and request.model is None


def test_generate_all_fields():
    request = generate(max_tokens=64, temperature=0, top_p=0.9, top_k=40, seed=7, stop=["\n\n", "END"],
                       stop_token_ids=[1, 2], max_nfe=256, max_repetition_run=8, ignore_eos=True,
                       stream=True, stream_mode="block_append", sampling_mode="edit", user="u1")
    s = request.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (64, 0.0, 0.9, 40, 7)
    assert isinstance(s.temperature, float)
    assert s.stop == ["\n\n", "END"] and s.stop_token_ids == [1, 2]
    assert (s.max_nfe, s.max_repetition_run, s.ignore_eos, s.sampling_mode) == (256, 8, True, "edit")
    assert request.stream and request.stream_mode == "block_append" and request.user == "u1"


def test_generate_token_id_prompt_used_as_given():
    request = parse_generate({"prompt": [5, 0, 499, 7.0]}, MAX_LEN, VOCAB)
    assert request.prompt is None and request.prompt_token_ids == [5, 0, 499, 7]
    assert all(type(token) is int for token in request.prompt_token_ids)


def test_unknown_fields_and_nulls_are_ignored():
    request = generate(logprobs=5, frobnicate={"x": 1}, max_tokens=None, temperature=None, stream=None, stop=None)
    assert request.sampling == SamplingParams() and request.stream is False


def test_single_stop_string_and_duplicates():
    assert generate(stop="###").sampling.stop == ["###"]
    assert generate(stop=["a", "b", "a"]).sampling.stop == ["a", "b"]
    assert len(generate(stop=[str(i) for i in range(16)]).sampling.stop) == 16


def test_normalization_of_numbers():
    assert generate(max_tokens=64.0).sampling.max_tokens == 64
    assert generate(max_tokens=10**12).sampling.max_tokens == MAX_LEN  # ends `length` at the context limit
    assert generate(top_k=VOCAB).sampling.top_k == 0  # the whole vocabulary: off
    assert generate(seed=-1).sampling.seed == 2**64 - 1
    assert generate(max_nfe=10**15).sampling.max_nfe == 2**31 - 1


@pytest.mark.parametrize("fields, field", [
    ({"prompt": None}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": []}, "prompt"),
    ({"prompt": 123}, "prompt"), ({"prompt": {"text": "hi"}}, "prompt"), ({"prompt": [1, VOCAB]}, "prompt"),
    ({"prompt": [1, -1]}, "prompt"), ({"prompt": [1, 2.5]}, "prompt"), ({"prompt": [True]}, "prompt"),
    ({"prompt": ["hi"]}, "prompt"),  # /generate takes no wrapped prompt
    ({"prompt": "bad \ud800 surrogate"}, "prompt"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": -5}, "max_tokens"), ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_tokens": "64"}, "max_tokens"), ({"max_tokens": True}, "max_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": float("inf")}, "temperature"),
    ({"temperature": False}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"), ({"top_p": -1}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"top_k": 2.5}, "top_k"),
    ({"seed": "7"}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": 2**64}, "seed"),
    ({"stop": 5}, "stop"), ({"stop": ""}, "stop"), ({"stop": ["ok", ""]}, "stop"), ({"stop": ["ok", 3]}, "stop"),
    ({"stop": [str(i) for i in range(17)]}, "stop"), ({"stop": "x" * 1025}, "stop"),
    ({"stop_token_ids": 3}, "stop_token_ids"), ({"stop_token_ids": [3, VOCAB]}, "stop_token_ids"),
    ({"stop_token_ids": ["3"]}, "stop_token_ids"),
    ({"max_nfe": 0}, "max_nfe"), ({"max_nfe": "many"}, "max_nfe"), ({"max_repetition_run": 0}, "max_repetition_run"),
    ({"ignore_eos": "yes"}, "ignore_eos"), ({"ignore_eos": 1}, "ignore_eos"), ({"stream": "true"}, "stream"),
    ({"stream_mode": "tokens"}, "stream_mode"), ({"stream_mode": 1}, "stream_mode"),
    ({"sampling_mode": "greedy"}, "sampling_mode"), ({"user": 42}, "user"),
])
def test_generate_rejects(fields, field):
    rejected(parse_generate, {"prompt": "hi", **fields}, field)


def test_stream_mode_checked_even_without_stream():
    rejected(parse_generate, {"prompt": "hi", "stream": False, "stream_mode": "bogus"}, "stream_mode")


def test_error_message_does_not_echo_huge_values():
    error = rejected(parse_generate, {"prompt": "hi", "user": ["x" * 100_000]}, "user")
    assert len(error.message) < 200


@pytest.mark.parametrize("body", [None, [], "prompt", 3, True])
def test_body_must_be_an_object(body):
    for parse in (parse_generate, parse_chat, parse_completion):
        error = rejected(parse, body, None)
        assert "JSON object" in error.message


def test_prompt_token_ids_must_fit_the_context():
    parse_generate({"prompt": [1] * (MAX_LEN - 1)}, MAX_LEN, VOCAB)
    rejected(parse_generate, {"prompt": [1] * MAX_LEN}, "prompt")
    rejected(parse_completion, {"prompt": [[1] * MAX_LEN]}, "prompt")


def test_check_prompt_length():
    check_prompt_length(MAX_LEN - 1, MAX_LEN)
    with pytest.raises(RequestError) as caught:
        check_prompt_length(MAX_LEN, MAX_LEN)
    assert caught.value.field == "prompt" and "prompt" in caught.value.message
    with pytest.raises(RequestError) as caught:
        check_prompt_length(5000, MAX_LEN, "messages")
    assert caught.value.field == "messages" and "messages" in caught.value.message and caught.value.status == 400
    with pytest.raises(RequestError):
        check_prompt_length(0, MAX_LEN)


def test_chat_defaults_and_normalized_messages():
    request = parse_chat({"model": "llada2_mini", "messages": [
        {"role": "system", "content": "Be brief.", "name": "ignored"},
        {"role": "developer", "content": "Use digits."},
        {"role": "user", "content": [{"type": "text", "text": "Solve: "}, {"type": "text", "text": "12 + 30."}]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "42"},
    ]}, MAX_LEN, VOCAB)
    assert request.kind == "chat" and request.model == "llada2_mini" and request.prompt is None
    assert request.messages == [
        {"role": "system", "content": "Be brief."}, {"role": "system", "content": "Use digits."},
        {"role": "user", "content": "Solve: 12 + 30."}, {"role": "assistant", "content": ""},
        {"role": "tool", "content": "42"}]
    assert request.stream is False and request.stream_mode == "block_append"
    assert request.sampling.max_tokens == 512 and request.sampling.temperature == 1.0


def test_openai_fields():
    request = chat(max_tokens=10, max_completion_tokens=20, temperature=0.5, top_p=0.5, stop="\n", seed=3, n=1,
                   stream=True, stream_options={"include_usage": True}, user="abc", max_nfe=9, top_k=5,
                   ignore_eos=True, max_repetition_run=4, stream_mode="denoise", tools=[{"type": "function"}])
    s = request.sampling
    assert s.max_tokens == 20  # max_completion_tokens wins
    assert (s.temperature, s.top_p, s.stop, s.seed, s.max_nfe, s.top_k) == (0.5, 0.5, ["\n"], 3, 9, 5)
    assert s.ignore_eos and s.max_repetition_run == 4
    assert request.stream and request.include_usage and request.user == "abc" and request.stream_mode == "denoise"
    assert chat(max_tokens=10).sampling.max_tokens == 10
    assert chat(max_completion_tokens=30, max_tokens=None).sampling.max_tokens == 30
    assert chat(stream_options=None).include_usage is False
    assert chat(stream_options={}).include_usage is False


@pytest.mark.parametrize("body, field", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user"}]}, "messages[1].content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": 5}, "model"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_options": True}, "stream_options"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream_mode": "chunks"}, "stream_mode"),
])
def test_chat_rejects(body, field):
    rejected(parse_chat, body, field)


def test_content_part_error_says_which_part():
    error = rejected(parse_chat, {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "image_url"}]}]}, "messages[0].content")
    assert "part 1" in error.message and "image_url" in error.message


def test_completion_prompt_forms():
    assert completion().prompt == "hi" and completion().kind == "completion"
    assert completion(prompt=["hello"]).prompt == "hello"
    assert completion(prompt=[3, 4]).prompt_token_ids == [3, 4]
    assert completion(prompt=[[3, 4]]).prompt_token_ids == [3, 4]
    assert completion(model="m").model == "m" and completion().stream_mode == "block_append"
    assert completion(n=1.0).sampling.max_tokens == 512


@pytest.mark.parametrize("body, field", [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),  # n/batch is 1
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": [""]}, "prompt[0]"),
    ({"prompt": [[]]}, "prompt[0]"),
    ({"prompt": [[1, VOCAB]]}, "prompt[0]"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": "hi", "n": 3}, "n"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
])
def test_completion_rejects(body, field):
    rejected(parse_completion, body, field)
