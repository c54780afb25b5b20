"""Two small ASGI middlewares: the request context (metrics and the record step) and the body limit.

Both are plain ASGI rather than Starlette's BaseHTTPMiddleware, so streamed responses pass
through untouched and a client disconnect still reaches the endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stratus.audit.recorder import AuditUnavailable, audit_unavailable
from stratus.observe import tracing
from stratus.observe.access_log import AccessLog
from stratus.observe.logs import request_id_var
from stratus.observe.tracing import Tracing
from stratus.request.context import RequestContext
from stratus.request.errors import APIError
from stratus.security.keys import key_prefix

if TYPE_CHECKING:
    from stratus.api.state import AppState

log = logging.getLogger("stratus.api")


class StreamRefused(Exception):
    """Raised from `send` into a stream refused with 503 (its opening audit record could not be
    written), so that its producer stops and closes its generation. Ends in the middleware."""


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
        if _headers_too_large(scope):
            await _HEADERS_TOO_LARGE.response()(scope, receive, send)
            return
        ctx = RequestContext.from_scope(scope, key_prefix)
        token = request_id_var.set(ctx.request_id)  # on every log line while the request runs
        traces = _UNTRACED if ctx.path.startswith(UNTRACED_PATHS) else self.state.tracing
        try:
            with traces.request(ctx.headers, ctx.method, _span_start(ctx)) as root:
                try:
                    await self._handle(scope, receive, send, ctx)
                finally:
                    _span_end(root, ctx)
        finally:
            request_id_var.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, ctx: RequestContext) -> None:
        scope.setdefault("state", {})["ctx"] = ctx
        request_id_header = (b"x-request-id", ctx.request_id.encode())
        recorded = refused = streaming = False
        refusals: list[Exception] = []  # why a record step failed, for the 503 it turns into
        first_byte: float | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal recorded, refused, streaming, first_byte
            if refused:
                if streaming:  # stop the producer: its cleanup aborts the generation
                    raise StreamRefused
                return
            if message["type"] == "http.response.start":
                ctx.status = message["status"]
                first_byte = time.perf_counter() - ctx.started
                # Fail closed: nothing leaves before a record is committed. A complete response is
                # recorded here; a stream gets its opening record here (its first token is already
                # in) and its closing record, with the outcome and token counts, after its last byte.
                if _is_stream(message):
                    streaming = True
                    written = await self._open(scope, ctx)
                else:
                    recorded = True
                    written = await self._record(scope, ctx, refusable=True, failures=refusals)
                if not written:
                    refused = True
                    ctx.status, ctx.outcome = 503, "error"
                    why = refusals[0] if refusals else None
                    response = (why if isinstance(why, APIError) else audit_unavailable()).response()
                    response.raw_headers.append(request_id_header)
                    await response(scope, receive, send)
                    return
                extra = [(k.encode(), v.encode()) for k, v in ctx.response_headers.items()]
                message["headers"] = [*message.get("headers", []), request_id_header, *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if not refused:
                if ctx.status is None:
                    ctx.status = 500
                ctx.outcome = "error"
                raise
            # The client has its 503. StreamRefused (Starlette re-raises it as a RuntimeError once
            # the response has started) ends here; anything else is logged, not re-raised.
            if not _caused_by(exc, StreamRefused):
                log.exception("error after refusing request %s", ctx.request_id)
        except BaseException:
            if ctx.status is None:
                ctx.status = 500
            ctx.outcome = "error"
            raise
        finally:
            if refused:  # a stopped stream's cleanup calls itself a client disconnect
                ctx.status, ctx.outcome = 503, "error"
            await self._finish(scope, ctx, recorded, first_byte, streaming and not refused)

    def _settle(self, scope: Scope, ctx: RequestContext) -> None:
        route = scope.get("route")
        ctx.route = getattr(route, "path", None) or "unmatched"
        if ctx.status is None:  # no response was started: the client left first
            ctx.status, ctx.outcome = 499, "client_disconnect"
        if ctx.outcome == "ok" and ctx.status >= 400:
            ctx.outcome = "error"

    async def _record(
        self,
        scope: Scope,
        ctx: RequestContext,
        refusable: bool,
        streamed: bool = False,
        failures: list[Exception] | None = None,
    ) -> bool:
        """The record step; False when it failed and the response can still be refused (the
        failure is appended to `failures`: an APIError says what the 503 should say)."""
        self._settle(scope, ctx)
        try:
            await self.state.pipeline.record(ctx, refusable)
        except Exception as exc:
            if failures is not None:
                failures.append(exc)
            if streamed:  # delivered already: only its opening record is in the trail
                log.exception("closing audit record of stream %s failed", ctx.request_id)
            else:
                log.exception("record hook failed for request %s", ctx.request_id)
            return not refusable
        return True

    async def _open(self, scope: Scope, ctx: RequestContext) -> bool:
        """A stream's opening record; False when it failed and the stream is to be refused."""
        audit = self.state.audit
        if audit is None:  # an unaudited gateway (--no-auth)
            return True
        self._settle(scope, ctx)
        try:
            await audit.open_stream(ctx)  # fail-open: logs and counts a lost record, never raises
        except AuditUnavailable:
            return False  # logged by the recorder
        except Exception:
            log.exception("opening audit record failed for stream %s", ctx.request_id)
            return False
        return True

    async def _finish(
        self,
        scope: Scope,
        ctx: RequestContext,
        recorded: bool,
        first_byte: float | None,
        streamed: bool = False,
    ) -> None:
        if not recorded:  # a stream's closing record, or a request that never got a response
            await self._record(scope, ctx, refusable=False, streamed=streamed)
        self._settle(scope, ctx)
        status = ctx.status
        # Only served models become label values: clients choose ctx.model, and an unbounded
        # set of labels would grow the registry without limit.
        model = ctx.model if ctx.model in self.state.registry.models else ""
        self.state.metrics.requests.labels(ctx.route, model, str(status)).inc()
        log.debug("%s %s: %s %s", ctx.method, ctx.path, status, ctx.outcome)  # with its request id
        if self.access_log is not None:
            try:
                self.access_log.write(ctx, first_byte, time.perf_counter() - ctx.started)
            except OSError:
                log.exception("access log write failed for request %s", ctx.request_id)


