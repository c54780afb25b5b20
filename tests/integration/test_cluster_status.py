"""GET /admin/cluster on the shared gateway: its one local replica, up, with routing numbers."""

import pytest

from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(60)


def test_cluster_status_lists_each_model_and_its_replicas(http):
    http.post(
        "/v1/completions", json={"model": TINY_MODEL, "prompt": "hi", "max_tokens": 2}
    ).raise_for_status()
    r = http.get("/admin/cluster")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    (model,) = [m for m in r.json()["models"] if m["model"] == TINY_MODEL]
    assert model["state"] == "ready" and model["available"] and model["policy"] == "capacity"
    assert model["retries"] == 0 and model["migrations"] == 0
    (replica,) = model["replicas"]
    assert replica["kind"] == "local" and replica["state"] == "up"
    assert replica["breaker"]["state"] == "closed" and replica["served"] >= 1
    assert replica["capacity"] > 0 and replica["outstanding_requests"] == 0


def test_cluster_status_needs_status_read(base_url):
    import httpx

    assert httpx.get(base_url + "/admin/cluster").status_code == 401
