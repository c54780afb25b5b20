"""Redis, holding the gateway's limit counters, killed under load and restarted on its port.

Four clients, each with its own member key (access control and metering on, a team limit in
Redis), send completions and streams throughout. The test kills the gateway's private
`redis-server` (SIGKILL), keeps the load on for the outage, then starts a new one on the same
port. It asserts:

- during the outage every request is refused with a clean 503 `limiter_unavailable` (fail
  closed), and no client sees any other error, before, during or after;
- the outage is logged once and the recovery once (not a line per refused request);
- after the restart requests succeed again on the same gateway process (no restart);
- reconciliation: every 200 has its audit record(s) and exactly one ledger row charging what the
  client was told; every 503 has its audit record and a `refused_503` row charging nothing; no
  request is recorded or charged twice; the audit chain verifies.

Printed (not asserted): the time from the kill to the first 503, the slowest 503, and the time
from the restart to the first 200.
"""

from __future__ import annotations

import logging
import subprocess
import time

import pytest

from stratus.api import create_app
from stratus.api.auth import build_access
from stratus.config import Settings
from stratus.security.bootstrap import bootstrap
from stratus.security.keys import generate
from stratus.security.stage import IdentityStage
from stratus.store import usage as ledger
from tests import issued
from tests.conftest import TINY_MODEL
from tests.fault.conftest import fault_seconds
from tests.fault.reconcile import reconcile
from tests.fault.traffic import Traffic, member_keys
from tests.live_server import LiveServer
from tests.redis_server import RedisServers, _wait_ping

pytestmark = pytest.mark.timeout(300)

CLIENTS = 4
OUTAGE_LINE = "rate limiter unavailable"
RECOVERY_LINE = "rate limiter back after"


def restart_redis(servers: RedisServers) -> None:
    """A new `redis-server` on the killed one's port (empty: it kept nothing)."""
    port, workdir = servers.ports[0], servers.workdir / "redis-0"
    args = [servers.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    servers.procs.append(proc)  # killed on exit with the others
    _wait_ping(port, time.monotonic() + 30, proc)


def test_redis_killed_under_load_fails_closed_then_recovers_without_a_restart(tiny_engine, tmp_path, caplog):
    data_dir = issued.data_dir_of(tmp_path / "data")
    with RedisServers(tmp_path / "redis") as redis:
        settings = Settings(data_dir=str(data_dir), redis_url=redis.url, metering=True)
        access = build_access(settings)
        admin = issued.record(generate().secret)
        bootstrap(access.store, admin)
        app = create_app(settings, engines={TINY_MODEL: tiny_engine}, identity=IdentityStage(access))
        state = app.state.stratus
        with state.meter.store.begin() as conn:  # a limit, so every admission asks Redis
            rule = {"scope": "model", "subject": TINY_MODEL, "rpm": 1_000_000, "tokens_per_day": 10**9}
            ledger.put_limit(conn, rule, time.time(), "test")
        with LiveServer(app) as server, caplog.at_level(logging.WARNING, logger="stratus.limits"):
            server.wait_ready()
            keys = member_keys(server.url, admin, CLIENTS)
            with Traffic(server.url, keys) as traffic:
                traffic.wait_for(lambda s: s.status == 200, count=2 * CLIENTS)
                time.sleep(fault_seconds(1, 10))  # steady load before the fault

                redis.procs[0].kill()
                redis.procs[0].wait(10)
                killed = time.monotonic()
                first_503 = traffic.wait_for(lambda s: s.status == 503 and s.ended >= killed)
                time.sleep(fault_seconds(2, 15))  # the outage, under load

                restart_redis(redis)
                restarted = time.monotonic()
                after = traffic.wait_for(
                    lambda s: s.status == 200 and s.started >= restarted, count=2 * CLIENTS
                )
                time.sleep(fault_seconds(1, 10))  # steady load after recovery
        sent = traffic.sent
        messages = [r.getMessage() for r in caplog.records if r.name == "stratus.limits"]

    # -- what the clients saw -------------------------------------------------------------------
    assert after.status == 200  # served again by the same gateway process, Redis restarted
    odd = [(s.request_id, s.status, s.outcome.error) for s in sent if s.status not in (200, 503)]
    assert not odd, f"neither a 200 nor a 503: {odd}"
    assert all(s.outcome.delivered for s in sent if s.status == 200), "a 200 that was not complete"
    refused = [s for s in sent if s.status == 503]
    assert {s.code for s in refused} == {"limiter_unavailable"}
    during = [s for s in sent if s.started >= killed and s.ended < restarted]
    assert during and all(s.status == 503 for s in during), "served while Redis was down"

    # -- the log: one line for the outage, one for the recovery ---------------------------------
    assert sum(OUTAGE_LINE in m for m in messages) == 1, messages
    assert sum(RECOVERY_LINE in m for m in messages) == 1, messages

    # -- nothing lost, nothing unaudited, nothing charged twice ---------------------------------
    result = reconcile(traffic.observed(), data_dir)
    assert all(result.rows[s.request_id][0]["status"] == "refused_503" for s in refused)

    first_200 = min((s for s in sent if s.status == 200 and s.started >= restarted), key=lambda s: s.ended)
    slowest = max(s.ended - s.started for s in refused)
    print(
        f"\nredis outage: {len(sent)} requests ({len(sent) - len(refused)} ok, {len(refused)} refused "
        f"503); kill -> first 503 {first_503.ended - killed:.3f} s (that request took "
        f"{first_503.ended - first_503.started:.3f} s), slowest 503 {slowest:.3f} s; restart -> first "
        f"200 {first_200.ended - restarted:.3f} s; limits log: {messages}"
    )
