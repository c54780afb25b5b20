"""`stratus alerts`: anomaly alerts of a running server and the webhook they are sent to.

export STRATUS_API_KEY=sk-stratus-...           # an admin's key (an auditor's for reading)
stratus alerts list
stratus alerts webhook set https://ops.example/hooks/stratus   # prints the signing secret once
printf %s "$SECRET" | stratus alerts webhook set URL --secret-stdin
"""

from __future__ import annotations

import sys
from typing import Any

import click

from stratus.cli.common import Client, connection_options, show, when


@click.group()
def alerts() -> None:
    """Anomaly alerts and the webhook they are sent to."""


@alerts.command("list")
@connection_options
def alerts_list(url, cacert, as_json) -> None:
    """Recent alerts and lockouts (newest first)."""
    data = Client(url, cacert).call("GET", "/admin/alerts")["alerts"]

    def lines(rows):
        for row in rows:
            yield f"{when(row['at'])}  {row['kind']:<15} {row['source']:<40} {row['detail']}"

    show(data, as_json, lines)


@alerts.group("webhook")
def webhook() -> None:
    """Where alerts are POSTed (signed with HMAC-SHA256)."""


@webhook.command("show")
@connection_options
def webhook_show(url, cacert, as_json) -> None:
    data = Client(url, cacert).call("GET", "/admin/alerts/webhook")
    show(data, as_json, lambda d: [d["url"] if d["configured"] else "(no webhook)"])


@webhook.command("set")
@click.argument("target")
@click.option("--secret-stdin", is_flag=True, help="Read the signing secret from stdin (else one is made).")
@connection_options
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
@connection_options
def webhook_clear(url, cacert, as_json) -> None:
    data = Client(url, cacert).call("DELETE", "/admin/alerts/webhook")
    show(data, as_json, lambda d: ["webhook removed" if d["removed"] else "(no webhook was set)"])
