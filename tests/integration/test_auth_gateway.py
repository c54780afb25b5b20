"""Access control at the gateway: hidden models, one 401 for every bad credential, revocation and
rotation across gateways sharing a database, failing closed when the database is lost, JWTs, and
the field-level rules of /admin/*."""

import asyncio
import json
import time

import httpx
import jwt as pyjwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.audit.log import AuditLog
from stratus.audit.verify import verify
from stratus.config import Settings
from stratus.security import keys
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from stratus.store import Store, apikeys, database_url
from tests import issued
from tests.conftest import TINY_MODEL
from tests.pg import scratch_database

pytestmark = pytest.mark.timeout(300)


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


# -- against the shared gateway (real HTTP, a real engine) ----------------------------------------


def make(http, method, path, body=None, key=None, expect=200):
    r = http.request(method, path, json=body, headers=bearer(key) if key else None)
    assert r.status_code == expect, r.text
    return r.json()


def test_a_member_sees_and_uses_only_granted_models(http):
    make(http, "POST", "/admin/teams", {"name": "gw-ml"}, expect=201)
    make(http, "POST", "/admin/users", {"name": "gw-alice", "team": "gw-ml"}, expect=201)
    secret = issued.record(
        make(http, "POST", "/admin/keys", {"name": "a", "user": "gw-alice", "team": "gw-ml"}, expect=201)[
            "secret"
        ]
    )
    alice = bearer(secret)
    assert http.get("/v1/models", headers=alice).json()["data"] == []

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    hidden = http.post("/v1/chat/completions", json={"model": TINY_MODEL, **chat}, headers=alice)
    missing = http.post("/v1/chat/completions", json={"model": "no-such-model", **chat}, headers=alice)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content.replace(TINY_MODEL.encode(), b"X") == missing.content.replace(
        b"no-such-model", b"X"
    )
    card_hidden = http.get(f"/v1/models/{TINY_MODEL}", headers=alice)
    card_missing = http.get("/v1/models/no-such-model", headers=alice)
    assert card_hidden.content.replace(TINY_MODEL.encode(), b"X") == card_missing.content.replace(
        b"no-such-model", b"X"
    )

    make(http, "PUT", f"/admin/teams/gw-ml/models/{TINY_MODEL}")
    deadline = time.monotonic() + 30  # the grant reaches a cached credential within the cache TTL
    while not http.get("/v1/models", headers=alice).json()["data"]:
        assert time.monotonic() < deadline, "the grant never took effect"
        time.sleep(0.2)
    assert [m["id"] for m in http.get("/v1/models", headers=alice).json()["data"]] == [TINY_MODEL]
    r = http.post("/v1/chat/completions", json={"model": TINY_MODEL, **chat}, headers=alice)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    assert http.get("/metrics", headers=alice).status_code == 403  # a member reads no status


def test_every_bad_credential_gets_the_same_401(http, api_server):
    make(http, "POST", "/admin/users", {"name": "gw-bob"}, expect=201)
    expired = make(http, "POST", "/admin/keys", {"name": "e", "user": "gw-bob"}, expect=201)
    revoked = make(http, "POST", "/admin/keys", {"name": "r", "user": "gw-bob"}, expect=201)
    issued.record(expired["secret"]), issued.record(revoked["secret"])
    store = api_server.app.state.stratus.access.store
    with store.begin() as conn:
        conn.execute(
            sa.update(apikeys.api_keys)
            .where(apikeys.api_keys.c.id == expired["key"]["id"])
            .values(expires_at=time.time() - 1)
        )
    api_server.app.state.stratus.access.forget_key(expired["key"]["id"])
    make(http, "POST", f"/admin/keys/{revoked['key']['id']}/revoke")
    unknown = issued.record(keys.generate().secret)
    variants = {
        "missing": {},
        "empty": {"Authorization": ""},
        "not bearer": {"Authorization": f"Basic {unknown}"},
        "malformed": bearer("sk-stratus-nothex_x"),
        "unknown": bearer(unknown),
        "expired": bearer(expired["secret"]),
        "revoked": bearer(revoked["secret"]),
    }
    with httpx.Client(base_url=api_server.url, timeout=30) as anon:
        answers = {name: anon.get("/v1/models", headers=h) for name, h in variants.items()}
    assert {r.status_code for r in answers.values()} == {401}
    assert len({r.content for r in answers.values()}) == 1, {n: r.text for n, r in answers.items()}
    assert {r.headers["www-authenticate"] for r in answers.values()} == {'Bearer realm="stratus"'}


