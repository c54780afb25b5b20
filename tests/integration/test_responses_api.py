"""The Responses API through the official openai client's `client.responses.create`: text,
instructions, multi-turn input items, a JSON schema in text.format, streaming with the typed
events, and what a stateless server refuses. Tool calls: tests/integration/test_tool_calls.py."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(180)

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 10},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
    },
    "required": ["title", "year"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(base_url, admin_key):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=admin_key, max_retries=0, timeout=120) as c:
        yield c


def test_text_equals_the_same_chat_completion(client):
    r = client.responses.create(
        model=TINY_MODEL, instructions="Be brief.", input="Say hello", max_output_tokens=12, temperature=0
    )
    chat = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
        max_completion_tokens=12,
        temperature=0,
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == TINY_MODEL
    assert r.output_text == chat.choices[0].message.content
    assert (
        r.usage.input_tokens == chat.usage.prompt_tokens
        and r.usage.output_tokens == chat.usage.completion_tokens
    )
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert r.store is False


def test_multi_turn_input_items(client):
    items = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And now?"}]},
    ]
    r = client.responses.create(model=TINY_MODEL, input=items, max_output_tokens=5, temperature=0)
    chat = client.chat.completions.create(
        model=TINY_MODEL,
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And now?"},
        ],
        max_completion_tokens=5,
        temperature=0,
    )
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens


def test_json_schema_text_format(client):
    r = client.responses.create(
        model=TINY_MODEL,
        input="A film",
        max_output_tokens=120,
        extra_body={"seed": 3},
        text={"format": {"type": "json_schema", "name": "film", "schema": SCHEMA, "strict": True}},
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), SCHEMA)


def test_streamed_events(client):
    stream = client.responses.create(
        model=TINY_MODEL, input="Tell a story", max_output_tokens=16, temperature=0, stream=True
    )
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"  # cut by max_output_tokens, as OpenAI says it
    final = events[-1].response
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = next(e for e in events if e.type == "response.output_text.done")
    assert deltas == done.text == final.output_text
    assert final.incomplete_details.reason == "max_output_tokens"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    plain = client.responses.create(
        model=TINY_MODEL, input="Tell a story", max_output_tokens=16, temperature=0
    )
    assert final.output_text == plain.output_text and final.usage.output_tokens == plain.usage.output_tokens


def test_the_sdk_stream_helper_gets_a_completed_response(client):
    choices = {"guided_choice": ["yes", "no", "maybe"]}  # ends by itself: status completed
    with client.responses.stream(
        model=TINY_MODEL, input="Well?", max_output_tokens=30, extra_body=choices
    ) as s:
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text in choices["guided_choice"]


def test_stateless_refusals_and_bad_items(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=TINY_MODEL, input="x", previous_response_id="resp_123")
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=TINY_MODEL, input=[{"type": "nonsense"}])
    assert err.value.body["param"].startswith("input")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
