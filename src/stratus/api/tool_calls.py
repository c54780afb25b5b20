"""Tool calling on the local engine: the model family's call format, read and guided.

Models write tool calls in their own format; the chat template shows which (or `--tool-parser`):

    hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call>   Qwen2.5, Hermes 2/3
    mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]        Mistral
    llama3_json  {"name": ..., "parameters": {...}}                          Llama 3.1+ (JSON tools)

`ToolCalls` turns a choice's text into OpenAI's `tool_calls` (whole, or as stream deltas), and
gives the grammar that makes a call well-formed when one is required (`tool_choice: "required"` or
a named function): guided decoding (engine/grammar.py) writes the call; `auto` lets the model
choose and parses what it wrote.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from stratus.engine import grammar
from stratus.engine.types import ValidationError


@dataclass(frozen=True)
class Format:
    name: str
    start: str  # text that opens the calls ("" when the whole answer is the call)
    end: str  # text that closes one call ("" when the calls run to the end of the answer)
    args_key: str  # what the format calls the arguments


FORMATS = {
    "hermes": Format("hermes", "<tool_call>", "</tool_call>", "arguments"),
    "mistral": Format("mistral", "[TOOL_CALLS]", "", "arguments"),
    "llama3_json": Format("llama3_json", "", "", "parameters"),
}


def detect(chat_template: str | None, override: str | None = None) -> Format | None:
    """The call format of a model: `override` if given, else what its chat template writes."""
    if override:
        return FORMATS[override]
    template = chat_template or ""
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral"]
    if "<|python_tag|>" in template or "ipython" in template:
        return FORMATS["llama3_json"]
    return None


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def openai(self, index: int | None = None) -> dict:
        out: dict[str, Any] = {"id": self.id, "type": "function"}
        out["function"] = {"name": self.name, "arguments": self.arguments}
        return out if index is None else {"index": index, **out}


def _calls_from(value: Any, fmt: Format) -> list[Call] | None:
    """Calls from parsed JSON (one object or a list of them), or None if it is not calls."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        args = item.get(fmt.args_key, item.get("arguments", {}))
        try:
            text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        except (ValueError, RecursionError):
            return None
        calls.append(Call(item["name"], text))
    return calls or None


def _json(text: str) -> Any:
    """Parsed JSON, or None: a model may write anything, nesting deep enough to exhaust the
    recursion limit included."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _blocks(text: str, start: str, end: str) -> tuple[list[str], str]:
    """The bodies (stripped) of `start` ... `end` blocks, each up to the first `end`, and the text
    without them: in linear time (a regex with lazy and whitespace runs backtracks cubically)."""
    bodies, kept, pos = [], [], 0
    while (i := text.find(start, pos)) >= 0 and (j := text.find(end, i + len(start))) >= 0:
        kept.append(text[pos:i])
        bodies.append(text[i + len(start) : j].strip())
        pos = j + len(end)
    kept.append(text[pos:])
    return bodies, "".join(kept)


def parse(text: str, fmt: Format) -> tuple[str | None, list[Call]]:
    """(content, calls) of a whole answer; no calls if what it holds is not well-formed."""
    if fmt.name == "hermes":
        calls: list[Call] = []
        bodies, rest = _blocks(text, fmt.start, fmt.end)
        for body in bodies:
            found = _calls_from(_json(body), fmt)
            if found is None:
                return text, []
            calls += found
        content = rest.strip()
        return (content or None) if calls else text, calls
    head, sep, tail = text.partition(fmt.start) if fmt.start else ("", "", text)
    if fmt.start and not sep:
        return text, []
    tail = tail.strip().removeprefix("<|python_tag|>")
    found = _calls_from(_json(tail), fmt)
    if not found:
        return text, []
    return head.strip() or None, found


class StreamCalls:
    """One choice's stream: content goes out as it comes; from where a call may begin, text is
    held until it is known to be a call (sent as tool_call deltas) or not (sent as content)."""

    def __init__(self, fmt: Format):
        self.fmt = fmt
        self.held = ""
        self.calling = False  # past the start of the calls
        self.sent = 0  # calls sent so far
        self.content_seen = False

    def push(self, text: str) -> tuple[str, list[dict]]:
        """(content to send now, tool_call deltas to send now)."""
        self.held += text
        if not self.calling:
            start = self._start_at()
            if start is None:
                keep = self._partial_start()
                out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
                self.content_seen = self.content_seen or bool(out.strip())
                return out, []
            out, self.held, self.calling = self.held[:start], self.held[start:], True
            return out, self._whole_calls()
        return "", self._whole_calls()

    def finish(self) -> tuple[str, list[dict]]:
        """At the end of the answer: what is held is calls, or content after all."""
        held, self.held = self.held, ""
        if not held:
            return "", []
        content, calls = parse(held, self.fmt)
        if not calls:
            return held, []
        deltas = [c.openai(self.sent + i) for i, c in enumerate(calls)]
        self.sent += len(calls)
        return content or "", deltas

    def _start_at(self) -> int | None:
        if self.fmt.start:
            i = self.held.find(self.fmt.start)
            return None if i < 0 else i
        # llama3_json: the answer is the call, so it must begin with one
        stripped = self.held.lstrip()
        if self.content_seen or not stripped:
            return None
        return len(self.held) - len(stripped) if stripped[0] in "{<" else None

    def _partial_start(self) -> int:
        """How many trailing characters could still grow into the start marker."""
        marker = self.fmt.start or ("{" if not self.content_seen else "")
        if not marker:
            return 0
        if not self.fmt.start and not self.held.strip():
            return len(self.held)  # only whitespace so far: it may still open a call
        for k in range(min(len(marker) - 1, len(self.held)), 0, -1):
            if marker.startswith(self.held[-k:]):
                return k
        return 0

    def _whole_calls(self) -> list[dict]:
        if not self.fmt.end:
            return []  # the calls run to the end of the answer: parsed at finish
        deltas = []
        while (end := self.held.find(self.fmt.end)) >= 0:
            block, self.held = self.held[: end + len(self.fmt.end)], self.held[end + len(self.fmt.end) :]
            _, calls = parse(block.strip(), self.fmt)
            if not calls:  # not a call after all: give it back as content at the end
                self.held = block + self.held
                break
            deltas += [c.openai(self.sent + i) for i, c in enumerate(calls)]
            self.sent += len(calls)
            self.held = self.held.lstrip()
        return deltas


def _function(tool: Any) -> dict:
    fn = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
        raise ValidationError("each tool must be {'type': 'function', 'function': {'name': ...}}", "tools")
    if not isinstance(fn.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", fn["name"]):
        raise ValidationError("a function name must be 1-64 letters, digits, '_', '.' or '-'", "tools")
    return fn


def functions(tools: list[Any]) -> list[dict]:
    """The tools' function definitions, checked; names must be distinct."""
    fns = [_function(t) for t in tools]
    names = [f["name"] for f in fns]
    if len(set(names)) != len(names):
        raise ValidationError("tool function names must be distinct", "tools")
    return fns


