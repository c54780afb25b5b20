"""OpenTelemetry traces: one span per request, a child span per step, W3C trace context passed on.

Off by default. `--otlp-endpoint URL` (STRATUS_OTLP_ENDPOINT) exports spans over OTLP/HTTP
(protobuf) to a collector, Jaeger, Tempo, …; it needs the optional extra
`pip install stratus[otel]` (opentelemetry-api, -sdk, -exporter-otlp-proto-http). Without the
extra, or without an endpoint, every function here is a no-op that costs a context-variable read.

    tracing = Tracing.otlp("http://127.0.0.1:4318", "stratus-gateway")
    with tracing.request(headers, "POST /v1/chat/completions", {...}) as root:   # the middleware
        with span("stratus.admit"):                                               # any step
            ...
        headers = inject({})                  # an outbound call: adds `traceparent`

The request span is made current for the task handling the request (a context variable, copied
into the tasks it starts), so `span()` anywhere below nests under it and `inject()` carries it
to workers and upstreams. Attributes hold ids, names, counts and key prefixes: never a secret,
a prompt or a completion.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger("stratus.tracing")

try:  # the API comes with FastAPI; the SDK and the exporter with the extra
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
except ImportError:  # pragma: no cover - exercised where the API is absent
    otel_context = otel_trace = None  # type: ignore[assignment]
    _PROPAGATOR = None

INSTALL_HINT = "tracing needs the optional extra: pip install 'stratus[otel]'"
Attributes = Mapping[str, Any]
T = TypeVar("T")


class TracingUnavailable(RuntimeError):
    """An OTLP endpoint was given but the OpenTelemetry SDK or exporter is not installed."""


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: `endpoint` as given when it has a path, else `/v1/traces` on it."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the OTLP endpoint must be an http(s) URL, not {endpoint!r}")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + "/v1/traces"


def check_endpoint(endpoint: str) -> None:
    """ValueError when `endpoint` is not an http(s) URL or the extra is not installed."""
    traces_url(endpoint)
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ValueError(INSTALL_HINT) from None


class Tracing:
    """The spans of one server (a gateway app or a worker): a tracer provider of its own, never
    the process-global one, so that several apps in one process (tests) keep theirs apart."""

    def __init__(self, provider: Any = None):
        self.provider = provider
        self.tracer = provider.get_tracer("stratus") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls()

    @classmethod
    def otlp(cls, endpoint: str | None, service: str) -> Tracing:
        """Spans batched and sent to `endpoint` over OTLP/HTTP; off when `endpoint` is None.
        Raises TracingUnavailable without the extra, ValueError for a URL that is not http(s)."""
        if not endpoint:
            return cls.off()
        url = traces_url(endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingUnavailable(f"--otlp-endpoint: {INSTALL_HINT} ({exc})") from None
        # Headers (a collector's token) come from OTEL_EXPORTER_OTLP_HEADERS, as for any OTel SDK.
        return cls.with_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)), service)

    @classmethod
    def with_processor(cls, processor: Any, service: str) -> Tracing:
        """A provider with one span processor (tests: a SimpleSpanProcessor over an in-memory exporter)."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError as exc:
            raise TracingUnavailable(f"{INSTALL_HINT} ({exc})") from None
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(processor)
        return cls(provider)

    @contextlib.contextmanager
    def request(
        self,
        headers: Sequence[tuple[bytes, bytes]] | None,
        name: str,
        attributes: Attributes | None = None,
    ) -> Iterator[Any]:
        """A server span for one incoming request, continuing the caller's `traceparent` if it
        sent one, current until the block ends. Yields the span (None when tracing is off)."""
        if self.tracer is None:
            yield None
            return
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers or ()}
        parent = _PROPAGATOR.extract(carrier)
        root = self.tracer.start_span(
            name,
            context=parent,
            kind=otel_trace.SpanKind.SERVER,
            attributes=_clean(attributes),
            record_exception=False,
        )
        token_tracing = _active.set(self)
        token = otel_context.attach(otel_trace.set_span_in_context(root, parent))
        try:
            yield root
        except BaseException as exc:
            _fail(root, exc)
            raise
        finally:
            otel_context.detach(token)
            _active.reset(token_tracing)
            root.end()

    def shutdown(self) -> None:
        """Send what is buffered and stop the exporter (at server shutdown)."""
        if self.provider is not None:
            try:
                self.provider.shutdown()
            except Exception:  # a collector that is down must not fail the shutdown
                log.warning("could not flush the last spans to the OTLP endpoint", exc_info=True)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return bool(self.provider.force_flush(timeout_ms)) if self.provider is not None else True


