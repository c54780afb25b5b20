"""What engine/grammar.py keeps between requests (compiled grammars, checked grammars) is keyed
by the whole grammar text, bounded, and changes nothing a request sees; masks are applied to the
listed rows only, exactly as the bits say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stratus.engine import grammar
from stratus.engine.tokenizer import Tokenizer
from stratus.engine.types import ValidationError

pytestmark = pytest.mark.timeout(120)

SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "tag": {"enum": ["a", "b"]}},
    "required": ["id", "tag"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def vocab(llama_dir):
    width = json.loads((llama_dir / "config.json").read_text())["vocab_size"]
    return grammar.GrammarVocab(Tokenizer(llama_dir).to_json(), width, [2], max_grammars=2)


def mask(matcher, vocab) -> torch.Tensor:
    bits = torch.zeros(vocab.words, dtype=torch.int32)
    matcher.unsafe_compute_mask_ptr(bits.data_ptr(), bits.numel() * 4)
    return bits


def test_the_cache_is_bounded_in_entries_and_characters():
    cache = grammar.BoundedCache(max_entries=3, max_chars=10)
    for key in ("a", "b", "c"):
        cache.put(key, key.upper())
    assert cache.get("a") == "A"  # now the most recently used
    cache.put("d", "D")
    assert len(cache) == 3 and cache.get("b") is None and cache.get("a") == "A"
    cache.put("x" * 9, "long")  # 9 + 1 + 1 + 1 characters > 10: the oldest go until it fits
    assert cache.chars <= 10 and cache.get("x" * 9) == "long"
    cache.put("y" * 11, "too long")  # larger than the whole bound: never stored
    assert cache.get("y" * 11) is None and cache.chars <= 10


def test_a_cached_grammar_gives_independent_matchers_identical_to_a_fresh_compile(vocab):
    text = grammar.from_json_schema(SCHEMA)
    first = grammar.Constraint(vocab, text)
    assert vocab.compiled.get(text) is not None
    fresh = grammar.llguidance.LLMatcher(vocab.tokenizer, text, log_level=0, limits=grammar.LIMITS)
    token = int(
        np.flatnonzero(np.unpackbits(mask(first.matcher, vocab).numpy().view(np.uint8), bitorder="little"))[0]
    )
    first.consume(token)  # the first sequence moves on; a new one starts from the beginning
    second = grammar.Constraint(vocab, text)
    assert torch.equal(mask(second.matcher, vocab), mask(fresh, vocab))
    assert not torch.equal(mask(first.matcher, vocab), mask(second.matcher, vocab))


def test_the_compiled_grammar_cache_evicts_and_never_keeps_a_failure(vocab):
    texts = [grammar.from_regex(f"x{i}[0-9]+") for i in range(3)]
    for text in texts:
        grammar.Constraint(vocab, text)
    assert len(vocab.compiled) == 2 and vocab.compiled.get(texts[0]) is None
    with pytest.raises(grammar.GrammarError):
        grammar.Constraint(vocab, "start: nowhere")
    assert vocab.compiled.get("start: nowhere") is None


def test_check_remembers_what_passed_and_refuses_what_fails_every_time():
    good = grammar.from_json_schema({"type": "object", "properties": {"check_cache": {"type": "string"}}})
    grammar.check(good)
    assert grammar._CHECKED.get(good)
    bad = grammar.from_json_schema({"if": {}, "then": {}})
    for _ in range(2):
        with pytest.raises(ValidationError):
            grammar.check(bad)
    assert grammar._CHECKED.get(bad) is None


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [3, 1], [2]])
def test_apply_bitmask_masks_exactly_the_listed_rows(rows):
    width = 70  # not a multiple of 32: the last word's high bits are past the vocabulary
    g = torch.Generator().manual_seed(len(rows))
    bits = torch.randint(-(2**31), 2**31 - 1, (len(rows), 3), dtype=torch.int32, generator=g)
    logits = torch.randn(4, width, generator=g)
    out = logits.clone()
    grammar.apply_bitmask(out, bits, rows)
    allowed = np.unpackbits(bits.numpy().view(np.uint8), axis=1, bitorder="little")[:, :width].astype(bool)
    expected = logits.clone()
    for j, row in enumerate(rows):
        expected[row][torch.from_numpy(~allowed[j])] = float("-inf")
    assert torch.equal(out, expected)