def call_grammar(
    fmt: Format, fns: list[dict], choice: Any, parallel: bool, special_ids: dict[str, int]
) -> str:
    # special_ids: markers that are single tokens of the vocabulary, matched as those tokens
    """The grammar of a required call: one (or, with parallel calls, several) calls of the named
    function or of any tool, arguments valid under its parameters schema."""
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        fns = [f for f in fns if f["name"] == name]
        if not fns:
            raise ValidationError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        parallel = False
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f["name"]},
                fmt.args_key: f.get("parameters") or {"type": "object"},
            },
            "required": ["name", fmt.args_key],
            "additionalProperties": False,
        }
        for f in fns
    ]
    call_schema = options[0] if len(options) == 1 else {"anyOf": options}
    compact = {"x-guidance": grammar.JSON_OPTIONS}  # compact JSON, never lenient

    def literal(text: str) -> str:
        return f"<[{special_ids[text]}]>" if text in special_ids else json.dumps(text)

    if fmt.name == "hermes":
        block = f'{literal(fmt.start)} "\\n" call "\\n" {literal(fmt.end)}'
        rule = f'start: {block} ("\\n" {block})*' if parallel else f"start: {block}"
        body = f"call: %json {json.dumps({**call_schema, **compact})}"
    elif fmt.name == "mistral":
        calls = {
            "type": "array",
            "items": call_schema,
            "minItems": 1,
            **({} if parallel else {"maxItems": 1}),
            **compact,
        }
        rule, body = f"start: {literal(fmt.start)} calls", f"calls: %json {json.dumps(calls)}"
    else:
        rule, body = "start: call", f"call: %json {json.dumps({**call_schema, **compact})}"
    try:
        text = grammar.from_lark(f"{rule}\n{body}\n")
    except ValidationError as exc:
        raise ValidationError(str(exc), "tools") from None
    grammar.check(text, "tools")
    return text


def offered(
    body: Any, chat_template: str | None, override: str | None, token_id: Any
) -> tuple[Format | None, str | None]:
    """For a chat request: the format its answer's calls are read in (None: tools not offered)
    and, when a call is required, the grammar that writes it. `token_id(text)` gives the id of
    an added token (markers that are control tokens are matched as such)."""
    if not body.calls_tools():
        return None, None
    fns = functions(body.tools)
    fmt = detect(chat_template, override)
    if fmt is None:
        raise ValidationError(
            "this model's chat template does not render tools; serve it with --tool-parser, or use a "
            "model whose template takes tools",
            "tools",
        )
    if body.tool_choice != "required" and not isinstance(body.tool_choice, dict):
        return fmt, None  # auto: the model decides, and what it wrote is parsed
    markers = {m: i for m in (fmt.start, fmt.end) if m and (i := token_id(m)) is not None}
    return fmt, call_grammar(fmt, fns, body.tool_choice, body.parallel_tool_calls is not False, markers)
