"""Two small ASGI middlewares: the request context (metrics and the record step) and the body limit.

Both are plain ASGI rather than Starlette's BaseHTTPMiddleware, so streamed responses pass
through untouched and a client disconnect still reaches the endpoint.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stratus.api.audit import audit_unavailable
from stratus.api.errors import APIError
from stratus.api.pipeline import RequestContext
from stratus.observe.access_log import AccessLog

if TYPE_CHECKING:
    from stratus.api.state import AppState

log = logging.getLogger("stratus.api")


class RequestContextMiddleware:
    """Creates the RequestContext, then counts and records the request once it has ended."""

    def __init__(self, app: ASGIApp, state: AppState):
        self.app = app
        self.state = state
        settings = state.settings
        self.access_log = AccessLog(settings.access_log_file) if settings.access_log else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = RequestContext.from_scope(scope)
        scope.setdefault("state", {})["ctx"] = ctx
        request_id_header = (b"x-request-id", ctx.request_id.encode())
        recorded = refused = False
        first_byte: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal recorded, refused, first_byte
            if refused:
                return
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                first_byte = time.perf_counter() - ctx.started
                # A complete response is recorded before its first byte leaves, so a failed audit
                # write can still refuse it (fail closed); a stream is recorded after its last byte.
                if not _is_stream(message):
                    recorded = True
                    if not await self._record(scope, ctx, refusable=True):
                        refused = True
                        ctx.status, ctx.outcome = 503, "error"
                        response = audit_unavailable().response()
                        response.raw_headers.append(request_id_header)
                        await response(scope, receive, send)
                        return
                extra = [(k.encode(), v.encode()) for k, v in ctx.response_headers.items()]
                message["headers"] = [*message.get("headers", []), request_id_header, *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            if ctx.status is None:
                ctx.status = 500
            ctx.outcome = "error"
            raise
        finally:
            await self._finish(scope, ctx, recorded, first_byte)

    def _settle(self, scope: Scope, ctx: RequestContext) -> None:
        route = scope.get("route")
        ctx.route = getattr(route, "path", None) or "unmatched"
        if ctx.status is None:  # no response was started: the client left first
            ctx.status, ctx.outcome = 499, "client_disconnect"
        if ctx.outcome == "ok" and ctx.status >= 400:
            ctx.outcome = "error"

    async def _record(self, scope: Scope, ctx: RequestContext, refusable: bool) -> bool:
        """Step 8's record; False when it failed and the response can still be refused."""
        self._settle(scope, ctx)
        try:
            await self.state.hooks.record(ctx)
        except Exception:
            log.exception("record hook failed for request %s", ctx.request_id)
            return not refusable
        return True

    async def _finish(
        self, scope: Scope, ctx: RequestContext, recorded: bool, first_byte: float | None
    ) -> None:
        if not recorded:
            await self._record(scope, ctx, refusable=False)
        self._settle(scope, ctx)
        status = ctx.status
        # Only served models become label values: clients choose ctx.model, and an unbounded
        # set of labels would grow the registry without limit.
        model = ctx.model if ctx.model in self.state.registry.models else ""
        self.state.metrics.requests.labels(ctx.route, model, str(status)).inc()
        if self.access_log is not None:
            try:
                self.access_log.write(ctx, first_byte, time.perf_counter() - ctx.started)
            except OSError:
                log.exception("access log write failed for request %s", ctx.request_id)


def _is_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413, by Content-Length and by what actually arrives.

    The body is read here (the JSON endpoints read it whole anyway) and replayed to the app;
    later `receive` calls go to the server, so disconnects are still seen downstream.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"Request body is larger than the limit of {self.max_bytes} bytes; send a smaller "
            "request (the server's --max-body-bytes sets the limit).",
            code="request_too_large",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._too_large().response()(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large().response()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
