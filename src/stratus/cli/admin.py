"""`stratus keys|users|teams`: the /admin API of a running server, from the command line.

    export STRATUS_API_KEY=sk-stratus-...          # a key allowed to do what you ask
    stratus teams create ml
    stratus users create alice --team ml --team-role team_admin
    stratus teams grant ml demo
    stratus keys create ci --user alice --team ml --expires-in 30d    # secret on the last line
    stratus keys rotate key_0123456789abcdef --grace 1h
    stratus keys revoke key_0123456789abcdef
    stratus keys create ci --user alice --rpm 60 --tpm 10000 --budget-usd 20    # with limits
    stratus keys limits key_0123456789abcdef --model demo --concurrency 2
    stratus teams limits ml --tokens-per-day 2000000                          # or --clear

The key is read from STRATUS_API_KEY only (a flag would show it in `ps`); the server from --url
or STRATUS_URL. A secret the server returns is printed on the last line of stdout, alone, so
`stratus keys create ci | tail -n1` captures it; nothing else is ever printed of it.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
import httpx

from stratus.cli.limit_flags import checked_rule, describe, given, limit_flags

DEFAULT_URL = "http://127.0.0.1:8000"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90' or '90s', '15m', '12h', '30d', '2w' -> seconds."""
    m = _DURATION.match(text or "")
    if not m:
        raise click.BadParameter(f"{text!r}: use a number with s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNIT[m.group(2)]


class Client:
    def __init__(self, url: str, cacert: str | None):
        key = os.environ.get("STRATUS_API_KEY", "").strip()
        if not key:
            raise click.ClickException("set STRATUS_API_KEY to an API key of the server")
        verify: Any = cacert if cacert else True
        self.http = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
            verify=verify,
        )

    def call(self, method: str, path: str, body: dict | None = None, params: dict | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=body, params=params)
        except httpx.HTTPError as exc:
            raise click.ClickException(f"cannot reach {self.http.base_url}: {exc}") from None
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            hint = " (check STRATUS_API_KEY)" if r.status_code == 401 else ""
            raise click.ClickException(f"{r.status_code}: {message}{hint}")
        return r.json()


def _connection(func):
    func = click.option(
        "--cacert",
        envvar="STRATUS_CA_CERT",
        default=None,
        help="CA certificate (PEM) to trust for an HTTPS server. [env: STRATUS_CA_CERT]",
    )(func)
    func = click.option(
        "--url",
        envvar="STRATUS_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The server. [env: STRATUS_URL]",
    )(func)
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(func)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _show(data: Any, as_json: bool, lines) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines(data):
            click.echo(line)


def _key_lines(k: dict) -> list[str]:
    return [
        f"id:       {k['id']}",
        f"name:     {k['name']}",
        f"owner:    {k['owner']}" + (f"  team: {k['team']}" if k.get("team") else ""),
        f"prefix:   {k['prefix']}",
        f"roles:    {', '.join(k['roles']) if k['roles'] else '(all of the owner)'}",
        f"models:   {', '.join(k['models']) if k['models'] else '(all of the owner)'}",
        f"status:   {k['status']}  expires: {_when(k['expires_at'])}  last used: {_when(k['last_used_at'])}",
    ] + ([f"limits:   {describe(k['limits'])}"] if k.get("limits") else [])


def _user_lines(u: dict) -> list[str]:
    teams = ", ".join(f"{t} ({r})" for t, r in u["teams"].items()) or "-"
    state = "disabled" if u["disabled"] else "active"
    return [
        f"{u['name']}  role={u['role']}  kind={u['kind']}  {state}",
        f"  teams: {teams}",
        f"  models: {', '.join(u['models']) or '-'}",
    ]


def _team_lines(t: dict) -> list[str]:
    members = ", ".join(f"{m['user']} ({m['role']})" for m in t["members"]) or "-"
    lines = [f"{t['name']}", f"  members: {members}", f"  models: {', '.join(t['models']) or '-'}"]
    return lines + ([f"  limits: {describe(t['limits'])}"] if t.get("limits") else [])


