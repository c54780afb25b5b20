"""A read whose PostgreSQL connection is terminated under it (a server restart, a failover, an
operator's pg_terminate_backend) is tried once more on a fresh connection: one lost connection
must not fail a request. The backend is really terminated, mid-query, from a second connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from stratus.security.access import AccessControl
from stratus.security.bootstrap import bootstrap
from stratus.security.errors import Unavailable
from stratus.store import Store, StoreUnavailable
from tests import issued
from tests.pg import _admin_connection

pytestmark = pytest.mark.timeout(60)


def terminate_next_queries(store: Store, times: int) -> list[int]:
    """Terminate the backend of the next `times` statements just before they run."""
    killed: list[int] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        if len(killed) < times:
            pid = conn.connection.dbapi_connection.info.backend_pid
            killed.append(pid)
            with _admin_connection() as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    event.listen(store.engine, "before_cursor_execute", before)
    return killed


def test_a_read_whose_connection_is_dropped_is_tried_again(pg_url):
    store = Store.open(pg_url)
    try:
        killed = terminate_next_queries(store, 1)
        assert store.read(lambda conn: conn.execute(sa.text("SELECT 41 + 1")).scalar()) == 42
        assert len(killed) == 1
        killed = terminate_next_queries(store, 2)  # dropped twice: not hidden
        with pytest.raises(StoreUnavailable):
            store.read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())
    finally:
        store.close()


def test_a_key_is_verified_through_a_dropped_connection(pg_url):
    store = Store.open(pg_url)
    secret = issued.record(bootstrap(store).generated_secret)
    access = AccessControl(store, cache_ttl=0)
    try:
        killed = terminate_next_queries(store, 1)
        assert access.authenticate(secret).user  # it used to be a 503 (auth_unavailable)
        assert len(killed) == 1
        terminate_next_queries(store, 2)
        with pytest.raises(Unavailable):
            access.authenticate(secret)
    finally:
        store.close()
