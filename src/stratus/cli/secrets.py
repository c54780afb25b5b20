"""`stratus secrets`: secrets stratus stores, encrypted at rest with AES-GCM (security/secrets.py).

    export STRATUS_API_KEY=sk-stratus-...                               # an admin's key
    printf %s "$WEBHOOK_SECRET" | stratus secrets set hook/slack        # the value from stdin
    stratus secrets list                                                # names only
    stratus secrets delete hook/slack
    stratus secrets rotate-master-key --data-dir data                   # on the gateway host

set, list and delete call the gateway's /admin/secrets (api/routes/secrets.py). Rotating the
master key writes the key file (DATA_DIR/master.key) and re-encrypts every value, so it runs on
the gateway host against its database. Values are never printed.
"""

from __future__ import annotations

import sys
from urllib.parse import quote

import click

from stratus.cli.common import (
    Client,
    Column,
    gateway_options,
    legacy_store_options,
    offline_warning,
    open_store,
    render,
    store_options,
)

ADMIN = "an admin's key (security.manage)."


def _checked(name: str) -> str:
    from stratus.security.secrets import NAME_RE, valid_name

    if not valid_name(name):
        raise click.BadParameter(f"{name!r}: use {NAME_RE.pattern} (e.g. hook/slack)", param_hint="NAME")
    return name


def _box(data_dir: str, database_url: str | None):
    from stratus.security.secrets import SecretError, SecretStore, load_keyring

    store = open_store(data_dir, database_url)
    try:
        return SecretStore(store, load_keyring(data_dir))
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def secrets() -> None:
    """Secrets at rest (upstream API keys, webhook secrets), encrypted with AES-GCM."""


@secrets.command("set")
@click.argument("name")
@gateway_options(credential=ADMIN, output=False)
@legacy_store_options
def set_secret(
    name: str, url: str, cacert: str | None, data_dir: str | None, database_url: str | None
) -> None:
    """Store NAME with the value read from stdin (never from a flag, which `ps` would show)."""
    _checked(name)
    value = sys.stdin.read().rstrip("\n")
    if not value:
        raise click.UsageError("pipe the value on stdin")
    if data_dir is not None:
        offline_warning("stratus secrets set")
        box = _box(data_dir, database_url)
        box.put(name, value)
        click.echo(f"secrets: stored {name} under key {box.ring.current}")
        return
    data = Client(url, cacert).call("PUT", f"/admin/secrets/{quote(name, safe='/')}", {"value": value})
    click.echo(f"secrets: stored {data['name']} under key {data['key_id']}")


@secrets.command("list")
@gateway_options(credential=ADMIN)
@legacy_store_options
def list_secrets(
    url: str, cacert: str | None, output: str, data_dir: str | None, database_url: str | None
) -> None:
    """Names of the stored secrets (never their values)."""
    if data_dir is not None:
        offline_warning("stratus secrets list")
        rows = [{"name": n} for n in _box(data_dir, database_url).names()]
    else:
        rows = Client(url, cacert).call("GET", "/admin/secrets")["data"]
    render(rows, output, [Column("name")], empty="no secrets")


@secrets.command("delete")
@click.argument("name")
@gateway_options(credential=ADMIN, output=False)
def delete_secret(name: str, url: str, cacert: str | None) -> None:
    """Remove the secret NAME."""
    _checked(name)
    Client(url, cacert).call("DELETE", f"/admin/secrets/{quote(name, safe='/')}")
    click.echo(f"secrets: removed {name}")


def _rotate(data_dir: str, database_url: str | None) -> None:
    from stratus.security.secrets import SecretError
    from stratus.security.secrets import rotate as do_rotate

    box = _box(data_dir, database_url)
    try:
        key_id, count = do_rotate(box)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"secrets: {count} re-encrypted under key {key_id}")


@secrets.command("rotate-master-key")
@store_options
def rotate_master_key(data_dir: str, database_url: str | None) -> None:
    """On the gateway host: make a new master key (DATA_DIR/master.key), re-encrypt every secret
    under it, retire the old key. Running gateways pick the new key up from the file.

    Credential: none over the network: this runs on the gateway host, opens its database
    (--data-dir, --database-url) and rewrites DATA_DIR/master.key."""
    _rotate(data_dir, database_url)


@secrets.command("rotate", hidden=True, deprecated="use `stratus secrets rotate-master-key`")
@store_options
def rotate(data_dir: str, database_url: str | None) -> None:
    """Deprecated name of rotate-master-key."""
    _rotate(data_dir, database_url)