def _secret_last(data: dict, as_json: bool) -> None:
    """The key's details, then the secret alone on the last line of stdout."""
    _show(data["key"], as_json, _key_lines)
    if not as_json:
        click.echo("The secret, shown once:", err=True)
    click.echo(data["secret"])
    sys.stdout.flush()


# -- keys -----------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys on a running server."""


@keys.command("create")
@click.argument("name")
@click.option("--user", default=None, help="The key's owner. [default: the caller]")
@click.option("--team", default=None, help="Bind the key to one of the owner's teams.")
@click.option("--role", "roles", multiple=True, help="Narrow the owner's roles (repeatable).")
@click.option("--model", "models", multiple=True, help="Narrow the owner's models (repeatable).")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 30d, 12h. [default: never expires]")
@limit_flags
@_connection
def keys_create(name, user, team, roles, models, expires_in, url, cacert, as_json, **limits) -> None:
    """Create a key. Its secret is printed once, on the last line of stdout.

    Limit flags (--rpm, --tpm, ...) set the key's limits on every model (`stratus keys limits`
    sets them per model); bad values are refused before the key is created."""
    body: dict[str, Any] = {"name": name, "user": user, "team": team}
    if roles:
        body["roles"] = list(roles)
    if models:
        body["models"] = list(models)
    if expires_in:
        body["expires_in"] = parse_duration(expires_in)
    if given(limits):
        checked_rule("key", "key_new", None, limits)  # refuse bad limits before creating the key
    client = Client(url, cacert)
    made = client.call("POST", "/admin/keys", body)
    if given(limits):
        key_id = made["key"]["id"]
        try:
            rule = client.call("PUT", "/admin/limits", checked_rule("key", key_id, None, limits))
        except click.ClickException as exc:  # no key without the limits asked for
            try:
                client.call("POST", f"/admin/keys/{quote(key_id, safe='')}/revoke")
                then = f"key {key_id} was revoked again"
            except click.ClickException as failed:
                then = f"key {key_id} was created without them and could not be revoked: {failed.message}"
            raise click.ClickException(f"{exc.message} ({then})") from None
        made["key"]["limits"] = rule
    _secret_last(made, as_json)


@keys.command("list")
@click.option("--user", default=None, help="Only this owner's keys.")
@click.option("--team", default=None, help="Only keys bound to this team.")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@_connection
def keys_list(user, team, active, url, cacert, as_json) -> None:
    """List the keys you may see (never their secrets)."""
    params = {k: v for k, v in {"user": user, "team": team}.items() if v}
    if active:
        params["include_revoked"] = "false"
    data = Client(url, cacert).call("GET", "/admin/keys", params=params)["data"]

    def lines(rows):
        yield f"{'ID':<22} {'NAME':<20} {'OWNER':<14} {'TEAM':<10} {'PREFIX':<24} {'STATUS':<8} EXPIRES"
        for k in rows:
            yield (
                f"{k['id']:<22} {k['name'][:20]:<20} {k['owner']:<14} {k['team'] or '-':<10} "
                f"{k['prefix'] or '-':<24} {k['status']:<8} {_when(k['expires_at'])}"
            )

    _show(data, as_json, lines)


@keys.command("get")
@click.argument("key_id")
@_connection
def keys_get(key_id, url, cacert, as_json) -> None:
    """Show one key."""
    _show(Client(url, cacert).call("GET", f"/admin/keys/{quote(key_id, safe='')}"), as_json, _key_lines)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace", default="0", help="How long the old secret keeps working, e.g. 1h. [default: 0]")
@_connection
def keys_rotate(key_id, grace, url, cacert, as_json) -> None:
    """Give a key a new secret (printed on the last line); the old one works for --grace more."""
    path = f"/admin/keys/{quote(key_id, safe='')}/rotate"
    data = Client(url, cacert).call("POST", path, {"grace_seconds": parse_duration(grace)})
    _secret_last(data, as_json)


@keys.command("revoke")
@click.argument("key_id")
@_connection
def keys_revoke(key_id, url, cacert, as_json) -> None:
    """Revoke a key: refused at once here, by every gateway within the cache TTL."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/revoke")
    _show(data, as_json, _key_lines)


@keys.command("limits")
@click.argument("key_id")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the key's limits (on --model).")
@_connection
def keys_limits(key_id, model, clear, url, cacert, as_json, **limits) -> None:
    """Show a key's limits, set them (replacing those on the same --model), or --clear them."""
    _limits_command("key", key_id, model, clear, limits, Client(url, cacert), as_json)


@keys.command("generate")
def keys_generate() -> None:
    """Print a fresh, well-formed key without contacting a server (for STRATUS_ADMIN_KEY)."""
    from stratus.security.keys import generate

    click.echo(generate().secret)


# -- users ----------------------------------------------------------------------------------------


@click.group()
def users() -> None:
    """Create, list and change users and service accounts on a running server."""


@users.command("create")
@click.argument("name")
@click.option(
    "--role", type=click.Choice(["admin", "auditor", "viewer", "member"]), default="member", show_default=True
)
@click.option("--service", is_flag=True, help="A service account (a program, not a person).")
@click.option("--team", default=None, help="Add the user to this team.")
@click.option("--team-role", type=click.Choice(["team_admin", "member"]), default="member", show_default=True)
@_connection
def users_create(name, role, service, team, team_role, url, cacert, as_json) -> None:
    """Create a user."""
    body = {
        "name": name,
        "role": role,
        "kind": "service" if service else "user",
        "team": team,
        "team_role": team_role,
    }
    _show(Client(url, cacert).call("POST", "/admin/users", body), as_json, _user_lines)


@users.command("list")
@click.option("--team", default=None, help="Only members of this team.")
@_connection
def users_list(team, url, cacert, as_json) -> None:
    """List the users you may see."""
    data = Client(url, cacert).call("GET", "/admin/users", params={"team": team} if team else None)["data"]
    _show(data, as_json, lambda rows: [line for u in rows for line in _user_lines(u)])


@users.command("get")
@click.argument("name")
@_connection
def users_get(name, url, cacert, as_json) -> None:
    """Show one user."""
    _show(Client(url, cacert).call("GET", f"/admin/users/{quote(name, safe='')}"), as_json, _user_lines)


@users.command("update")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "auditor", "viewer", "member"]), default=None)
@click.option("--disable/--enable", "disabled", default=None, help="Disable (or enable again) the user.")
@_connection
def users_update(name, role, disabled, url, cacert, as_json) -> None:
    """Change a user's role, or disable or enable them."""
    body = {k: v for k, v in {"role": role, "disabled": disabled}.items() if v is not None}
    data = Client(url, cacert).call("PATCH", f"/admin/users/{quote(name, safe='')}", body)
    _show(data, as_json, _user_lines)


@users.command("grant")
@click.argument("name")
@click.argument("model")
@_connection
def users_grant(name, model, url, cacert, as_json) -> None:
    """Let a user call a model ('*': every model)."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    _show(Client(url, cacert).call("PUT", path), as_json, _user_lines)


@users.command("ungrant")
@click.argument("name")
@click.argument("model")
@_connection
def users_ungrant(name, model, url, cacert, as_json) -> None:
    """Withdraw a model from a user."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    _show(Client(url, cacert).call("DELETE", path), as_json, _user_lines)


@users.command("whoami")
@_connection
def users_whoami(url, cacert, as_json) -> None:
    """Who STRATUS_API_KEY is, with its roles, teams and models."""
    data = Client(url, cacert).call("GET", "/admin/whoami")

    def lines(d):
        models = d["models"] if d["models"] == "*" else ", ".join(d["models"]) or "-"
        yield f"{d['user']} via {d['via']}" + (f" ({d['key_prefix']})" if d.get("key_prefix") else "")
        yield f"  roles: {', '.join(d['roles']) or '-'}   team: {d['team'] or '-'}"
        yield f"  teams: {', '.join(d['teams']) or '-'}   admin of: {', '.join(d['admin_of']) or '-'}"
        yield f"  models: {models}   expires: {_when(d['expires_at'])}"

    _show(data, as_json, lines)


# -- teams ----------------------------------------------------------------------------------------


@click.group()
def teams() -> None:
    """Create teams, manage their members and model grants on a running server."""


