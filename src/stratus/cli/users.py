"""`stratus users`: users and service accounts on a running server (its /admin API).

export STRATUS_API_KEY=sk-stratus-...          # a key allowed to do what you ask
stratus users create alice --team ml --team-role team_admin
stratus users grant alice demo
stratus users whoami
"""

from __future__ import annotations

from urllib.parse import quote

import click

from stratus.cli.common import Client, Column, gateway_options, render, when

USER_COLUMNS = [
    Column("name"),
    Column("role"),
    Column("kind"),
    Column("disabled", "STATE", lambda d: "disabled" if d else "active"),
    Column("teams", fmt=lambda t: ", ".join(f"{k} ({v})" for k, v in t.items()) or "-"),
    Column("models"),
]
READ = "an auditor's or an admin's key, or a team admin's for their team (directory.read)."
MANAGE = "an admin's key, or a team admin's for their team (users.manage)."
GRANT = "an admin's key (grants.manage); no one can grant a model they may not use."


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
@gateway_options(credential=MANAGE)
def users_create(name, role, service, team, team_role, url, cacert, output) -> None:
    """Create a user."""
    body = {
        "name": name,
        "role": role,
        "kind": "service" if service else "user",
        "team": team,
        "team_role": team_role,
    }
    render(Client(url, cacert).call("POST", "/admin/users", body), output, USER_COLUMNS)


@users.command("list")
@click.option("--team", default=None, help="Only members of this team.")
@gateway_options(credential=READ)
def users_list(team, url, cacert, output) -> None:
    """List the users you may see."""
    data = Client(url, cacert).call("GET", "/admin/users", params={"team": team} if team else None)["data"]
    render(data, output, USER_COLUMNS, empty="no users")


@users.command("get")
@click.argument("name")
@gateway_options(credential=READ)
def users_get(name, url, cacert, output) -> None:
    """Show one user."""
    render(Client(url, cacert).call("GET", f"/admin/users/{quote(name, safe='')}"), output, USER_COLUMNS)


@users.command("update")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "auditor", "viewer", "member"]), default=None)
@click.option("--disable/--enable", "disabled", default=None, help="Disable (or enable again) the user.")
@gateway_options(credential=MANAGE)
def users_update(name, role, disabled, url, cacert, output) -> None:
    """Change a user's role, or disable or enable them."""
    body = {k: v for k, v in {"role": role, "disabled": disabled}.items() if v is not None}
    data = Client(url, cacert).call("PATCH", f"/admin/users/{quote(name, safe='')}", body)
    render(data, output, USER_COLUMNS)


@users.command("grant")
@click.argument("name")
@click.argument("model")
@gateway_options(credential=GRANT)
def users_grant(name, model, url, cacert, output) -> None:
    """Let a user call a model ('*': every model)."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    render(Client(url, cacert).call("PUT", path), output, USER_COLUMNS)


@users.command("ungrant")
@click.argument("name")
@click.argument("model")
@gateway_options(credential=GRANT)
def users_ungrant(name, model, url, cacert, output) -> None:
    """Withdraw a model from a user."""
    path = f"/admin/users/{quote(name, safe='')}/models/{quote(model, safe='/')}"
    render(Client(url, cacert).call("DELETE", path), output, USER_COLUMNS)


@users.command("whoami")
@gateway_options(credential="any key: the one you want to know about.")
def users_whoami(url, cacert, output) -> None:
    """Who STRATUS_API_KEY is, with its roles, teams and models."""
    data = Client(url, cacert).call("GET", "/admin/whoami")
    fields = [
        Column("user"),
        Column("via"),
        Column("key_prefix", "KEY PREFIX"),
        Column("roles"),
        Column("team"),
        Column("teams"),
        Column("admin_of", "ADMIN OF"),
        Column("models"),
        Column("expires_at", "EXPIRES", when),
    ]
    render(data, output, fields)
