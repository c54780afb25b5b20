"""The internal HTTP API of `stratus worker`: one engine that gateways reach over HTTP.

    POST /internal/v1/generate           a GenerateRequest (cluster/wire.py) -> NDJSON deltas
    GET  /internal/v1/health             200 {id, model, state, max_model_len, stats}; 503 if not serving
    GET  /internal/v1/checkpoint-files   {files: {name: text}, max_model_len}: what a gateway needs
                                         to tokenize and validate without the weights

Every call carries `Authorization: Bearer <cluster secret>`, compared in constant time; a
missing or wrong one is a 401 and nothing runs. A bad request is a 400 before any line is sent.
The stream is one JSON delta per line, answered at once; while the request waits in the queue or
between tokens the worker sends a keepalive line `{}` every `keepalive` seconds (readers skip it).
A failure ends it with an `{"error": ...}` line and no finish_reason: type invalid_request_error
is the request's fault (the engine refused it), anything else a replica failure. Closing the connection
aborts the request in the engine (its KV blocks are freed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stratus.cluster import wire
from stratus.cluster.checkpoint_files import read_checkpoint_files
from stratus.engine.types import RequestFailed, ValidationError
from stratus.observe import tracing
from stratus.observe.logs import request_id_var
from stratus.observe.tracing import Tracing

if TYPE_CHECKING:
    from stratus.engine import Engine

log = logging.getLogger("stratus.worker")

PREFIX = "/internal/v1"
NDJSON = "application/x-ndjson"
KEEPALIVE = b"{}\n"  # a record with no fields: readers skip it
KEEPALIVE_INTERVAL = 5.0  # seconds; well under any sensible gateway read timeout


class APIError(Exception):
    """A refusal in the OpenAI error envelope (this package does not import stratus.api)."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}

    def __init__(self, status: int, message: str, *, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> Response:
        error = {
            "message": self.message,
            "type": self.TYPES.get(self.status, "server_error"),
            "param": self.param,
            "code": self.code,
        }
        body = orjson.dumps({"error": error})
        return Response(body, self.status, headers=self.headers, media_type="application/json")


async def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, APIError):
        return exc.response()
    if isinstance(exc, StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail)).response()
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return APIError(500, "The worker had an internal error.").response()


@dataclass
class WorkerState:
    worker_id: str
    model: str
    secret: bytes
    engine: Engine | None = None  # None while loading
    path: Path | None = None
    state: str = "loading"  # loading | serving | draining | failed
    keepalive: float = KEEPALIVE_INTERVAL  # seconds of silence before a keepalive line
    tracing: Tracing = field(default_factory=Tracing.off)  # spans of /generate (--otlp-endpoint)


def check_secret(given: str | None, secret: bytes) -> bool:
    """The bearer token against the cluster secret, in constant time."""
    if not given:
        return False
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), secret)


# The 401 of every internal API (this worker's and the gateway's /internal/v1/workers).
UNAUTHORIZED_MESSAGE = "This internal API needs the cluster secret as a bearer token."
UNAUTHORIZED_CODE = "invalid_cluster_secret"


def unauthorized() -> APIError:
    return APIError(401, UNAUTHORIZED_MESSAGE, code=UNAUTHORIZED_CODE, headers={"WWW-Authenticate": "Bearer"})


def _worker(request: Request) -> WorkerState:
    worker: WorkerState = request.app.state.worker
    if not check_secret(request.headers.get("authorization"), worker.secret):
        raise unauthorized()
    return worker


def _serving(worker: WorkerState) -> Engine:
    if worker.engine is None or worker.state == "loading":
        raise APIError(503, "The worker is still loading its model.", code="model_loading")
    if worker.state == "failed" or not worker.engine.healthy:
        raise APIError(503, "The worker's engine stopped.", code="model_failed")
    return worker.engine


router = APIRouter(prefix=PREFIX, tags=["internal"])


@router.post("/generate")
async def generate(request: Request, worker: WorkerState = Depends(_worker)) -> Response:
    engine = _serving(worker)
    if worker.state == "draining":
        raise APIError(503, "The worker is draining; send the request elsewhere.", code="draining")
    try:
        gen_request = wire.request_from_dict(orjson.loads(await request.body()))
        engine.prepare(gen_request)
    except orjson.JSONDecodeError:
        raise APIError(400, "The body is not valid JSON.") from None
    except (ValidationError, TypeError) as exc:
        raise APIError(400, str(exc), param=getattr(exc, "param", None)) from None
    # Headers go out at once, and a keepalive line while the request waits or runs, so a gateway's
    # between-records read timeout measures silence, not queueing (a busy worker is not a dead one).
    deltas = engine.generate(gen_request)
    return NDJSONResponse(_lines(deltas, gen_request.request_id, worker.keepalive))