@teams.command("create")
@click.argument("name")
@limit_flags
@_connection
def teams_create(name, url, cacert, as_json, **limits) -> None:
    """Create a team; limit flags (--rpm, --tpm, ...) set its limits on every model."""
    # refuse bad limits before creating the team
    rule = checked_rule("team", name, None, limits) if given(limits) else None
    client = Client(url, cacert)
    team = client.call("POST", "/admin/teams", {"name": name})
    if rule is not None:
        try:
            team["limits"] = client.call("PUT", "/admin/limits", rule)
        except click.ClickException as exc:
            raise click.ClickException(
                f"team {name} was created, but its limits were not set: {exc.message}"
            ) from None
    _show(team, as_json, _team_lines)


@teams.command("list")
@_connection
def teams_list(url, cacert, as_json) -> None:
    """List the teams you may see."""
    data = Client(url, cacert).call("GET", "/admin/teams")["data"]
    _show(data, as_json, lambda rows: [line for t in rows for line in _team_lines(t)])


@teams.command("get")
@click.argument("name")
@_connection
def teams_get(name, url, cacert, as_json) -> None:
    """Show one team."""
    _show(Client(url, cacert).call("GET", f"/admin/teams/{quote(name, safe='')}"), as_json, _team_lines)


@teams.command("add-member")
@click.argument("team")
@click.argument("user")
@click.option("--role", type=click.Choice(["team_admin", "member"]), default="member", show_default=True)
@_connection
def teams_add_member(team, user, role, url, cacert, as_json) -> None:
    """Add a user to a team, or change their role in it."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    _show(Client(url, cacert).call("PUT", path, {"role": role}), as_json, _team_lines)


@teams.command("remove-member")
@click.argument("team")
@click.argument("user")
@_connection
def teams_remove_member(team, user, url, cacert, as_json) -> None:
    """Remove a user from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/members/{quote(user, safe='')}"
    _show(Client(url, cacert).call("DELETE", path), as_json, _team_lines)


@teams.command("grant")
@click.argument("team")
@click.argument("model")
@_connection
def teams_grant(team, model, url, cacert, as_json) -> None:
    """Let a team's members call a model ('*': every model)."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    _show(Client(url, cacert).call("PUT", path), as_json, _team_lines)


@teams.command("ungrant")
@click.argument("team")
@click.argument("model")
@_connection
def teams_ungrant(team, model, url, cacert, as_json) -> None:
    """Withdraw a model from a team."""
    path = f"/admin/teams/{quote(team, safe='')}/models/{quote(model, safe='/')}"
    _show(Client(url, cacert).call("DELETE", path), as_json, _team_lines)


@teams.command("limits")
@click.argument("team")
@click.option("--model", default=None, help="Only requests for this model. [default: every model]")
@limit_flags
@click.option("--clear", is_flag=True, help="Remove the team's limits (on --model).")
@_connection
def teams_limits(team, model, clear, url, cacert, as_json, **limits) -> None:
    """Show a team's limits, set them (replacing those on the same --model), or --clear them."""
    _limits_command("team", team, model, clear, limits, Client(url, cacert), as_json)


# -- limits of keys and teams (the rules behind /admin/limits, limits/rules.py) -----------------


def _limits_command(scope, subject, model, clear, limits, client: Client, as_json: bool) -> None:
    if clear and given(limits):
        raise click.UsageError("give either --clear or limit values, not both")
    if clear:
        params = {"scope": scope, "subject": subject, **({"model": model} if model else {})}
        client.call("DELETE", "/admin/limits", params=params)
        click.echo(f"cleared: {scope} {subject} on " + (f"model {model}" if model else "every model"))
    elif given(limits):
        rule = client.call("PUT", "/admin/limits", checked_rule(scope, subject, model, limits))
        _show(rule, as_json, lambda r: [describe(r)])
    else:
        rules = client.call("GET", "/admin/limits")["data"]
        mine = [r for r in rules if r["scope"] == scope and r["subject"] == subject]
        mine = [r for r in mine if model is None or r.get("model") == model]
        _show(mine, as_json, lambda rows: [describe(r) for r in rows] or [f"no limits for {scope} {subject}"])


def register(main: click.Group) -> None:
    for group in (keys, users, teams):
        main.add_command(group)
