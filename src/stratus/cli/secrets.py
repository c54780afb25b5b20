"""`stratus secrets set|list|rotate`: secrets stratus stores, encrypted at rest with AES-GCM.

    printf %s "$UPSTREAM_KEY" | stratus secrets set upstream/openai     # the value from stdin
    stratus secrets list                                               # names only
    stratus secrets rotate                                             # new master key, re-encrypt

The master key comes from STRATUS_MASTER_KEY, else DATA_DIR/master.key (made on first use,
mode 0600). Values are never printed.
"""

from __future__ import annotations

import sys

import click

from stratus.cli.common import open_store, store_options


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
@store_options
@click.argument("name")
def set_secret(name: str, data_dir: str, database_url: str | None) -> None:
    """Store NAME with the value read from stdin (never from a flag, which `ps` would show)."""
    value = sys.stdin.read().rstrip("\n")
    if not value:
        raise click.UsageError("pipe the value on stdin")
    box = _box(data_dir, database_url)
    box.put(name, value)
    click.echo(f"secrets: stored {name} under key {box.ring.current}")


@secrets.command("list")
@store_options
def list_secrets(data_dir: str, database_url: str | None) -> None:
    """Names of the stored secrets."""
    for name in _box(data_dir, database_url).names():
        click.echo(name)


@secrets.command()
@store_options
def rotate(data_dir: str, database_url: str | None) -> None:
    """Make a new master key, re-encrypt every secret under it, retire the old key."""
    from stratus.security.secrets import SecretError
    from stratus.security.secrets import rotate as do_rotate

    box = _box(data_dir, database_url)
    try:
        key_id, count = do_rotate(box)
    except SecretError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"secrets: {count} re-encrypted under key {key_id}")
