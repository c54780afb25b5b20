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

What repeats is cached, keyed by the exact grammar text and bounded (entries and characters):
`check` remembers the grammars it passed, and each `GrammarVocab` keeps a compiled, never-used
matcher per grammar that new constraints copy (compiling a ~100-property schema takes 10-25 ms
on a 2-core CPU; a copy ~0.1 ms). bench/guided.py measures all of it.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
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


class BoundedCache:
    """A least-recently-used map from grammar text to a value, bounded in entries and in the
    total characters of its keys (a key is the whole text: two grammars never share an entry).
    Thread-safe: the API checks grammars while the step loop admits them."""

    def __init__(self, max_entries: int, max_chars: int):
        self.max_entries, self.max_chars = max_entries, max_chars
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: Any) -> None:
        if len(key) > self.max_chars:
            return
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self._items[key] = value
                return
            self._items[key] = value
            self._chars += len(key)
            while len(self._items) > self.max_entries or self._chars > self.max_chars:
                old, _ = self._items.popitem(last=False)
                self._chars -= len(old)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def chars(self) -> int:
        return self._chars


# Grammars `check` has passed (validation is a compile: 3-20 ms for a large schema). Values are
# True; the keys' text bounds the memory (at most MAX_GRAMMAR_CHARS each, 4M characters in all).
_CHECKED = BoundedCache(max_entries=256, max_chars=4 * 1024 * 1024)


def check(grammar: str, param: str = "grammar") -> None:
    """Raise ValidationError (naming `param`) if the grammar is unusable: too large, malformed,
    or using a feature llguidance does not implement (the message names it)."""
    if not isinstance(grammar, str) or not grammar or len(grammar) > MAX_GRAMMAR_CHARS:
        raise ValidationError(f"{param} must be a grammar of at most {MAX_GRAMMAR_CHARS} characters", param)
    if _CHECKED.get(grammar):
        return
    error = llguidance.LLMatcher.validate_grammar(grammar, None, limits=LIMITS)
    if error:
        raise ValidationError(f"{param} cannot be used for guided decoding: {error[:500]}", param)
    _CHECKED.put(grammar, True)


class GrammarVocab:
    """The model's vocabulary as llguidance sees it: built once per engine, shared by every
    constraint. `width` is the logits' width (config.json may pad past the tokenizer)."""

    def __init__(
        self,
        tokenizer_json: str,
        width: int,
        eos_ids: list[int],
        max_grammars: int = 32,
        max_chars: int = 4 << 20,
    ):
        self.width = width
        self.words = (width + 31) // 32
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=width, eos_token=sorted(eos_ids))
        # Per grammar text, a compiled matcher in its start state that is only ever copied.
        self.compiled = BoundedCache(max_grammars, max_chars)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher for `grammar` (in its error state if the grammar does not compile)."""
        template = self.compiled.get(grammar)
        if template is None:
            template = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0, limits=LIMITS)
            if template.is_error():
                return template  # never cached: the caller reports the error
            self.compiled.put(grammar, template)
        return template.deep_copy()


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, vocab: GrammarVocab, grammar: str):
        self.vocab = vocab
        self.matcher = vocab.matcher(grammar)
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
    apply_bitmask(logits, bits, [row for row, _ in rows])


_NEG_INF = torch.tensor(float("-inf"))


def apply_bitmask(logits: torch.Tensor, bits: torch.Tensor, rows: list[int]) -> None:
    """In place: row `rows[j]` of `logits` keeps the tokens whose bit is set in `bits[j]` (int32
    words, bit i of word w is token 32 * w + i) and the others become -inf.

    Bits unpack to one bool per token (numpy's table-driven unpackbits) and `torch.where` writes
    the rows in place: 3-8x faster than a masked_fill over gathered rows on a 49k vocabulary."""
    width = logits.shape[-1]
    packed = bits.numpy().view(np.uint8)
    allowed = torch.from_numpy(np.unpackbits(packed, axis=1, count=width, bitorder="little").view(np.bool_))
    if allowed.device != logits.device:
        allowed = allowed.to(logits.device)
    neg_inf = _NEG_INF.to(device=logits.device, dtype=logits.dtype)
    if rows == list(range(logits.shape[0])):
        torch.where(allowed, logits, neg_inf, out=logits)
        return
    for j, row in enumerate(rows):
        target = logits[row]  # a view: written in place
        torch.where(allowed[j], target, neg_inf, out=target)
