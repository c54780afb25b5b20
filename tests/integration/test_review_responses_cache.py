"""Review finding: a Responses API answer served from the response cache is charged like a chat
answer served from it (the tokens of the cached answer, in the ledger and the limits); its usage
is named input_tokens/output_tokens, which the cache hit did not read, so it was charged nothing."""

from __future__ import annotations

import time

import httpx
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.request.stage import Stage
from stratus.security.identity import Principal
from stratus.store import usage as ledger
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)


class UserFromHeader(Stage):
    async def identify(self, ctx):
        ctx.principal = Principal(user=ctx.header("x-user") or "u", models=None)


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    settings = Settings(
        response_cache_size=16, metering=True, data_dir=str(tmp_path_factory.mktemp("review-cache"))
    )
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=UserFromHeader())
    with LiveServer(app) as live:
        live.wait_ready()
        yield live


def _rows(server, user: str) -> list[dict]:
    meter = server.app.state.stratus.meter
    deadline = time.monotonic() + 10
    while True:
        with meter.store.connect() as conn:
            rows = [
                dict(r) for r in conn.execute(ledger.usage_ledger.select()).mappings() if r["user"] == user
            ]
        if len(rows) >= 2 or time.monotonic() > deadline:
            return sorted(rows, key=lambda r: r["time"])
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("route", "body", "user"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "cache me"}], "max_tokens": 6},
            "chat",
        ),
        ("/v1/responses", {"input": "cache me", "max_output_tokens": 6}, "responses"),
    ],
)
def test_a_cache_hit_is_charged_the_cached_answers_tokens(server, route, body, user):
    request = {"model": TINY_MODEL, "temperature": 0, **body}
    with httpx.Client(base_url=server.url, timeout=60, headers={"x-user": user}) as c:
        first = c.post(route, json=request)
        second = c.post(route, json=request)
    assert first.status_code == second.status_code == 200, second.text
    hits = server.app.state.stratus.metrics.cache_hits.labels(TINY_MODEL)._value.get()
    assert hits >= 1
    miss, hit = _rows(server, user)
    assert miss["prompt_tokens"] > 0 and miss["completion_tokens"] > 0
    assert (hit["prompt_tokens"], hit["completion_tokens"]) == (
        miss["prompt_tokens"],
        miss["completion_tokens"],
    )


def test_the_content_log_reads_a_cached_responses_answer():
    from stratus.audit.content_log import completions_of

    body = {
        "object": "response",
        "output": [
            {
                "type": "message",
                "content": [{"type": "output_text", "text": "a"}, {"type": "output_text", "text": "b"}],
            },
            {"type": "function_call", "name": "f", "arguments": "{}"},
        ],
    }
    assert completions_of(body) == ["ab"]
    assert completions_of({"choices": [{"message": {"content": "x"}}]}) == ["x"]
