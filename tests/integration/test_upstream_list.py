"""The gateway's list of registered upstreams: read from a real SQLite store off the event loop,
and a store that cannot be read keeps the last list, so an unknown model stays a 404."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from stratus.api.upstream_proxy import Upstreams, secret_store
from stratus.store import Store
from stratus.store import upstreams as table

pytestmark = pytest.mark.timeout(30)


def test_a_store_that_cannot_be_read_keeps_the_last_list(tmp_path):
    folder = tmp_path / "db"
    folder.mkdir()
    store = Store.open(f"sqlite:///{folder / 'stratus.db'}")
    with store.begin() as conn:
        table.add(conn, "up1", "remote", "http://127.0.0.1:9/v1", "tiny", None)

    async def run():
        upstreams = Upstreams(store, secret_store(store, str(tmp_path)), ttl=0)
        assert await upstreams.serves("remote")
        assert not await upstreams.serves("unknown")
        store.engine.dispose()
        shutil.rmtree(folder)  # the database is gone: reads fail from now on
        assert await upstreams.serves("remote")  # the last list, not an exception (a 503)
        assert not await upstreams.serves("unknown")  # still a plain "no such model"

    asyncio.run(run())


def test_a_store_never_read_serves_no_upstream(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'missing-dir' / 'stratus.db'}")

    async def run():
        upstreams = Upstreams(store, secret_store(store, str(tmp_path)))
        assert not await upstreams.serves("remote")

    asyncio.run(run())