_active: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar("stratus_tracing", default=None)


def _clean(attributes: Attributes | None) -> dict[str, Any]:
    """OTel attribute values: str, bool, int, float; None dropped."""
    return {k: v for k, v in (attributes or {}).items() if isinstance(v, (str, bool, int, float))}


def _fail(s: Any, exc: BaseException) -> None:
    """Mark a span failed by the exception's type only: its message may quote the request."""
    from opentelemetry.trace import Status, StatusCode

    status = getattr(exc, "status", None)
    if isinstance(status, int) and status < 500:  # a refusal (401, 429, …) is the caller's, not ours
        s.set_attribute("stratus.refused", status)
        return
    s.set_attribute("error.type", type(exc).__name__)
    s.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def fail(s: Any, why: str) -> None:
    """Mark a span failed (a 5xx answer): `why` names the failure, never the request's data."""
    if s is None:
        return
    from opentelemetry.trace import Status, StatusCode

    s.set_status(Status(StatusCode.ERROR, why))


def enabled() -> bool:
    """Whether this task handles a traced request."""
    return _active.get() is not None


@contextlib.contextmanager
def span(name: str, attributes: Attributes | None = None) -> Iterator[Any]:
    """A child of the current span, current itself until the block ends; None (and nothing
    recorded) outside a traced request. Never use it across a `yield` of an async generator:
    see `stream_under` for streams."""
    tracing = _active.get()
    if tracing is None or tracing.tracer is None:
        yield None
        return
    with tracing.tracer.start_as_current_span(
        name, attributes=_clean(attributes), record_exception=False, set_status_on_exception=False
    ) as s:
        try:
            yield s
        except BaseException as exc:
            _fail(s, exc)
            raise


class Started:
    """A span from `start`, not current anywhere: for work that crosses `yield`s (a stream).
    Its children and its end need no context, so they work from any task."""

    __slots__ = ("span", "tracer")

    def __init__(self, span: Any, tracer: Any):
        self.span, self.tracer = span, tracer

    def record(self, name: str, start_ns: int, end_ns: int, attributes: Attributes | None = None) -> None:
        """A finished child span from times measured elsewhere (`time.time_ns()` values): the
        engine's first token, its last."""
        child = self.tracer.start_span(
            name,
            context=otel_trace.set_span_in_context(self.span),
            attributes=_clean(attributes),
            start_time=start_ns,
        )
        child.end(end_time=max(end_ns, start_ns))

    def end(self, attributes: Attributes | None = None, error: BaseException | None = None) -> None:
        """End it with its final attributes and the exception that ended it, if any."""
        for key, value in _clean(attributes).items():
            self.span.set_attribute(key, value)
        if error is not None:
            _fail(self.span, error)
        self.span.end()


def start(name: str, attributes: Attributes | None = None) -> Started | None:
    """A child of the current span that is not made current (see `Started`); None outside a
    traced request."""
    tracing = _active.get()
    if tracing is None or tracing.tracer is None:
        return None
    return Started(tracing.tracer.start_span(name, attributes=_clean(attributes)), tracing.tracer)


async def stream_under(parent: Started | None, stream: AsyncIterator[T]) -> AsyncIterator[T]:
    """`stream`'s items, each step of it run with `parent` as the current span, so that what it
    calls (a worker, a retry on another replica) nests under `parent` and carries it on. The
    context is attached and detached around each step, never across a `yield`."""
    if parent is None:
        async with contextlib.aclosing(stream) as same:  # type: ignore[type-var]
            async for item in same:
                yield item
        return
    ctx = otel_trace.set_span_in_context(parent.span)
    async with contextlib.aclosing(stream) as inner:  # type: ignore[type-var]
        while True:
            token = otel_context.attach(ctx)
            try:
                item = await anext(inner)
            except StopAsyncIteration:
                return
            finally:
                otel_context.detach(token)
            yield item


def current() -> Any:
    """The current span of a traced request (to add attributes to), else None."""
    if otel_trace is None or _active.get() is None:
        return None
    s = otel_trace.get_current_span()
    return s if s.get_span_context().is_valid else None


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add `traceparent` (and `tracestate`) of the current span to an outbound call's headers;
    unchanged outside a traced request. Returns `headers`."""
    if _PROPAGATOR is not None and _active.get() is not None:
        _PROPAGATOR.inject(headers)
    return headers


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current recorded span, for log lines; else None."""
    if otel_trace is None or _active.get() is None:
        return None
    ctx = otel_trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
