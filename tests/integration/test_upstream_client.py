"""The upstream pool's HTTP client (aiohttp) against a real HTTP server on loopback: what it sends,
how it reads a body whole and as SSE lines, and an unread body."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from stratus.cluster.upstream import Upstream, UpstreamPool
from tests.recording_server import RecordingServer

pytestmark = pytest.mark.timeout(30)


def test_the_body_goes_as_json_with_the_upstream_model_and_key_and_comes_back_whole():
    answer = orjson.dumps({"choices": [{"message": {"content": "é" * 10}}]})
    with RecordingServer(lambda _r: (200, "application/json", answer)) as up:

        async def run():
            pool = UpstreamPool()
            pool.set([Upstream("a", "m", up.url + "/v1", "real-name", "sk-up")])
            for _ in range(3):
                opened = await pool.open("m", "/chat/completions", {"model": "m", "messages": []})
                assert opened.response.status_code == 200
                assert await opened.response.aread() == answer
                await opened.close(1, True)
            await pool.aclose()

        asyncio.run(run())
    first = up.requests[0]
    assert first.method == "POST" and first.path == "/v1/chat/completions"
    assert orjson.loads(first.body) == {"model": "real-name", "messages": []}
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Authorization"] == "Bearer sk-up"
    assert len(up.requests) == 3


def test_sse_lines_of_any_length_and_either_line_end_are_read_whole():
    long = "x" * 200_000  # longer than aiohttp's readline limit (tool-call arguments in one event)
    events = (
        b"data: " + orjson.dumps({"a": long}) + b"\r\n\r\n"
        b"data: " + orjson.dumps({"b": "\u00e9"}) + b"\n\n"
        b"data: [DONE]"
    )
    with RecordingServer(lambda _r: (200, "text/event-stream", events)) as up:

        async def run():
            pool = UpstreamPool()
            pool.set([Upstream("a", "m", up.url, "m")])
            opened = await pool.open("m", "/chat/completions", {"stream": True})
            lines = [line async for line in opened.response.aiter_lines()]
            await opened.close(2, True)
            await pool.aclose()
            return lines

        lines = asyncio.run(run())
    data = [line for line in lines if line]
    assert orjson.loads(data[0][len("data: ") :]) == {"a": long}
    assert orjson.loads(data[1][len("data: ") :]) == {"b": "é"}
    assert data[2] == "data: [DONE]"  # the last line has no line end
    assert not any(line.endswith("\r") for line in lines)


def test_an_unread_body_closes_its_connection_and_the_next_request_still_works():
    with RecordingServer(lambda _r: (200, "application/json", b"{}" * 50_000)) as up:

        async def run():
            pool = UpstreamPool()
            pool.set([Upstream("a", "m", up.url, "m")])
            opened = await pool.open("m", "/chat/completions", {})
            await opened.close(0, False)  # a client that went away: nothing read
            opened = await pool.open("m", "/chat/completions", {})
            assert len(await opened.response.aread()) == 100_000
            await opened.close(0, True)
            await pool.aclose()

        asyncio.run(run())
    assert len(up.requests) == 2


def test_no_cookie_an_upstream_sets_is_sent_again():
    def answer(req):
        return 200, "application/json", b"{}"

    with RecordingServer(answer) as up:
        up.extra_headers = [("Set-Cookie", "session=caller-a; Path=/")]

        async def run():
            pool = UpstreamPool()
            pool.set(
                [Upstream("a", "m", up.url.replace("127.0.0.1", "localhost"), "m")]
            )  # a jar keeps no IP's cookies
            for _ in range(2):
                opened = await pool.open("m", "/chat/completions", {})
                await opened.response.aread()
                await opened.close(0, True)
            await pool.aclose()

        asyncio.run(run())
    assert all("Cookie" not in r.headers for r in up.requests)


def test_the_proxy_comes_from_the_environment_once_per_base_url(monkeypatch):
    from stratus.cluster.upstream import env_proxy

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "10.0.0.7,.corp")
    assert env_proxy("http://vllm.example:8000/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://10.0.0.7:8000/v1") is None
    assert env_proxy("http://gpu.corp:8000/v1") is None
    assert env_proxy("https://vllm.example/v1") is None  # no HTTPS_PROXY
