"""Review findings on requests proxied to an OpenAI-compatible upstream (api/upstream_proxy.py).

What admission reserved must be the most the upstream can be asked for: a request's tokens and
sequences count against tokens-per-minute, budgets and concurrency only as far as they were
reserved. The upstream here is a recording HTTP server; the gateway runs in this process with
access control (and so metering) on.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from stratus.config import Settings
from stratus.limits.rules import LimitRule
from tests import issued
from tests.live_server import LiveServer
from tests.recording_server import RecordingServer

pytestmark = pytest.mark.timeout(120)

CHAT_ANSWER = {
    "id": "c1",
    "object": "chat.completion",
    "created": 0,
    "model": "x",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
TEXT_ANSWER = {
    "id": "t1",
    "object": "text_completion",
    "created": 0,
    "model": "x",
    "choices": [{"index": 0, "text": "ok", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def _answer(req) -> tuple[int, str, bytes]:
    body = CHAT_ANSWER if req.path.endswith("/chat/completions") else TEXT_ANSWER
    return 200, "application/json", orjson.dumps(body)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    data = issued.data_dir_of(tmp_path_factory.mktemp("review-upstream-gw"))
    settings = Settings(data_dir=str(data), local_models=False)
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    app = create_app(settings, identity=IdentityStage(access))
    with RecordingServer(_answer) as upstream:
        server = LiveServer(app).start()
        try:
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60
            ) as c:
                body = {"name": "rv", "model": "rv", "base_url": upstream.url + "/v1", "upstream_model": "u"}
                assert c.post("/admin/upstreams", json=body).status_code == 201
                yield server, c, upstream
        finally:
            server.stop()


def _last_sent(upstream) -> dict:
    return upstream.requests[-1].json()


def test_a_null_max_tokens_is_held_to_the_reserved_cap(gateway):
    """`"max_tokens": null` reserved the default cap but was forwarded as null: the upstream
    chose how much to generate, up to its whole context."""
    from stratus.api.upstream_proxy import DEFAULT_MAX_TOKENS

    _, c, upstream = gateway
    chat = {"model": "rv", "messages": [{"role": "user", "content": "hi"}]}
    for nulls in (
        {"max_tokens": None},
        {"max_completion_tokens": None},
        {"max_tokens": None, "max_completion_tokens": None},
    ):
        r = c.post("/v1/chat/completions", json={**chat, **nulls})
        assert r.status_code == 200, r.text
        sent = _last_sent(upstream)
        caps = [sent.get(k) for k in ("max_tokens", "max_completion_tokens") if k in sent]
        assert caps == [DEFAULT_MAX_TOKENS], sent
    r = c.post("/v1/completions", json={"model": "rv", "prompt": "hi", "max_tokens": None})
    assert r.status_code == 200, r.text
    assert _last_sent(upstream)["max_tokens"] == DEFAULT_MAX_TOKENS


def test_max_tokens_and_max_completion_tokens_together_are_held_to_the_reserved_cap(gateway):
    """Admission reserved max_completion_tokens; an upstream that reads max_tokens (older servers
    do) must not be handed a larger one."""
    _, c, upstream = gateway
    chat = {
        "model": "rv",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 5,
        "max_tokens": 50_000,
    }
    assert c.post("/v1/chat/completions", json=chat).status_code == 200
    sent = _last_sent(upstream)
    assert [sent.get(k) for k in ("max_tokens", "max_completion_tokens") if k in sent] == [5], sent


def test_completions_with_several_prompts_reserve_every_sequence(gateway):
    """A completions request of 4 prompts is 4 sequences (and 4 × max_tokens) upstream, as it is
    on the local engine; admission reserved one."""
    server, c, upstream = gateway
    meter = server.app.state.stratus.meter
    meter.static_rules = [LimitRule(scope="model", subject="rv", concurrent=3, tpm=1000)]
    try:
        before = len(upstream.requests)
        four = c.post(
            "/v1/completions", json={"model": "rv", "prompt": ["a", "b", "c", "d"], "max_tokens": 5}
        )
        assert four.status_code == 429, four.text
        assert "this request needs 4" in four.json()["error"]["message"]
        many_tokens = c.post("/v1/completions", json={"model": "rv", "prompt": ["a", "b"], "max_tokens": 600})
        assert many_tokens.status_code == 429, many_tokens.text  # 2 × 600 > 1000; one prompt would fit
        assert len(upstream.requests) == before
        ok = c.post("/v1/completions", json={"model": "rv", "prompt": ["a", "b", "c"], "max_tokens": 5})
        assert ok.status_code == 200, ok.text
    finally:
        meter.static_rules = []
