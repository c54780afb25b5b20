"""Resuming a generation from the tokens and text already delivered (what migration relies on):
the continuation plus what was delivered equals one uninterrupted run, for greedy and seeded
sampling, penalties, stop strings held back at the cut, and one choice of an n > 1 request."""

from pathlib import Path

import pytest

from stratus.engine import EngineConfig, EngineCore, GenerateRequest, SamplingParams, ValidationError

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"
PROMPT = "It is a truth universally acknowledged, that"


@pytest.fixture(scope="module")
def engine():
    return EngineCore(DEMO, EngineConfig(kv_cache_memory_mb=16))


def run(engine, request: GenerateRequest) -> dict[int, list[tuple[list[int], str, str | None]]]:
    """Every delta of every choice, as (token ids, text, finish_reason)."""
    engine.add_request(request)
    out: dict[int, list] = {}
    while engine.has_work():
        for d in engine.step():
            out.setdefault(d.index, []).append((d.token_ids, d.text, d.finish_reason))
    return out


def joined(deltas) -> tuple[list[int], str, str | None]:
    return [t for d in deltas for t in d[0]], "".join(d[1] for d in deltas), deltas[-1][2]


def resume_after(engine, params: SamplingParams, deltas, cut: int, index: int = 0):
    ids, text, _ = joined(deltas[:cut])
    params = SamplingParams(**{**params.__dict__, "n": 1})
    request = GenerateRequest(
        prompt=PROMPT, params=params, first_index=index, resume_token_ids=ids, resume_text=text
    )
    rest = run(engine, request)
    assert list(rest) == [index]
    rest_ids, rest_text, finish = joined(rest[index])
    return ids + rest_ids, text + rest_text, finish


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=30, temperature=0, ignore_eos=True),
        SamplingParams(max_tokens=30, temperature=0.9, top_p=0.9, seed=7, ignore_eos=True),
        SamplingParams(
            max_tokens=30, temperature=0, presence_penalty=1.5, frequency_penalty=0.5, ignore_eos=True
        ),
    ],
    ids=["greedy", "seeded", "penalties"],
)
@pytest.mark.parametrize("cut", [1, 5, 17])
def test_resumed_generation_equals_an_uninterrupted_one(engine, params, cut):
    whole = run(engine, GenerateRequest(prompt=PROMPT, params=params))[0]
    assert cut < len(whole)
    assert resume_after(engine, params, whole, cut) == joined(whole)


def test_text_held_back_for_a_stop_string_is_delivered_after_resuming(engine):
    free = joined(
        run(engine, GenerateRequest(prompt=PROMPT, params=SamplingParams(max_tokens=40, temperature=0)))[0]
    )
    words = free[1].split()
    assert len(words) > 4, free
    stop = " ".join(words[3:5])  # a stop string in the middle of the text, spanning tokens
    params = SamplingParams(max_tokens=40, temperature=0, stop=[stop])
    whole = run(engine, GenerateRequest(prompt=PROMPT, params=params))[0]
    for cut in range(1, len(whole)):
        assert resume_after(engine, params, whole, cut) == joined(whole), cut


def test_one_choice_of_several_resumes_under_its_own_index_and_seed(engine):
    params = SamplingParams(max_tokens=20, temperature=1.0, seed=11, n=3, ignore_eos=True)
    whole = run(engine, GenerateRequest(prompt=PROMPT, params=params))
    assert len({tuple(joined(whole[i])[0]) for i in whole}) > 1  # the choices differ
    assert resume_after(engine, params, whole[2], 6, index=2) == joined(whole[2])


def test_bad_resume_requests_are_refused(engine):
    base = dict(prompt=PROMPT, resume_text="")
    with pytest.raises(ValidationError, match="n=1"):
        engine.prepare(GenerateRequest(**base, params=SamplingParams(n=2), resume_token_ids=[5]))
    with pytest.raises(ValidationError, match="resume token ids"):
        engine.prepare(GenerateRequest(**base, params=SamplingParams(), resume_token_ids=[-1]))
    with pytest.raises(ValidationError, match="nothing is left"):
        engine.prepare(GenerateRequest(**base, params=SamplingParams(max_tokens=2), resume_token_ids=[5, 6]))
    assert not engine.has_work()
