"""Checking and tokenizing a request before it reaches the step loop (runs in the caller)."""

from __future__ import annotations

from .config import EngineConfig, ModelConfig
from .tokenizer import Tokenizer
from .types import GenerateRequest, ValidationError


def context_window(model: ModelConfig, config: EngineConfig) -> int:
    return min(config.max_model_len or model.max_position_embeddings, model.max_position_embeddings)


def prepare_prompt(
    request: GenerateRequest, tokenizer: Tokenizer, vocab_size: int, max_model_len: int
) -> list[int]:
    """Validate `request` and return its prompt token ids; raises ValidationError, changes nothing."""
    params = request.params
    params.validate()
    if not isinstance(request.first_index, int) or not 0 <= request.first_index < 1024:
        raise ValidationError("first_index must be an integer in [0, 1024)", "first_index")
    if request.prompt_token_ids is not None:
        ids = request.prompt_token_ids
        if not _token_ids_valid(ids, vocab_size):
            raise ValidationError(f"prompt token ids must be integers in [0, {vocab_size})", "prompt")
    elif request.prompt is not None:
        ids = tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)
    else:
        raise ValidationError("a prompt is required", "prompt")
    if not ids:
        raise ValidationError("the prompt is empty", "prompt")
    if len(ids) >= max_model_len:
        raise ValidationError(
            f"the prompt is {len(ids)} tokens, but this model's context window is {max_model_len} "
            "tokens (prompt plus at least one generated token): shorten the prompt",
            "prompt",
        )
    if request.resume_token_ids:
        _check_resume(request, vocab_size, len(ids), max_model_len)
    if len(ids) + params.max_tokens > max_model_len:
        raise ValidationError(
            f"max_tokens={params.max_tokens} does not fit: the prompt is {len(ids)} tokens and the "
            f"context window is {max_model_len}, so max_tokens can be at most {max_model_len - len(ids)}",
            "max_tokens",
        )
    return list(ids)


def _check_resume(request: GenerateRequest, vocab_size: int, prompt_len: int, max_model_len: int) -> None:
    resume = request.resume_token_ids
    if request.params.n != 1:
        raise ValidationError("a resumed generation has exactly one choice (n=1)", "n")
    if not _token_ids_valid(resume, vocab_size):
        raise ValidationError(f"resume token ids must be integers in [0, {vocab_size})", "resume_token_ids")
    if len(resume) >= request.params.max_tokens or prompt_len + len(resume) >= max_model_len:
        raise ValidationError("nothing is left to generate after the resumed tokens", "resume_token_ids")


def _token_ids_valid(ids: list[int], vocab_size: int) -> bool:
    return all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids)


def check_embedding_inputs(prompts: list[list[int]], vocab_size: int, max_model_len: int) -> None:
    """Inputs of an embedding pass: each 1 to `max_model_len` token ids (an input may fill the
    whole window: nothing is generated after it) in [0, vocab_size); raises ValidationError."""
    if not prompts:
        raise ValidationError("at least one input is required", "input")
    for i, ids in enumerate(prompts):
        if not ids:
            raise ValidationError(f"input {i} is empty", "input")
        if len(ids) > max_model_len:
            raise ValidationError(
                f"input {i} is {len(ids)} tokens, but this model's context window is "
                f"{max_model_len} tokens: shorten it (inputs are never truncated)",
                "input",
            )
        if not _token_ids_valid(ids, vocab_size):
            raise ValidationError(f"input {i}: token ids must be integers in [0, {vocab_size})", "input")
