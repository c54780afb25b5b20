"""From an API request to what the engine takes: prompt token ids and SamplingParams.

Chat messages are rendered with the model's chat template and tokenized without special
tokens (the template carries BOS when the model wants it); plain completion prompts get the
tokenizer's special tokens. Length checks happen here, before anything reaches the engine,
so the error names the field the client actually sent.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from stratus.api import tool_calls
from stratus.api.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, ToolCall
from stratus.engine import grammar
from stratus.engine.types import SamplingParams, ValidationError
from stratus.request.errors import APIError, bad_request

if TYPE_CHECKING:
    from stratus.engine import Engine
    from stratus.engine.tokenizer import Tokenizer

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's legacy completions default


def engine_error(exc: ValidationError) -> APIError:
    return bad_request(str(exc), exc.param)


def plain_messages(messages: list[ChatMessage]) -> list[dict]:
    plain = []
    for m in messages:
        item: dict = {"role": m.role, "content": m.text()}
        if m.name:
            item["name"] = m.name
        if m.tool_calls:
            item["tool_calls"] = [template_call(c) for c in m.tool_calls]
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        plain.append(item)
    return plain


def template_call(call: ToolCall) -> dict:
    """A call as chat templates expect it: arguments as an object (as transformers and vLLM pass
    them), so a template's `tojson` does not quote the JSON text a second time."""
    try:
        arguments = orjson.loads(call.function.arguments)
    except orjson.JSONDecodeError:
        arguments = call.function.arguments
    function = {"name": call.function.name, "arguments": arguments}
    return {"id": call.id, "type": "function", "function": function}


