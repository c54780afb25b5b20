"""Review finding: GET /admin/audit/verify reads the whole chain in a worker thread; concurrent
calls each held one of the threads that also verify API keys (asyncio.to_thread), so an auditor
repeating it could stall every new caller's authentication. Verifications now take turns."""

from __future__ import annotations

import asyncio
import threading

import httpx

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.api.routes import admin_audit
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from tests import issued


def test_verifications_take_turns(tmp_path, monkeypatch):
    settings = Settings(models={"m": "/nonexistent"}, data_dir=str(issued.data_dir_of(tmp_path)))
    access = build_access(settings)
    root = issued.record(bootstrap(access.store).generated_secret)
    app = create_app(settings, identity=IdentityStage(access))
    real = admin_audit.verify
    both_inside = threading.Barrier(2, timeout=3)  # passes only if two verifications overlap
    overlapped = []

    def verify(log, checkpoint=None):
        try:
            both_inside.wait()
            overlapped.append(True)
        except threading.BrokenBarrierError:
            overlapped.append(False)
        return real(log, checkpoint)

    monkeypatch.setattr(admin_audit, "verify", verify)

    async def calls():
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {root}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", headers=headers) as c:
            return await asyncio.gather(*(c.get("/admin/audit/verify") for _ in range(2)))

    replies = asyncio.run(calls())
    access.store.close()
    assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
    assert all(r.json()["ok"] for r in replies), [r.json() for r in replies]
    assert True not in overlapped, overlapped
