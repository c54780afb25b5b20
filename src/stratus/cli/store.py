"""What the commands that work on the database directly share: where it is, and opening it."""

from __future__ import annotations

import click


def store_options(func):
    """--data-dir and --database-url, as `stratus serve` reads them."""
    func = click.option(
        "--database-url",
        envvar="STRATUS_DATABASE_URL",
        default=None,
        help="PostgreSQL URL; default: SQLite in the data directory. [env: STRATUS_DATABASE_URL]",
    )(func)
    return click.option(
        "--data-dir",
        envvar="STRATUS_DATA_DIR",
        default="data",
        show_default=True,
        help="[env: STRATUS_DATA_DIR]",
    )(func)


def open_store(data_dir: str, database_url: str | None):
    """The Store, or a ClickException that says why it cannot be opened."""
    from stratus.store import Store, StoreUnavailable
    from stratus.store import database_url as url_of

    try:
        return Store.open(url_of(data_dir, database_url))
    except StoreUnavailable as exc:
        raise click.ClickException(f"cannot open the database: {exc}") from None
