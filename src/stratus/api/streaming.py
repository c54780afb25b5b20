"""Server-sent events for streamed completions, and the non-streamed counterpart.

The first delta is awaited before the 200 goes out, so a request the engine refuses still gets a
proper 4xx instead of an error inside a stream. After that, each delta becomes one `data:` event;
`data: [DONE]` ends the stream. An error mid-stream is logged and sent as a `data:` event with
the OpenAI error envelope. A client that disconnects cancels the stream, which closes the
engine generators (abort) and still accounts for the tokens generated. The stream's opening
audit record is written as its 200 starts (api/middleware.py); when that fails the client gets
503 instead, and the stream is stopped before its first event: aborted, with no completion
tokens charged (none reached the client).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol

import anyio
import orjson
from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from stratus.api.generation import (
    ClientDisconnected,
    Generation,
    check_engine_failure,
    until_disconnected,
)
from stratus.engine.types import Delta
from stratus.request.context import Usage
from stratus.request.errors import APIError

log = logging.getLogger("stratus.api")

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Formatter(Protocol):
    def response(self, choices: list, usage: Usage) -> dict: ...
    def start_chunks(self, num_choices: int) -> list[dict]: ...
    def delta_chunks(self, index: int, delta: Delta) -> list[dict]: ...
    def usage_chunk(self, usage: Usage) -> dict: ...
    def error_chunk(self, body: dict) -> dict: ...


def event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content)


class SSEResponse(StreamingResponse):
    """A stream whose generator is always closed when the response ends, even on disconnect."""

    def __init__(self, content: AsyncIterator[bytes]):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def complete(request: Request, gen: Generation, fmt: Formatter) -> tuple[dict | None, Response]:
    """Non-streamed: wait for every choice. Returns (body, response); body is None on failure."""
    try:
        choices = await until_disconnected(request, gen.collect())
    except ClientDisconnected:
        gen.withheld = True
        await gen.finish("client_disconnect")
        return None, Response(status_code=499)
    except APIError:
        gen.withheld = True
        await gen.finish("aborted" if gen.outcome == "aborted" else "error")
        raise
    except Exception as exc:
        gen.withheld = True
        await gen.finish("error")
        raise check_engine_failure(exc, gen.gw.ctx.request_id) from None
    await gen.finish(deliver_later=True)
    body = fmt.response(choices, gen.usage())
    return body, JSONBody(body)


async def stream(request: Request, gen: Generation, fmt: Formatter, include_usage: bool) -> Response:
    deltas = gen.deltas()
    try:
        first = await until_disconnected(request, anext(deltas, None))
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            await deltas.aclose()
        if isinstance(exc, ClientDisconnected):
            await gen.finish("client_disconnect")
            return Response(status_code=499)
        await gen.finish("error")
        if isinstance(exc, APIError) or not isinstance(exc, Exception):
            raise
        raise check_engine_failure(exc, gen.gw.ctx.request_id) from None
    return SSEResponse(_events(gen, deltas, first, fmt, include_usage))


async def _events(
    gen: Generation,
    deltas: AsyncIterator[tuple[int, Delta]],
    first: tuple[int, Delta] | None,
    fmt: Formatter,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    outcome = None
    sent = False  # an event reached the client (a stream refused with 503 stops before any)
    try:
        for chunk in fmt.start_chunks(len(gen.choices)):
            yield event(chunk)
            sent = True
        item = first
        while item is not None:
            for chunk in fmt.delta_chunks(*item):
                yield event(chunk)
                sent = True
            item = await anext(deltas, None)
        # Charge and write the ledger row before the end of the stream reaches the client: a
        # stream the client saw finish is in the ledger even if the gateway dies right after.
        with anyio.CancelScope(shield=True):
            await gen.finish()
        if gen.outcome == "aborted":
            stopped = APIError(503, "The generation was stopped because the server is shutting down.")
            yield event(fmt.error_chunk(stopped.body()))
        elif include_usage:
            yield event(fmt.usage_chunk(gen.usage()))
        yield DONE
    except (asyncio.CancelledError, GeneratorExit):
        outcome = "client_disconnect"
        if not sent:
            gen.withheld = True  # the client got no tokens: charge the prompt only
        raise
    except Exception as exc:
        outcome = "error"
        yield event(fmt.error_chunk(check_engine_failure(exc, gen.gw.ctx.request_id).body()))
        yield DONE
    finally:
        with anyio.CancelScope(shield=True):
            await deltas.aclose()  # type: ignore[attr-defined]
            await gen.finish(outcome)
