"""Guided decoding in the engine core: masks per row, a failing grammar fails its own request
only, a guided stream resumes on another core exactly, and grammars are checked before use."""

from __future__ import annotations

import json

import pytest

from stratus.engine import grammar
from stratus.engine.core import EngineCore
from stratus.engine.types import GenerateRequest, SamplingParams, ValidationError

pytestmark = pytest.mark.timeout(120)

SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999}, "ok": {"type": "boolean"}},
    "required": ["id", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def core(llama_dir):
    return EngineCore(llama_dir)


def run(core: EngineCore, *requests: GenerateRequest) -> dict[str, tuple[str, str | None, list[int]]]:
    for r in requests:
        core.add_request(r)
    out: dict[str, tuple[str, str | None, list[int]]] = {}
    while core.has_work():
        for d in core.step():
            text, _, ids = out.get(d.request_id, ("", None, []))
            out[d.request_id] = (text + d.text, d.finish_reason, ids + d.token_ids)
    return out


def guided(rid: str, **params) -> GenerateRequest:
    base = {"max_tokens": 60, "grammar": grammar.from_json_schema(SCHEMA), **params}
    return GenerateRequest(prompt="x", params=SamplingParams(**base), request_id=rid)


def test_guided_and_free_rows_share_a_batch(core):
    free = GenerateRequest(prompt="x", params=SamplingParams(max_tokens=12, temperature=0), request_id="free")
    alone = run(core, free)["free"]
    out = run(core, guided("g1", seed=1), guided("g2", temperature=0), free)
    assert out["free"] == alone
    for rid in ("g1", "g2"):
        text, finish, _ = out[rid]
        assert finish == "stop" and set(json.loads(text)) == {"id", "ok"}


def test_a_grammar_that_fails_fails_its_request_alone(core, monkeypatch):
    real = grammar.Constraint.fill

    def fill(self, row):
        if self.matcher is broken_matcher[0]:
            raise grammar.GrammarError("injected")
        real(self, row)

    broken_matcher: list = [None]
    monkeypatch.setattr(grammar.Constraint, "fill", fill)
    core.add_request(guided("broken"))
    broken_matcher[0] = core.requests["broken"][0].constraint.matcher
    out = run(core, guided("fine", temperature=0))
    assert core.take_failures().keys() == {"broken"}
    assert out["fine"][1] == "stop" and "broken" not in out


def test_a_guided_generation_resumes_elsewhere_exactly(llama_dir, core):
    whole = run(core, guided("whole", temperature=0))["whole"]
    elsewhere = EngineCore(llama_dir)
    cut = 5  # tokens delivered before the first replica died
    text = elsewhere.tokenizer.decode(whole[2][:cut])
    resumed = guided("rest", temperature=0)
    resumed.resume_token_ids, resumed.resume_text = whole[2][:cut], text
    rest = run(elsewhere, resumed)["rest"]
    assert text + rest[0] == whole[0] and rest[1] == "stop"


def test_grammars_are_checked_before_use():
    with pytest.raises(ValidationError, match="if"):
        grammar.check(grammar.from_json_schema({"if": {}, "then": {}}))
    lenient = {"x-guidance": {"lenient": True}, "type": "object", "if": {}, "then": {}}
    with pytest.raises(ValidationError):  # a schema cannot make its own features optional
        grammar.check(grammar.from_json_schema(lenient))
    with pytest.raises(ValidationError, match="at most"):
        grammar.check("x" * (grammar.MAX_GRAMMAR_CHARS + 1))
    with pytest.raises(ValidationError, match="at most"):
        SamplingParams(grammar="x" * (grammar.MAX_GRAMMAR_CHARS + 1)).validate()


def test_a_grammar_that_does_not_compile_is_refused_at_admission(core):
    """What a worker gets over the wire is compiled at admission: a ValidationError (a 400), and
    nothing of the request is left in the engine."""
    with pytest.raises(ValidationError, match="grammar"):
        core.add_request(GenerateRequest(prompt="x", params=SamplingParams(grammar="start: nowhere", n=2)))
    assert not core.has_work() and not core.requests
