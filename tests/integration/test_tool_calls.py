"""Tool calling on the local engine, through the official openai client.

The checkpoint is the tiny random one with a Hermes-style chat template (Qwen2.5's format:
tools in the system turn, `<tool_call>` blocks, `tool` turns as `<tool_response>`). A random model
never decides to call a tool by itself, so the calls here are required (`tool_choice: "required"`
or a named function): guided decoding writes them, and they must come back as OpenAI
`tool_calls`, streamed as deltas too. The two-turn conversation then sends the call and its result
back, rendered by the template.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from stratus.api import tool_calls
from tests.checkpoints import build_checkpoint
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(240)

MODEL = "tooly"
HERMES_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>\nYou may call functions. <tools>"
    "{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> Call one as "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call><|end|>\n{% endif %}'
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}<|user|>\n<tool_response>{{ m['content'] }}</tool_response><|end|>\n"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}<|assistant|>\n"
    "{% for c in m['tool_calls'] %}<tool_call>{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}</tool_call>{% endfor %}<|end|>\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 14}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from stratus.api import create_app
    from stratus.config import Settings
    from stratus.security.stage import OPEN_ACCESS

    # a context long enough for tool definitions in a 512-token vocabulary's many small tokens
    ckpt = build_checkpoint(tmp_path_factory.mktemp("tooly"), "llama", hidden_size=128, init_std=0.1)
    (ckpt / "chat_template.jinja").write_text(HERMES_TEMPLATE)
    data = tmp_path_factory.mktemp("tooly-data")
    settings = Settings(models={MODEL: str(ckpt)}, engine_isolation="thread", data_dir=str(data), auth=False)
    with LiveServer(create_app(settings, identity=OPEN_ACCESS)) as server:  # not about access control
        server.wait_ready()
        with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
            yield c


def check_call(call, names=("get_weather", "get_time")) -> dict:
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in names
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, PARAMS[call.function.name])
    return args


def test_a_required_call_comes_back_as_tool_calls(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        n=3,
        seed=4,
    )
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        assert choice.message.content is None and len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0])
    assert len({c.message.tool_calls[0].function.arguments for c in r.choices}) > 1  # sampled
    several = client.chat.completions.create(  # parallel calls: one or more, each well-formed
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=300, seed=4
    )
    for call in several.choices[0].message.tool_calls:
        check_call(call)


def test_a_named_function_is_the_one_called(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=300,
        seed=9,
    )
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "get_time" and "zone" in check_call(call, ("get_time",))


def test_streamed_calls_arrive_as_deltas(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        seed=2,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.index == 0)
    jsonschema.validate(json.loads(arguments), PARAMS["get_weather"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)  # no call text leaks as content


def test_two_turns_call_then_result_then_answer(client):
    first = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=300, seed=1
    )
    call = first.choices[0].message.tool_calls[0]
    turn = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    answer = client.chat.completions.create(
        model=MODEL,
        messages=turn,
        tools=[WEATHER],
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert answer.choices[0].finish_reason == "length"  # auto: the random model writes text
    longer = client.chat.completions.create(model=MODEL, messages=turn, tools=[WEATHER], max_tokens=1)
    bare = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=1)
    assert longer.usage.prompt_tokens > bare.usage.prompt_tokens + 10  # the call and result were rendered
    none = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=1
    )
    assert none.usage.prompt_tokens < bare.usage.prompt_tokens  # tool_choice none: tools not offered


@pytest.mark.parametrize(
    "extra, param",
    [
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}], "tool_choice": "required"},
            "tools",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{**WEATHER, "function": {**WEATHER["function"], "description": "<|assistant|>"}}]},
            "messages",
        ),
    ],
)
def test_bad_tools_are_a_400_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, extra_body=extra)
    assert err.value.body["param"] == param, err.value.body


def test_parsers_read_each_format():
    hermes = tool_calls.FORMATS["hermes"]
    content, calls = tool_calls.parse(
        'Sure. <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', hermes
    )
    assert content == "Sure." and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1})]
    assert tool_calls.parse("<tool_call>not json</tool_call>", hermes) == (
        "<tool_call>not json</tool_call>",
        [],
    )
    mistral = tool_calls.FORMATS["mistral"]
    _, calls = tool_calls.parse(
        '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}]', mistral
    )
    assert [c.name for c in calls] == ["f", "g"]
    llama = tool_calls.FORMATS["llama3_json"]
    _, calls = tool_calls.parse('{"name": "f", "parameters": {"x": "y"}}', llama)
    assert json.loads(calls[0].arguments) == {"x": "y"}
    assert tool_calls.parse("just words", llama) == ("just words", [])
    assert tool_calls.detect("... <tool_call> ...").name == "hermes"
    assert tool_calls.detect("[TOOL_CALLS]").name == "mistral"
    assert tool_calls.detect("<|python_tag|>").name == "llama3_json"
    assert tool_calls.detect("plain") is None and tool_calls.detect("plain", "mistral").name == "mistral"


def test_a_stream_holds_back_only_what_may_be_a_call():
    stream = tool_calls.StreamCalls(tool_calls.FORMATS["hermes"])
    sent, calls = "", []
    for piece in ["Let me ", "check <tool", '_call>{"name": "f", ', '"arguments": {}}</tool_call>', " done"]:
        text, more = stream.push(piece)
        sent, calls = sent + text, calls + more
    rest, more = stream.finish()
    assert sent + rest == "Let me check  done" or sent + rest == "Let me check done"
    assert [c["function"]["name"] for c in calls + more] == ["f"] and calls[0]["index"] == 0


def test_responses_api_calls_and_takes_back_tool_results(client):
    """The Responses API: function tools, a required call as a function_call output item (and as
    its stream events), then the call and its output sent back as input items."""
    tool = {"type": "function", **WEATHER["function"]}
    first = client.responses.create(
        model=MODEL,
        input=ASK,
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=300,
    )
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), PARAMS["get_weather"])
    events = list(
        client.responses.create(
            model=MODEL,
            input=ASK,
            tools=[tool],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=300,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    assert events[-1].response.output[0].type == "function_call"
    turn = [
        *ASK,
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
    ]
    turn.append({"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'})
    answer = client.responses.create(model=MODEL, input=turn, tools=[tool], max_output_tokens=4)
    bare = client.responses.create(model=MODEL, input=ASK, tools=[tool], max_output_tokens=4)
    assert answer.usage.input_tokens > bare.usage.input_tokens + 10  # the call and its output were rendered
