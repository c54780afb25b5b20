"""Hypothesis over tokenizer input (engine/tokenizer.py, with the test checkpoints' byte-level BPE
tokenizer): any text a JSON body can carry (NUL, right-to-left marks, combining marks, emoji,
special-token text, long repeats) encodes without error into ids of the vocabulary, decodes back to
itself, its tokens' bytes are its UTF-8 bytes, incremental detokenization gives the same text, and
special-token text in chat content never becomes a control token.

Lone surrogates ("\\ud800") cannot arrive: the gateway's JSON parser refuses them with a 400
(tests/unit/api/test_request_parsing_properties.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratus.engine.tokenizer import IncrementalDetokenizer, Tokenizer
from tests.checkpoints import SPECIAL_TOKENS, build_tokenizer

pytestmark = pytest.mark.timeout(60)

SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

PIECES = st.sampled_from(
    [
        "\x00",
        "\u202e",  # right-to-left override
        "\u200f",
        "\u0301",  # combining acute accent
        "e\u0301\u0301\u0301",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # a ZWJ emoji family
        "\ufeff",
        "\ue000",
        "\r\n",
        "\t",
        "  ",
        "\U0010ffff",
        *SPECIAL_TOKENS,
        "<|end",
        "|>",
    ]
)
TEXT = st.lists(st.text(st.characters(codec="utf-8"), max_size=12) | PIECES, max_size=12).map("".join)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(out)
    return Tokenizer(out)


def specials_in(text: str) -> bool:
    return any(s in text for s in SPECIAL_TOKENS)


@SETTINGS
@given(text=TEXT)
def test_any_text_encodes_into_the_vocabulary_and_decodes_back(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, skip_special_tokens=False) == text
    with_bos = tok.encode(text, add_special_tokens=True)
    assert with_bos[0] == tok.bos_token_id and with_bos[1:] == ids


@SETTINGS
@given(text=TEXT)
def test_the_tokens_bytes_are_the_texts_bytes(tok, text):
    if specials_in(text):
        return  # a special token's bytes are its text's, but it is not byte-level encoded
    ids = tok.encode(text, add_special_tokens=False)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")


@SETTINGS
@given(prompt=TEXT, text=TEXT)
def test_incremental_detokenization_gives_the_same_text(tok, prompt, text):
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=False)
    streamed = "".join(detok.push(i) for i in ids)
    assert text.startswith(streamed)  # never a character that is not there
    # only an incomplete character at the very end may still be held back
    assert len(text.encode("utf-8")) - len(streamed.encode("utf-8")) < 4 or specials_in(text)


@SETTINGS
@given(
    turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT), min_size=1, max_size=4),
    add_generation_prompt=st.booleans(),
)
def test_special_token_text_in_content_never_becomes_a_control_token(tok, turns, add_generation_prompt):
    messages = [{"role": role, "content": content} for role, content in turns]
    plain = [{"role": role, "content": "x"} for role, _ in turns]
    ids = tok.encode_chat(messages, add_generation_prompt)
    control = Counter(i for i in ids if i in tok.special_ids)
    assert control == Counter(
        i for i in tok.encode_chat(plain, add_generation_prompt) if i in tok.special_ids
    )
    assert tok.decode(ids, skip_special_tokens=False) == tok.apply_chat_template(
        messages, add_generation_prompt
    )


@pytest.mark.timeout(30)
def test_long_repeats_encode(tok):
    for text in (
        "a" * 200_000,
        "\u0301" * 50_000,
        "<|end|>" * 20_000,
        "\U0001f600" * 50_000,
        "\x00" * 100_000,
    ):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=False) == text


def test_a_lone_surrogate_is_refused_by_the_tokenizer_not_mangled(tok):
    """Python strings can hold one (the JSON body parser refuses them first): the tokenizer
    raises rather than encode something else."""
    with pytest.raises(TypeError):
        tok.encode("a\ud800b")