# Probes, scrapes and workers' heartbeats: a trace each would bury the requests' traces.
UNTRACED_PATHS = ("/health", "/ready", "/metrics", "/internal/")
_UNTRACED = Tracing.off()


def _span_start(ctx: RequestContext) -> dict[str, object]:
    """The request span's first attributes: nothing secret (the path has keys redacted; the
    credential only as its public prefix), nothing of the body."""
    return {
        "http.request.method": ctx.method,
        "url.path": ctx.path,
        "stratus.request_id": ctx.request_id,
    }


def _span_end(root: object, ctx: RequestContext) -> None:
    """What the request turned out to be, once it has ended (None: not traced)."""
    if root is None:
        return
    p = ctx.principal
    attributes = {
        "http.route": ctx.route,
        "http.response.status_code": ctx.status,
        "stratus.model": ctx.model,
        "stratus.outcome": ctx.outcome,
        "stratus.key_prefix": p.key_prefix if p is not None and p.key_prefix else ctx.credential_prefix,
        "stratus.prompt_tokens": ctx.usage.prompt_tokens if ctx.usage else None,
        "stratus.completion_tokens": ctx.usage.completion_tokens if ctx.usage else None,
    }
    for key, value in attributes.items():
        if value is not None:
            root.set_attribute(key, value)  # type: ignore[attr-defined]
    root.update_name(f"{ctx.method} {ctx.route or 'unmatched'}")  # type: ignore[attr-defined]
    if ctx.status is not None and ctx.status >= 500:
        tracing.fail(root, f"HTTP {ctx.status}")


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, kind):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


MAX_HEADER_BYTES = 8 * 1024  # one header's value (a bearer token is under 200 bytes)
MAX_HEADERS_BYTES = 32 * 1024  # all of them together

_HEADERS_TOO_LARGE = APIError(
    431,
    f"Request headers are too large (at most {MAX_HEADER_BYTES} bytes each, {MAX_HEADERS_BYTES} in all).",
    code="headers_too_large",
)


def _headers_too_large(scope: Scope) -> bool:
    total = 0
    for name, value in scope.get("headers") or ():
        if len(value) > MAX_HEADER_BYTES:
            return True
        total += len(name) + len(value)
    return total > MAX_HEADERS_BYTES


def _is_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


class BodyLimitMiddleware:
    """Bounds a request body as the app reads it: over `max_bytes` (declared or sent) is a 413,
    a body not all received within `read_timeout` seconds a 408.

    Nothing is read before the route asks for the body, and routes ask only once the caller is
    identified: an unauthenticated caller is refused from its headers, holding no body memory,
    and every refusal is an ordinary request error (audited, counted). Later `receive` calls
    (disconnect watchers) pass straight through once the body is complete.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"Request body is larger than the limit of {self.max_bytes} bytes; send a smaller "
            "request (the server's --max-body-bytes sets the limit).",
            code="request_too_large",
        )

    def _too_slow(self) -> APIError:
        return APIError(
            408,
            f"The request body did not arrive within {self.read_timeout:g} s; send it at once "
            "(the server's --body-read-timeout sets the limit).",
            code="request_timeout",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
        size = 0
        deadline: float | None = None
        complete = False

        async def bounded() -> Message:
            nonlocal size, deadline, complete
            if complete:
                return await receive()
            if declared is not None and declared > self.max_bytes:
                raise self._too_large()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.read_timeout
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise self._too_slow() from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    raise self._too_large()
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)
