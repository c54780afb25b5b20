"""OpenAI response bodies and stream chunks, built as plain dicts (see schemas_out.py for shapes)."""

from __future__ import annotations

import time

from stratus.api import tool_calls
from stratus.api.generation import Choice
from stratus.engine.types import Delta, TokenLogprob
from stratus.request.context import Usage


def usage_dict(usage: Usage) -> dict:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def _token_bytes(text: str) -> list[int]:
    if text.startswith("bytes:\\x"):  # part of a UTF-8 character, spelled as the engine spells it
        return list(bytes.fromhex(text[len("bytes:") :].replace("\\x", "")))
    return list(text.encode("utf-8"))


def chat_logprobs(items: list[TokenLogprob]) -> dict:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": _token_bytes(lp.token),
                "top_logprobs": [
                    {"token": text, "logprob": value, "bytes": _token_bytes(text)}
                    for _, text, value in lp.top
                ],
            }
            for lp in items
        ]
    }


def completion_logprobs(items: list[TokenLogprob], offset: int) -> dict:
    offsets = []
    for lp in items:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in items],
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{text: value for _, text, value in lp.top} for lp in items],
        "text_offset": offsets,
    }


class _Format:
    object = ""
    chunk_object = ""
    prefix = ""

    def __init__(self, request_id: str, model: str, include_usage: bool = False):
        self.id = f"{self.prefix}{request_id}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _chunk(self, choices: list[dict]) -> dict:
        body = self._head(self.chunk_object)
        body["choices"] = choices
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: Usage) -> dict:
        body = self._head(self.chunk_object)
        body["choices"] = []
        body["usage"] = usage_dict(usage)
        return body

    def error_chunk(self, body: dict) -> dict:
        """The event that ends a stream which failed midway: OpenAI's error envelope."""
        return body

    def restamp(self, body: dict) -> dict:
        """A cached body made to look like a fresh answer to this request."""
        body.update(id=self.id, created=self.created, model=self.model)
        return body


class ChatFormat(_Format):
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    prefix = "chatcmpl-"

    def __init__(
        self,
        request_id: str,
        model: str,
        logprobs: bool,
        include_usage: bool = False,
        tools: tool_calls.Format | None = None,
    ):
        super().__init__(request_id, model, include_usage)
        self.logprobs = logprobs
        self.tools = tools  # the model's tool-call format, when tools were offered
        self._streams: dict[int, tool_calls.StreamCalls] = {}

    def restamp(self, body: dict) -> dict:
        """A cached answer made fresh: its tool calls get new ids too (a client matches tool
        results to calls by id, so two answers must never share one)."""
        for choice in body.get("choices", []):
            for call in choice.get("message", {}).get("tool_calls") or []:
                call["id"] = tool_calls.new_call_id()
        return super().restamp(body)

    def response(self, choices: list[Choice], usage: Usage) -> dict:
        body = self._head(self.object)
        body["choices"] = [self._choice(c) for c in choices]
        body["usage"] = usage_dict(usage)
        body["system_fingerprint"] = None
        return body

    def _choice(self, c: Choice) -> dict:
        message: dict = {"role": "assistant", "content": c.text}
        finish = c.finish_reason
        if self.tools is not None:
            content, calls = tool_calls.parse(c.text, self.tools)
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": [k.openai() for k in calls]}
                finish = "tool_calls" if finish == "stop" else finish
        return {
            "index": c.index,
            "message": message,
            "logprobs": chat_logprobs(c.logprobs) if self.logprobs else None,
            "finish_reason": finish,
        }

    def start_chunks(self, num_choices: int) -> list[dict]:
        return [
            self._chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(num_choices)
        ]

    def delta_chunks(self, index: int, delta: Delta) -> list[dict]:
        out = []
        has_logprobs = self.logprobs and bool(delta.logprobs)
        text, calls = delta.text, list[dict]()
        if self.tools is not None:  # text that may be a call is held until it is known
            stream = self._streams.setdefault(index, tool_calls.StreamCalls(self.tools))
            text, calls = stream.push(delta.text)
            if delta.finish_reason is not None:
                rest, more = stream.finish()
                text, calls = text + rest, calls + more
        if text or has_logprobs:
            out.append(
                self._delta(index, {"content": text}, chat_logprobs(delta.logprobs) if has_logprobs else None)
            )
        if calls:
            out.append(self._delta(index, {"tool_calls": calls}))
        if delta.finish_reason in ("stop", "length"):
            held = self._streams.get(index)
            called = held is not None and held.sent > 0
            finish = "tool_calls" if called and delta.finish_reason == "stop" else delta.finish_reason
            out.append(self._delta(index, {}, finish=finish))
        return out

    def _delta(
        self, index: int, delta: dict, logprobs: dict | None = None, finish: str | None = None
    ) -> dict:
        return self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])


class CompletionFormat(_Format):
    object = "text_completion"
    chunk_object = "text_completion"
    prefix = "cmpl-"

    def __init__(
        self,
        request_id: str,
        model: str,
        logprobs: bool,
        echo_texts: list[str] | None,
        n: int,
        include_usage: bool = False,
    ):
        super().__init__(request_id, model, include_usage)
        self.logprobs = logprobs
        self.echo_texts = echo_texts
        self.n = n
        self._offsets: dict[int, int] = {}

    def _echo(self, index: int) -> str:
        return self.echo_texts[index // self.n] if self.echo_texts else ""

    def response(self, choices: list[Choice], usage: Usage) -> dict:
        body = self._head(self.object)
        body["choices"] = []
        for c in choices:
            prefix = self._echo(c.index)
            body["choices"].append(
                {
                    "index": c.index,
                    "text": prefix + c.text,
                    "logprobs": completion_logprobs(c.logprobs, len(prefix)) if self.logprobs else None,
                    "finish_reason": c.finish_reason,
                }
            )
        body["usage"] = usage_dict(usage)
        body["system_fingerprint"] = None
        return body

    def start_chunks(self, num_choices: int) -> list[dict]:
        if not self.echo_texts:
            return []
        return [
            self._chunk([{"index": i, "text": self._echo(i), "logprobs": None, "finish_reason": None}])
            for i in range(num_choices)
        ]

    def delta_chunks(self, index: int, delta: Delta) -> list[dict]:
        has_logprobs = self.logprobs and bool(delta.logprobs)
        finish = delta.finish_reason if delta.finish_reason in ("stop", "length") else None
        if not (delta.text or has_logprobs or finish):
            return []
        logprobs = None
        if has_logprobs:
            offset = self._offsets.get(index, len(self._echo(index)))
            logprobs = completion_logprobs(delta.logprobs, offset)
            self._offsets[index] = offset + sum(len(lp.token) for lp in delta.logprobs)
        return [
            self._chunk([{"index": index, "text": delta.text, "logprobs": logprobs, "finish_reason": finish}])
        ]
