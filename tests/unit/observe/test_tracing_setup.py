"""Tracing with the SDK's in-memory exporter: nesting, propagation, streams, and the no-op."""

from __future__ import annotations

import asyncio

import pytest

from stratus.observe import tracing
from stratus.observe.tracing import Tracing, check_endpoint, traces_url

pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

pytestmark = pytest.mark.timeout(30)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def memory():
    exporter = InMemorySpanExporter()
    t = Tracing.with_processor(SimpleSpanProcessor(exporter), "test")
    yield t, exporter
    t.shutdown()


def test_off_everything_is_a_no_op():
    off = Tracing.off()
    assert not off.enabled
    with off.request([], "GET") as root:
        assert root is None
        with tracing.span("stratus.admit") as child:
            assert child is None
        assert tracing.start("x") is None
        assert tracing.inject({"a": "b"}) == {"a": "b"}
        assert tracing.current_ids() is None
    assert Tracing.otlp(None, "x").enabled is False


def test_endpoint_checks():
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"
    for bad in ("127.0.0.1:4318", "ftp://c", "http://"):
        with pytest.raises(ValueError):
            check_endpoint(bad)
    check_endpoint("http://127.0.0.1:4318")  # the extra is installed in the test environment


def test_a_request_span_continues_the_callers_trace_and_nests_its_steps(memory):
    t, exporter = memory
    headers = [(b"traceparent", TRACEPARENT.encode())]
    with t.request(headers, "POST", {"stratus.request_id": "r1", "skipped": None}) as root:
        with tracing.span("stratus.identify"):
            pass
        with tracing.span("stratus.admit", {"stratus.prompt_tokens": 3}):
            outbound = tracing.inject({})
            trace_id, span_id = tracing.current_ids()
        root.update_name("POST /v1/chat/completions")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /v1/chat/completions", "stratus.identify", "stratus.admit"}
    root_span = spans["POST /v1/chat/completions"]
    assert root_span.context.trace_id == int(TRACEPARENT.split("-")[1], 16)  # continued
    assert root_span.parent.span_id == int(TRACEPARENT.split("-")[2], 16)
    assert root_span.attributes["stratus.request_id"] == "r1" and "skipped" not in root_span.attributes
    admit = spans["stratus.admit"]
    assert admit.parent.span_id == root_span.context.span_id
    assert spans["stratus.identify"].parent.span_id == root_span.context.span_id
    # the outbound header names the span that was current: admit
    assert outbound["traceparent"] == f"00-{admit.context.trace_id:032x}-{admit.context.span_id:016x}-01"
    assert (trace_id, span_id) == (f"{admit.context.trace_id:032x}", f"{admit.context.span_id:016x}")
    assert tracing.current_ids() is None  # detached after the request


def test_a_refusal_is_not_an_error_but_a_failure_is(memory):
    from opentelemetry.trace import StatusCode

    class Refused(Exception):
        status = 429

    t, exporter = memory
    with t.request([], "POST"):
        with pytest.raises(Refused), tracing.span("stratus.admit"):
            raise Refused("quota")
        with pytest.raises(RuntimeError), tracing.span("stratus.record"):
            raise RuntimeError("disk full: /secret/path")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["stratus.admit"].status.status_code == StatusCode.UNSET
    assert spans["stratus.admit"].attributes["stratus.refused"] == 429
    record = spans["stratus.record"]
    assert record.status.status_code == StatusCode.ERROR
    assert record.status.description == "RuntimeError"  # the type, not the message
    assert not record.events  # no exception event with its message


def test_a_stream_runs_each_step_under_its_span(memory):
    t, exporter = memory
    seen: list[str] = []

    async def replica():
        for i in range(3):
            seen.append(tracing.inject({})["traceparent"])  # what a worker call would send
            await asyncio.sleep(0)
            yield i

    async def main():
        with t.request([], "POST"):
            started = tracing.start("stratus.generate")
            items = [i async for i in tracing.stream_under(started, replica())]
            started.record("engine.decode", 1_000, 2_000)
            started.end({"stratus.completion_tokens": 3})
            with tracing.span("stratus.settle"):  # after the stream: not under generate
                pass
        return items

    assert asyncio.run(main()) == [0, 1, 2]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    generate = spans["stratus.generate"]
    assert {p.split("-")[2] for p in seen} == {f"{generate.context.span_id:016x}"}
    assert spans["engine.decode"].parent.span_id == generate.context.span_id
    assert spans["engine.decode"].start_time == 1_000 and spans["engine.decode"].end_time == 2_000
    assert spans["stratus.settle"].parent.span_id == generate.parent.span_id
    assert generate.attributes["stratus.completion_tokens"] == 3


def test_without_opentelemetry_installed_tracing_is_a_no_op(tmp_path):
    """As where the extra (and even the API) is absent: imports of opentelemetry fail."""
    import subprocess
    import sys

    script = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from stratus.observe import tracing
from stratus.observe.logs import JsonFormatter
from stratus.config import ConfigError, load_settings
t = tracing.Tracing.otlp(None, "x")
with t.request([(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], "GET") as root:
    assert root is None
    with tracing.span("s") as s:
        assert s is None
    assert tracing.inject({}) == {} and tracing.current_ids() is None
try:
    tracing.Tracing.otlp("http://127.0.0.1:4318", "x")
except tracing.TracingUnavailable as exc:
    assert "stratus[otel]" in str(exc)
else:
    raise AssertionError("an endpoint without the extra must fail")
try:
    load_settings({"otlp_endpoint": "http://127.0.0.1:4318"}, env={})
except ConfigError as exc:
    assert "stratus[otel]" in str(exc)
else:
    raise AssertionError("the setting must be refused")
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
