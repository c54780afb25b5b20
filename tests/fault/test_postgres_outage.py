"""PostgreSQL drops the gateway's connections under load, again and again.

`stratus serve` keeps users, keys, limits, the usage ledger and the audit trail in a PostgreSQL
database of its own (access control and metering on). Four clients, each with its own member
key, send completions and streams while the test terminates every server connection of that
database (`pg_terminate_backend`) several times: the pooled connections, the audit writer's and
the ledger writer's, idle or mid-statement. It asserts:

- every client sees a 200 or a clean 503 (the error envelope, a Retry-After): no 500, no
  dropped connection, no cut stream;
- the server log holds no traceback of an unhandled error;
- the gateway reconnects by itself: requests succeed after the last termination, same process;
- reconciliation on the PostgreSQL database (tests/fault/reconcile.py): every 200 has its audit
  record(s) and one ledger row with the tokens the client was told, no refusal is charged as
  delivered, nothing twice, and the audit chain verifies.

Printed (not asserted): how many requests got 503 and why, and the time from the last
termination to the next 200.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from stratus.security.keys import generate
from tests import issued
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import reconcile
from tests.fault.traffic import Traffic, member_keys
from tests.live_server import ServeProcess
from tests.pg import _admin_connection, scratch_database

pytestmark = pytest.mark.timeout(300)

CLIENTS = 4
TERMINATE = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"


def test_postgres_connections_terminated_under_load_are_survived(tiny_checkpoint, tmp_path):
    data_dir = issued.data_dir_of(tmp_path / "data")
    admin = issued.record(generate().secret)
    with scratch_database() as url:
        name = url.rsplit("/", 1)[1]
        args = ["--model", f"tiny={tiny_checkpoint}", "--data-dir", str(data_dir), "--database-url", url]
        server = ServeProcess(*args, "--engine-isolation", "thread", env={"STRATUS_ADMIN_KEY": admin})
        killed: list[int] = []
        try:
            server.wait_ready()
            keys = member_keys(server.url, admin, CLIENTS)
            with Traffic(server.url, keys) as traffic, _admin_connection() as pg:
                traffic.wait_for(lambda s: s.status == 200, count=2 * CLIENTS)
                rounds, every = int(fault_seconds(10, 60)), fault_seconds(0.25, 0.5)
                for _ in range(rounds):
                    time.sleep(every)
                    killed.append(pg.execute(TERMINATE, (name,)).fetchone()[0])
                last = time.monotonic()
                after = traffic.wait_for(lambda s: s.status == 200 and s.started >= last, count=2 * CLIENTS)
                time.sleep(fault_seconds(0.5, 5))
        finally:
            server.terminate()
            code = server.wait(60) if server.proc.poll() is None else server.proc.returncode
            server.kill()
        sent = traffic.sent

        # -- what the clients saw -------------------------------------------------------------------
        assert after.status == 200  # reconnected by itself: served after the last termination
        odd = [(s.request_id, s.status, s.outcome.error) for s in sent if s.status not in (200, 503)]
        assert not odd, f"neither a 200 nor a 503: {odd}"
        cut = [(s.request_id, s.outcome.error) for s in sent if s.status == 200 and not s.outcome.delivered]
        assert not cut, f"a 200 that was not complete: {cut}"
        refused = [s for s in sent if s.status == 503]
        assert all(s.code for s in refused), "a 503 without the error envelope"

        # -- the server log -------------------------------------------------------------------------
        log = server.output
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-6000:]
        assert code == 0, log[-3000:]

        # -- nothing lost, nothing unaudited, nothing charged twice, on PostgreSQL ------------------
        result = reconcile(traffic.observed(), data_dir, database_url=url)

    first_200 = min((s for s in sent if s.status == 200 and s.started >= last), key=lambda s: s.ended)
    print(
        f"\npostgres outage: {len(killed)} terminations ({sum(killed)} connections), {len(sent)} requests "
        f"({len(sent) - len(refused)} ok, 503s by code: {dict(Counter(s.code for s in refused))}); last "
        f"termination -> first 200 {first_200.ended - last:.3f} s; {result.chain_records} audit records"
    )
