"""A PostgreSQL database of its own for a test, on the server in STRATUS_TEST_DATABASE_URL.

    with scratch_database() as url:      # postgresql+psycopg://.../stratus_test_1a2b3c4d
        store = Store.open(url)

The database is created fresh and dropped afterwards. If the server cannot be reached the test
is skipped with a message saying how to enable it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
ENABLE = (
    "start PostgreSQL on 127.0.0.1:5432 (trust auth, database 'test') or set "
    "STRATUS_TEST_DATABASE_URL=postgresql://USER[:PASSWORD]@HOST:PORT/DB to a server where that user "
    "may create databases"
)


def server_url() -> str:
    return os.environ.get("STRATUS_TEST_DATABASE_URL", DEFAULT_URL)


def _admin_connection():
    try:
        import psycopg
    except ImportError:
        pytest.skip(f"psycopg is not installed (pip install 'psycopg[binary]'); then {ENABLE}")
    url = server_url().replace("postgresql+psycopg://", "postgresql://")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        from stratus.store import redact_url

        pytest.skip(f"PostgreSQL not reachable at {redact_url(url)} ({str(exc).strip()[:120]}): {ENABLE}")


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    from sqlalchemy.engine import make_url

    name = f"stratus_test_{secrets.token_hex(4)}"
    with _admin_connection() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name made above from hex digits only
    url = make_url(server_url()).set(drivername="postgresql+psycopg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
