"""Guided decoding: a grammar holds each step's choice to the tokens that keep the output valid.

    grammar = from_json_schema({"type": "object", ...})   # also from_regex, from_choices, from_lark
    check(grammar)                                          # ValidationError names what is wrong
    vocab = GrammarVocab(tokenizer, logits_width, eos_ids)  # once per engine (~1 s for big vocabs)
    constraint = Constraint(vocab, grammar)                 # one per sequence
    mask_rows(logits, [(row, constraint), ...])             # disallowed tokens -> -inf, in place
    constraint.consume(token)                               # after sampling; .complete when done

The grammar is llguidance's (https://github.com/guidance-ai/llguidance, MIT): its JSON-schema,
regex and Lark front ends compile to one format, carried in `SamplingParams.grammar` as text, so
it crosses process and worker boundaries as a string. Masks are computed per step from the tokens
consumed so far; a matcher that reaches an error state fails its own sequence, never the batch.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import numpy as np
import torch

from .types import MAX_GRAMMAR_CHARS, ValidationError

# What one grammar may cost: llguidance's own bounds on lexer states and per-step work, so a
# hostile schema fails with a clear error instead of burning the step loop.
LIMITS = llguidance.LLParserLimits(max_grammar_size=500_000, step_lexer_fuel=1_000_000)
# Compact JSON (no free whitespace: every generated token carries content), and never lenient: a
# schema's own "x-guidance" options must not make unsupported keywords silently unconstrained.
JSON_OPTIONS: Any = {"whitespace_flexible": False, "lenient": False}


class GrammarError(ValueError):
    """A constraint that cannot go on (the grammar rejected the model's token, or failed)."""


def from_json_schema(schema: dict | bool, param: str = "response_format") -> str:
    """Output that validates against `schema` (OpenAI's response_format json_schema, vLLM's
    guided_json); `{"type": "object"}` is JSON mode."""
    if isinstance(schema, bool):  # JSON Schema's "anything" / "nothing"
        schema = {} if schema else {"not": {}}
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        raise ValidationError(f"{param}: the JSON schema is not valid: {exc}", param) from None


def from_regex(pattern: str) -> str:
    return llguidance.LLMatcher.grammar_from_regex(pattern)


def from_choices(choices: list[str]) -> str:
    """Exactly one of `choices` (vLLM's guided_choice)."""
    return llguidance.grammar_from("choice", json.dumps(choices))


def from_lark(grammar: str) -> str:
    """A Lark grammar, or llama.cpp's GBNF (vLLM's guided_grammar)."""
    try:
        return llguidance.grammar_from("grammar", grammar)
    except ValueError as exc:
        raise ValidationError(str(exc), "guided_grammar") from None


def check(grammar: str, param: str = "grammar") -> None:
    """Raise ValidationError (naming `param`) if the grammar is unusable: too large, malformed,
    or using a feature llguidance does not implement (the message names it)."""
    if not isinstance(grammar, str) or not grammar or len(grammar) > MAX_GRAMMAR_CHARS:
        raise ValidationError(f"{param} must be a grammar of at most {MAX_GRAMMAR_CHARS} characters", param)
    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=LIMITS)
    if error:
        raise ValidationError(f"{param} cannot be used for guided decoding: {error[:500]}", param)


class GrammarVocab:
    """The model's vocabulary as llguidance sees it: built once per engine, shared by every
    constraint. `width` is the logits' width (config.json may pad past the tokenizer)."""

    def __init__(self, tokenizer_json: str, width: int, eos_ids: list[int]):
        self.width = width
        self.words = (width + 31) // 32
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=width, eos_token=sorted(eos_ids))


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, vocab: GrammarVocab, grammar: str):
        self.vocab = vocab
        self.matcher = llguidance.LLMatcher(vocab.tokenizer, grammar, log_level=0, limits=LIMITS)
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error()[:500])

    def fill(self, row: torch.Tensor) -> None:
        """Write the allowed tokens of the next step into `row` (int32 words, one bit per token)."""
        self._raise_if_failed()
        self.matcher.unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        self._raise_if_failed()

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GrammarError(self.matcher.get_error()[:500] or f"token {token} breaks the grammar")

    def consume_all(self, tokens: list[int]) -> None:
        """Tokens generated elsewhere (a stream resumed on this replica)."""
        if tokens and not self.matcher.consume_tokens(tokens):
            raise GrammarError(self.matcher.get_error()[:500] or "the resumed tokens break the grammar")

    @property
    def complete(self) -> bool:
        """The output is whole: the grammar allows nothing more but the end."""
        return self.matcher.is_stopped()


def mask_rows(logits: torch.Tensor, rows: list[tuple[int, Constraint]]) -> None:
    """In place: in each listed row of `logits`, every token its constraint forbids gets -inf."""
    if not rows:
        return
    vocab = rows[0][1].vocab
    bits = torch.zeros((len(rows), vocab.words), dtype=torch.int32)
    for j, (_, constraint) in enumerate(rows):
        constraint.fill(bits[j])
    allowed = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")[:, : logits.shape[-1]]
    index = torch.tensor([row for row, _ in rows], device=logits.device)
    forbidden = torch.from_numpy(allowed == 0).to(logits.device)
    logits[index] = logits[index].masked_fill(forbidden, float("-inf"))
