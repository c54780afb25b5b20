"""The Responses API (`POST /v1/responses`) on the chat path: its request becomes a chat request,
and the chat answer becomes a Response object (or its stream of typed events).

    instructions            -> a system message first
    input (text or items)   -> messages: message items by role, function_call items as an
                               assistant's tool_calls, function_call_output items as tool messages
    tools (function)        -> chat tools;  tool_choice {"type": "function", "name"} -> named
    text.format             -> response_format (json_object, json_schema)
    max_output_tokens       -> max_completion_tokens

Stateless: nothing is stored, so `store` is answered false and `previous_response_id` is refused
(a 400 naming it); the conversation travels in `input`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from stratus.api import tool_calls
from stratus.api.formatting import ChatFormat
from stratus.api.generation import Choice
from stratus.api.schemas import (
    ChatCompletionRequest,
    EngineExtras,
    ParamError,
    Seed,
    Temperature,
    TopP,
    _Strict,
)
from stratus.engine.types import Delta
from stratus.request.context import Usage
from stratus.request.ids import new_id

MAX_ITEMS = 2048


class InputText(_Strict):
    type: Literal["input_text", "output_text", "text"]
    text: str


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | Annotated[list[InputText], Field(max_length=MAX_ITEMS)]
    id: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    arguments: str
    id: str | None = None


class FunctionOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1, max_length=64)]
    output: str


# A message item may leave out its type (the SDKs' "easy" input message), so no discriminator.
InputItem = Annotated[MessageItem | FunctionCallItem | FunctionOutputItem, Field(union_mode="left_to_right")]


class FunctionTool(_Strict):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str = "response"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextOptions(_Strict):
    format: TextFormat | None = None


class ResponsesRequest(EngineExtras):
    model: Annotated[str, Field(min_length=1)]
    input: str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_ITEMS)]
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: Seed | None = None
    stream: bool = False
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _stateless(self) -> ResponsesRequest:
        if self.previous_response_id is not None:
            raise ParamError(
                "previous_response_id",
                "responses are not stored on this server: send the conversation in `input`",
            )
        return self

    def chat(self) -> ChatCompletionRequest:
        """The same request as a chat completion (validated like any other)."""
        messages: list[dict] = [{"role": "system", "content": self.instructions}] if self.instructions else []
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        for item in items:
            if isinstance(item, MessageItem):
                messages.append({"role": item.role, "content": item.text()})
            elif isinstance(item, FunctionCallItem):
                call = {
                    "id": item.call_id,
                    "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments},
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": self.stream,
            **self.model_dump(include=set(EngineExtras.model_fields), exclude_none=True),
        }
        for name in ("temperature", "top_p", "seed", "parallel_tool_calls", "user"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.max_output_tokens is not None:
            body["max_completion_tokens"] = self.max_output_tokens
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": t.model_dump(exclude={"type", "strict"}, exclude_none=True)}
                for t in self.tools
            ]
        if isinstance(self.tool_choice, dict):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.get("name")}}
        elif self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt is not None and fmt.type == "json_schema":
            schema = {"name": fmt.name, "schema": fmt.schema_ if fmt.schema_ is not None else True}
            body["response_format"] = {"type": "json_schema", "json_schema": schema}
        return ChatCompletionRequest.model_validate(body)


class ResponsesFormat(ChatFormat):
    """A chat answer (one choice) written as a Response object, or as the Responses stream's
    events: created, in_progress, the output items with their text and argument deltas, and
    completed (carrying the whole response and its usage)."""

    def __init__(self, request_id: str, body: ResponsesRequest, tools: tool_calls.Format | None):
        super().__init__(request_id, body.model, False, True, tools)  # a stream ends with its usage
        self.id = f"resp_{request_id}"
        self.body = body
        self.seq = 0
        self.message_id = f"msg_{new_id()}"  # the open message's
        self.text = ""  # the open message's text so far
        self.output: list[dict] = []  # the items done so far, in order: messages and calls
        self.message_open = False
        self.finish: str | None = None

    def restamp(self, body: dict) -> dict:
        """A cached Response made to look like a fresh answer to this request, its function
        calls with new ids."""
        for item in body.get("output", []):
            if item.get("type") == "function_call":
                item["call_id"] = tool_calls.new_call_id()
                item["id"] = f"fc_{item['call_id'].removeprefix('call_')}"
        body.update(id=self.id, created_at=self.created, model=self.model)
        return body

    # -- the Response object ----------------------------------------------------------------

    def _response(self, status: str, output: list[dict], usage: Usage | None) -> dict:
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        text_format = self.body.text.format if self.body.text and self.body.text.format else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": status,
            "output": output,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": self.body.instructions,
            "max_output_tokens": self.body.max_output_tokens,
            "parallel_tool_calls": self.body.parallel_tool_calls is not False,
            "tool_choice": self.body.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in self.body.tools or []],
            "temperature": self.body.temperature,
            "top_p": self.body.top_p,
            "text": {
                "format": text_format.model_dump(by_alias=True, exclude_none=True)
                if text_format
                else {"type": "text"}
            },
            "store": False,
            "metadata": self.body.metadata or {},
            "user": self.body.user,
            "usage": _usage(usage) if usage is not None else None,
        }

    def _message(self, text: str, status: str = "completed") -> dict:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [part],
        }

    @staticmethod
    def _call_item(call: dict) -> dict:
        fn = call["function"]
        return {
            "type": "function_call",
            "id": f"fc_{call['id'].removeprefix('call_')}",
            "call_id": call["id"],
            "name": fn["name"],
            "arguments": fn["arguments"],
            "status": "completed",
        }

    def response(self, choices: list[Choice], usage: Usage) -> dict:
        chat = self._choice(choices[0])
        message = chat["message"]
        output = [self._message(message["content"])] if message.get("content") else []
        output += [self._call_item(c) for c in message.get("tool_calls") or []]
        status = "incomplete" if chat["finish_reason"] == "length" else "completed"
        return self._response(status, output, usage)

    # -- the stream ---------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def start_chunks(self, num_choices: int) -> list[dict]:
        head = self._response("in_progress", [], None)
        return [
            self._event("response.created", response=head),
            self._event("response.in_progress", response=head),
        ]

    def delta_chunks(self, index: int, delta: Delta) -> list[dict]:
        events: list[dict] = []
        for chunk in super().delta_chunks(index, delta):  # the chat chunks: content, calls, finish
            choice = chunk["choices"][0]
            if content := choice["delta"].get("content"):
                events += self._text(content)
            for call in choice["delta"].get("tool_calls") or []:
                events += self._call(call)
            if choice["finish_reason"] is not None:
                self.finish = choice["finish_reason"]
                events += self._close_message()
        return events

    @property
    def _where(self) -> dict:
        """Where the open message's text is: its item, after the items done, its only content part."""
        return {"item_id": self.message_id, "output_index": len(self.output), "content_index": 0}

    def _text(self, content: str) -> list[dict]:
        events = []
        if not self.message_open:
            # A new message item: text after a call is an item of its own, after the call
            if self.output:
                self.message_id = f"msg_{new_id()}"
            self.message_open, self.text = True, ""
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=len(self.output),
                    item=self._message("", "in_progress"),
                )
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self._event("response.content_part.added", **self._where, part=part))
        self.text += content
        events.append(self._event("response.output_text.delta", **self._where, delta=content, logprobs=[]))
        return events

    def _close_message(self) -> list[dict]:
        if not self.message_open:
            return []
        part = {"type": "output_text", "text": self.text, "annotations": []}
        where, message = self._where, self._message(self.text)
        self.message_open = False
        self.output.append(message)
        return [
            self._event("response.output_text.done", **where, text=self.text, logprobs=[]),
            self._event("response.content_part.done", **where, part=part),
            self._event("response.output_item.done", output_index=where["output_index"], item=message),
        ]

    def _call(self, call: dict) -> list[dict]:
        events = self._close_message()
        item = self._call_item(call)
        index = len(self.output)
        self.output.append(item)
        where = {"item_id": item["id"], "output_index": index}
        return events + [
            self._event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            ),
            self._event("response.function_call_arguments.delta", **where, delta=item["arguments"]),
            self._event("response.function_call_arguments.done", **where, arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def error_chunk(self, body: dict) -> dict:
        """A stream that failed midway ends with the Responses API's `error` event."""
        error = body.get("error", {})
        return self._event(
            "error", code=error.get("code"), message=error.get("message"), param=error.get("param")
        )

    def usage_chunk(self, usage: Usage) -> dict:
        output = self.output + ([self._message(self.text)] if self.message_open else [])
        status = "incomplete" if self.finish == "length" else "completed"
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return self._event(kind, response=self._response(status, output, usage))


def _usage(usage: Usage) -> dict:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }
