"""Usage and limits under access control (the shared gateway): who sees which usage rows, and
who may set which limits. Users see their own usage, team admins their team's, admins all."""

from __future__ import annotations

import json
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
    auditor = f"auditor-{s}"
    _ok(http.post("/admin/users", json={"name": auditor, "role": "auditor"}))
    secrets = {}
    for user, key_team in ((lead, team), (member, team), (other, None), (auditor, None)):
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
    # A rule on a model the caller may not use is not shown: it would name that model.
    secret_model = f"hidden-{s}"
    _ok(http.put("/admin/limits", json={"scope": "model", "subject": secret_model, "rpm": 5}))
    _ok(http.put("/admin/limits", json={"scope": "model", "subject": TINY_MODEL, "rpm": 500}))
    with client(member) as c:
        seen = {r["subject"] for r in _ok(c.get("/admin/limits"))["data"]}
        assert TINY_MODEL in seen and secret_model not in seen
    assert secret_model in {r["subject"] for r in _ok(http.get("/admin/limits"))["data"]}
    for model in (secret_model, TINY_MODEL):
        http.delete("/admin/limits", params={"scope": "model", "subject": model})
    with client(auditor) as c:  # auditors see every row, and may not set limits
        assert {lead, member, other} <= users_seen(c)
        assert c.put("/admin/limits", json={"scope": "team", "subject": team, "rpm": 5}).status_code == 403
    assert {lead, member, other} <= users_seen(http)


def test_stratus_usage_and_limits_commands(base_url, admin_key):
    from click.testing import CliRunner

    from stratus.cli.main import main

    runner = CliRunner()
    env = {"STRATUS_API_KEY": admin_key, "STRATUS_URL": base_url}
    team = f"cli-{uuid.uuid4().hex[:6]}"
    made = runner.invoke(main, ["limits", "set", "team", team, "--rpm", "50", "--budget-usd", "2.5"], env=env)
    assert made.exit_code == 0, made.output
    assert f"team {team} on every model: rpm=50, budget_usd_per_month=2.5" in made.output
    listed = runner.invoke(main, ["limits", "list"], env=env)
    assert team in listed.output and "RPM" in listed.output
    listed = runner.invoke(main, ["limits", "list", "-o", "jsonl"], env=env)
    assert {"scope": "team", "subject": team, "model": None, "rpm": 50, "budget_usd_per_month": 2.5} in [
        json.loads(line) for line in listed.stdout.splitlines()
    ]
    bad = runner.invoke(main, ["limits", "set", "team", team, "--rpm", "-5"], env=env)
    assert bad.exit_code == 2 and "--rpm" in bad.output  # refused before it is sent, naming the flag
    assert runner.invoke(main, ["limits", "delete", "team", team], env=env).exit_code == 0

    csv_out = runner.invoke(main, ["usage", "--by", "model", "--output", "csv"], env=env)
    assert csv_out.exit_code == 0, csv_out.output
    assert csv_out.stdout.splitlines()[0].startswith("model,requests,refused,prompt_tokens")
    table = runner.invoke(main, ["usage", "--by", "user,day"], env=env)
    assert table.exit_code == 0 and table.stdout.split()[:4] == ["USER", "DAY", "REQUESTS", "REFUSED"]
    by_status = runner.invoke(main, ["usage", "--by", "status", "--output", "json"], env=env)
    assert by_status.exit_code == 0, by_status.output
    assert "ok" in {row["status"] for row in json.loads(by_status.stdout)["data"]}
    legacy = runner.invoke(main, ["usage", "--by", "status", "--format", "json"], env=env)  # one release
    assert json.loads(legacy.stdout)["by"] == ["status"] and "--format is deprecated" in legacy.stderr


