"""Hypothesis over request bodies, sent to the shared gateway (real HTTP, the tiny model): chat,
completions and tokenize bodies with any field set to arbitrary JSON (wrong types, nested junk,
huge and negative integers, "NaN" and "Infinity" strings, floats at the edges), and raw bodies
that are not JSON a parser likes (lone surrogates, deep nesting, NaN literals, duplicate keys).
Every answer is a success or a 4xx whose body is the JSON error envelope; never a 5xx.

Generated texts stay under 16 characters: longer ones would be recorded as prompts that must
never be stored (tests/issued.py), and random short strings occur anywhere by chance.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.timeout(120)]

SHORT = st.text(max_size=15) | st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "null", "", "<|end|>"]
)
NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 2**31, 2**63, -(2**63), 10**30, 1e308, -1e308, 5e-324, 0.5, -0.0, 3.7]
)
SCALARS = (
    st.none()
    | st.booleans()
    | NUMBERS
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | SHORT
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SHORT, inner, max_size=3),
    max_leaves=8,
)
# max_tokens is always present, and small when valid: an absent one may generate to the end of
# the context window, once per choice.
MAX_TOKENS = st.sampled_from([1, 2, 0, -1, 10**30, 1.5, "2", [1], {"a": 1}, True])
MESSAGE = (
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "developer"]) | JUNK,
            "content": SHORT | JUNK,
        },
        optional={"name": JUNK, "tool_calls": JUNK, "tool_call_id": JUNK},
    )
    | JUNK
)

CHAT_FIELDS = {
    "messages": st.lists(MESSAGE, max_size=3) | JUNK,
    "model": st.just(TINY_MODEL) | JUNK,
    "temperature": JUNK,
    "top_p": JUNK,
    "top_k": JUNK,
    "min_p": JUNK,
    "n": st.sampled_from([1, 2, 0, -1, 65, 10**9]) | JUNK,
    "stream": st.booleans() | JUNK,
    "stream_options": JUNK,
    "stop": JUNK,
    "seed": JUNK,
    "logprobs": JUNK,
    "top_logprobs": JUNK,
    "logit_bias": JUNK,
    "presence_penalty": JUNK,
    "frequency_penalty": JUNK,
    "repetition_penalty": JUNK,
    "response_format": JUNK,
    "tools": JUNK,
    "tool_choice": JUNK,
    "user": JUNK,
    "stop_token_ids": JUNK,
    "ignore_eos": JUNK,
    "skip_special_tokens": JUNK,
    "max_completion_tokens": MAX_TOKENS,
    "unknown_field": JUNK,
}
COMPLETION_FIELDS = {
    **{k: v for k, v in CHAT_FIELDS.items() if k not in ("messages", "max_completion_tokens")},
    "prompt": SHORT | st.lists(SHORT, max_size=3) | st.lists(st.integers(-5, 600), max_size=5) | JUNK,
    "echo": JUNK,
    "best_of": JUNK,
    "suffix": JUNK,
}


def bodies(fields: dict, base: dict) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from(sorted(fields)), st.none(), max_size=5).flatmap(
        lambda chosen: st.fixed_dictionaries({k: fields[k] for k in chosen}).map(
            lambda junk: {**base, **junk}
        )
    )


CHAT_BASE = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION_BASE = {"model": TINY_MODEL, "prompt": "hi", "max_tokens": 2}
REQUESTS = st.one_of(
    st.tuples(st.just("/v1/chat/completions"), bodies(CHAT_FIELDS, CHAT_BASE), MAX_TOKENS),
    st.tuples(st.just("/v1/completions"), bodies(COMPLETION_FIELDS, COMPLETION_BASE), MAX_TOKENS),
    st.tuples(
        st.just("/tokenize"),
        bodies(
            {
                "prompt": COMPLETION_FIELDS["prompt"],
                "messages": CHAT_FIELDS["messages"],
                "model": JUNK,
                "x": JUNK,
            },
            {"model": TINY_MODEL},
        ),
        st.none(),
    ),
    st.tuples(
        st.just("/detokenize"), bodies({"tokens": JUNK, "model": JUNK}, {"model": TINY_MODEL}), st.none()
    ),
)


def assert_answered(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        error = r.json()["error"]
        assert isinstance(error["message"], str) and error["message"], r.text[:500]


@pytest.fixture(scope="module")
def client(base_url, auth_headers):
    with httpx.Client(base_url=base_url, headers=auth_headers, timeout=60) as c:
        yield c


@settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=REQUESTS)
def test_any_body_gets_an_answer_never_a_5xx(client, request):
    path, body, max_tokens = request
    if max_tokens is not None:
        body = {**body, "max_tokens": max_tokens}
    r = client.post(path, json=body)
    event(f"{path} {r.status_code}")
    assert_answered(r)


UNPARSEABLE = [  # each a 400 from the body parser, whatever the route
    b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 1}',
    b'{"model": "tiny", "prompt": "\\udfff", "max_tokens": 1}',
    b'{"model": "tiny", "prompt": "hi", "max_tokens": NaN}',
    b'{"model": "tiny", "prompt": "hi", "max_tokens": Infinity}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    b'{"model": "tiny", "prompt": "hi"',
    b"\xff\xfe{}",
    b"\x00",
    b"null",
    b'"a string"',
    b"",
]
ODD = [  # JSON, but odd: answered (a 400 where a route reads the field), never a 5xx
    b'{"model": "tiny", "prompt": "hi", "temperature": 1e999, "max_tokens": 1}',
    b'{"model": "tiny", "prompt": "hi", "max_tokens": 1, "max_tokens": 1000000}',
    b'{"model": "tiny", "prompt": "hi", "max_tokens": 100000000000000000000000000000000000000}',
    b'{"model": "tiny", "prompt": "hi", "max_tokens": 1, "n": 1e2}',
    b'{"model": "tiny", "prompt": [[1, 2], [3, 99999999999999999999]], "max_tokens": 1}',
    b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}], "max_tokens": 1}',
]
PATHS = ["/v1/chat/completions", "/v1/completions", "/tokenize"]


@pytest.mark.parametrize("raw", UNPARSEABLE, ids=range(len(UNPARSEABLE)))
@pytest.mark.parametrize("path", PATHS)
def test_a_body_no_parser_likes_is_a_400(client, path, raw):
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    assert_answered(r)
    assert r.status_code == 400, (r.status_code, r.text[:300])


@pytest.mark.parametrize("raw", ODD, ids=range(len(ODD)))
@pytest.mark.parametrize("path", PATHS)
def test_an_odd_body_is_answered(client, path, raw):
    assert_answered(client.post(path, content=raw, headers={"content-type": "application/json"}))
