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

from stratus.cli.common import Client, Column, gateway_options, render, show, when


@click.group()
def alerts() -> None:
    """Anomaly alerts and the webhook they are sent to."""


@alerts.command("list")
@gateway_options(credential="an auditor's or an admin's key (audit.read).")
def alerts_list(url, cacert, output) -> None:
    """Recent alerts and lockouts (newest first)."""
    data = Client(url, cacert).call("GET", "/admin/alerts")["alerts"]
    columns = [Column("at", "WHEN", when), Column("kind"), Column("source"), Column("detail")]
    render(data, output, columns, empty="no alerts")


@alerts.group("webhook")
def webhook() -> None:
    """Where alerts are POSTed (signed with HMAC-SHA256)."""


@webhook.command("show")
@gateway_options(credential="an auditor's or an admin's key (audit.read).")
def webhook_show(url, cacert, output) -> None:
    """Where alerts are sent (never the signing secret)."""
    data = Client(url, cacert).call("GET", "/admin/alerts/webhook")
    show(data, output, lambda d: [d["url"] if d["configured"] else "(no webhook)"])


@webhook.command("set")
@click.argument("target")
@click.option("--secret-stdin", is_flag=True, help="Read the signing secret from stdin (else one is made).")
@gateway_options(credential="an admin's key (security.manage).")
def webhook_set(target, secret_stdin, url, cacert, output) -> None:
    """Send alerts to TARGET; a made secret is printed once, on the last line."""
    body: dict[str, Any] = {"url": target}
    if secret_stdin:
        body["secret"] = sys.stdin.read().strip()
    data = Client(url, cacert).call("PUT", "/admin/alerts/webhook", body)
    click.echo(f"alerts go to {data['url']}", err="secret" in data)
    if "secret" in data:
        click.echo("The signing secret, shown once:", err=True)
        click.echo(data["secret"])


@webhook.command("clear")
@gateway_options(credential="an admin's key (security.manage).")
def webhook_clear(url, cacert, output) -> None:
    """Stop sending alerts to a webhook."""
    data = Client(url, cacert).call("DELETE", "/admin/alerts/webhook")
    show(data, output, lambda d: ["webhook removed" if d["removed"] else "(no webhook was set)"])
