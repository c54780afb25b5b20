"""The official `openai` Python client against a real stratus server on a loopback port."""

import openai
import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(180)

HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def client(base_url, admin_key):
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key=admin_key, max_retries=0, timeout=60) as c:
        yield c


def test_models(client):
    assert [m.id for m in client.models.list()] == [TINY_MODEL]
    assert client.models.retrieve(TINY_MODEL).id == TINY_MODEL


def test_chat(client):
    r = client.chat.completions.create(model=TINY_MODEL, messages=HI, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == TINY_MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream(client):
    kw = dict(
        model=TINY_MODEL,
        messages=HI,
        max_completion_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.chat.completions.create(**kw).choices[0].message.content
    stream = client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
    assert "".join(parts) == whole
    assert usage is not None and usage.completion_tokens == 10


def test_completions_stream_and_not(client):
    kw = dict(
        model=TINY_MODEL,
        prompt="The quick brown",
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 6
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True) if c.choices)
    assert streamed == whole.choices[0].text


def test_n_choices(client):
    r = client.chat.completions.create(
        model=TINY_MODEL, messages=HI, max_tokens=5, n=3, seed=1, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert r.usage.completion_tokens == 15  # all choices counted; the prompt once
    assert len({c.message.content for c in r.choices}) > 1  # sampled independently
    seen = set()
    for chunk in client.chat.completions.create(
        model=TINY_MODEL, messages=HI, max_tokens=5, n=3, stream=True
    ):
        seen.update(c.index for c in chunk.choices)
    assert seen == {0, 1, 2}


def test_stop(client):
    kw = dict(
        model=TINY_MODEL, prompt="Beautiful is", max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    full = client.completions.create(**kw).choices[0].text
    stop = full[4:7]
    cut = client.completions.create(**kw, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)] and stop not in cut.text


def test_seed_reproducibility(client):
    kw = dict(model=TINY_MODEL, messages=HI, max_tokens=12, temperature=1.0, extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    b = client.chat.completions.create(**kw, seed=1234).choices[0].message.content
    c = client.chat.completions.create(**kw, seed=4321).choices[0].message.content
    assert a == b
    assert a != c


def test_logprobs(client):
    r = client.chat.completions.create(
        model=TINY_MODEL,
        messages=HI,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.top_logprobs[-1].logprob
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)  # greedy: the best one
    r = client.completions.create(
        model=TINY_MODEL, prompt="hi", max_tokens=3, logprobs=2, extra_body={"ignore_eos": True}
    )
    assert len(r.choices[0].logprobs.token_logprobs) == 3


def test_engine_extras_via_extra_body(client):
    r = client.chat.completions.create(
        model=TINY_MODEL,
        messages=HI,
        max_tokens=4,
        extra_body={"top_k": 1, "min_p": 0.05, "repetition_penalty": 1.2},
    )
    assert r.choices[0].finish_reason in ("stop", "length")


def test_errors_raise_the_sdk_types(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TINY_MODEL, messages=HI, temperature=5)
    assert bad.value.status_code == 400 and bad.value.param == "temperature"
    assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model=TINY_MODEL, prompt="word " * 2000, max_tokens=1)
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
