"""OpenTelemetry traces over real HTTP: a gateway and a `stratus worker` export to an OTLP/HTTP
receiver on loopback, which decodes each export request with the opentelemetry-proto classes.

One streamed chat request through the gateway (access control on) and a worker makes one trace:
the gateway's request span, its steps (identify, route, admit, generate with the engine's
queue+prefill and decode, settle, record) and the worker's span, a child of generate through
the `traceparent` header. No attribute of any span holds the key, the cluster secret or the prompt.
An upstream called by the gateway receives the trace context too.
"""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from stratus.config import Settings
from tests import issued
from tests.conftest import TINY_MODEL
from tests.live_server import LiveServer
from tests.recording_server import RecordingServer
from tests.waiting import wait_for
from tests.worker_process import WorkerProcess

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

PROMPT = "Trace this request through the gateway and its worker please"


class Collector:
    """An OTLP/HTTP receiver: POST /v1/traces with a protobuf ExportTraceServiceRequest."""

    def __init__(self):
        self.server = RecordingServer(lambda _: (200, "application/x-protobuf", b""))

    def __enter__(self) -> Collector:
        self.server.__enter__()
        self.url = self.server.url
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)

    def spans(self) -> list[dict]:
        """Every span received so far, flattened: name, ids, parent, service, attributes."""
        out = []
        for got in list(self.server.requests):
            assert got.path == "/v1/traces", got.path
            assert {k.lower(): v for k, v in got.headers.items()}["content-type"] == "application/x-protobuf"
            export = ExportTraceServiceRequest()
            export.ParseFromString(got.body)
            for resource_spans in export.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        out.append(
                            {
                                "name": s.name,
                                "trace": s.trace_id.hex(),
                                "id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex() or None,
                                "service": resource.get("service.name"),
                                "attributes": {a.key: _value(a.value) for a in s.attributes},
                                "start": s.start_time_unix_nano,
                                "end": s.end_time_unix_nano,
                            }
                        )
        return out


def _value(v):
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@pytest.fixture(scope="module")
def traced_cluster(tmp_path_factory, admin_key, tiny_checkpoint):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    secret = issued.record(secrets.token_urlsafe(32))
    with Collector() as collector:
        settings = Settings(  # no model of its own: the worker serves "tiny"
            cluster_secret=secret,
            local_models=False,
            otlp_endpoint=collector.url,
            data_dir=str(issued.data_dir_of(tmp_path_factory.mktemp("traced-gw"))),
        )
        access = build_access(settings)
        bootstrap(access.store, admin_key)
        app = create_app(settings, identity=IdentityStage(access))
        registry = app.state.stratus.registry
        gateway = LiveServer(app).start()
        worker = None
        try:
            worker = WorkerProcess(
                TINY_MODEL,
                str(tiny_checkpoint),
                secret,
                *("--engine-isolation", "thread", "--gateway", gateway.url, "--heartbeat-interval", "0.5"),
                *("--otlp-endpoint", collector.url, "--log-format", "json"),
                env={"OTEL_BSP_SCHEDULE_DELAY": "100"},  # export within 0.1 s rather than 5 s
            )
            worker.wait_serving()
            wait_for(lambda: TINY_MODEL in registry.models, "the worker registered")
            yield gateway, worker, collector, secret
        finally:
            if worker is not None:
                worker.stop()
            gateway.stop()


