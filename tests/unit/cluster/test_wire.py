"""cluster/wire.py: engine data survives the trip through JSON, and bad bodies are refused."""

from __future__ import annotations

import json

import pytest

from stratus.cluster import wire
from stratus.engine.types import (
    Delta,
    EngineStats,
    GenerateRequest,
    SamplingParams,
    TokenLogprob,
    ValidationError,
)

pytestmark = pytest.mark.timeout(30)


def _trip(data: dict) -> dict:
    return json.loads(json.dumps(data))


def test_request_round_trip():
    params = SamplingParams(
        max_tokens=7, temperature=0.5, seed=11, stop=["x"], stop_token_ids=[3], logprobs=2
    )
    request = GenerateRequest(
        prompt_token_ids=[1, 2, 3], params=params, request_id="r1", add_special_tokens=False
    )
    assert wire.request_from_dict(_trip(wire.request_to_dict(request))) == request


def test_delta_round_trip_with_logprobs():
    lp = TokenLogprob(token_id=5, token="a", logprob=-0.5, top=[(5, "a", -0.5), (6, "b", -1.5)])
    delta = Delta(
        "r1", 0, "a", [5], logprobs=[lp], finish_reason="stop", prompt_tokens=3, completion_tokens=1
    )
    assert wire.delta_from_dict(_trip(wire.delta_to_dict(delta))) == delta
    plain = Delta("r1", 1, "b", [6])
    assert wire.delta_from_dict(_trip(wire.delta_to_dict(plain))) == plain


def test_stats_round_trip_and_missing_fields():
    stats = EngineStats(1, 2, 3, 4, 5, 6, 7, 0.5, 9.5, 10, 11, 12)
    assert wire.stats_from_dict(_trip(wire.stats_to_dict(stats))) == stats
    assert wire.stats_from_dict({"running": 4}).running == 4


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"prompt": 3},
        {"prompt_token_ids": ["a"]},
        {"prompt_token_ids": [True]},
        {"params": []},
        {"params": {"bogus": 1}},
        {"params": {"stop": "x"}},
        {"request_id": 5},
        {"url": "http://elsewhere"},
    ],
)
def test_bad_request_bodies_are_validation_errors(body):
    with pytest.raises(ValidationError):
        wire.request_from_dict(body)
