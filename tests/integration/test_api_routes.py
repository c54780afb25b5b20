"""The API's routes against a real server: models, generation, tokenization, operations."""

import re

import pytest

from stratus.api.schemas_out import ChatCompletion, Completion, ModelList, TokenizeResponse
from tests.conftest import TINY_CONTEXT, TINY_MODEL

pytestmark = pytest.mark.timeout(120)


def test_health_ready_and_models(http):
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {TINY_MODEL: "ready"}
    models = ModelList.model_validate(http.get("/v1/models").json())
    assert [m.id for m in models.data] == [TINY_MODEL]
    card = http.get(f"/v1/models/{TINY_MODEL}").json()
    assert card["max_model_len"] == TINY_CONTEXT and card["object"] == "model" and card["ready"]


def test_every_response_carries_a_request_id(http):
    assert re.fullmatch(r"[0-9a-f]{32}", http.get("/health").headers["x-request-id"])
    assert http.get("/health", headers={"x-request-id": "abc-1"}).headers["x-request-id"] == "abc-1"


def test_chat_uses_the_template_without_a_second_bos(http):
    messages = [{"role": "user", "content": "hello"}]
    chat_ids = http.post("/tokenize", json={"model": TINY_MODEL, "messages": messages}).json()["tokens"]
    plain = http.post("/tokenize", json={"model": TINY_MODEL, "prompt": "hello"}).json()
    TokenizeResponse.model_validate(plain)
    bos = plain["tokens"][0]  # plain prompts get BOS from the tokenizer
    assert chat_ids[0] == bos and chat_ids[1] != bos  # the template's BOS, once
    r = http.post(
        "/v1/chat/completions",
        json={"model": TINY_MODEL, "messages": messages, "max_tokens": 3, "temperature": 0},
    )
    body = ChatCompletion.model_validate(r.json())
    assert body.usage.prompt_tokens == len(chat_ids)
    assert body.choices[0].message.role == "assistant"


def test_tokenize_roundtrip(http):
    ids = http.post(
        "/tokenize",
        json={
            "model": TINY_MODEL,
            "prompt": "stratus serves models",
            "add_special_tokens": False,
            "return_token_strs": True,
        },
    ).json()
    assert len(ids["token_strs"]) == ids["count"]
    text = http.post("/detokenize", json={"model": TINY_MODEL, "tokens": ids["tokens"]}).json()["prompt"]
    assert text == "stratus serves models"


def test_completion_prompt_forms_and_indices(http):
    ids = http.post("/tokenize", json={"model": TINY_MODEL, "prompt": "hello"}).json()["tokens"]
    base = {"model": TINY_MODEL, "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    by_text = http.post("/v1/completions", json={**base, "prompt": "hello"}).json()
    by_ids = http.post("/v1/completions", json={**base, "prompt": ids}).json()
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    many = Completion.model_validate(
        http.post("/v1/completions", json={**base, "prompt": ["hello", "world"], "n": 2}).json()
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == by_text["choices"][0]["text"]
    assert many.usage.completion_tokens == 16
    echoed = http.post("/v1/completions", json={**base, "prompt": [ids, ids[:2]], "echo": True}).json()
    assert echoed["choices"][0]["text"] == "hello" + by_text["choices"][0]["text"]


def test_completions_default_to_16_tokens(http):
    r = http.post("/v1/completions", json={"model": TINY_MODEL, "prompt": "x", "ignore_eos": True})
    assert r.json()["usage"]["completion_tokens"] == 16


def test_stop_strings_and_logprobs(http):
    base = {
        "model": TINY_MODEL,
        "prompt": "The quick",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
    }
    full = http.post("/v1/completions", json=base).json()["choices"][0]["text"]
    stop = full[3:6]
    cut = http.post("/v1/completions", json={**base, "stop": [stop]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.index(stop)]
    lp = http.post("/v1/completions", json={**base, "logprobs": 2}).json()["choices"][0]["logprobs"]
    # top_logprobs is keyed by text, so tokens that decode alike (partial UTF-8) collapse
    assert len(lp["tokens"]) == 12 and all(1 <= len(t) <= 2 for t in lp["top_logprobs"])
    assert all(v <= 0 for v in lp["token_logprobs"])


def test_metrics_cover_requests_latency_tokens_and_engine(http):
    http.post("/v1/completions", json={"model": TINY_MODEL, "prompt": "metrics", "max_tokens": 3})
    text = http.get("/metrics").text
    assert http.get("/metrics").headers["content-type"].startswith("text/plain")
    for name in (
        'stratus_requests_total{model="tiny",route="/v1/completions",status="200"}',
        'stratus_time_to_first_token_seconds_count{model="tiny"}',
        'stratus_time_per_output_token_seconds_count{model="tiny"}',
        'stratus_e2e_request_latency_seconds_count{model="tiny"}',
        'stratus_prompt_tokens_total{model="tiny"}',
        'stratus_generation_tokens_total{model="tiny"}',
        'stratus_requests_running{model="tiny"}',
        'stratus_requests_waiting{model="tiny"}',
        'stratus_kv_cache_usage_ratio{model="tiny"}',
        'stratus_prefix_cache_hit_rate{model="tiny"}',
    ):
        assert name in text, name
