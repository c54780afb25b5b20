"""The database handle: one SQLAlchemy engine, transactions that fail closed, migrations on open.

    store = Store.open("sqlite:////var/lib/stratus/stratus.db")
    with store.begin() as conn:          # one transaction; commits on success
        ...

SQLite runs in WAL mode with foreign keys on, synchronous=FULL and a busy timeout, so several
threads (and processes) can read while one writes and nothing acknowledged is lost in a crash.
PostgreSQL connections are checked before use and time out quickly, so a lost server turns
into `StoreUnavailable` (503 at the gateway) rather than a hung request.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine, make_url

from stratus.store.errors import Conflict, StoreError, StoreUnavailable

T = TypeVar("T")

SQLITE_FILE = "stratus.db"
CONNECT_TIMEOUT_S = 5


def database_url(data_dir: str | os.PathLike = "data", url: str | None = None) -> str:
    """`url` if given (PostgreSQL or SQLite), else the SQLite file under `data_dir`."""
    if url:
        return normalise_url(url)
    return f"sqlite:///{Path(data_dir).expanduser().resolve() / SQLITE_FILE}"


def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 (the driver stratus installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        return "<unparseable database URL>"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            path = Path(database)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():  # the file holds key hashes: readable by its owner only
                path.touch(mode=0o600)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": CONNECT_TIMEOUT_S}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    return sa.create_engine(
        url, pool_pre_ping=True, pool_timeout=CONNECT_TIMEOUT_S, connect_args=connect_args
    )


class Store:
    """A database the rest of stratus reaches only through `begin()` and `connect()`."""

    def __init__(self, url: str):
        self.url = normalise_url(url)
        self.engine = make_engine(self.url)

    @classmethod
    def open(cls, url: str) -> Store:
        """Connect and bring the schema to the newest migration."""
        store = cls(url)
        store.migrate()
        return store

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @property
    def dbapi(self) -> Any:
        """The driver module under the engine (sqlite3, psycopg), for code that runs statements on
        a raw connection (`engine.raw_connection()`) and catches the driver's own errors."""
        return self.engine.dialect.loaded_dbapi

    @property
    def paramstyle(self) -> str:
        """How that driver marks a bound parameter: "qmark" (?) or "format"/"pyformat" (%s)."""
        return self.engine.dialect.paramstyle

    def migrate(self) -> None:
        from stratus.store.migrate import upgrade

        with self._errors():
            upgrade(self.engine)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._errors(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection for reads (no commit)."""
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except exc.IntegrityError as e:
            raise Conflict(_constraint_message(e)) from None
        except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
            dropped = bool(getattr(e, "connection_invalidated", False))
            raise StoreUnavailable(
                f"database {redact_url(self.url)} unavailable: {type(e).__name__}", dropped
            ) from e
        except exc.DBAPIError as e:
            if e.connection_invalidated:
                raise StoreUnavailable(f"database {redact_url(self.url)} connection lost", True) from e
            raise

    def read(self, query: Callable[[Connection], T]) -> T:
        """`query(conn)` on a read connection, tried once more on a fresh connection if the one
        it had was dropped under it (a server restart, a failover, a terminated backend): reads
        are safe to repeat, and one lost connection should not fail a request."""
        try:
            with self.connect() as conn:
                return query(conn)
        except StoreUnavailable as e:
            if not e.dropped:
                raise
        with self.connect() as conn:
            return query(conn)

    def close(self) -> None:
        self.engine.dispose()


def driver_error(url: str, dbapi: Any, error: BaseException) -> StoreError | None:
    """An error from a raw connection (`Store.dbapi`'s) or from taking one from the pool, as the
    Store's own exceptions name it, the way `Store.begin()` would; None: not one to translate."""
    if isinstance(error, StoreError):
        return None
    # exc.*: from the pool, opening a connection (SQLAlchemy has wrapped the driver's error)
    lost = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError)
    if isinstance(error, (*lost, dbapi.OperationalError, dbapi.InterfaceError)):
        return StoreUnavailable(f"database {redact_url(url)} unavailable: {type(error).__name__}")
    if isinstance(error, dbapi.IntegrityError):
        return Conflict("violates a rule of the database")
    return None


def connection_lost(dbapi: Any, error: BaseException) -> bool:
    """Whether a driver error may mean the connection is gone (the server dropped it, or it
    cannot be reached), as opposed to a statement the database refused."""
    return isinstance(error, (dbapi.OperationalError, dbapi.InterfaceError))


def _constraint_message(e: exc.IntegrityError) -> str:
    text = str(e.orig).lower()
    if "unique" in text or "duplicate" in text:
        return "already exists"
    if "foreign key" in text:
        return "refers to something that no longer exists"
    return "violates a rule of the database"