def test_cli_against_a_running_server(api_server, admin_key, monkeypatch):
    from click.testing import CliRunner

    from stratus.cli.main import main

    monkeypatch.setenv("STRATUS_API_KEY", admin_key)
    run = CliRunner()

    def cli(*args):
        result = run.invoke(main, [*args, "--url", api_server.url])
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("teams", "create", "cli-team")
    cli("users", "create", "cli-carol", "--team", "cli-team")
    cli("teams", "grant", "cli-team", TINY_MODEL)
    out = cli(
        "keys", "create", "carol's laptop", "--user", "cli-carol", "--team", "cli-team", "--expires-in", "30d"
    )
    secret = issued.record(out.strip().splitlines()[-1])
    assert keys.lookup_of(secret) and secret not in out.strip().splitlines()[:-1][-1]
    key_id = next(line.split()[1] for line in out.splitlines() if line.split()[:1] == ["id"])
    assert key_id in cli("keys", "list", "--user", "cli-carol")
    rotated = issued.record(cli("keys", "rotate", key_id, "--grace", "1h").strip().splitlines()[-1])
    assert rotated != secret and keys.lookup_of(rotated)
    monkeypatch.setenv("STRATUS_API_KEY", rotated)
    assert "cli-carol" in cli("users", "whoami")
    who = json.loads(cli("users", "whoami", "--output", "json"))
    assert who["models"] == [TINY_MODEL] and who["team"] == "cli-team"
    monkeypatch.setenv("STRATUS_API_KEY", admin_key)
    assert "revoked" in cli("keys", "revoke", key_id)
    monkeypatch.delenv("STRATUS_API_KEY")
    result = run.invoke(main, ["keys", "list", "--url", api_server.url])
    assert result.exit_code == 1 and "STRATUS_API_KEY" in result.output


# -- gateways of their own (in process, models that never load) -----------------------------------


def gateway(settings, access=None):
    access = access or build_access(settings)
    app = create_app(settings, identity=IdentityStage(access))
    return app, access


def client(app, secret=None):
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=bearer(secret) if secret else {}
    )


async def status(app, secret, path="/admin/whoami"):
    async with client(app, secret) as c:
        return (await c.get(path)).status_code


def settings_for(tmp_path, url=None, **over):
    fields = dict(
        models={"m": "/nonexistent/m"},
        data_dir=str(issued.data_dir_of(tmp_path)),
        database_url=url,
        auth_cache_ttl=1.0,
        lockout_failures=0,
    )
    return Settings(**(fields | over))


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_database(request, tmp_path):
    """The URL two gateways share; None: the SQLite file in the data dir."""
    if request.param == "sqlite":
        yield None
    else:
        with scratch_database() as url:
            yield url


def test_revocation_and_rotation_reach_every_gateway(tmp_path, shared_database):
    s = settings_for(tmp_path, shared_database)
    one, access_one = gateway(s)
    two, _ = gateway(s)  # another gateway: its own process in production, its own cache here
    root = issued.record(bootstrap(access_one.store).generated_secret)

    async def scenario():
        async with client(one, root) as admin:
            made = (await admin.post("/admin/keys", json={"name": "k"})).json()
            key_id, old = made["key"]["id"], issued.record(made["secret"])
            assert await status(two, old) == 200  # now cached on gateway two

            rotated = (await admin.post(f"/admin/keys/{key_id}/rotate", json={"grace_seconds": 600})).json()
            new = issued.record(rotated["secret"])
            assert rotated["key"]["prefix"] == new.split("_")[0]
            for app in (one, two):
                assert await status(app, old) == 200 and await status(app, new) == 200  # in the grace

            again = issued.record(
                (await admin.post(f"/admin/keys/{key_id}/rotate", json={})).json()["secret"]
            )
            assert await status(one, old) == 401 and await status(one, new) == 401  # grace 0: at once here
            assert await status(one, again) == 200

            assert (await admin.post(f"/admin/keys/{key_id}/revoke")).json()["status"] == "revoked"
            assert await status(one, again) == 401  # at once on the gateway that revoked it
            deadline = time.monotonic() + 15  # the cache TTL (1 s) plus a busy machine's slack
            for secret in (again, old, new):  # each may still sit in gateway two's cache for a TTL
                while await status(two, secret) != 401:
                    assert time.monotonic() < deadline, "gateway two never refused the revoked key"
                    await asyncio.sleep(0.1)

    asyncio.run(scenario())


