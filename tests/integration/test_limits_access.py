"""Usage and limits under access control (the shared gateway): who sees which usage rows, and
who may set which limits. Users see their own usage, team admins their team's, admins all."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests import issued
from tests.conftest import TINY_MODEL

pytestmark = pytest.mark.timeout(180)


def _ok(r: httpx.Response) -> dict:
    assert r.status_code < 300, r.text
    return r.json()


def test_usage_visibility_and_limit_rights_follow_roles(http, base_url):
    s = uuid.uuid4().hex[:6]
    team, lead, member, other = f"vis-{s}", f"lead-{s}", f"member-{s}", f"other-{s}"
    _ok(http.post("/admin/teams", json={"name": team}))
    _ok(http.put(f"/admin/teams/{team}/models/{TINY_MODEL}"))
    _ok(http.post("/admin/users", json={"name": lead, "team": team, "team_role": "team_admin"}))
    _ok(http.post("/admin/users", json={"name": member, "team": team}))
    _ok(http.post("/admin/users", json={"name": other}))
    _ok(http.put(f"/admin/users/{other}/models/{TINY_MODEL}"))
    secrets = {}
    for user, key_team in ((lead, team), (member, team), (other, None)):
        made = _ok(http.post("/admin/keys", json={"name": "k", "user": user, "team": key_team}))
        secrets[user] = issued.record(made["secret"])

    def client(user):
        return httpx.Client(
            base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {secrets[user]}"}
        )

    body = {"model": TINY_MODEL, "prompt": "hello", "max_tokens": 2}
    for user in (lead, member, other):
        with client(user) as c:
            _ok(c.post("/v1/completions", json=body))

    def users_seen(c):
        return {row["user"] for row in _ok(c.get("/admin/usage", params={"by": "user"}))["data"]}

    with client(member) as c:
        assert users_seen(c) == {member}
        refused = c.put("/admin/limits", json={"scope": "team", "subject": team, "rpm": 5})
        assert refused.status_code == 403
    with client(lead) as c:
        assert users_seen(c) == {lead, member}
        assert c.put("/admin/limits", json={"scope": "team", "subject": team, "rpm": 500}).status_code == 200
        assert c.put("/admin/limits", json={"scope": "user", "subject": other, "rpm": 1}).status_code == 403
        assert any(r["subject"] == team for r in _ok(c.get("/admin/limits"))["data"])
        assert c.delete("/admin/limits", params={"scope": "team", "subject": team}).status_code == 200
    with client(other) as c:
        assert users_seen(c) == {other}
    assert {lead, member, other} <= users_seen(http)


def test_stratus_usage_and_limits_commands(base_url, admin_key):
    from click.testing import CliRunner

    from stratus.cli import main

    runner = CliRunner()
    env = {"STRATUS_API_KEY": admin_key, "STRATUS_URL": base_url}
    team = f"cli-{uuid.uuid4().hex[:6]}"
    made = runner.invoke(main, ["limits", "set", "team", team, "--rpm", "50", "--budget-usd", "2.5"], env=env)
    assert made.exit_code == 0, made.output
    assert '"rpm": 50' in made.output
    listed = runner.invoke(main, ["limits", "list"], env=env)
    assert team in listed.output
    bad = runner.invoke(main, ["limits", "set", "team", team, "--rpm", "-5"], env=env)
    assert bad.exit_code != 0 and "400" in bad.output and "rpm" in bad.output
    assert runner.invoke(main, ["limits", "delete", "team", team], env=env).exit_code == 0

    csv_out = runner.invoke(main, ["usage", "--by", "model", "--format", "csv"], env=env)
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.output.splitlines()[0].startswith("model,requests,refused,prompt_tokens")
    table = runner.invoke(main, ["usage", "--by", "user,day"], env=env)
    assert table.exit_code == 0 and table.output.split()[:3] == ["user", "day", "requests"]
