"""POST /admin/models with tensor_parallel_size: a model added at run time is split over ranks
(its layout in /admin/cluster), answers as the one-process replica does, and its ranks leave
with it; a size that does not divide its heads fails to load, saying why."""

from __future__ import annotations

import time

import httpx
import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.engine import EngineConfig
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from tests import issued
from tests.live_server import LiveServer

pytestmark = [pytest.mark.timeout(300)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def settled(c: httpx.Client, name: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        model = next(m for m in c.get("/admin/models").json()["data"] if m["name"] == name)
        if model["state"] not in ("downloading", "loading"):
            return model
        assert time.monotonic() < deadline, model
        time.sleep(0.1)


def test_a_model_added_split_over_two_ranks(tiny_checkpoint, tmp_path_factory, admin_key):
    settings = Settings(
        models={"one": str(tiny_checkpoint)},
        data_dir=str(issued.data_dir_of(tmp_path_factory.mktemp("parallel-admin"))),
        engine_isolation="thread",
        engine=EngineConfig(kv_cache_memory_mb=8),
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    headers = {"Authorization": f"Bearer {admin_key}"}
    with (
        LiveServer(create_app(settings, identity=IdentityStage(access))) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as c,
    ):
        server.wait_ready()
        body = {"name": "two", "model": str(tiny_checkpoint), "tensor_parallel_size": 2}
        assert c.post("/admin/models", json=body).status_code == 202
        assert settled(c, "two")["state"] == "ready"
        replicas = {m["model"]: m["replicas"] for m in c.get("/admin/cluster").json()["models"]}
        layout = replicas["two"][0]["layout"]
        assert (layout["tensor_parallel_size"], len(layout["ranks"])) == (2, 2)
        pids = [r["pid"] for r in layout["ranks"][1:]]  # rank 0 is this process (thread isolation)
        assert all(alive(p) for p in pids)
        answers = []
        for model in ("one", "two"):
            ask = {"model": model, "prompt": "Simple is better than", "max_tokens": 16, "temperature": 0}
            r = c.post("/v1/completions", json=ask)
            assert r.status_code == 200, r.text
            answers.append(r.json()["choices"][0]["text"])
        assert answers[0] == answers[1]
        assert c.delete("/admin/models/two").status_code == 200
        deadline = time.monotonic() + 60
        while any(alive(p) for p in pids):  # its ranks leave with it
            assert time.monotonic() < deadline
            time.sleep(0.1)

        body = {"name": "three", "model": str(tiny_checkpoint), "tensor_parallel_size": 3}
        assert c.post("/admin/models", json=body).status_code == 202
        failed = settled(c, "three")
        assert failed["state"] == "failed" and "tensor_parallel_size=3 does not divide" in failed["error"]
        bad = c.post("/admin/models", json={**body, "name": "four", "tensor_parallel_size": 0})
        assert bad.status_code == 400
