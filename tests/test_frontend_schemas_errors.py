"""Request-schema tests, continued: sampling parameters' plain-dict round trip, the per-request threshold, and
the error bodies every refusal is sent in."""
import json

import pytest

from dlx.frontend.schemas import RequestError, error_body, parse_chat, parse_completion, parse_generate
from dlx.params import SamplingParams
from schema_support import chat, completion, generate, rejected


def test_sampling_params_to_dict_is_plain_independent_and_round_trips():
    options = generate(stop=["x"], stop_token_ids=[1], seed=5, threshold=0.5).sampling
    payload = options.to_dict()
    assert json.loads(json.dumps(payload)) == payload
    assert set(payload) == {"max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stop_token_ids",
                            "max_nfe", "max_repetition_run", "ignore_eos", "sampling_mode", "threshold", "lora",
                            "max_denoising_steps", "entropy_bound", "t_min", "t_max", "stability_threshold",
                            "confidence_threshold"}
    assert SamplingParams.from_dict(payload) == options   # what the engine rebuilds from the ring message
    payload["stop"].append("y")
    assert options.stop == ["x"]


@pytest.mark.parametrize("parse", [generate, chat, completion])
def test_threshold_per_request(parse):
    assert parse().sampling.threshold is None           # the server's --accept-threshold
    assert parse(threshold=0).sampling.threshold == 0.0
    assert parse(threshold=1).sampling.threshold == 1.0 and isinstance(parse(threshold=1).sampling.threshold, float)
    assert parse(threshold=0.5).sampling.threshold == 0.5


@pytest.mark.parametrize("value", [-0.01, 1.01, "0.5", True, float("nan"), [0.5]])
@pytest.mark.parametrize("parse", [parse_generate, parse_chat, parse_completion])
def test_threshold_rejected(parse, value):
    body = {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}], "threshold": value}
    rejected(parse, body, "threshold")


def test_max_completion_tokens_errors_name_the_field_sent():
    error = rejected(parse_chat, {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0},
                     "max_completion_tokens")
    assert "'max_tokens'" not in error.message


def test_error_body_and_request_error():
    assert error_body("bad", "invalid_request_error", 400) == {
        "error": {"message": "bad", "type": "invalid_request_error", "code": 400}}
    error = RequestError("queue full", None, status=429, type="overloaded")
    assert str(error) == "queue full"
    assert error.body() == {"error": {"message": "queue full", "type": "overloaded", "code": 429}}
