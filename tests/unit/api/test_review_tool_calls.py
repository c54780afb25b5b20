"""Review findings on reading tool calls from a model's answer (api/tool_calls.py).

What a model writes is hostile input: a prompt, or a guided_regex/guided_grammar sent with tools,
can make it write anything up to max_tokens. Reading it runs on the event loop, so it must stay
linear in the text and never raise.
"""

from __future__ import annotations

import time

import pytest

from stratus.api import tool_calls as tc
from stratus.api.formatting import ChatFormat
from stratus.api.generation import Choice
from stratus.engine.types import Delta

pytestmark = pytest.mark.timeout(120)

HERMES = tc.FORMATS["hermes"]


def _timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>" + " " * 2000 + "x",  # an unclosed call and a run of whitespace: cubic before
        "<tool_call>" * 4000,  # many unclosed starts: quadratic before
        "<tool_call>" + "\n" * 2000 + "</tool_call" + " " * 2000,
    ],
)
def test_reading_hermes_calls_is_linear(text):
    (content, calls), took = _timed(tc.parse, text, HERMES)
    assert calls == [] and content == text
    assert took < 0.5, f"parsing {len(text)} characters took {took:.1f} s on the event loop"


def test_hermes_calls_are_still_read_as_before():
    text = (
        'Let me look.\n<tool_call>\n {"name": "a", "arguments": {"x": 1}} \n</tool_call>\n'
        'and <tool_call>{"name": "b", "arguments": {}}</tool_call> done'
    )
    content, calls = tc.parse(text, HERMES)
    assert [(c.name, c.arguments) for c in calls] == [("a", '{"x": 1}'), ("b", "{}")]
    assert content == "Let me look.\n\nand  done"
    # a block that is not a call: no calls at all, the text is content
    assert tc.parse("<tool_call>nope</tool_call>", HERMES) == ("<tool_call>nope</tool_call>", [])
    # only a call: no content
    content, calls = tc.parse('<tool_call>{"name": "a"}</tool_call>', HERMES)
    assert content is None and [c.name for c in calls] == ["a"]
    # a call block holding another start marker is read up to the first end marker
    text = '<tool_call><tool_call>{"name": "a"}</tool_call>'
    assert tc.parse(text, HERMES) == (text, [])


@pytest.mark.parametrize("name", sorted(tc.FORMATS))
def test_deeply_nested_json_is_content_not_an_error(name):
    fmt = tc.FORMATS[name]
    text = fmt.start + "[" * 50_000 + "]" * 50_000 + fmt.end
    content, calls = tc.parse(text, fmt)  # RecursionError before
    assert calls == [] and content == text


def test_deeply_nested_json_in_a_stream_and_in_a_whole_answer():
    nested = "<tool_call>" + '{"name": "a", "arguments": ' + "[" * 50_000 + "]" * 50_000 + "}</tool_call>"
    fmt = ChatFormat("r", "m", logprobs=False, tools=HERMES)
    body = fmt.response([Choice(0, parts=[nested], finish_reason="stop", tokens=3)], _usage())
    assert body["choices"][0]["message"]["content"] == nested
    chunks = fmt.delta_chunks(0, Delta("r", 0, nested, [1], finish_reason="stop"))
    sent = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert sent == nested and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def _usage():
    from stratus.request.context import Usage

    return Usage(prompt_tokens=1, completion_tokens=1)
