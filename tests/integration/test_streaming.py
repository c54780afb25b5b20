"""Server-sent events: format, usage, n > 1, client disconnects, and many clients at once."""

import asyncio
import json
import socket
import time

import httpx
import pytest

from stratus.api.schemas_out import ChatCompletionChunk, Completion
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(180)


def events(response):
    """The JSON payloads of an SSE response, and whether it ended with [DONE]."""
    payloads, done = [], False
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        assert not done, "data after [DONE]"
        payloads.append(json.loads(data))
    return payloads, done


def test_chat_stream_with_n_and_usage(http):
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 0,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        chunks, done = events(r)
    assert done
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert len({c["id"] for c in chunks}) == 1
    *choice_chunks, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 10
    assert all(c["usage"] is None for c in choice_chunks)
    text = {0: "", 1: ""}
    finish = {}
    for c in choice_chunks:
        (choice,) = c["choices"]
        text[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finish[choice["index"]] = choice["finish_reason"]
    assert finish == {0: "length", 1: "length"}
    plain = http.post("/v1/chat/completions", json={**body, "stream": False}).json()
    assert [c["message"]["content"] for c in plain["choices"]] == [text[0], text[1]]


def test_completion_stream_matches_non_stream(http):
    body = {
        "model": TINY_MODEL,
        "prompt": ["a b", "c d"],
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": 1,
    }
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        chunks, done = events(r)
    assert done
    streamed = {0: "", 1: ""}
    for c in chunks:
        Completion.model_validate(c)
        streamed[c["choices"][0]["index"]] += c["choices"][0]["text"]
    plain = http.post("/v1/completions", json=body).json()
    assert [c["text"] for c in plain["choices"]] == [streamed[0], streamed[1]]


def metric(http, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{want}}}"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_client_disconnect_aborts_the_generation(http, base_url, tiny_engine, auth_headers):
    aborted = metric(http, "stratus_aborted_requests_total", model=TINY_MODEL, reason="client_disconnect")
    generated = metric(http, "stratus_generation_tokens_total", model=TINY_MODEL)
    body = {"model": TINY_MODEL, "prompt": "go", "max_tokens": 450, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=30, headers=auth_headers) as client,
        client.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        next(lines)
        next(lines)
    # leaving the block closed the connection mid-stream
    deadline = time.monotonic() + 30
    while (
        metric(http, "stratus_aborted_requests_total", model=TINY_MODEL, reason="client_disconnect")
        == aborted
    ):
        assert time.monotonic() < deadline, "the disconnect was never noticed"
        time.sleep(0.05)
    while tiny_engine.stats().running:
        assert time.monotonic() < deadline, "the generation kept running"
        time.sleep(0.05)
    # The tokens made before the abort are accounted, and they are far fewer than asked for.
    assert 0 < metric(http, "stratus_generation_tokens_total", model=TINY_MODEL) - generated < 450


def test_non_streamed_request_is_aborted_when_its_client_leaves(http, api_server, tiny_engine, admin_key):
    aborted = metric(http, "stratus_aborted_requests_total", model=TINY_MODEL, reason="client_disconnect")
    body = json.dumps({"model": TINY_MODEL, "prompt": "wait", "max_tokens": 450, "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {admin_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.monotonic() + 30
        while not (tiny_engine.stats() and tiny_engine.stats().running):
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    # The socket is closed while the server is still generating.
    while (
        metric(http, "stratus_aborted_requests_total", model=TINY_MODEL, reason="client_disconnect")
        == aborted
    ):
        assert time.monotonic() < deadline + 30, "the disconnect was never noticed"
        time.sleep(0.05)
    while tiny_engine.stats().running:
        assert time.monotonic() < deadline + 30, "the generation kept running"
        time.sleep(0.05)


async def _stream_text(client, url, body):
    text, ids = "", set()
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, await r.aread()
        done = False
        async for line in r.aiter_lines():
            if not line:
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            ids.add(chunk["id"])
            choice = chunk["choices"][0]
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    assert done and len(ids) == 1
    return text, ids.pop()


@pytest.mark.slow
def test_fifty_concurrent_streaming_clients(http, base_url, auth_headers):
    n = 50
    common = {"max_tokens": 12, "temperature": 0, "ignore_eos": True, "stream": True}
    bodies, prompt_ids = [], []
    for i in range(n):
        words = f"client {i} says {'hello' if i % 2 else 'world'} {i * 7}"
        if i % 2:  # chat
            messages = [{"role": "user", "content": words}]
            bodies.append(("/v1/chat/completions", {"model": TINY_MODEL, "messages": messages, **common}))
            ids = http.post("/tokenize", json={"model": TINY_MODEL, "messages": messages}).json()["tokens"]
        else:
            bodies.append(("/v1/completions", {"model": TINY_MODEL, "prompt": words, **common}))
            ids = http.post("/tokenize", json={"model": TINY_MODEL, "prompt": words}).json()["tokens"]
        prompt_ids.append(ids)
    # What each prompt must produce, from one non-streamed request over the same token ids.
    reference = http.post(
        "/v1/completions",
        json={"model": TINY_MODEL, "prompt": prompt_ids, **{**common, "stream": False}},
    ).json()
    expected = [c["text"] for c in reference["choices"]]
    assert len(set(expected)) > 1  # different prompts, different outputs: mix-ups would show

    async def run_all():
        limits = httpx.Limits(max_connections=n + 5)
        async with httpx.AsyncClient(
            base_url=base_url, timeout=120, limits=limits, headers=auth_headers
        ) as client:
            return await asyncio.gather(*(_stream_text(client, url, body) for url, body in bodies))

    results = asyncio.run(run_all())
    assert [text for text, _ in results] == expected
    assert len({rid for _, rid in results}) == n
