"""One request must never stop the others: sampling values at float edges, and a row whose
forward pass or sampling fails, fail (at most) that request alone."""

import math

import orjson
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as SchemaError

import stratus.engine.core as engine_core
from stratus.api.schemas import ChatCompletionRequest
from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams, ValidationError
from stratus.engine.sampler import apply_penalties, sample
from stratus.engine.sequence import Sequence
from stratus.engine.tokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def engine(llama_dir):
    return EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8))


def run(engine, requests):
    """Run requests to the end in one batch; returns ({rid: token ids}, {rid: failure})."""
    for r in requests:
        engine.add_request(r)
    out: dict[str, list[int]] = {r.request_id: [] for r in requests}
    failures: dict[str, str] = {}
    while engine.has_work():
        for d in engine.step():
            out[d.request_id] += d.token_ids
        failures |= engine.take_failures()
    return out, failures


def req(rid, **params):
    params = {"max_tokens": 12, "ignore_eos": True, **params}
    return GenerateRequest(prompt="Simple is better", params=SamplingParams(**params), request_id=rid)


def test_underflowing_temperature_and_penalty_do_not_stop_the_batch(engine):
    alone, _ = run(engine, [req("alone", temperature=0)])
    got, failures = run(
        engine,
        [
            req("tiny-temp", temperature=1e-300),
            req("tiny-penalty", temperature=1.0, seed=3, repetition_penalty=1e-300),
            req("both", temperature=1e-300, repetition_penalty=1e-300),
            req("victim", temperature=0),
        ],
    )
    assert failures == {}
    assert got["victim"] == alone["alone"]
    assert got["tiny-temp"] == alone["alone"]  # below the epsilon: greedy
    assert all(len(ids) == 12 for ids in got.values())


def test_a_row_whose_sampling_fails_fails_alone(engine, monkeypatch):
    real_sample = engine_core.sample

    def poisoned(logits, seqs, generator):
        if any(s.request_id == "poison" for s in seqs):
            raise RuntimeError("probability tensor contains inf")
        return real_sample(logits, seqs, generator)

    monkeypatch.setattr(engine_core, "sample", poisoned)
    alone, _ = run(engine, [req("alone", temperature=0)])
    got, failures = run(engine, [req("poison", temperature=1.0, n=2), req("victim", temperature=0)])
    assert set(failures) == {"poison"}
    assert got["victim"] == alone["alone"]
    assert "poison" not in engine.requests and not engine.has_work()
    assert engine.blocks.num_used == 0 or engine.config.enable_prefix_caching


def test_a_row_whose_forward_fails_fails_alone(engine, monkeypatch):
    real_run = engine.runner.run

    def poisoned(batch):
        if any(seq.request_id == "poison" for seq, _ in batch.items):
            raise RuntimeError("forward failed")
        return real_run(batch)

    alone, _ = run(engine, [req("alone", temperature=0)])
    monkeypatch.setattr(engine.runner, "run", poisoned)
    got, failures = run(engine, [req("victim", temperature=0), req("poison", temperature=0)])
    assert set(failures) == {"poison"}
    assert got["victim"] == alone["alone"]
    assert got["poison"] == []


# -- sampling parameters at float edges --------------------------------------------------------

EDGES = [0.0, -0.0, 5e-324, 1e-320, 1e-300, 1e-45, 1e-38, 1e-7, 1e-5, 0.5, 1.0, 2.0, 10.0, 1e300]
edge = st.sampled_from(EDGES) | st.floats(allow_nan=False, allow_infinity=False, width=64)


def _seq(params: SamplingParams, tokens: list[int]) -> Sequence:
    return Sequence("r", 0, tokens, 2, params, frozenset(), IncrementalDetokenizer(None, []), None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    temperature=edge,
    top_p=edge,
    min_p=edge,
    repetition_penalty=edge,
    presence_penalty=edge,
    frequency_penalty=edge,
    top_k=st.integers(-1, 100),
    scale=st.sampled_from([1.0, 1e4, 1e30]),
)
def test_any_valid_sampling_parameters_sample_a_token(
    temperature, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, top_k, scale
):
    params = SamplingParams(
        temperature=temperature,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        top_k=top_k,
    )
    try:
        params.validate()
    except ValidationError:
        return  # refused up front with a 400: fine
    vocab = 64
    logits = torch.randn(2, vocab, generator=torch.Generator().manual_seed(0)) * scale
    seqs = [_seq(params, [1, 2, 3, 3, 5]), _seq(SamplingParams(temperature=0), [1, 2])]
    apply_penalties(logits, seqs)
    tokens = sample(logits, seqs, torch.Generator().manual_seed(1))
    assert all(0 <= t < vocab for t in tokens)


JSON_NUMBERS = ["1e-300", "-0.0", "0", "5e-324", "1e-400", "1e400", "NaN", "Infinity", "-Infinity", '"0.5"']


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty"])
@pytest.mark.parametrize("number", JSON_NUMBERS)
def test_request_bodies_with_edge_numbers_are_refused_or_sample(field, number):
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (
        field.encode(),
        number.encode(),
    )
    try:
        body = ChatCompletionRequest.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, SchemaError):
        return  # not JSON (NaN, Infinity) or out of range: a 400
    value = getattr(body, field)
    assert value is None or math.isfinite(value)
    params = SamplingParams(**{field: value}) if value is not None else SamplingParams()
    params.validate()
    logits = torch.randn(1, 32)
    seq = _seq(params, [1, 2, 3])
    apply_penalties(logits, [seq])
    assert 0 <= sample(logits, [seq], torch.Generator().manual_seed(0))[0] < 32
