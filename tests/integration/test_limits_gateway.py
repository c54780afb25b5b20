"""Limits and the usage ledger on a live gateway (in-process limiter; tiny model, shared engine).

- 200 concurrent requests against a token budget that admits exactly N: exactly N succeed
- streamed, aborted and failed requests: the ledger and the counters hold what was delivered
- 429 bodies and headers through the official openai client, which honours Retry-After
- bad limits are a 400; /admin/usage aggregates in JSON and CSV
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.request.stage import Stage
from stratus.security.identity import Principal
from stratus.store import usage as ledger
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(240)
BROKEN = "broken"
MAX = 4  # completion tokens per request (ignore_eos: every admitted request uses exactly these)


class UserFromHeader(Stage):
    """Identity for these tests: user and team from headers (access control has its own tests)."""

    async def identify(self, ctx):
        ctx.principal = Principal(
            user=ctx.header("x-user") or "u",
            team=ctx.header("x-team"),
            key_id=ctx.header("x-key"),
            models=None,
            roles=frozenset({"admin"}),
        )


class BrokenEngine:
    """The tiny engine, except that every generation fails after its second delta."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, request):
        seen = 0
        async for delta in self._engine.generate(request):
            yield delta
            seen += 1
            if seen == 2:
                raise RuntimeError("injected engine failure")


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    settings = Settings(
        metering=True, data_dir=str(tmp_path_factory.mktemp("limits-data")), model_prices="tiny=1/2"
    )
    engines = {TINY_MODEL: tiny_engine, BROKEN: BrokenEngine(tiny_engine)}
    app = create_app(settings, engines=engines, identity=UserFromHeader())
    with LiveServer(app) as live:
        live.wait_ready()
        yield live


def meter(server):
    return server.app.state.stratus.meter


def set_rule(server, **rule):
    m = meter(server)
    with m.store.begin() as conn:
        ledger.put_limit(conn, rule, time.time(), "test")
    m.invalidate()


def rows(server, user):
    with meter(server).store.connect() as conn:
        return [r for r in conn.execute(ledger.usage_ledger.select()).mappings() if r["user"] == user]


def body(**extra):
    return {"model": TINY_MODEL, "prompt": "count with me", "max_tokens": MAX, "ignore_eos": True, **extra}


def test_200_concurrent_requests_against_a_budget_admit_exactly_n(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        probe = c.post("/v1/completions", json=body(), headers={"x-user": "probe"}).json()
    per_request = probe["usage"]["total_tokens"]
    n = 7
    set_rule(server, scope="user", subject="crowd", tokens_per_day=n * per_request)

    async def one(client):
        return await client.post("/v1/completions", json=body(), headers={"x-user": "crowd"})

    async def all_at_once():
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(200)))

    responses = asyncio.run(all_at_once())
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == n and statuses.count(429) == 200 - n
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "insufficient_quota"
    assert "tokens per day for user 'crowd'" in refused.json()["error"]["message"]
    delivered = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    recorded = rows(server, "crowd")  # one row per request, refused ones too, with no tokens
    assert sorted(r["status"] for r in recorded) == ["ok"] * n + ["refused_429"] * (200 - n)
    assert {r["request_id"] for r in recorded} == {r.headers["x-request-id"] for r in responses}
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in recorded) == delivered == n * per_request
    assert all(r["cost_micro_usd"] == 0 for r in recorded if r["status"] != "ok")


