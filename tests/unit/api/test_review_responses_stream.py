"""Review finding on the Responses API's stream (api/responses.py ResponsesFormat).

Each output item is added once, at the index it has in the final response, and done once; its
text is what its deltas sent. Text after a tool call (a Hermes model may write some) or a tool
call before any text used to reopen the first message: the same item added twice, at an index
a call already held.
"""

from __future__ import annotations

import pytest

from stratus.api import tool_calls as tc
from stratus.api.responses import ResponsesFormat, ResponsesRequest
from stratus.engine.types import Delta
from stratus.request.context import Usage

CALL = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'


def _events(pieces: list[str]) -> list[dict]:
    body = ResponsesRequest.model_validate(
        {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f"}], "stream": True}
    )
    fmt = ResponsesFormat("r", body, tc.FORMATS["hermes"])
    events = fmt.start_chunks(1)
    for i, text in enumerate(pieces):
        finish = "stop" if i == len(pieces) - 1 else None
        events += fmt.delta_chunks(0, Delta("r", 0, text, [1], finish_reason=finish))
    events.append(fmt.usage_chunk(Usage(prompt_tokens=1, completion_tokens=len(pieces))))
    return events


@pytest.mark.parametrize(
    "pieces",
    [
        ["Sure. ", CALL, " Done."],  # text, a call, text again
        [CALL, " Done."],  # a call first, then text
        ["a", "b", CALL, CALL],  # text then two calls
        ["just text"],
        [CALL],
    ],
)
def test_each_output_item_is_added_once_at_its_final_index(pieces):
    events = _events(pieces)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]
    assert final["type"] == "response.completed"
    output = final["response"]["output"]
    ids = [item["id"] for item in output]
    assert len(set(ids)) == len(ids)
    added = [
        (e["output_index"], e["item"]["id"]) for e in events if e["type"] == "response.output_item.added"
    ]
    done = [(e["output_index"], e["item"]["id"]) for e in events if e["type"] == "response.output_item.done"]
    assert added == done == list(enumerate(ids))
    for index, item in enumerate(output):
        if item["type"] == "message":
            deltas = [
                e["delta"]
                for e in events
                if e["type"] == "response.output_text.delta" and e["item_id"] == item["id"]
            ]
            assert all(e["output_index"] == index for e in events if e.get("item_id") == item["id"])
            (text_done,) = [
                e for e in events if e["type"] == "response.output_text.done" and e["item_id"] == item["id"]
            ]
            assert "".join(deltas) == text_done["text"] == item["content"][0]["text"]
        else:
            assert item["type"] == "function_call" and item["name"] == "f"
            assert all(e["output_index"] == index for e in events if e.get("item_id") == item["id"])
    text = "".join(p for p in pieces if p != CALL)
    assert "".join(i["content"][0]["text"] for i in output if i["type"] == "message") == text
    assert sum(i["type"] == "function_call" for i in output) == pieces.count(CALL)
