#!/usr/bin/env python3
"""An OpenAI-compatible upstream that answers at once, for bench/gateway.py.

    python bench/instant_upstream.py --port 0      # prints "listening on http://127.0.0.1:PORT"

A raw asyncio protocol on uvloop (when installed), HTTP/1.1 with keep-alive: every POST gets the
same small chat completion (or, when the body asks for a stream, the same few SSE events, usage
included), every GET the model list. It parses only what it needs (the request line, the
Content-Length, whether the body says "stream": true), so on one core it answers tens of
thousands of requests a second and is never what a gateway in front of it waits for.
Standard library (and uvloop) only: the peers' venvs can run it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import time

MODEL = "instant"
USAGE = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
_COMPLETION = {
    "id": "chatcmpl-instant",
    "object": "chat.completion",
    "created": int(time.time()),
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "The capital is Paris."},
            "finish_reason": "stop",
        }
    ],
    "usage": USAGE,
}
_MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": "chatcmpl-instant",
        "object": "chat.completion.chunk",
        "created": _COMPLETION["created"],
        "model": MODEL,
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _response(content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


COMPLETE = _response(b"application/json", json.dumps(_COMPLETION, separators=(",", ":")).encode())
STREAM = _response(
    b"text/event-stream",
    _chunk({"role": "assistant", "content": ""})
    + b"".join(_chunk({"content": w}) for w in ("The ", "capital ", "is ", "Paris."))
    + _chunk({}, "stop")
    + _chunk({}, usage=USAGE)
    + b"data: [DONE]\n\n",
)
MODELS = _response(b"application/json", json.dumps(_MODELS).encode())
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_STREAM = re.compile(rb'"stream"\s*:\s*true')


class Instant(asyncio.Protocol):
    __slots__ = ("buffer", "transport")

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end]
            match = _LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"GET"):
                out.append(MODELS)
            else:
                out.append(STREAM if _STREAM.search(body) else COMPLETE)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(
            Instant, args.host, args.port, backlog=1024, reuse_address=True
        )
        port = server.sockets[0].getsockname()[1]
        print(f"listening on http://{args.host}:{port}", flush=True)
        await server.serve_forever()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
