"""Sampling parameters, seeds, stop strings, logprobs, n > 1 and validation."""

import pytest
import torch

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams, ValidationError
from stratus.engine.sampler import filter_logits
from stratus.engine.sequence import Sequence
from stratus.engine.tokenizer import IncrementalDetokenizer


@pytest.fixture(scope="module")
def engine(llama_dir):
    return EngineCore(llama_dir, EngineConfig(kv_cache_memory_mb=8))


def generate(engine, prompt="Simple is better", **params):
    rid = f"r{id(params)}-{len(engine.requests)}"
    engine.add_request(GenerateRequest(prompt=prompt, params=SamplingParams(**params), request_id=rid))
    choices: dict[int, dict] = {}
    while engine.has_work():
        for d in engine.step():
            c = choices.setdefault(d.index, {"text": "", "ids": [], "logprobs": [], "finish": None})
            c["text"] += d.text
            c["ids"] += d.token_ids
            c["logprobs"] += d.logprobs or []
            c["finish"] = d.finish_reason or c["finish"]
    return [choices[i] for i in sorted(choices)]


def test_same_seed_same_output_different_seed_differs(engine):
    a = generate(engine, max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True)[0]["ids"]
    b = generate(engine, max_tokens=24, temperature=1.0, seed=1234, ignore_eos=True)[0]["ids"]
    c = generate(engine, max_tokens=24, temperature=1.0, seed=99, ignore_eos=True)[0]["ids"]
    assert a == b
    assert a != c


def test_stop_string_split_across_tokens_is_caught_and_not_emitted(engine):
    full = generate(engine, max_tokens=40, temperature=0, ignore_eos=True)[0]
    ids = full["ids"]
    # A stop string made of the end of one token and the start of the next.
    texts = [engine.tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
    boundary = next(
        i
        for i in range(3, len(ids))
        if len(texts[i - 1]) - len(texts[i - 2]) >= 2 and len(texts[i]) - len(texts[i - 1]) >= 2
    )
    cut = len(texts[boundary - 1])
    stop = full["text"][cut - 2 : cut + 2]
    expected = full["text"][: full["text"].find(stop)]
    stopped = generate(engine, max_tokens=40, temperature=0, ignore_eos=True, stop=[stop])[0]
    assert stopped["finish"] == "stop"
    assert stopped["text"] == expected
    assert stop not in stopped["text"]


def test_max_tokens_gives_length(engine):
    out = generate(engine, max_tokens=5, temperature=0, ignore_eos=True)[0]
    assert out["finish"] == "length" and len(out["ids"]) == 5


def test_stop_token_ids_end_generation(engine):
    first = generate(engine, max_tokens=10, temperature=0, ignore_eos=True)[0]["ids"]
    out = generate(engine, max_tokens=10, temperature=0, ignore_eos=True, stop_token_ids=[first[3]])[0]
    assert out["finish"] == "stop" and out["ids"] == first[: first.index(first[3]) + 1]


def test_n_choices_and_logprobs(engine):
    choices = generate(engine, max_tokens=8, temperature=1.0, seed=5, n=3, logprobs=2, ignore_eos=True)
    assert len(choices) == 3
    assert len({tuple(c["ids"]) for c in choices}) > 1  # choices are independent draws
    for c in choices:
        assert len(c["logprobs"]) == 8
        for token_id, lp in zip(c["ids"], c["logprobs"]):
            assert lp.token_id == token_id and lp.logprob <= 0.0
            assert (
                len(lp.top) == 2
                and lp.top[0][2] >= lp.top[1][2] >= lp.logprob - 1e-6
                or lp.top[0][2] >= lp.logprob
            )


def test_greedy_logprob_is_the_top_one(engine):
    out = generate(engine, max_tokens=4, temperature=0, logprobs=1, ignore_eos=True)[0]
    for lp in out["logprobs"]:
        assert lp.top[0][0] == lp.token_id
        assert lp.top[0][2] == pytest.approx(lp.logprob)


def test_penalties_change_greedy_output(engine):
    plain = generate(engine, max_tokens=30, temperature=0, ignore_eos=True)[0]["ids"]
    penalised = generate(engine, max_tokens=30, temperature=0, ignore_eos=True, frequency_penalty=2.0)[0][
        "ids"
    ]
    repeated = generate(engine, max_tokens=30, temperature=0, ignore_eos=True, repetition_penalty=5.0)[0][
        "ids"
    ]
    assert len(set(penalised)) >= len(set(plain))
    assert penalised != plain or repeated != plain


def seq_with(**params) -> Sequence:
    return Sequence("x", 0, [1], 1, SamplingParams(**params), frozenset(), None, None)


def test_filters_top_k_top_p_min_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    probs = filter_logits(logits, [seq_with(top_k=2), seq_with(top_p=0.7), seq_with(min_p=0.2)])
    assert probs[0].tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert probs[1].tolist() == pytest.approx([0.625, 0.375, 0, 0])  # 0.5 + 0.3 covers 0.7
    assert probs[2].tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", -1),
        ("temperature", float("nan")),
        ("top_p", 0),
        ("top_k", -5),
        ("min_p", 1.5),
        ("presence_penalty", 3),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0),
        ("max_tokens", 0),
        ("n", 0),
        ("n", 100),
        ("logprobs", 50),
        ("seed", -1),
        ("stop", [""]),
    ],
)
def test_out_of_range_values_are_refused(engine, field, value):
    with pytest.raises(ValidationError) as err:
        engine.add_request(GenerateRequest(prompt="hi", params=SamplingParams(**{field: value})))
    assert err.value.param == field and field in str(err.value)
    assert not engine.has_work()


def test_prompt_over_context_window_names_both_lengths(engine):
    with pytest.raises(ValidationError, match=f"context window is {engine.max_model_len}"):
        engine.prepare(GenerateRequest(prompt_token_ids=[5] * (engine.max_model_len + 3)))
    with pytest.raises(ValidationError, match="max_tokens"):
        engine.prepare(
            GenerateRequest(prompt_token_ids=[5] * 10, params=SamplingParams(max_tokens=engine.max_model_len))
        )
    with pytest.raises(ValidationError):
        engine.prepare(GenerateRequest(prompt_token_ids=[engine.model_config.vocab_size + 1]))


def test_incremental_detokenizer_never_splits_a_character(engine):
    text = "naïve café — ünïcödé ✓ 漢字"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(engine.tokenizer, [])
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_token_bytes_are_exact_for_partial_characters(engine):
    text = "café ✓"
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(engine.tokenizer.token_bytes(t) for t in ids) == text.encode()


def test_partial_character_tokens_are_spelled_as_bytes(engine):
    ids = engine.tokenizer.encode("✓", add_special_tokens=False)
    if len(ids) > 1:  # the tiny test tokenizer splits this character into byte tokens
        texts = [engine.tokenizer.token_text(t) for t in ids]
        assert all(t.startswith("bytes:\\x") for t in texts)
        from stratus.api.formatting import _token_bytes

        assert b"".join(bytes(_token_bytes(t)) for t in texts) == "✓".encode()
