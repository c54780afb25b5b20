"""`stratus lockouts|alerts`, `stratus keys reinstate|suspended`, `stratus teams content-logging`:
the security switches of a running server (its /admin API), from the command line.

    export STRATUS_API_KEY=sk-stratus-...           # an admin's key (an auditor's for reading)
    stratus lockouts list
    stratus lockouts unlock addr:10.0.0.7
    stratus keys suspended
    stratus keys reinstate key_0123456789abcdef
    stratus teams content-logging ml --on           # prompts and completions, redacted, encrypted
    stratus alerts list
    stratus alerts webhook set https://ops.example/hooks/stratus   # prints the signing secret once
    printf %s "$SECRET" | stratus alerts webhook set URL --secret-stdin
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import click

from stratus.cli.admin import Client, _connection, _show, _when, keys, teams


@click.group()
def lockouts() -> None:
    """Sources locked out after repeated failed logins."""


@lockouts.command("list")
@_connection
def lockouts_list(url, cacert, as_json) -> None:
    """Lockouts in force on the server (each gateway process keeps its own)."""
    data = Client(url, cacert).call("GET", "/admin/lockouts")["data"]

    def lines(rows):
        yield f"{'SOURCE':<40} {'UNTIL':<22} SECONDS LEFT"
        for row in rows:
            yield f"{row['source']:<40} {_when(row['until']):<22} {row['seconds_left']}"

    _show(data, as_json, lines)


@lockouts.command("unlock")
@click.argument("source")
@_connection
def lockouts_unlock(source, url, cacert, as_json) -> None:
    """Lift the lockout of SOURCE (addr:ADDRESS or key:PREFIX, as `list` shows it)."""
    data = Client(url, cacert).call("DELETE", f"/admin/lockouts/{quote(source, safe='')}")
    _show(data, as_json, lambda d: [f"unlocked {d['source']}"])


@keys.command("suspended")
@_connection
def keys_suspended(url, cacert, as_json) -> None:
    """Keys suspended after an anomaly alert, pending review."""
    data = Client(url, cacert).call("GET", "/admin/suspensions")["data"]

    def lines(rows):
        yield f"{'KEY':<22} {'REASON':<16} {'SINCE':<22} DETAIL"
        for row in rows:
            yield f"{row['key_id']:<22} {row['reason']:<16} {_when(row['suspended_at']):<22} {row['detail']}"

    _show(data, as_json, lines)


@keys.command("reinstate")
@click.argument("key_id")
@_connection
def keys_reinstate(key_id, url, cacert, as_json) -> None:
    """Lift the suspension of a key (audited)."""
    data = Client(url, cacert).call("POST", f"/admin/keys/{quote(key_id, safe='')}/reinstate")
    _show(data, as_json, lambda d: [f"reinstated {d['key_id']}"])


@teams.command("content-logging")
@click.argument("team")
@click.option(
    "--on/--off", "enabled", required=True, help="Log (redacted, encrypted) prompts and completions."
)
@_connection
def teams_content_logging(team, enabled, url, cacert, as_json) -> None:
    """Turn content logging on or off for TEAM (admins; audited)."""
    path = f"/admin/teams/{quote(team, safe='')}/content-logging"
    data = Client(url, cacert).call("PUT", path, {"enabled": enabled})
    _show(
        data,
        as_json,
        lambda d: [f"content logging for {d['team']}: {'on' if d['content_logging'] else 'off'}"],
    )


@click.group()
def alerts() -> None:
    """Anomaly alerts and the webhook they are sent to."""


@alerts.command("list")
@_connection
def alerts_list(url, cacert, as_json) -> None:
    """Recent alerts and lockouts (newest first)."""
    data = Client(url, cacert).call("GET", "/admin/alerts")["alerts"]

    def lines(rows):
        for row in rows:
            yield f"{_when(row['at'])}  {row['kind']:<15} {row['source']:<40} {row['detail']}"

    _show(data, as_json, lines)


@alerts.group("webhook")
def webhook() -> None:
    """Where alerts are POSTed (signed with HMAC-SHA256)."""


@webhook.command("show")
@_connection
def webhook_show(url, cacert, as_json) -> None:
    data = Client(url, cacert).call("GET", "/admin/alerts/webhook")
    _show(data, as_json, lambda d: [d["url"] if d["configured"] else "(no webhook)"])


@webhook.command("set")
@click.argument("target")
@click.option("--secret-stdin", is_flag=True, help="Read the signing secret from stdin (else one is made).")
@_connection
def webhook_set(target, secret_stdin, url, cacert, as_json) -> None:
    """Send alerts to TARGET; a made secret is printed once, on the last line."""
    body: dict[str, Any] = {"url": target}
    if secret_stdin:
        body["secret"] = sys.stdin.read().strip()
    data = Client(url, cacert).call("PUT", "/admin/alerts/webhook", body)
    click.echo(f"alerts go to {data['url']}", err=not as_json and "secret" in data)
    if "secret" in data:
        click.echo("The signing secret, shown once:", err=True)
        click.echo(data["secret"])


@webhook.command("clear")
@_connection
def webhook_clear(url, cacert, as_json) -> None:
    data = Client(url, cacert).call("DELETE", "/admin/alerts/webhook")
    _show(data, as_json, lambda d: ["webhook removed" if d["removed"] else "(no webhook was set)"])


def register(main: click.Group) -> None:
    for group in (lockouts, alerts):
        main.add_command(group)
