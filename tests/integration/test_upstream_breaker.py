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
