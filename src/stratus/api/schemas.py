"""Request bodies of the OpenAI-compatible API, validated with pydantic.

Unknown fields are ignored (newer SDKs send fields this server does not know). Known fields
that the local engine cannot honour yet (logit_bias, suffix) are accepted here,
because an OpenAI-compatible upstream may serve the model and is handed them as sent; for a model
served here, `unsupported_here()` names the first, and the route answers 400 before routing. Values are checked strictly: a string where a
number belongs is an error, not a conversion. Response shapes live in `schemas_out.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from stratus.engine.types import MIN_TEMPERATURE

MAX_N = 16
MAX_STOP = 16
MAX_LOGPROBS = 20
# Prompts x n of one request: each is a sequence in the engine's queue, and one request must not
# fill the queue that every tenant shares.
MAX_SEQUENCES = 64

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
PositiveInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0, lt=2**63)]
TokenId = Annotated[int, Field(ge=0)]
StopList = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)]


class ParamError(ValueError):
    """A rule about one parameter; the 400 that reports it names `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    arguments: str  # JSON text, as the model wrote it


class ToolCall(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=64)] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)] = "response"
    description: str | None = None
    schema_: dict[str, Any] | bool = Field(default=True, alias="schema")
    strict: bool | None = None  # output always follows the schema here, strict or not


class ResponseFormat(_Strict):
    """`json_object`: any JSON object; `json_schema`: JSON valid under `json_schema.schema`."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ParamError("response_format.json_schema", "type 'json_schema' needs a json_schema object")
        return self


class EngineExtras(_Strict):
    """Sampling parameters beyond OpenAI's, accepted as vLLM accepts them."""

    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    ignore_eos: bool = False
    stop_token_ids: list[TokenId] | None = None
    skip_special_tokens: bool = True
    # Guided decoding, as vLLM names it (at most one, and not with response_format)
    guided_json: dict[str, Any] | bool | str | None = None
    guided_regex: Annotated[str, Field(min_length=1)] | None = None
    guided_choice: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=256)] | None
    ) = None
    guided_grammar: Annotated[str, Field(min_length=1)] | None = None


class _GenerationRequest(EngineExtras):
    model: Annotated[str, Field(min_length=1)]
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Annotated[str, Field(min_length=1)] | StopList | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    user: str | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None

    def unsupported_here(self) -> ParamError | None:
        """The first field set that the local engine cannot honour (an upstream may)."""
        if self.logit_bias:
            return ParamError("logit_bias", "logit_bias is not supported by this server; remove it")
        return None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def deterministic(self) -> bool:
        """Same request, same answer: greedy, or sampling with a fixed seed."""
        return (self.temperature is not None and self.temperature < MIN_TEMPERATURE) or self.seed is not None


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None

    def unsupported_here(self) -> ParamError | None:
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            return ParamError("tool_choice", "tool_choice other than 'none' or 'auto' needs tools")
        return super().unsupported_here()

    def calls_tools(self) -> bool:
        """Tools are offered: the template renders them and the answer may hold calls."""
        return bool(self.tools) and self.tool_choice != "none"

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ParamError("top_logprobs", "top_logprobs requires logprobs to be true")
        return self

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Prompt = (
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]
)


class CompletionRequest(_GenerationRequest):
    prompt: Prompt
    max_tokens: PositiveInt | None = None
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False
    best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None

    def unsupported_here(self) -> ParamError | None:
        if self.suffix:
            return ParamError("suffix", "suffix (insertion) is not supported by this server; remove it")
        return super().unsupported_here()

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ParamError(
                "best_of", "best_of other than n is not supported; set best_of equal to n or omit it"
            )
        if self.echo and self.logprobs is not None:
            raise ParamError("echo", "echo together with logprobs is not supported (no prompt logprobs)")
        prompts = len(self.prompts())
        if (sequences := prompts * self.n) > MAX_SEQUENCES:
            raise ParamError(
                "n",
                f"{prompts} prompts with n={self.n} are {sequences} sequences; one request "
                f"may ask for at most {MAX_SEQUENCES} (split it into several requests)",
            )
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # one prompt as token ids
        return p


class TokenizeRequest(_Strict):
    """Either `prompt` (text, BOS added by default) or `messages` (rendered with the chat template)."""

    model: Annotated[str, Field(min_length=1)]
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ParamError("prompt", "give exactly one of prompt or messages")
        return self


class DetokenizeRequest(_Strict):
    model: Annotated[str, Field(min_length=1)]
    tokens: list[TokenId]


REQUEST_MODELS: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    DetokenizeRequest,
]