def same_minute(needed_s: float = 10.0) -> None:
    """Wait for the next UTC minute if fewer than `needed_s` seconds are left of this one, so a
    test's requests fall in one requests-per-minute window."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.05)


def counter_value(server, user, kind):
    m = meter(server)
    keys = [k for k in m.limiter._counters if f"user={user}/" in k and f":{kind}:" in k]
    return sum(m.limiter.peek(k) for k in keys)


def test_streamed_aborted_and_failed_requests_are_charged_what_was_delivered(server):
    set_rule(server, scope="user", subject="streamer", tpm=10**6, tokens_per_day=10**6, concurrent=5)
    h = {"x-user": "streamer"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        # a full stream: the usage chunk, the ledger row and the counters agree
        with c.stream(
            "POST",
            "/v1/completions",
            json=body(stream=True, stream_options={"include_usage": True}),
            headers=h,
        ) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: {")]
        usage = httpx.Response(200, content=events[-1][6:]).json()["usage"]
        [row] = rows(server, "streamer")  # written before [DONE] reached us
        assert (row["prompt_tokens"], row["completion_tokens"], row["status"]) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            "ok",
        )
        assert row["cost_micro_usd"] == usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2

        # an aborted stream: the client leaves after the first token
        long = body(stream=True, max_tokens=400)
        with c.stream("POST", "/v1/completions", json=long, headers=h) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    break
        deadline = time.monotonic() + 60
        while len(rows(server, "streamer")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        aborted = rows(server, "streamer")[1]
        assert aborted["status"] == "client_disconnect"
        assert 1 <= aborted["completion_tokens"] < 400

        # a non-streamed failure after two tokens: the client got only the error, so no
        # completion tokens are charged (nor the worst case)
        failed = c.post("/v1/completions", json={**body(max_tokens=50), "model": BROKEN}, headers=h)
        assert failed.status_code == 500
        # a stream that fails after two tokens: charged exactly the tokens the client received
        # (counted by their logprobs: a chunk may carry no text, or two tokens' text)
        broken = {**body(stream=True, max_tokens=50, logprobs=0), "model": BROKEN}
        with c.stream("POST", "/v1/completions", json=broken, headers=h) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        received = sum(len(e["choices"][0]["logprobs"]["tokens"]) for e in events if e.get("choices"))
        assert received == 2 and "error" in events[-1]
    set_rule(server, scope="user", subject="streamer", tpm=10**6, tokens_per_day=10**6, concurrent=5)
    recorded = rows(server, "streamer")
    assert len(recorded) == 4 and recorded[2]["status"] == recorded[3]["status"] == "error"
    assert recorded[2]["completion_tokens"] == 0
    assert recorded[3]["completion_tokens"] == received
    total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in recorded)
    assert counter_value(server, "streamer", "tokens_per_day") == total
    assert counter_value(server, "streamer", "concurrent") == 0


def test_429_headers_and_body_through_the_openai_client(server, monkeypatch):
    set_rule(server, scope="user", subject="sdk", rpm=2, tpm=10**6)
    same_minute()
    client = openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, default_headers={"x-user": "sdk"}
    )
    sdk_body = {
        "model": TINY_MODEL,
        "prompt": "count with me",
        "max_tokens": MAX,
        "extra_body": {"ignore_eos": True},
    }
    first = client.completions.with_raw_response.create(**sdk_body)
    assert first.headers["x-ratelimit-limit-requests"] == "2"  # on every admitted response too
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    client.completions.create(**sdk_body)
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(**sdk_body)
    response = err.value.response
    assert err.value.code == "rate_limit_exceeded"
    assert "requests per minute for user 'sdk' is 2" in err.value.message
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    # refused before its body was read, it has no token figures; an admitted response has both
    assert first.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10**6
    assert first.headers["x-ratelimit-reset-tokens"].endswith("s")

    # the client retries a 429 by itself, waiting what Retry-After says
    slept: list[float] = []
    import openai._base_client as base

    monkeypatch.setattr(base.time, "sleep", lambda s: slept.append(s))
    retrying = client.with_options(max_retries=2)
    with pytest.raises(openai.RateLimitError):
        retrying.completions.create(**sdk_body)
    assert len(slept) == 2
    assert all(abs(s - int(retry_after)) <= 1 for s in slept)

    # a spent monthly quota says x-should-retry: false, and the client does not retry at all
    set_rule(
        server, scope="user", subject="sdk-quota", tokens_per_month=1
    )  # resets > 60 s away (but in a month's last minute)
    slept.clear()
    quota_client = retrying.with_options(default_headers={"x-user": "sdk-quota"})
    with pytest.raises(openai.RateLimitError) as err:
        quota_client.completions.create(**sdk_body)
    assert err.value.code == "insufficient_quota" and slept == []
    assert err.value.response.headers["x-should-retry"] == "false"
    assert "send fewer tokens" in err.value.message  # this request alone exceeds the quota


def test_bad_limits_are_400_and_usage_is_aggregated(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        before = {"scope": "user", "subject": "x", "model": None, "rpm": 7}
        assert c.put("/admin/limits", json=before).status_code == 200
        for bad in (
            {"scope": "user", "subject": "x", "rpm": -1},
            {"scope": "user", "subject": "x", "tpm": 10**15},
            {"scope": "user", "subject": "x", "rpm": 5, "budget_usd_per_month": 1e12},
        ):
            r = c.put("/admin/limits", json=bad)
            assert r.status_code == 400
            assert r.json()["error"]["param"] in ("rpm", "tpm", "budget_usd_per_month")
            assert r.json()["error"]["param"] in r.json()["error"]["message"]
        assert [rule for rule in c.get("/admin/limits").json()["data"] if rule["subject"] == "x"] == [before]
        ok = c.put("/admin/limits", json={"scope": "team", "subject": "ml", "rpm": 100})
        assert ok.status_code == 200
        assert any(rule["subject"] == "ml" for rule in c.get("/admin/limits").json()["data"])
        assert c.delete("/admin/limits", params={"scope": "team", "subject": "ml"}).status_code == 200

        c.post("/v1/completions", json=body(), headers={"x-user": "agg", "x-team": "ml"})
        data = c.get("/admin/usage", params={"by": "user,model,day"}).json()["data"]
        mine = [d for d in data if d["user"] == "agg"]
        assert len(mine) == 1 and mine[0]["requests"] == 1 and mine[0]["completion_tokens"] == MAX
        csv_text = c.get("/admin/usage", params={"by": "team", "format": "csv"}).text
        assert (
            csv_text.splitlines()[0]
            == "team,requests,refused,prompt_tokens,completion_tokens,total_tokens,cost_usd"
        )
        assert any(line.startswith("ml,1,0,") for line in csv_text.splitlines())
        assert c.get("/admin/usage", params={"by": "planet"}).status_code == 400
        # a time range: ISO dates or Unix seconds, [since, until)
        assert (
            c.get("/admin/usage", params={"since": "2099-01-01", "until": "2100-01-01"}).json()["data"] == []
        )
        now = time.time()
        recent = c.get("/admin/usage", params={"by": "user", "since": now - 600, "until": now + 60}).json()
        assert any(d["user"] == "agg" for d in recent["data"])
        assert (
            c.get("/admin/usage", params={"by": "user", "since": 0, "until": now - 86400 * 365}).json()[
                "data"
            ]
            == []
        )
        bad_range = c.get("/admin/usage", params={"since": "2026-02-01", "until": "2026-01-01"})
        assert bad_range.status_code == 400 and bad_range.json()["error"]["param"] == "until"
        bad_time = c.get("/admin/usage", params={"since": "yesterday"})
        assert bad_time.status_code == 400 and bad_time.json()["error"]["param"] == "since"


def test_requests_refused_after_identification_get_a_ledger_row(server):
    """One row per request: refusals (a limit, bad input, an unknown model) with status and no
    tokens, counted as refused in the JSON and CSV totals; an admitted failure is not one."""
    set_rule(server, scope="user", subject="refusee", rpm=3)
    h = {"x-user": "refusee", "x-team": "refusers"}
    same_minute()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.post("/v1/completions", json=body(max_tokens=-3), headers=h).status_code == 400
        chat = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=chat, headers=h).status_code == 404
        assert c.post("/v1/completions", json=body(), headers=h).status_code == 200
        assert c.post("/v1/completions", json=body(), headers=h).status_code == 429
        assert c.get("/v1/models", headers=h).status_code == 200  # not a generation: no row
        by_status = c.get("/admin/usage", params={"by": "user,status"}).json()["data"]
        csv_lines = c.get("/admin/usage", params={"by": "team", "format": "csv"}).text.splitlines()
    recorded = rows(server, "refusee")
    assert [r["status"] for r in recorded] == ["refused_400", "refused_404", "ok", "refused_429"]
    assert recorded[1]["model"] == "no-such-model"
    assert recorded[3]["model"] == ""  # refused by rpm before its body (which names it) was read
    recorded.insert(0, recorded.pop(2))  # the admitted one first
    assert all(r["prompt_tokens"] == r["completion_tokens"] == r["cost_micro_usd"] == 0 for r in recorded[1:])
    mine = {d["status"]: d for d in by_status if d["user"] == "refusee"}
    assert {s: (d["requests"], d["refused"]) for s, d in mine.items()} == {
        "ok": (1, 0),
        "refused_429": (1, 1),
        "refused_400": (1, 1),
        "refused_404": (1, 1),
    }
    assert mine["refused_429"]["total_tokens"] == 0
    ok_tokens = recorded[0]["prompt_tokens"] + recorded[0]["completion_tokens"]
    assert f"refusers,4,3,{recorded[0]['prompt_tokens']},{MAX},{ok_tokens}," in "\n".join(csv_lines)


def test_a_request_counts_against_rpm_as_soon_as_its_caller_is_known(server):
    """Requests refused for their input (bad values, a prompt longer than the context) were never
    counted: a caller could make the gateway parse and tokenize without limit. They count now."""
    set_rule(server, scope="user", subject="early", rpm=2)
    h = {"x-user": "early"}
    same_minute()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        bad = c.post("/v1/completions", json=body(max_tokens=-3), headers=h)
        assert bad.status_code == 400
        too_long = c.post("/v1/completions", json=body(prompt="count " * 5000), headers=h)
        assert too_long.status_code == 400
        refused = c.post("/v1/completions", json=body(), headers=h)
    assert refused.status_code == 429
    assert "requests per minute for user 'early'" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert [r["status"] for r in rows(server, "early")] == ["refused_400", "refused_400", "refused_429"]


def test_a_model_specific_rpm_counts_once_at_admission(server):
    set_rule(server, scope="user", subject="permodel", rpm=5)
    set_rule(server, scope="user", subject="permodel", model=TINY_MODEL, rpm=2)
    h = {"x-user": "permodel"}
    same_minute()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        statuses = [c.post("/v1/completions", json=body(), headers=h).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the model's rule refuses; each request counted once
    assert counter_value(server, "permodel", "rpm") == 3 + 2


def test_concurrency_limits_count_sequences_not_requests(server):
    """One request of prompts × n sequences holds that many of a concurrency limit."""
    set_rule(server, scope="user", subject="fanout", concurrent=3)
    h = {"x-user": "fanout"}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        four = c.post("/v1/completions", json=body(n=4), headers=h)
        two_by_two = c.post("/v1/completions", json=body(prompt=["a b", "c d"], n=2), headers=h)
        three = c.post("/v1/completions", json=body(n=3), headers=h)
    assert four.status_code == two_by_two.status_code == 429
    message = four.json()["error"]["message"]
    assert "concurrent sequences" in message and "this request needs 4" in message
    assert "fewer prompts or a smaller n" in message
    assert four.headers["x-should-retry"] == "false"  # it can never fit: retrying cannot help
    assert three.status_code == 200 and len(three.json()["choices"]) == 3
    assert counter_value(server, "fanout", "concurrent") == 0  # all three slots freed