async def _lines(deltas: AsyncIterator, request_id: str, keepalive: float) -> AsyncIterator[bytes]:
    pending: asyncio.Future | None = None
    traced = tracing.current()  # the request's span (GenerateObserved), when traced
    started, first_token_ns, tokens = time.time_ns(), None, 0
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(deltas))
            done, _ = await asyncio.wait({pending}, timeout=keepalive)
            if not done:
                yield KEEPALIVE
                continue
            try:
                delta = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            if delta.token_ids:
                first_token_ns = first_token_ns or time.time_ns()
                tokens += len(delta.token_ids)
            yield orjson.dumps(wire.delta_to_dict(delta)) + b"\n"
    except ValidationError as exc:  # the engine's refusal: the request's fault, not the worker's
        error = {"message": str(exc), "type": "invalid_request_error", "param": exc.param}
        yield orjson.dumps({"error": error}) + b"\n"
    except RequestFailed as exc:  # this request failed in the engine; the worker is fine
        error = {"message": str(exc), "type": "request_failed"}
        yield orjson.dumps({"error": error}) + b"\n"
    except Exception:
        log.exception("generation %s failed", request_id)
        error = {"message": "the worker's engine failed", "type": "server_error"}
        yield orjson.dumps({"error": error}) + b"\n"
    finally:
        with anyio.CancelScope(shield=True):
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await deltas.aclose()  # aborts the request if it is still running
            if traced is not None:
                traced.set_attribute("stratus.completion_tokens", tokens)
                if first_token_ns is not None:
                    traced.set_attribute("stratus.time_to_first_token_ms", (first_token_ns - started) / 1e6)


class NDJSONResponse(StreamingResponse):
    """A stream whose generator is always closed when the response ends, even on disconnect."""

    def __init__(self, content: AsyncIterator[bytes]):
        super().__init__(content, media_type=NDJSON, headers={"Cache-Control": "no-store"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


@router.get("/health")
async def health(worker: WorkerState = Depends(_worker)) -> Response:
    body = {"id": worker.worker_id, "model": worker.model, "state": worker.state}
    status = 200
    try:
        engine = _serving(worker)
    except APIError:
        status = 503
        if worker.state == "serving":
            body["state"] = "failed"
    else:
        body["max_model_len"] = engine.max_model_len
        body["stats"] = wire.stats_to_dict(engine.stats())
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/checkpoint-files")
async def checkpoint_files(worker: WorkerState = Depends(_worker)) -> Response:
    engine = _serving(worker)
    assert worker.path is not None
    files = read_checkpoint_files(worker.path)
    body = {"model": worker.model, "max_model_len": engine.max_model_len, "files": files}
    return Response(orjson.dumps(body), media_type="application/json")


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class GenerateObserved:
    """POST /generate, observed: the gateway's request id (X-Request-Id) on this worker's log
    lines, and a server span that continues the gateway's trace (`traceparent`) for as long as
    the stream runs. Other routes (health probes, heartbeats' peers) pass through unobserved."""

    def __init__(self, app: ASGIApp, worker: WorkerState):
        self.app = app
        self.worker = worker

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PREFIX + "/generate":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        given = next((v.decode("latin-1") for k, v in headers if k == b"x-request-id"), "")
        request_id = given if _REQUEST_ID_RE.match(given) else None
        status: int | None = None

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        worker = self.worker
        attributes = {
            "http.request.method": "POST",
            "http.route": PREFIX + "/generate",
            "stratus.worker_id": worker.worker_id,
            "stratus.model": worker.model,
            "stratus.request_id": request_id,
        }
        token = request_id_var.set(request_id)
        try:
            with worker.tracing.request(headers, "POST /internal/v1/generate", attributes) as root:
                await self.app(scope, receive, observed_send)
                if root is not None and status is not None:
                    root.set_attribute("http.response.status_code", status)
        finally:
            request_id_var.reset(token)


def create_worker_app(worker: WorkerState, lifespan=None) -> FastAPI:
    app = FastAPI(title="stratus worker", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.worker = worker
    for kind in (APIError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _error_response)
    app.include_router(router)
    app.add_middleware(GenerateObserved, worker=worker)
    return app