def test_a_lost_database_fails_closed_with_503(tmp_path):
    s = settings_for(tmp_path, auth_cache_ttl=0)  # every request asks the database
    app, access = gateway(s)
    root = issued.record(bootstrap(access.store).generated_secret)
    assert asyncio.run(status(app, root)) == 200
    working = access.store.engine
    # The database file's directory is gone (a lost volume): every connection attempt fails.
    access.store.engine = sa.create_engine(f"sqlite:///{tmp_path / 'gone' / 'stratus.db'}")

    async def refused():
        async with client(app, root) as c:
            for path in ("/admin/whoami", "/v1/models", "/admin/keys"):
                r = await c.get(path)
                assert r.status_code == 503, r.text
                # access control refuses, and so does the audit step (issue 6) that cannot record it
                assert r.headers["retry-after"]
                assert r.json()["error"]["code"] in ("auth_unavailable", "audit_unavailable")
            r = await c.post(
                "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 503

    asyncio.run(refused())
    access.store.engine = working
    assert asyncio.run(status(app, root)) == 200


def test_a_lost_postgresql_server_fails_closed_and_recovers(tmp_path):
    import psycopg

    with scratch_database() as url:
        s = settings_for(tmp_path, url, auth_cache_ttl=0)
        app, access = gateway(s)
        root = issued.record(bootstrap(access.store).generated_secret)
        assert asyncio.run(status(app, root)) == 200
        name = access.store.engine.url.database
        admin_url = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            assert asyncio.run(status(app, root)) == 503
        finally:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert asyncio.run(status(app, root)) == 200
        access.store.close()


def test_oidc_tokens_through_the_gateway(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "alg": "ES256", "use": "sig"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    s = settings_for(
        tmp_path,
        jwt_issuer="https://idp.example.test",
        jwt_audience="stratus",
        jwt_jwks=str(tmp_path / "jwks.json"),
        jwt_role_map="llm-users=member:ml,llm-admins=admin",
    )
    app, access = gateway(s)
    root = issued.record(bootstrap(access.store).generated_secret)
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.test",
        "aud": "stratus",
        "sub": "dana",
        "exp": now + 600,
        "groups": ["llm-users"],
    }
    token = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
    forged = pyjwt.encode(
        {**claims, "groups": ["llm-admins"]},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": "k1"},
    )

    async def scenario():
        async with client(app, root) as admin:
            await admin.post("/admin/teams", json={"name": "ml"})
            await admin.put("/admin/teams/ml/models/m")
        async with client(app, token) as dana:
            who = (await dana.get("/admin/whoami")).json()
            assert (who["via"], who["team"], who["models"]) == ("jwt", "ml", ["m"])
            assert who["user"].startswith("oidc:") and who["user"].endswith(":dana")  # namespaced
            assert (await dana.get("/v1/models")).json()["data"][0]["id"] == "m"
            assert (await dana.get("/admin/users")).status_code == 403
            r = await dana.post("/admin/keys", json={"name": "mine"})  # not a stored user: name an owner
            assert r.status_code == 400 and r.json()["error"]["param"] == "user"
        async with client(app, forged) as mallory, client(app, "sk-stratus-000000000000_" + "x" * 43) as bad:
            refused, bad_key = await mallory.get("/admin/whoami"), await bad.get("/admin/whoami")
            assert refused.status_code == 401 and refused.content == bad_key.content

    asyncio.run(scenario())


def test_admin_fields_are_checked_against_the_caller(tmp_path):
    """The invariant on fields: roles, models, owners, expiry, unknown fields, one's own role."""
    app, access = gateway(settings_for(tmp_path, models={"m-a": "/x/a", "m-b": "/x/b"}))
    root = issued.record(bootstrap(access.store).generated_secret)

    async def scenario():
        async with client(app, root) as admin:
            for team, model in (("alpha", "m-a"), ("beta", "m-b")):
                await admin.post("/admin/teams", json={"name": team})
                await admin.put(f"/admin/teams/{team}/models/{model}")
            await admin.post(
                "/admin/users", json={"name": "lead", "team": "alpha", "team_role": "team_admin"}
            )
            await admin.post("/admin/users", json={"name": "dev", "team": "alpha"})
            lead = issued.record(
                (await admin.post("/admin/keys", json={"name": "l", "user": "lead", "team": "alpha"})).json()[
                    "secret"
                ]
            )
            short = await admin.post(
                "/admin/keys", json={"name": "d", "user": "dev", "team": "alpha", "expires_in": 3600}
            )
            dev = issued.record(short.json()["secret"])
            admin_team_key = (await admin.post("/admin/keys", json={"name": "a", "team": "alpha"})).json()
            issued.record(admin_team_key["secret"])

        def expect(r, status, param=None, words=""):
            assert r.status_code == status, r.text
            if status < 400:
                return
            err = r.json()["error"]
            assert err["param"] == param and words in err["message"], err

        async with client(app, dev) as c:
            expect(await c.post("/admin/keys", json={"name": "x", "roles": ["admin"]}), 400, "roles")
            expect(await c.post("/admin/keys", json={"name": "x", "user": "lead"}), 403, None, "keys.manage")
            expect(
                await c.post("/admin/keys", json={"name": "x", "team": "alpha"}), 403, "expires_at", "outlive"
            )
            ok = await c.post("/admin/keys", json={"name": "x", "team": "alpha", "expires_in": 600})
            assert ok.status_code == 201 and issued.record(ok.json()["secret"])
            expect(await c.post("/admin/keys", json={"name": "x", "is_admin": True}), 400, "is_admin")
            expect(await c.patch("/admin/users/dev", json={"role": "admin"}), 403)
        async with client(app, lead) as c:
            expect(
                await c.post(
                    "/admin/keys", json={"name": "x", "user": "dev", "team": "alpha", "models": ["m-b"]}
                ),
                400,
                "models",
            )
            expect(
                await c.post("/admin/keys", json={"name": "x", "user": "dev", "team": "beta"}), 400, "team"
            )
            expect(
                await c.post("/admin/users", json={"name": "new", "team": "alpha", "role": "auditor"}),
                403,
                "role",
            )
            expect(await c.post("/admin/users", json={"name": "new"}), 403, None, "users.manage")
            expect(await c.put("/admin/teams/alpha/members/lead", json={"role": "team_admin"}), 200)
            expect(await c.put("/admin/teams/beta/members/lead", json={"role": "member"}), 404, "name")
            expect(await c.patch("/admin/users/lead", json={"role": "admin"}), 403, None, "users.manage")
            expect(
                await c.post(f"/admin/keys/{admin_team_key['key']['id']}/rotate"),
                403,
                None,
                "target holds rights",
            )
            made = await c.post(
                "/admin/keys", json={"name": "x", "user": "dev", "team": "alpha", "models": ["m-a"]}
            )
            assert made.status_code == 201 and issued.record(made.json()["secret"])
        async with client(app, root) as admin:
            expect(
                await admin.patch("/admin/users/admin", json={"role": "member"}),
                409,
                None,
                "last active admin",
            )

    asyncio.run(scenario())


def test_disabling_a_user_stops_their_keys_at_once_here(tmp_path):
    app, access = gateway(settings_for(tmp_path, auth_cache_ttl=60))  # a long TTL: no waiting it out
    root = issued.record(bootstrap(access.store).generated_secret)

    async def scenario():
        async with client(app, root) as admin:
            await admin.post("/admin/users", json={"name": "fred"})
            fred = issued.record(
                (await admin.post("/admin/keys", json={"name": "f", "user": "fred"})).json()["secret"]
            )
            assert await status(app, fred) == 200  # cached now
            assert (await admin.patch("/admin/users/fred", json={"disabled": True})).status_code == 200
            assert await status(app, fred) == 401
            await admin.patch("/admin/users/fred", json={"disabled": False})
            assert await status(app, fred) == 200

    asyncio.run(scenario())


def test_shutdown_drains_the_audit_writer(tmp_path):
    """Gateway shutdown writes the queued audit records and stops the writer thread before the
    store closes: the trail of the last requests verifies afterwards."""
    app, access = gateway(settings_for(tmp_path))
    root = issued.record(bootstrap(access.store).generated_secret)
    audit = app.state.stratus.audit.recorder

    async def scenario():
        async with app.router.lifespan_context(app):
            assert await status(app, root) == 200
            assert audit.writer._thread.is_alive()

    asyncio.run(scenario())
    assert not audit.writer._thread.is_alive()
    store = Store.open(database_url(settings_for(tmp_path).data_dir))
    try:
        log = AuditLog(store, audit.log.key)
        assert any(r.request_id for r in log.records())  # the whoami request's record landed
        assert verify(log).ok
    finally:
        store.close()


def test_two_authorization_headers_are_no_credential(http, api_server, admin_key):
    junk = "Bearer sk-stratus-000000000000_" + "x" * 43
    with httpx.Client(base_url=api_server.url, timeout=30) as c:
        for pair in ([f"Bearer {admin_key}", junk], [junk, f"Bearer {admin_key}"]):
            headers = [("Authorization", value) for value in pair]
            r = c.get("/admin/whoami", headers=headers)
            assert r.status_code == 401, (pair, r.text)
        assert c.get("/admin/whoami", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200


def test_ready_checks_a_credential_like_any_route(http, api_server, admin_key):
    """/ready is no oracle for keys: a bad credential gets the usual 401 (counted towards
    lockouts, audited); none gets the public status; a status reader gets the details."""
    with httpx.Client(base_url=api_server.url, timeout=30) as c:
        assert c.get("/ready", headers=bearer(keys.generate().secret)).status_code == 401
        assert c.get("/ready").json()["models"] == {}
        assert c.get("/ready", headers=bearer(admin_key)).json()["models"]