def test_keys_and_teams_commands_set_limits(http, base_url, admin_key):
    """`stratus keys|teams` limit options: set on create or later, per model, shown, cleared,
    enforced; bad values refused before anything is created; a key whose limits the caller may
    not set is revoked again."""
    from click.testing import CliRunner

    from stratus.cli.main import main

    s = uuid.uuid4().hex[:6]
    team, bad_team, owner, lead = f"lt-{s}", f"lt-bad-{s}", f"lo-{s}", f"ll-{s}"
    runner = CliRunner()

    def run(*args, key=admin_key):
        return runner.invoke(main, list(args), env={"STRATUS_API_KEY": key, "STRATUS_URL": base_url})

    def rules(scope, subject):
        return [
            r
            for r in _ok(http.get("/admin/limits"))["data"]
            if (r["scope"], r["subject"]) == (scope, subject)
        ]

    made = run("teams", "create", team, "--tpm", "100000", "--daily-tokens", "900000", "--budget-usd", "7.5")
    assert made.exit_code == 0, made.output
    assert rules("team", team) == [
        {"scope": "team", "subject": team, "model": None, "tpm": 100000, "tokens_per_day": 900000,
         "budget_usd_per_month": 7.5}
    ]  # fmt: skip
    _ok(http.put(f"/admin/teams/{team}/models/{TINY_MODEL}"))
    _ok(http.post("/admin/users", json={"name": owner, "team": team}))

    made = run("keys", "create", "limited", "--user", owner, "--team", team, "--rpm", "60", "--tpm", "10000",
               "--concurrency", "4", "--daily-tokens", "50000", "--monthly-tokens", "900000",
               "--budget-usd", "2.5")  # fmt: skip
    assert made.exit_code == 0, made.output
    secret = made.output.splitlines()[-1]
    key_id = next(line.split()[1] for line in made.stdout.splitlines() if line.split()[:1] == ["id"])
    assert f"key {key_id} on every model: rpm=60" in made.stdout
    assert rules("key", key_id) == [
        {"scope": "key", "subject": key_id, "model": None, "rpm": 60, "tpm": 10000, "concurrent": 4,
         "tokens_per_day": 50000, "tokens_per_month": 900000, "budget_usd_per_month": 2.5}
    ]  # fmt: skip

    # per model, then enforced on that key: the second request in the minute is a 429
    assert run("keys", "limits", key_id, "--model", TINY_MODEL, "--rpm", "1").exit_code == 0
    shown = run("keys", "limits", key_id)
    assert shown.exit_code == 0 and TINY_MODEL in shown.stdout and "(every model)" in shown.stdout
    shown = {r["model"]: r for r in json.loads(run("keys", "limits", key_id, "-o", "json").stdout)}
    assert (shown[TINY_MODEL]["rpm"], shown[None]["rpm"], shown[None]["tpm"]) == (1, 60, 10000)
    with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {secret}"}) as c:
        body = {"model": TINY_MODEL, "prompt": "hello", "max_tokens": 2}
        assert c.post("/v1/completions", json=body).status_code == 200
        second = c.post("/v1/completions", json=body)
    assert second.status_code == 429
    assert (
        f"requests per minute for key '{key_id}' on model '{TINY_MODEL}' is 1"
        in second.json()["error"]["message"]
    )
    assert run("keys", "limits", key_id, "--model", TINY_MODEL, "--clear").exit_code == 0
    assert [r.get("model") for r in rules("key", key_id)] == [None]
    assert run("teams", "limits", team, "--model", TINY_MODEL, "--concurrent", "3").exit_code == 0
    assert {r.get("model"): r.get("concurrent") for r in rules("team", team)} == {None: None, TINY_MODEL: 3}
    assert run("teams", "limits", team, "--clear").exit_code == 0
    assert [r.get("model") for r in rules("team", team)] == [TINY_MODEL]

    # bad values: refused naming the flag, nothing created or changed
    keys_before = _ok(http.get("/admin/keys", params={"user": owner}))["data"]
    for flags, flag in ((["--rpm", "-5"], "--rpm"), (["--tpm", str(10**13)], "--tpm"),
                        (["--budget-usd", "nan"], "--budget-usd"), (["--concurrency", "-1"], "--concurrent")):  # fmt: skip
        refused = run("keys", "create", "bad", "--user", owner, *flags)
        assert refused.exit_code == 2 and flag in refused.output, refused.output
    assert _ok(http.get("/admin/keys", params={"user": owner}))["data"] == keys_before
    refused = run("teams", "create", bad_team, "--daily-tokens", "-1")
    assert refused.exit_code == 2 and "--tokens-per-day" in refused.output
    assert http.get(f"/admin/teams/{bad_team}").status_code == 404
    refused = run("teams", "limits", team, "--rpm", "-1")
    assert refused.exit_code == 2 and [r.get("model") for r in rules("team", team)] == [TINY_MODEL]
    assert run("keys", "limits", key_id, "--rpm", "5", "--clear").exit_code == 2

    # a team admin may create keys but not set key limits (admins only): the new key is revoked
    _ok(http.post("/admin/users", json={"name": lead, "team": team, "team_role": "team_admin"}))
    lead_key = _ok(http.post("/admin/keys", json={"name": "k", "user": lead, "team": team}))["secret"]
    refused = run(
        "keys",
        "create",
        "lead-limited",
        "--user",
        lead,
        "--team",
        team,
        "--rpm",
        "5",
        key=issued.record(lead_key),
    )
    assert refused.exit_code == 1 and "403" in refused.output and "revoked again" in refused.output
    made_by_lead = [
        k for k in _ok(http.get("/admin/keys", params={"user": lead}))["data"] if k["name"] == "lead-limited"
    ]
    assert [k["status"] for k in made_by_lead] == ["revoked"]


def test_a_teamless_key_using_a_teams_grant_is_governed_by_that_team(http, base_url):
    """The key is bound to no team and its user has no grant of their own: the model comes from
    the team's grant, so the team's limits apply and its usage is the team's."""
    s = uuid.uuid4().hex[:6]
    team, user = f"grant-{s}", f"loose-{s}"
    _ok(http.post("/admin/teams", json={"name": team}))
    _ok(http.put(f"/admin/teams/{team}/models/{TINY_MODEL}"))
    _ok(http.post("/admin/users", json={"name": user, "team": team}))
    secret = issued.record(_ok(http.post("/admin/keys", json={"name": "k", "user": user}))["secret"])
    _ok(http.put("/admin/limits", json={"scope": "team", "subject": team, "rpm": 1}))
    try:
        body = {"model": TINY_MODEL, "prompt": "hello", "max_tokens": 2}
        with httpx.Client(base_url=base_url, timeout=60, headers={"Authorization": f"Bearer {secret}"}) as c:
            assert c.post("/v1/completions", json=body).status_code == 200
            second = c.post("/v1/completions", json=body)
        assert second.status_code == 429 and team in second.json()["error"]["message"], second.text
        teams = {row["team"] for row in _ok(http.get("/admin/usage", params={"by": "team"}))["data"]}
        assert team in teams
    finally:
        http.delete("/admin/limits", params={"scope": "team", "subject": team})
