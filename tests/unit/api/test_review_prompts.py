"""Review finding: tool definitions and tool-call arguments are rendered into the prompt too, so
their size decides, with the messages', whether the prompt is rendered and tokenized off the
event loop. Counting the messages' text alone, a request with a few kB of conversation and 4 MB
of tools was rendered and tokenized on the loop (4 s with a Hermes-style template), stalling
every other client."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from stratus.api.prompts import OFF_LOOP_CHARS, chat_prompt_ids
from stratus.api.schemas import ChatCompletionRequest


class RecordingTokenizer:
    max_token_chars = 16

    def __init__(self):
        self.threads: list[str] = []

    def encode_chat(self, messages, **extra):
        self.threads.append(threading.current_thread().name)
        return [1, 2, 3]


def _engine(tokenizer):
    return SimpleNamespace(tokenizer=tokenizer, max_model_len=1 << 20, model_config=None)


def test_large_tools_are_rendered_off_the_event_loop():
    tools = [
        {"type": "function", "function": {"name": f"f{i}", "description": "d" * 1000}}
        for i in range(OFF_LOOP_CHARS // 1000 + 1)
    ]
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], tools=tools)
    tok = RecordingTokenizer()
    asyncio.run(chat_prompt_ids(_engine(tok), chat.messages, chat.tools))
    assert tok.threads and tok.threads[-1] != threading.main_thread().name


def test_large_tool_call_arguments_are_rendered_off_the_event_loop():
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '"' + "a" * OFF_LOOP_CHARS + '"'},
    }
    chat = ChatCompletionRequest(
        model="m",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}],
    )
    tok = RecordingTokenizer()
    asyncio.run(chat_prompt_ids(_engine(tok), chat.messages))
    assert tok.threads and tok.threads[-1] != threading.main_thread().name


def test_a_small_request_stays_on_the_loop():
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    tok = RecordingTokenizer()
    asyncio.run(chat_prompt_ids(_engine(tok), chat.messages))
    assert tok.threads == [threading.main_thread().name]


def test_many_empty_messages_are_rendered_off_the_event_loop():
    """Content length alone said 0 for a body of thousands of empty messages, yet each is a turn
    the template renders: such a body was rendered on the loop."""
    from stratus.api.prompts import MESSAGE_RENDER_CHARS

    count = OFF_LOOP_CHARS // MESSAGE_RENDER_CHARS + 1
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": ""}] * count)
    tok = RecordingTokenizer()
    asyncio.run(chat_prompt_ids(_engine(tok), chat.messages))
    assert tok.threads and tok.threads[-1] != threading.main_thread().name
