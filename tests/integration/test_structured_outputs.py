"""Structured outputs on the local engine, through the official openai client: response_format
(json_object, json_schema) and vLLM's guided_json / guided_regex / guided_choice /
guided_grammar. The tiny checkpoint is random, so left alone it never writes JSON: every valid
answer below is the grammar's doing. Sampled at temperature 1 so each choice takes its own path.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import openai
import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(240)

ASK = [{"role": "user", "content": "Describe a person"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3},
        "email": {"type": ["string", "null"], "pattern": "^[a-z]{1,8}@example\\.com$"},
    },
    "required": ["name", "age", "pets", "email"],
    "additionalProperties": False,
}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}


@pytest.fixture(scope="module")
def client(base_url, admin_key):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=admin_key, max_retries=0, timeout=120) as c:
        yield c


def test_json_schema_answers_validate(client):
    r = client.chat.completions.create(
        model=TINY_MODEL, messages=ASK, response_format=SCHEMA_FORMAT, n=4, max_tokens=120, seed=7
    )
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    assert len({c.message.content for c in r.choices}) > 1  # sampled, not one forced string


def test_json_schema_streamed(client):
    stream = client.chat.completions.create(
        model=TINY_MODEL, messages=ASK, response_format=SCHEMA_FORMAT, max_tokens=120, seed=3, stream=True
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_mode_and_completions(client):
    chat = client.chat.completions.create(
        model=TINY_MODEL, messages=ASK, response_format={"type": "json_object"}, max_tokens=60, seed=1
    )
    if chat.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(chat.choices[0].message.content), dict)
    else:  # out of tokens: a prefix of an object, still well-formed so far
        assert chat.choices[0].message.content.startswith("{")
    done = client.completions.create(
        model=TINY_MODEL,
        prompt="A person:",
        max_tokens=120,
        seed=5,
        extra_body={"response_format": SCHEMA_FORMAT},
    )
    jsonschema.validate(json.loads(done.choices[0].text), PERSON)


def test_vllm_guided_fields(client):
    def ask(**extra):
        r = client.chat.completions.create(
            model=TINY_MODEL, messages=ASK, max_tokens=40, seed=11, extra_body=extra
        )
        assert r.choices[0].finish_reason == "stop"
        return r.choices[0].message.content

    assert ask(guided_choice=["positive", "negative", "neutral"]) in {"positive", "negative", "neutral"}
    assert re.fullmatch(r"\d{3}-[a-z]{2,4}", ask(guided_regex=r"\d{3}-[a-z]{2,4}"))
    flags = json.loads(
        ask(guided_json=json.dumps({"type": "array", "items": {"type": "boolean"}, "maxItems": 4}))
    )
    assert isinstance(flags, list) and len(flags) <= 4 and all(isinstance(b, bool) for b in flags)
    assert re.fullmatch(r"(ab)+c", ask(guided_grammar='start: ("ab")+ "c"'))


def test_unconstrained_rows_in_the_same_batch_are_unchanged(client):
    """A guided request batched with free ones: the free ones generate what they do alone."""
    free = dict(model=TINY_MODEL, messages=ASK, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    alone = client.chat.completions.create(**free).choices[0].message.content
    together: list[str] = []

    def guided():
        client.chat.completions.create(
            model=TINY_MODEL, messages=ASK, response_format=SCHEMA_FORMAT, n=3, max_tokens=120, seed=2
        )

    threads = [threading.Thread(target=guided) for _ in range(2)]
    for t in threads:
        t.start()
    together = [client.chat.completions.create(**free).choices[0].message.content for _ in range(3)]
    for t in threads:
        t.join()
    assert together == [alone] * 3


@pytest.mark.parametrize(
    "extra, param, needle",
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "needs a json_schema"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"if": {}, "then": {}}},
                }
            },
            "response_format",
            "if",
        ),
        ({"guided_regex": "(unclosed"}, "guided_regex", "guided decoding"),
        ({"guided_json": "not json"}, "guided_json", "JSON schema"),
        ({"guided_grammar": "start: undefined_rule"}, "guided_grammar", "guided decoding"),
        ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice", "one of"),
    ],
)
def test_unusable_grammars_are_a_400_naming_the_field(client, extra, param, needle):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TINY_MODEL, messages=ASK, max_tokens=8, extra_body=extra)
    body = err.value.body
    assert body["param"] == param and needle in body["message"], body
