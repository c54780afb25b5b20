"""No secret in the database file or the logs: a whole key lifecycle with every logger at DEBUG
(SQLAlchemy's statement log included), then a search of the SQLite files and the captured log for
each secret issued. The session does the same for every secret of the whole suite at its end
(tests/conftest.py), this test pins it down where verbose logging is on."""

import asyncio
import logging

import httpx

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.security import keys
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from tests import issued


def test_no_secret_reaches_the_database_or_the_logs(tmp_path, caplog):
    data = issued.data_dir_of(tmp_path / "data")
    settings = Settings(models={"m": "/nonexistent"}, data_dir=str(data), lockout_failures=0)
    access = build_access(settings)
    app = create_app(settings, identity=IdentityStage(access))
    secrets = [issued.record(keys.generate().secret)]
    bootstrap(access.store, secrets[0])

    async def lifecycle():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            root = {"Authorization": f"Bearer {secrets[0]}"}
            await c.post("/admin/teams", json={"name": "ml"}, headers=root)
            await c.post("/admin/users", json={"name": "eve", "team": "ml"}, headers=root)
            made = (
                await c.post("/admin/keys", json={"name": "e", "user": "eve", "team": "ml"}, headers=root)
            ).json()
            secrets.append(made["secret"])
            rotated = (
                await c.post(
                    f"/admin/keys/{made['key']['id']}/rotate", json={"grace_seconds": 60}, headers=root
                )
            ).json()
            secrets.append(rotated["secret"])
            for secret in secrets:  # used, successfully
                await c.get("/admin/whoami", headers={"Authorization": f"Bearer {secret}"})
            await c.post(f"/admin/keys/{made['key']['id']}/revoke", headers=root)
            refused = [*secrets[1:], secrets[0][:-1] + "x", issued.record(keys.generate().secret)]
            for secret in refused:  # revoked, tampered, unknown: refused, and still not logged
                r = await c.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
                assert r.status_code == 401 and secret not in r.text
            secrets.extend(refused[-2:])
            # a key sent where none belongs: in the body of a request that fails validation
            r = await c.post("/admin/teams", json={"name": secrets[1]}, headers=root)
            assert r.status_code == 400 and secrets[1] not in r.text

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)  # every statement and parameter
        try:
            asyncio.run(lifecycle())
        finally:
            logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    access.store.close()
    for s in secrets:
        issued.record(s)

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "api_key_secrets" in logged  # the statement log was really on
    files = [f for f in data.rglob("*") if f.is_file()]
    assert any(f.name.startswith("stratus.db") for f in files)
    for secret in secrets:
        body = secret.split("_", 1)[1]
        assert secret not in logged and body not in logged
        for f in files:
            blob = f.read_bytes()
            assert secret.encode() not in blob and body.encode() not in blob, f"{secret[:22]}... in {f}"


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_admin_bodies_are_never_kept_for_content_logging(tmp_path):
    """An admin in a team that logs content stores a secret and an upstream's api_key: neither
    body is kept on the request (only a generation route's is, for content logging)."""
    data = issued.data_dir_of(tmp_path / "data")
    settings = Settings(models={"m": "/nonexistent"}, data_dir=str(data), lockout_failures=0)
    access = build_access(settings)
    app = create_app(settings, identity=IdentityStage(access))
    root_secret = issued.record(bootstrap(access.store).generated_secret)
    value, api_key = "hunter2-" + "v" * 24, "upstream-" + "k" * 24
    kept: dict[str, object] = {}

    async def capture(scope, receive, send):  # the request's context, as the stages saw it
        await app(scope, receive, send)
        ctx = scope.get("state", {}).get("ctx")
        if ctx is not None:
            kept[f"{scope['method']} {scope['path']}"] = ctx.body

    async def calls():
        transport = httpx.ASGITransport(app=capture)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            root = {"Authorization": f"Bearer {root_secret}"}
            assert (await c.post("/admin/teams", json={"name": "ops"}, headers=root)).status_code == 201
            r = await c.put("/admin/teams/ops/content-logging", json={"enabled": True}, headers=root)
            assert r.status_code == 200
            r = await c.post(
                "/admin/users", json={"name": "op", "role": "admin", "team": "ops"}, headers=root
            )
            assert r.status_code == 201, r.text
            made = await c.post("/admin/keys", json={"name": "o", "user": "op", "team": "ops"}, headers=root)
            op = {"Authorization": f"Bearer {issued.record(made.json()['secret'])}"}
            r = await c.put("/admin/secrets/hook/x", json={"value": value}, headers=op)
            assert r.status_code == 200, r.text
            upstream = {"name": "u", "model": "m-up", "base_url": "http://127.0.0.1:9/v1"}
            r = await c.post(
                "/admin/upstreams", json={**upstream, "upstream_model": "x", "api_key": api_key}, headers=op
            )
            assert r.status_code == 201, r.text
            await c.post("/v1/chat/completions", json=CHAT, headers=op)

    asyncio.run(calls())
    access.store.close()
    assert kept["PUT /admin/secrets/hook/x"] is None
    assert kept["POST /admin/upstreams"] is None
    assert kept["POST /v1/chat/completions"] == CHAT  # the one body content logging reads