def test_a_request_through_gateway_and_worker_is_one_trace(traced_cluster, admin_key):
    gateway, worker, collector, secret = traced_cluster
    body = {
        "model": TINY_MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 4,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {admin_key}", "X-Request-Id": "trace-test-1"}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    assert "[DONE]" in text
    assert gateway.app.state.stratus.tracing.flush()  # the gateway's batch, sent now

    def root_and_worker():
        spans = collector.spans()
        roots = [s for s in spans if s["attributes"].get("stratus.request_id") == "trace-test-1"]
        return spans, roots

    wait_for(lambda: len(root_and_worker()[1]) == 2, "the gateway's and the worker's spans", timeout=30)
    spans, roots = root_and_worker()
    root = next(s for s in roots if s["service"] == "stratus-gateway")
    served = next(s for s in roots if s["service"] == "stratus-worker")
    trace = [s for s in spans if s["trace"] == root["trace"]]
    by_name = {s["name"]: s for s in trace}

    assert root["name"] == "POST /v1/chat/completions" and root["parent"] is None
    assert root["attributes"]["http.route"] == "/v1/chat/completions"
    assert root["attributes"]["http.response.status_code"] == 200
    assert root["attributes"]["stratus.model"] == TINY_MODEL
    assert (
        root["attributes"]["stratus.key_prefix"] == admin_key[: len(root["attributes"]["stratus.key_prefix"])]
    )
    assert root["attributes"]["stratus.completion_tokens"] == 4

    for step in ("stratus.identify", "stratus.route", "stratus.admit", "stratus.generate", "stratus.settle"):
        assert by_name[step]["parent"] == root["id"], step
    assert by_name["stratus.record"]["parent"] == root["id"]
    generate = by_name["stratus.generate"]
    for engine_step in ("engine.queue_prefill", "engine.decode"):
        assert by_name[engine_step]["parent"] == generate["id"]
    assert by_name["engine.queue_prefill"]["end"] <= by_name["engine.decode"]["start"] + 1
    # The worker continued the trace under generate (traceparent), and knows the request id.
    assert served["trace"] == root["trace"] and served["parent"] == generate["id"]
    assert served["name"] == "POST /internal/v1/generate"
    assert served["attributes"]["stratus.completion_tokens"] == 4

    dumped = json.dumps(spans)
    for forbidden in (admin_key, secret, PROMPT, "Bearer"):
        assert forbidden not in dumped
    # The worker's JSON log lines are JSON; any it wrote inside the request carry the gateway's id.
    for line in worker.lines:
        if line.startswith("{"):
            record = json.loads(line)
            assert {"ts", "level", "logger", "message"} <= set(record)


def test_an_upstream_call_carries_the_trace_context(traced_cluster, admin_key):
    gateway, _, collector, _ = traced_cluster
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    up_key = issued.record(secrets.token_urlsafe(24))
    with RecordingServer(lambda _: (200, "application/json", json.dumps(answer).encode())) as upstream:
        admin = {"Authorization": f"Bearer {admin_key}"}
        r = httpx.post(
            gateway.url + "/admin/upstreams",
            json={
                "name": "traced-up",
                "model": "traced-up-model",
                "base_url": upstream.url + "/v1",
                "upstream_model": "up",
                "api_key": up_key,
            },
            headers=admin,
            timeout=30,
        )
        assert r.status_code in (200, 201), r.text
        body = {"model": "traced-up-model", "messages": [{"role": "user", "content": PROMPT}]}
        wait_for(
            lambda: (
                httpx.post(
                    gateway.url + "/v1/chat/completions",
                    json=body,
                    headers={**admin, "X-Request-Id": "trace-test-2"},
                    timeout=30,
                ).status_code
                == 200
            ),
            "the upstream is known",
            timeout=30,
            every=0.5,
        )
        sent = upstream.requests[-1]
    assert gateway.app.state.stratus.tracing.flush()
    traceparent = sent.headers.get("traceparent")
    assert traceparent, sent.headers
    _, trace_id, parent_id, _ = traceparent.split("-")
    spans = [s for s in collector.spans() if s["trace"] == trace_id]
    hop = next(s for s in spans if s["id"] == parent_id)
    assert hop["name"] == "stratus.upstream" and hop["attributes"]["stratus.upstream"] == "traced-up"
    root = next(s for s in spans if s["parent"] is None)
    assert root["attributes"]["stratus.request_id"] == "trace-test-2" and hop["parent"] == root["id"]
    assert sent.headers.get("Authorization") == f"Bearer {up_key}"  # the upstream's own key…
    assert up_key not in json.dumps(spans)  # …never in a span
