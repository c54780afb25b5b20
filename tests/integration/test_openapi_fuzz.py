"""schemathesis against /openapi.json: no 5xx, and every response matches the document.

Every operation gets a bounded number of generated requests, valid ones (positive) and invalid
ones (negative), sent once with the admin's key and once with an ordinary member's (a user in a
team granted the model: most /admin operations answer it 403, the /v1 ones serve it). The
document is fetched from the live server; only the request side is narrowed here (the served
model's name, small token budgets) so valid requests reach the engine and stay quick. Responses are checked against the document as served.
"""

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests import issued
from tests.conftest import TINY_MODEL

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SMALL = {"max_tokens": 4, "max_completion_tokens": 4, "max_output_tokens": 4, "n": 2, "best_of": 2}
# Generated URLs would become the shared server's alert webhook, and its alerts would then be
# POSTed to whatever host was generated: traffic off this machine. tests/integration/
# test_audit_review.py covers the operation against a loopback receiver.
# Likewise a generated upstream base URL (tests/integration/test_cluster_upstream.py covers it
# against a loopback stratus); it would also add models to the shared server's /v1/models.
NOT_FUZZED = {("PUT", "/admin/alerts/webhook"), ("POST", "/admin/upstreams")}


def narrow_requests(doc: dict) -> dict:
    for name, model in doc["components"]["schemas"].items():
        if not name.endswith("Request"):
            continue
        props = model.get("properties", {})
        if "model" in props:
            props["model"] = {"type": "string", "enum": [TINY_MODEL]}
        for field, top in SMALL.items():
            if field in props:
                props[field] = {"type": "integer", "minimum": 1, "maximum": top}
        for cap in ("max_tokens", "max_output_tokens"):  # without one, up to the context window
            if cap in props:
                model["required"] = sorted({*model.get("required", []), cap})
    return doc


@pytest.fixture(scope="module")
def member_headers(base_url, auth_headers) -> dict[str, str]:
    """A member of a team that is granted the model, and their key."""
    with httpx.Client(base_url=base_url, timeout=60, headers=auth_headers) as http:
        return make_member(http)


def make_member(http: httpx.Client) -> dict[str, str]:
    assert http.post("/admin/teams", json={"name": "fuzz-team"}).status_code == 201
    assert http.put(f"/admin/teams/fuzz-team/models/{TINY_MODEL}").status_code == 200
    user = {"name": "fuzz-member", "role": "member", "team": "fuzz-team"}
    assert http.post("/admin/users", json=user).status_code == 201
    r = http.post("/admin/keys", json={"name": "fuzz", "user": "fuzz-member", "team": "fuzz-team"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {issued.record(r.json()['secret'])}"}


@pytest.mark.parametrize("role", ["member", "admin"])  # the member first: the admin's run may change anything
def test_openapi_document_holds_under_fuzzing(http, base_url, auth_headers, member_headers, role):
    headers = member_headers if role == "member" else auth_headers
    if role == "member":  # the grant reaches a cached credential within the cache TTL
        deadline = time.monotonic() + 30
        while not http.get("/v1/models", headers=headers).json()["data"]:
            assert time.monotonic() < deadline, "the member's grant never took effect"
            time.sleep(0.2)
    doc = http.get("/openapi.json").json()
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/metrics",
    } <= set(doc["paths"])
    schema = schemathesis.openapi.from_dict(narrow_requests(doc))
    failures = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        for mode, examples in EXAMPLES.items():
            if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
                continue  # nothing to get wrong in a GET without a body

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=base_url, timeout=60, headers=headers)
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except Exception as exc:  # collect all operations' failures, then report them together
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert operations == sum(len(ops) for ops in doc["paths"].values()) >= 9 + 19  # /v1 ... and /admin
    assert not failures, "\n\n".join(failures)