def render_chat(engine: Engine, messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
    try:
        return engine.tokenizer.apply_chat_template(
            plain_messages(messages), add_generation_prompt=add_generation_prompt
        )
    except ValidationError as exc:
        raise engine_error(exc) from None


# Texts longer than this are rendered and tokenized in a worker thread: a few MB take seconds,
# and every other client would wait on the event loop meanwhile. Shorter ones are not worth the
# thread hop (tens of microseconds).
OFF_LOOP_CHARS = 32_768


def check_text_fits(engine: Engine, chars: int, param: str) -> None:
    """Refuse, without tokenizing it, a text too long for the context window whatever its
    tokens: each token stands for at most `max_token_chars` characters (x2 for normalizers)."""
    limit = engine.max_model_len * 2 * engine.tokenizer.max_token_chars
    if chars > limit:
        raise APIError(
            400,
            f"The {param} is {chars} characters, more than this model's context window of "
            f"{engine.max_model_len} tokens can hold. Shorten the {param}.",
            param=param,
            code="context_length_exceeded",
        )


MESSAGE_RENDER_CHARS = 64  # what one message costs to render, as characters, beyond its content


async def off_loop_if_long(chars: int, fn, *args):
    return await asyncio.to_thread(fn, *args) if chars > OFF_LOOP_CHARS else fn(*args)


async def chat_prompt_ids(
    engine: Engine, messages: list[ChatMessage], tools: list | None = None
) -> list[int]:
    """The conversation's token ids; `tools` (OpenAI's function tools) go to the template."""
    chars = sum(len(m.text()) for m in messages)
    check_text_fits(engine, chars, "messages")
    # Tool definitions and calls are rendered too: their size counts toward working off the loop
    # (not toward the refusal above: a template may render only part of them).
    rendered = chars + (len(orjson.dumps(tools)) if tools else 0)
    rendered += sum(len(c.function.arguments) for m in messages for c in m.tool_calls or [])
    # and every message is a turn of the template's own text and steps, even an empty one
    rendered += MESSAGE_RENDER_CHARS * len(messages)

    def work() -> list[int]:
        try:
            if tools:
                return engine.tokenizer.encode_chat(plain_messages(messages), tools=tools)
            return engine.tokenizer.encode_chat(plain_messages(messages))
        except ValidationError as exc:
            raise engine_error(exc) from None

    return await off_loop_if_long(rendered, work)


async def completion_prompt_ids(engine: Engine, req: CompletionRequest) -> list[list[int]]:
    out = []
    for prompt in req.prompts():
        if isinstance(prompt, str):
            check_text_fits(engine, len(prompt), "prompt")
            out.append(await off_loop_if_long(len(prompt), engine.tokenizer.encode, prompt, True))
        else:
            check_token_ids(engine, prompt, "prompt")
            out.append(list(prompt))
    return out


def check_token_ids(engine: Engine, ids: list[int], param: str) -> None:
    config = getattr(engine, "model_config", None)  # the model's vocabulary may exceed the tokenizer's
    vocab = config.vocab_size if config is not None else engine.tokenizer.vocab_size
    bad = next((t for t in ids if t >= vocab), None)
    if bad is not None:
        raise bad_request(f"Token id {bad} is out of range; this model's ids are 0 to {vocab - 1}.", param)


def fit_max_tokens(
    engine: Engine,
    prompt_len: int,
    requested: int | None,
    *,
    prompt_param: str,
    max_param: str,
    default: int | None,
) -> int:
    """The completion budget: `requested` if it fits the context window, else a 400 saying why."""
    window = engine.max_model_len
    if prompt_len == 0:
        raise bad_request("The prompt is empty; it must contain at least one token.", prompt_param)
    if prompt_len >= window:
        raise APIError(
            400,
            f"This model's maximum context length is {window} tokens, but the prompt is "
            f"{prompt_len} tokens (no room left to generate). Shorten the {prompt_param}.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    room = window - prompt_len
    if requested is None:
        return room if default is None else min(default, room)
    if requested > room:
        raise APIError(
            400,
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for the "
            f"completion). Reduce the prompt, or set {max_param} to at most {room}.",
            param=max_param,
            code="context_length_exceeded",
        )
    return requested


def offered_tools(
    tokenizer: Tokenizer, req: ChatCompletionRequest, override: str | None
) -> tuple[tool_calls.Format | None, str | None]:
    """The tool-call format to read the answer in (None: no tools offered) and the grammar of a
    required call (api/tool_calls.py)."""
    try:
        return tool_calls.offered(req, tokenizer.chat_template, override, tokenizer.added_token_id)
    except ValidationError as exc:
        raise engine_error(exc) from None


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    max_tokens: int,
    logprobs: int | None,
    call_grammar: str | None = None,
) -> SamplingParams:
    """`call_grammar`: a required tool call's grammar (it excludes response_format)."""
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=req.top_k or 0,
        min_p=req.min_p or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        seed=req.seed,
        stop=req.stop_list(),
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        n=req.n,
        skip_special_tokens=req.skip_special_tokens,
    )
    try:
        params.validate()
        params.grammar = guided_grammar(req)  # checked there, the error naming the client's field
        if call_grammar is not None:
            if params.grammar is not None:
                raise ValidationError(
                    "a required tool call cannot also follow response_format", "tool_choice"
                )
            params.grammar = call_grammar
    except ValidationError as exc:
        raise engine_error(exc) from None
    return params


def guided_grammar(req: ChatCompletionRequest | CompletionRequest) -> str | None:
    """The grammar the output must follow: from `response_format` (OpenAI) or one of vLLM's
    `guided_*` fields; None for free text. Raises ValidationError naming the field."""
    fmt = req.response_format
    given = {
        "response_format": fmt if fmt is not None and fmt.type != "text" else None,
        "guided_json": req.guided_json,
        "guided_regex": req.guided_regex,
        "guided_choice": req.guided_choice,
        "guided_grammar": req.guided_grammar,
    }
    named = [name for name, value in given.items() if value is not None]
    if not named:
        return None
    if len(named) > 1:
        raise ValidationError(f"give one of {', '.join(named)}, not several", named[1])
    param = named[0]
    schema: Any
    if fmt is not None and param == "response_format":
        schema = {"type": "object"} if fmt.json_schema is None else fmt.json_schema.schema_
        text = grammar.from_json_schema(schema, param)
    elif req.guided_json is not None:
        schema = req.guided_json
        if isinstance(schema, str):
            try:
                schema = orjson.loads(schema)
            except orjson.JSONDecodeError:
                raise ValidationError("guided_json must be a JSON schema (an object)", param) from None
        text = grammar.from_json_schema(schema, param)
    elif req.guided_regex is not None:
        text = grammar.from_regex(req.guided_regex)
    elif req.guided_choice is not None:
        text = grammar.from_choices(req.guided_choice)
    else:
        text = grammar.from_lark(req.guided_grammar or "")
    grammar.check(text, param)
    return text
