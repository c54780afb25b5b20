"""Gateway policies on apps of their own: the per-tenant response cache, and 503 on overload."""

import threading
import time

import httpx
import pytest

from stratus.api import create_app
from stratus.config import Settings
from stratus.engine import EngineConfig
from stratus.request.stage import Stage
from stratus.security.identity import Principal
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer

pytestmark = pytest.mark.timeout(180)


class TeamFromHeader(Stage):
    """Stands in for real identity (a later issue): the caller's team comes from a header."""

    async def identify(self, ctx):
        ctx.principal = Principal(user="u", team=ctx.header("x-team"), models=None)


def counter(client, name):
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def cached_server(tiny_engine):
    settings = Settings(response_cache_size=16)
    app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=TeamFromHeader())
    with LiveServer(app) as server:
        server.wait_ready()
        yield server


def test_response_cache_is_per_tenant_and_only_for_deterministic_requests(cached_server):
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "cache me"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    with httpx.Client(base_url=cached_server.url, timeout=60) as c:
        a = {"x-team": "a"}
        first = c.post("/v1/chat/completions", json=body, headers=a).json()
        hits = counter(c, "stratus_response_cache_hits_total")
        second = c.post("/v1/chat/completions", json=body, headers=a).json()
        assert counter(c, "stratus_response_cache_hits_total") == hits + 1
        assert second["choices"] == first["choices"] and second["id"] != first["id"]
        assert second["usage"] == first["usage"]

        c.post("/v1/chat/completions", json=body, headers={"x-team": "b"})
        assert counter(c, "stratus_response_cache_hits_total") == hits + 1  # b never sees a's entry

        lookups = counter(c, "stratus_response_cache_lookups_total")
        c.post("/v1/chat/completions", json={**body, "temperature": 1.0}, headers=a)  # not deterministic
        c.post("/v1/chat/completions", json={**body, "stream": True}, headers=a)  # streams bypass
        assert counter(c, "stratus_response_cache_lookups_total") == lookups

        seeded = {**body, "temperature": 1.0, "seed": 7}
        one = c.post("/v1/chat/completions", json=seeded, headers=a).json()
        two = c.post("/v1/chat/completions", json=seeded, headers=a).json()
        assert one["choices"] == two["choices"]
        assert counter(c, "stratus_response_cache_hits_total") == hits + 2


def test_queue_over_its_bound_gets_503_with_retry_after(tiny_checkpoint):
    settings = Settings(
        models={TINY_MODEL: str(tiny_checkpoint)},
        max_waiting=1,
        retry_after=3,
        engine=EngineConfig(max_num_seqs=1),
        engine_isolation="thread",
        auth=False,  # not about access control
    )
    with LiveServer(create_app(settings)) as server:
        server.wait_ready()
        engine = server.app.state.stratus.registry.models[TINY_MODEL].engine
        long = {"model": TINY_MODEL, "prompt": "busy", "max_tokens": 400, "ignore_eos": True}
        results = []

        def send():
            with httpx.Client(base_url=server.url, timeout=120) as c:
                results.append(c.post("/v1/completions", json=long).status_code)

        workers = [threading.Thread(target=send) for _ in range(2)]  # one runs, one waits
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while (engine.stats().waiting if engine.stats() else 0) < 1:
            assert time.monotonic() < deadline, "the second request never queued"
            time.sleep(0.01)
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/completions", json={**long, "max_tokens": 1})
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "3"
        err = r.json()["error"]
        assert "overloaded" in err["message"] and err["code"] == "overloaded"
        for w in workers:
            w.join(120)
        assert results == [200, 200]  # the admitted requests were unaffected
