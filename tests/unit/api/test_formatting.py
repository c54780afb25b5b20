"""Response dicts built by the handlers match the documented response models exactly."""

from stratus.api.formatting import ChatFormat, CompletionFormat
from stratus.api.generation import Choice
from stratus.api.schemas_out import ChatCompletion, ChatCompletionChunk, Completion
from stratus.engine.types import Delta, TokenLogprob
from stratus.request.context import Usage

LP = [TokenLogprob(5, "ab", -0.5, [(5, "ab", -0.5), (6, "c", -1.5)])]
USAGE = Usage(prompt_tokens=3, completion_tokens=2, cached_tokens=1)


def choice(i, text="ab", finish="length"):
    return Choice(i, parts=[text], logprobs=list(LP), finish_reason=finish, tokens=2)


def delta(i, text="ab", finish=None):
    return Delta("r", i, text, [5], logprobs=list(LP), finish_reason=finish)


def test_chat_response_and_chunks_match_schema():
    fmt = ChatFormat("x", "m", logprobs=True, include_usage=True)
    body = fmt.response([choice(0), choice(1)], USAGE)
    parsed = ChatCompletion.model_validate(body)
    assert parsed.choices[1].logprobs.content[0].top_logprobs[1].token == "c"
    assert parsed.usage.total_tokens == 5 and parsed.usage.prompt_tokens_details.cached_tokens == 1
    chunks = fmt.start_chunks(2) + fmt.delta_chunks(0, delta(0, finish="stop")) + [fmt.usage_chunk(USAGE)]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert [c["choices"][0]["delta"] for c in chunks[1:4]] == [
        {"role": "assistant", "content": ""},
        {"content": "ab"},
        {},
    ]
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2


def test_aborted_delta_gets_no_finish_chunk():
    fmt = ChatFormat("x", "m", logprobs=False)
    assert fmt.delta_chunks(0, Delta("r", 0, "", [], finish_reason="abort")) == []


def test_completion_echo_and_logprob_offsets():
    fmt = CompletionFormat("x", "m", logprobs=True, echo_texts=["P1", "Prompt2"], n=2)
    body = fmt.response([choice(i) for i in range(4)], USAGE)
    Completion.model_validate(body)
    assert [c["text"] for c in body["choices"]] == ["P1ab", "P1ab", "Prompt2ab", "Prompt2ab"]
    assert body["choices"][2]["logprobs"]["text_offset"] == [7]
    assert body["choices"][0]["logprobs"]["top_logprobs"] == [{"ab": -0.5, "c": -1.5}]
    first = fmt.delta_chunks(3, delta(3))[0]
    second = fmt.delta_chunks(3, delta(3))[0]
    assert first["choices"][0]["logprobs"]["text_offset"] == [7]
    assert second["choices"][0]["logprobs"]["text_offset"] == [9]
    for chunk in fmt.start_chunks(4) + [first, second]:
        Completion.model_validate(chunk)


def test_restamp_gives_a_cached_body_a_fresh_identity():
    old = ChatFormat("old", "m", logprobs=False).response([choice(0)], USAGE)
    new = ChatFormat("new", "m", logprobs=False)
    assert new.restamp(dict(old))["id"] == "chatcmpl-new"


def test_a_cached_answer_gets_new_tool_call_ids():
    """A client matches tool results to calls by id: an answer served again from the cache must
    not carry the ids of the first one."""
    from stratus.api import tool_calls
    from stratus.api.responses import ResponsesFormat, ResponsesRequest

    hermes = tool_calls.FORMATS["hermes"]
    chat = ChatFormat("r1", "m", False, tools=hermes)
    call = {"id": "call_old", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "tool_calls": [dict(call)]}}]}
    fresh = ChatFormat("r2", "m", False, tools=hermes).restamp(body)
    assert fresh["choices"][0]["message"]["tool_calls"][0]["id"] not in ("call_old", "")
    assert fresh["id"] == "chatcmpl-r2" and chat.id == "chatcmpl-r1"
    item = {"type": "function_call", "id": "fc_old", "call_id": "call_old", "name": "f", "arguments": "{}"}
    responses = ResponsesFormat("r3", ResponsesRequest.model_validate({"model": "m", "input": "x"}), hermes)
    again = responses.restamp({"output": [item]})
    assert again["output"][0]["call_id"] != "call_old" and again["output"][0]["id"] != "fc_old"


def test_a_failed_stream_ends_with_the_error_event_of_its_api():
    from stratus.api.responses import ResponsesFormat, ResponsesRequest

    envelope = {"error": {"message": "boom", "type": "server_error", "param": None, "code": "x"}}
    assert ChatFormat("r", "m", False).error_chunk(envelope) == envelope
    responses = ResponsesFormat("r", ResponsesRequest.model_validate({"model": "m", "input": "x"}), None)
    responses.start_chunks(1)
    failed = responses.error_chunk(envelope)
    assert failed == {"type": "error", "sequence_number": 2, "code": "x", "message": "boom", "param": None}
