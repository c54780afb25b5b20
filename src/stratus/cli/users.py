"""`stratus users`: users and service accounts on a running server (its /admin API).

export STRATUS_API_KEY=sk-stratus-...          # a key allowed to do what you ask
stratus users create alice --team ml --team-role team_admin
stratus users grant alice demo
stratus users whoami
"""

from __future__ import annotations

from urllib.parse import quote

import click

from stratus.cli.common import Client, connection_options, show, when


def _user_lines(u: dict) -> list[str]:
    teams = ", ".join(f"{t} ({r})" for t, r in u["teams"].items()) or "-"
    state = "disabled" if u["disabled"] else "active"
    return [
        f"{u['name']}  role={u['role']}  kind={u['kind']}  {state}",
        f"  teams: {teams}",
        f"  models: {', '.join(u['models']) or '-'}",
    ]


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
@connection_options
def users_create(name, role, service, team, team_role, url, cacert, as_json) -> None:
    """Create a user."""
    body = {
        "name": name,
        "role": role,
        "kind": "service" if service else "user",
        "team": team,
        "team_role": team_role,
    }
    show(Client(url, cacert).call("POST", "/admin/users", body), as_json, _user_lines)


@users.command("list")
@click.option("--team", default=None, help="Only members of this team.")
@connection_options
def users_list(team, url, cacert, as_json) -> None:
    """List the users you may see."""
    data = Client(url, cacert).call("GET", "/admin/users", params={"team": team} if team else None)["data"]
    show(data, as_json, lambda rows: [line for u in rows for line in _user_lines(u)])


@users.command("get")
@click.argument("name")
@connection_options
def users_get(name, url, cacert, as_json) -> None:
    """Show one user."""
    show(Client(url, cacert).call("GET", f"/admin/users/{quote(name, safe='')}"), as_json, _user_lines)


@users.command("update")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "auditor", "viewer", "member"]), default=None)
@click.option("--disable/--enable", "disabled", default=None, help="Disable (or enable again) the user.")
@connection_options
def users_update(name, role, disabled, url, cacert, as_json) -> None:
    """Change a user's role, or disable or enable them."""
    body = {k: v for k, v in {"role": role, "disabled": disabled}.items() if v is not None}
    data = Client(url, cacert).call("PATCH", f"/admin/users/{quote(name, safe='')}", body)
    show(data, as_json, _user_lines)


@users.command("grant")
@click.argument("name")
@click.argument("model")
@connection_options
def users_grant(name, model, url, cacert, as_json) -> None:
    """Let a user call a model ('*': every model)."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    show(Client(url, cacert).call("PUT", path), as_json, _user_lines)


@users.command("ungrant")
@click.argument("name")
@click.argument("model")
@connection_options
def users_ungrant(name, model, url, cacert, as_json) -> None:
    """Withdraw a model from a user."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    show(Client(url, cacert).call("DELETE", path), as_json, _user_lines)


@users.command("whoami")
@connection_options
def users_whoami(url, cacert, as_json) -> None:
    """Who STRATUS_API_KEY is, with its roles, teams and models."""
    data = Client(url, cacert).call("GET", "/admin/whoami")

    def lines(d):
        models = d["models"] if d["models"] == "*" else ", ".join(d["models"]) or "-"
        yield f"{d['user']} via {d['via']}" + (f" ({d['key_prefix']})" if d.get("key_prefix") else "")
        yield f"  roles: {', '.join(d['roles']) or '-'}   team: {d['team'] or '-'}"
        yield f"  teams: {', '.join(d['teams']) or '-'}   admin of: {', '.join(d['admin_of']) or '-'}"
        yield f"  models: {models}   expires: {when(d['expires_at'])}"

    show(data, as_json, lines)
