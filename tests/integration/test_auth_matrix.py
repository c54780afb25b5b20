"""The authorization matrix: every route of the app × every kind of caller has an expected status.

The routes come from the app's own route table, so a route added without a declared permission
(security/rbac.ROUTE_PERMISSIONS) or without a row here fails `test_every_route_is_declared`.
Each caller runs every route against a world of its own (a real SQLite store, models that never
finish loading, so a request that passes authorization ends in 503 "still loading" instead of
running a model). Callers without a usable credential must get the one 401 body.
"""

import asyncio
import time

import httpx
import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.security import admin, admin_keys, keys, rbac
from stratus.security.bootstrap import bootstrap
from stratus.security.stage import IdentityStage
from stratus.store import apikeys
from tests import issued

pytestmark = pytest.mark.timeout(300)

ROLES = ("admin", "team_admin", "member", "auditor", "viewer", "wrong_team")
NO_CREDENTIAL = ("anonymous", "malformed", "unknown", "expired", "revoked")
CHAT = {"model": "m-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def every(status):
    return {who: status for who in ROLES + NO_CREDENTIAL}


def only(status, allowed, **others):
    """`status` for the roles in `allowed`, 403 for the other roles (unless given), 401 without."""
    out = {who: (status if who in allowed else 403) for who in ROLES}
    out.update(others)
    out.update({who: 401 for who in NO_CREDENTIAL})
    return out


USERS = {"admin", "team_admin", "member"}
READERS = {"admin", "team_admin", "auditor"}
GENERATE = only(503, USERS, wrong_team=404)  # 503: the model is still loading, so it was allowed
KEY_ADMINS = only(200, {"admin", "team_admin"}, member=404, viewer=404, wrong_team=404)  # auditor: 403

# (method, route template, concrete path, body, expected status by caller), in the order they run.
MATRIX = [
    ("GET", "/health", "/health", None, every(200)),
    # /ready answers everyone, but a credential sent to it is checked: a bad one is the usual 401
    ("GET", "/ready", "/ready", None, {**every(503), **{who: 401 for who in NO_CREDENTIAL[1:]}}),
    ("GET", "/openapi.json", "/openapi.json", None, every(200)),
    ("GET", "/docs", "/docs", None, every(200)),
    ("GET", "/ui", "/ui", None, every(200)),  # the dashboard's files; its data comes from the API
    ("GET", "/ui/{path:path}", "/ui/app.js", None, every(200)),
    ("GET", "/metrics", "/metrics", None, only(200, {"admin", "auditor", "viewer"})),
    ("GET", "/v1/models", "/v1/models", None, only(200, USERS | {"wrong_team"})),
    ("GET", "/v1/models/{model_id:path}", "/v1/models/m-a", None, only(200, USERS, wrong_team=404)),
    ("POST", "/v1/chat/completions", "/v1/chat/completions", CHAT, GENERATE),
    ("POST", "/v1/completions", "/v1/completions", {"model": "m-a", "prompt": "hi", "max_tokens": 2}, GENERATE),
    ("POST", "/v1/responses", "/v1/responses", {"model": "m-a", "input": "hi", "max_output_tokens": 2}, GENERATE),
    # 400: allowed, then refused because m-a is served for generation (not --task embed)
    ("POST", "/v1/embeddings", "/v1/embeddings", {"model": "m-a", "input": "hi"}, only(400, USERS, wrong_team=404)),
    ("POST", "/tokenize", "/tokenize", {"model": "m-a", "prompt": "hi"}, GENERATE),
    ("POST", "/detokenize", "/detokenize", {"model": "m-a", "tokens": [1, 2]}, GENERATE),
    ("GET", "/admin/whoami", "/admin/whoami", None, only(200, set(ROLES))),
    ("GET", "/admin/users", "/admin/users", None, only(200, READERS)),
    ("GET", "/admin/users/{name}", "/admin/users/ma", None, only(200, READERS)),
    ("GET", "/admin/teams", "/admin/teams", None, only(200, READERS)),
    ("GET", "/admin/teams/{name}", "/admin/teams/alpha", None, only(200, READERS)),
    ("GET", "/admin/keys", "/admin/keys", None, only(200, set(ROLES))),
    ("GET", "/admin/keys/{key_id}", "{k_rot}", None, only(200, READERS, member=404, viewer=404, wrong_team=404)),
    ("POST", "/admin/users", "/admin/users", {"name": "new-{who}", "team": "alpha"}, only(201, USERS - {"member"})),
    ("PATCH", "/admin/users/{name}", "/admin/users/ma2", {"role": "viewer"}, only(200, {"admin"})),
    ("PUT", "/admin/users/{name}/models/{model:path}", "/admin/users/ma2/models/m-secret", None, only(200, {"admin"})),
    ("DELETE", "/admin/users/{name}/models/{model:path}", "/admin/users/ma2/models/m-a", None, only(200, {"admin"})),
    ("POST", "/admin/teams", "/admin/teams", {"name": "t-{who}"}, only(201, {"admin"})),
    # mb is in beta only: beyond a team admin of alpha's reach, so as unknown to them as a missing name
    ("PUT", "/admin/teams/{name}/members/{user}", "/admin/teams/alpha/members/mb", {"role": "member"}, only(200, {"admin"}, team_admin=404)),
    ("DELETE", "/admin/teams/{name}/members/{user}", "/admin/teams/alpha/members/ma3", None, only(200, USERS - {"member"})),
    ("PUT", "/admin/teams/{name}/models/{model:path}", "/admin/teams/alpha/models/m-secret", None, only(200, {"admin"})),
    ("DELETE", "/admin/teams/{name}/models/{model:path}", "/admin/teams/beta/models/m-b", None, only(200, {"admin"})),
    ("POST", "/admin/keys", "/admin/keys", {"name": "mine"}, only(201, set(ROLES))),
    ("POST", "/admin/keys/{key_id}/rotate", "{k_rot}/rotate", None, KEY_ADMINS),
    ("POST", "/admin/keys/{key_id}/revoke", "{k_rev}/revoke", None, KEY_ADMINS),
    # issue 5 (limits and usage) and issue 6 (audit): their routes, as declared by their modules
    ("GET", "/admin/usage", "/admin/usage", None, only(200, set(ROLES))),
    ("GET", "/admin/limits", "/admin/limits", None, only(200, set(ROLES))),
    ("PUT", "/admin/limits", "/admin/limits", {"scope": "team", "subject": "alpha", "rpm": 60}, only(200, {"admin", "team_admin"})),
    ("DELETE", "/admin/limits", "/admin/limits?scope=team&subject=alpha", None, only(200, {"admin", "team_admin"})),
    ("GET", "/admin/audit", "/admin/audit", None, only(200, {"admin", "auditor"})),
    ("GET", "/admin/audit/verify", "/admin/audit/verify", None, only(200, {"admin", "auditor"})),
    ("GET", "/admin/alerts", "/admin/alerts", None, only(200, {"admin", "auditor"})),
    # 404: allowed, and no such alert is kept
    ("POST", "/admin/alerts/ack", "/admin/alerts/ack", {"kind": "lockout", "source": "addr:x", "at": 1.0}, only(404, {"admin"})),
    ("GET", "/admin/audit/content", "/admin/audit/content", None, only(200, {"admin", "auditor"})),
    ("GET", "/admin/lockouts", "/admin/lockouts", None, only(200, {"admin", "auditor"})),
    ("DELETE", "/admin/lockouts/{source}", "/admin/lockouts/addr:10.9.9.9", None, only(404, {"admin"})),
    ("GET", "/admin/suspensions", "/admin/suspensions", None, only(200, {"admin", "auditor"})),
    ("POST", "/admin/keys/{key_id}/reinstate", "{k_rot}/reinstate", None, only(409, {"admin"})),
    ("GET", "/admin/content-logging", "/admin/content-logging", None, only(200, {"admin", "auditor"})),
    ("PUT", "/admin/teams/{name}/content-logging", "/admin/teams/alpha/content-logging", {"enabled": False}, only(200, {"admin"})),
    ("GET", "/admin/alerts/webhook", "/admin/alerts/webhook", None, only(200, {"admin", "auditor"})),
    ("PUT", "/admin/alerts/webhook", "/admin/alerts/webhook", {"url": "http://127.0.0.1:9/hook", "secret": "s" * 16}, only(200, {"admin"})),
    ("DELETE", "/admin/alerts/webhook", "/admin/alerts/webhook", None, only(200, {"admin"})),
    # issue 7 (cluster): 409 for admins, as this gateway runs no Ray replicas
    ("POST", "/admin/cluster/scale", "/admin/cluster/scale", {"model": "m-a", "replicas": 1}, only(409, {"admin"})),
    ("GET", "/admin/upstreams", "/admin/upstreams", None, only(200, {"admin"})),
    ("POST", "/admin/upstreams", "/admin/upstreams", {"name": "u-{who}", "model": "m-up", "base_url": "http://127.0.0.1:9/v1", "upstream_model": "x"}, only(201, {"admin"})),
    ("DELETE", "/admin/upstreams/{name}", "/admin/upstreams/nope", None, only(404, {"admin"})),
    ("GET", "/admin/models/{base:path}/adapters", "/admin/models/m-a/adapters", None, only(200, {"admin"})),
    # 503: m-a is still loading, so the adapter cannot be added yet
    ("POST", "/admin/models/{base:path}/adapters", "/admin/models/m-a/adapters", {"name": "x", "path": "/nonexistent"}, only(503, {"admin"})),
    ("DELETE", "/admin/models/{base:path}/adapters/{name}", "/admin/models/m-a/adapters/nope", None, only(404, {"admin"})),
    ("GET", "/admin/cluster", "/admin/cluster", None, only(200, {"admin", "auditor", "viewer"})),
    ("GET", "/admin/secrets", "/admin/secrets", None, only(200, {"admin"})),
    ("PUT", "/admin/secrets/{name:path}", "/admin/secrets/hook/matrix", {"value": "v" * 24}, only(200, {"admin"})),
    ("DELETE", "/admin/secrets/{name:path}", "/admin/secrets/hook/nope", None, only(404, {"admin"})),
    # issue 15 (live model management): 400 and 404 for admins, past authorization
    ("GET", "/admin/models", "/admin/models", None, only(200, {"admin"})),
    ("POST", "/admin/models", "/admin/models", {"name": "m-{who}", "model": "/nonexistent/x"}, only(400, {"admin"})),
    ("DELETE", "/admin/models/{name:path}", "/admin/models/org/nope", None, only(404, {"admin"})),
]  # fmt: skip


class World:
    """Two teams, a user in every role, a key each (one expired, one revoked), two target keys."""

    def __init__(self, tmp_path):
        settings = Settings(
            models={"m-a": "/nonexistent/a", "m-b": "/nonexistent/b", "m-secret": "/nonexistent/s"},
            data_dir=str(issued.data_dir_of(tmp_path)),
            lockout_failures=0,  # the matrix is about authorization; lockouts have their own tests
        )
        self.access = access = build_access(settings)
        root_secret = issued.record(bootstrap(access.store).generated_secret)
        root = access.authenticate(root_secret)
        for team, model in (("alpha", "m-a"), ("beta", "m-b")):
            admin.create_team(access, root, team)
            admin.set_team_grant(access, root, team, model, True)
        people = {
            "ta": ("member", "alpha", "team_admin"),
            "ma": ("member", "alpha", "member"),
            "mb": ("member", "beta", "member"),
            "aud": ("auditor", None, "member"),
            "view": ("viewer", None, "member"),
            **{name: ("member", "alpha", "member") for name in ("ma2", "ma3", "mk", "mexp", "mrev")},
        }
        for name, (role, team, team_role) in people.items():
            admin.create_user(access, root, name, role=role, team=team, team_role=team_role)
        admin.set_user_grant(access, root, "ma2", "m-a", True)

        def key_for(user, team):
            view, secret = admin_keys.create_key(access, root, f"{user}'s key", user=user, team=team)
            return view["id"], issued.record(secret)

        self.secrets = {"admin": root_secret}
        for who, (user, team) in {
            "team_admin": ("ta", "alpha"),
            "member": ("ma", "alpha"),
            "wrong_team": ("mb", "beta"),
            "auditor": ("aud", None),
            "viewer": ("view", None),
        }.items():
            self.secrets[who] = key_for(user, team)[1]
        expired_id, self.secrets["expired"] = key_for("mexp", "alpha")
        with access.store.begin() as conn:  # made to expire a second ago, past what the API allows
            conn.execute(
                apikeys.api_keys.update()
                .where(apikeys.api_keys.c.id == expired_id)
                .values(expires_at=time.time() - 1)
            )
        revoked_id, self.secrets["revoked"] = key_for("mrev", "alpha")
        admin_keys.revoke_key(access, root, revoked_id)
        self.secrets["malformed"] = "not-a-key"
        self.secrets["unknown"] = issued.record(keys.generate().secret)
        self.k_rot = f"/admin/keys/{key_for('mk', 'alpha')[0]}"
        self.k_rev = f"/admin/keys/{key_for('mk', 'alpha')[0]}"
        self.app = create_app(settings, identity=IdentityStage(access))

    def headers(self, who):
        return {"Authorization": f"Bearer {self.secrets[who]}"} if who != "anonymous" else {}


def app_routes(app):
    """(method, path template) of every route the app serves; HEAD is GET's. Routers that FastAPI
    keeps as included groups are walked through (their routes carry the full path)."""
    out = set()
    pending = list(app.routes)
    while pending:
        route = pending.pop()
        if hasattr(route, "effective_route_contexts"):
            pending.extend(route.effective_route_contexts())
            continue
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                out.add((method, route.path))
    return out


def test_every_route_is_declared(tmp_path):
    served = app_routes(World(tmp_path).app)
    undeclared = sorted(r for r in served if rbac.route_permission(*r) is None)
    assert not undeclared, f"routes without a permission in rbac.ROUTE_PERMISSIONS: {undeclared}"
    in_matrix = {(m, t) for m, t, *_ in MATRIX}
    assert served - in_matrix == set(), f"routes missing from MATRIX: {sorted(served - in_matrix)}"
    assert in_matrix - served == set(), (
        f"MATRIX rows for routes that do not exist: {sorted(in_matrix - served)}"
    )
    assert set(rbac.ROUTE_PERMISSIONS) == served, "ROUTE_PERMISSIONS names routes that do not exist"


async def _run(world, who):
    mismatches, refusals = [], []
    transport = httpx.ASGITransport(app=world.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://test", headers=world.headers(who)
    ) as c:
        for method, _template, path, body, expected in MATRIX:
            path = path.format(k_rot=world.k_rot, k_rev=world.k_rev)
            if isinstance(body, dict):
                body = {
                    k: v.format(who=who.replace("_", "-")) if isinstance(v, str) else v
                    for k, v in body.items()
                }
            r = await c.request(method, path, json=body)
            if r.status_code != expected[who]:
                mismatches.append(
                    f"{method} {path}: {r.status_code} (expected {expected[who]}) {r.text[:160]}"
                )
            if r.status_code == 401:
                refusals.append((r.content, r.headers.get("www-authenticate")))
            if r.status_code == 403:
                assert r.json()["error"]["type"] == "permission_error"
    return mismatches, refusals


@pytest.mark.parametrize("who", ROLES)
def test_roles(tmp_path, who):
    mismatches, refusals = asyncio.run(_run(World(tmp_path), who))
    assert not mismatches, f"{who}:\n  " + "\n  ".join(mismatches)
    assert refusals == []


def test_callers_without_a_usable_credential_all_get_the_same_401(tmp_path):
    world = World(tmp_path)
    bodies = set()
    for who in NO_CREDENTIAL:
        mismatches, refusals = asyncio.run(_run(world, who))
        assert not mismatches, f"{who}:\n  " + "\n  ".join(mismatches)
        assert refusals and all(header == 'Bearer realm="stratus"' for _, header in refusals)
        bodies |= {body for body, _ in refusals}
    assert len(bodies) == 1, bodies  # missing, malformed, unknown, expired, revoked: no oracle
