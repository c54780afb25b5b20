"""Upstream breakers: a failing upstream stops receiving requests after a few failures, so it no
longer costs every request a connection attempt (real HTTP upstreams on loopback)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stratus.cluster.upstream import Upstream, UpstreamFailed, UpstreamPool
from tests.recording_server import RecordingServer

pytestmark = pytest.mark.timeout(30)

OK = b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_a_failing_upstream_is_skipped_once_its_breaker_opens():
    with (
        RecordingServer(lambda _r: (503, "application/json", b"{}")) as sick,
        RecordingServer(lambda _r: (200, "application/json", OK)) as well,
    ):

        async def run():
            pool = UpstreamPool(policy="round_robin")
            pool.set([Upstream("sick", "m", sick.url, "m"), Upstream("well", "m", well.url, "m")])
            for _ in range(12):
                opened = await pool.open("m", "/chat/completions", {"messages": []})
                assert opened.upstream.name == "well"
                await opened.close(1, True)
            await pool.aclose()

        asyncio.run(run())
        assert len(well.requests) == 12
        assert len(sick.requests) == 3  # the breaker's threshold, then nothing more


def test_a_dead_upstream_alone_is_refused_without_connecting_again():
    with RecordingServer(lambda _r: (200, "application/json", OK)) as well:

        async def run():
            pool = UpstreamPool()
            pool.set([Upstream("dead", "m", f"http://127.0.0.1:{_closed_port()}", "m")])
            for _ in range(3):
                with pytest.raises(UpstreamFailed, match="ConnectError"):
                    await pool.open("m", "/chat/completions", {})
            assert pool.breakers["dead"].state == "open"
            with pytest.raises(UpstreamFailed, match="every upstream is failing"):
                await pool.open("m", "/chat/completions", {})
            # Re-registering keeps what the breaker learned; a new upstream starts closed.
            pool.set([*pool.upstreams.values(), Upstream("well", "m", well.url, "m")])
            assert pool.breakers["dead"].state == "open" and pool.breakers["well"].state == "closed"
            opened = await pool.open("m", "/chat/completions", {})
            assert opened.upstream.name == "well"
            await opened.close(1, True)
            await pool.aclose()

        asyncio.run(run())


def test_a_probe_brings_a_recovered_upstream_back_without_a_client_request():
    healthy = [False]

    def answer(req):
        if not healthy[0]:
            return 503, "application/json", b"{}"
        return 200, "application/json", b'{"object": "list", "data": []}' if req.method == "GET" else OK

    with RecordingServer(answer) as flaky:

        async def run():
            pool = UpstreamPool(open_seconds=0.2)
            pool.set([Upstream("flaky", "m", flaky.url + "/v1", "m", "sk-upstream-key")])
            for _ in range(3):
                with pytest.raises(UpstreamFailed):
                    await pool.open("m", "/chat/completions", {})
            assert pool.breakers["flaky"].state != "closed"
            healthy[0] = True
            for _ in range(200):  # the prober runs every open_seconds / 2
                if pool.breakers["flaky"].state == "closed":
                    break
                await asyncio.sleep(0.05)
            assert pool.breakers["flaky"].state == "closed"
            await pool.aclose()

        asyncio.run(run())
        probes = [r for r in flaky.requests if r.method == "GET"]
        assert probes and all(r.path == "/v1/models" for r in probes)
        assert probes[-1].headers.get("Authorization") == "Bearer sk-upstream-key"
        assert sum(r.method == "POST" for r in flaky.requests) == 3  # no client request was the trial
