"""Request validation: strict types, bounds, and 400 messages that name the field."""

import pytest
from pydantic import ValidationError

from stratus.api.errors import validation_message
from stratus.api.schemas import ChatCompletionRequest, CompletionRequest, TokenizeRequest

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def message_for(model, body):
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return validation_message(info.value.errors(include_url=False))


@pytest.mark.parametrize(
    "patch, param, needle",
    [
        ({"temperature": "hot"}, "temperature", "valid number"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 1.5}, "max_tokens", "valid integer"),
        ({"n": 17}, "n", "less than or equal to 16"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"messages": []}, "messages", "at least 1"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "messages.0.role", "'user'"),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'json_schema'"),
        ({"top_logprobs": 3}, "top_logprobs", "requires logprobs"),
        ({"stop": [""]}, "stop.0", "at least 1 character"),
    ],
)
def test_chat_errors_name_the_field(patch, param, needle):
    text, got = message_for(ChatCompletionRequest, {**CHAT, **patch})
    assert got == param
    assert needle in text


@pytest.mark.parametrize(
    "patch, param, needle",
    [
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "not supported"),
    ],
)
def test_fields_an_upstream_may_honour_are_valid_but_refused_here(patch, param, needle):
    """Valid requests (an upstream serving the model is handed them), which the local engine
    cannot honour: the route refuses them with a 400 naming the field."""
    problem = ChatCompletionRequest.model_validate({**CHAT, **patch}).unsupported_here()
    assert problem is not None and problem.param == param and needle in str(problem)
    assert ChatCompletionRequest.model_validate({**CHAT, "tool_choice": "none"}).unsupported_here() is None
    json_mode = {**CHAT, "response_format": {"type": "json_object"}}  # guided decoding serves it
    assert ChatCompletionRequest.model_validate(json_mode).unsupported_here() is None
    suffix = CompletionRequest.model_validate({"model": "m", "prompt": "x", "suffix": "y"})
    assert suffix.unsupported_here().param == "suffix"


def test_missing_field():
    text, param = message_for(ChatCompletionRequest, {"model": "m"})
    assert param == "messages" and text == "Missing required parameter: 'messages'."


def test_completion_prompt_forms():
    forms = ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]]
    expected = [["text"], ["a", "b"], [[1, 2, 3]], [[1, 2], [3]]]
    for prompt, want in zip(forms, expected, strict=True):
        assert CompletionRequest.model_validate({"model": "m", "prompt": prompt}).prompts() == want
    _, param = message_for(CompletionRequest, {"model": "m", "prompt": [-1]})
    assert param and param.startswith("prompt")
    _, param = message_for(CompletionRequest, {"model": "m", "prompt": "x", "best_of": 3})
    assert param == "best_of"


def test_extensions_and_unknown_fields():
    req = ChatCompletionRequest.model_validate(
        {**CHAT, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "some_future_field": 1}
    )
    assert (req.top_k, req.min_p, req.repetition_penalty) == (5, 0.1, 1.1)
    assert ChatCompletionRequest.model_validate({**CHAT, "temperature": 0}).deterministic()
    assert ChatCompletionRequest.model_validate({**CHAT, "seed": 3}).deterministic()
    assert not ChatCompletionRequest.model_validate(CHAT).deterministic()


def test_tokenize_needs_exactly_one_input():
    _, param = message_for(TokenizeRequest, {"model": "m"})
    assert param == "prompt"
    assert TokenizeRequest.model_validate({"model": "m", "prompt": "x"}).prompt == "x"


def test_prompts_times_n_is_capped_per_request():
    from stratus.api.schemas import MAX_SEQUENCES

    body = {"model": "m", "prompt": ["p"] * 64, "n": 16}
    with pytest.raises(ValidationError) as err:
        CompletionRequest.model_validate(body)
    assert "1024 sequences" in str(err.value) and str(MAX_SEQUENCES) in str(err.value)
    CompletionRequest.model_validate({**body, "n": 1})  # 64 sequences: fine
    CompletionRequest.model_validate({**body, "prompt": ["p"] * 4})  # 4 x 16: fine
