"""Persistent state: SQLAlchemy Core tables and the plain functions that read and write them.

    store = Store.open(database_url(data_dir="data"))   # SQLite in WAL mode, migrated to head
    with store.begin() as conn:
        user = directory.create_user(conn, "alice", role="member")

SQLite under `--data-dir` by default, PostgreSQL with `--database-url`. The schema is managed by
alembic migrations (store/migrations), so an upgrade keeps the data. Every statement is built
with SQLAlchemy and sent with bound parameters; no SQL text is ever assembled from input.

Only this package imports SQLAlchemy: the rest of stratus holds a `Connection` (re-exported here
for annotations) and hands it to the functions of store's modules.
"""

from sqlalchemy.engine import Connection

from stratus.store.database import Store, connection_lost, database_url, driver_error, redact_url
from stratus.store.errors import Conflict, StoreError, StoreUnavailable

__all__ = [
    "Conflict",
    "Connection",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "connection_lost",
    "database_url",
    "driver_error",
    "redact_url",
]
