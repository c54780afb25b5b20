#!/usr/bin/env python3
"""Access-control benchmark: what verifying a credential costs, and what auth costs a gateway.

    .venv/bin/python bench/auth.py            # about 2 minutes
    .venv/bin/python bench/auth.py --quick    # fewer iterations and shorter rounds

In one run:

(a) in process, against a real store (SQLite in a temp dir; PostgreSQL too when
    STRATUS_TEST_DATABASE_URL or 127.0.0.1:5432 answers), each call timed on its own, p50/p99:
    - cached key:   AccessControl.cached (SHA-256 of the token, one LRU lookup)
    - auth step:    the gateway's identity stage (identify + authorize) on a prepared request (bearer parse,
                    cached verification, the route's permission, the model check): what auth
                    adds to a request once its key is cached (target: p50 < 0.2 ms)
    - uncached key: AccessControl.authenticate with the cache off (a joined lookup of the secret,
                    key, owner, memberships and grants)
    - refusals:     a wrong secret for a known lookup id and an unknown id, interleaved (their
                    times must not tell which ids exist)
    - JWT:          an ES256 token verified from scratch (signature, claims, role mapping, grants)
    - a whole request: GET /v1/models through the app in process (ASGI, no sockets), no auth and
                    auth only, interleaved
(b) the gateway: three uvicorn servers in child processes on loopback, each answering
    GET /v1/models for the same model list:
    - no-auth:   the open gateway (`--no-auth`)
    - auth:      the identity stage only (identify + authorize)
    - serve:     what `stratus serve` runs by default: auth plus the steps that need it
                 (audit record, anomaly guard, limits and usage metering)
    One request at a time, round-robin over the three (so the busy machine weighs on all alike):
    latency p50/p99. Then 16 concurrent clients per server, in alternating rounds: requests/s,
    best of the rounds.

Results print and go to bench/results/auth-<time>.json with the machine facts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import common  # noqa: E402  (bench/common.py)

from stratus.api import create_app  # noqa: E402
from stratus.api.auth import build_access  # noqa: E402
from stratus.api.pipeline import Pipeline  # noqa: E402
from stratus.config import Settings  # noqa: E402
from stratus.request.context import RequestContext  # noqa: E402
from stratus.security import admin, admin_keys, keys  # noqa: E402
from stratus.security.access import AccessControl  # noqa: E402
from stratus.security.bootstrap import bootstrap  # noqa: E402
from stratus.security.errors import Unauthenticated  # noqa: E402
from stratus.security.jwt import IssuerConfig, JWTVerifier  # noqa: E402
from stratus.security.keys import key_prefix  # noqa: E402
from stratus.security.stage import OPEN_ACCESS, IdentityStage  # noqa: E402
from stratus.store import Store  # noqa: E402

MODELS = {f"model-{i}": f"/nonexistent/model-{i}" for i in range(4)}  # listed, never loaded


def timed(fn, n: int) -> dict:
    samples = []
    for _ in range(n):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1000)
    return {
        "n": n,
        "p50_us": round(common.pct(samples, 0.5), 2),
        "p99_us": round(common.pct(samples, 0.99), 2),
    }


# -- (a) in process -------------------------------------------------------------------------------


def world(url: str) -> tuple[AccessControl, str]:
    """A store with a team, a member with a team-bound key; returns the access control and key."""
    store = Store.open(url)
    access = AccessControl(store, cache_ttl=60)
    root = access.authenticate(bootstrap(store).generated_secret)
    admin.create_team(access, root, "ml")
    for name in MODELS:
        admin.set_team_grant(access, root, "ml", name, True)
    admin.create_user(access, root, "bench", team="ml")
    _, secret = admin_keys.create_key(access, root, "bench", user="bench", team="ml")
    return access, secret


class _Route:
    path = "/v1/models/{model_id:path}"


def auth_step(access: AccessControl, secret: str):
    """identify + authorize exactly as the gateway runs them, on one prepared request."""
    identity = IdentityStage(access)
    identity._served = MODELS
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models/model-1",
        "headers": [(b"authorization", f"Bearer {secret}".encode())],
        "route": _Route(),
        "client": ("127.0.0.1", 1),
    }
    loop = asyncio.new_event_loop()

    def run():
        ctx = RequestContext.from_scope(scope, key_prefix)
        ctx.route = _Route.path

        async def steps():
            await identity.identify(ctx)
            await identity.authorize(ctx, None)
            await identity.authorize(ctx, "model-1")

        loop.run_until_complete(steps())

    return run


def jwt_cost(n: int, tmp: Path, access: AccessControl) -> dict:
    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k", "alg": "ES256", "use": "sig"}
    (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    issuer = IssuerConfig(
        issuer="https://idp.bench",
        audience="stratus",
        jwks=str(tmp / "jwks.json"),
        role_map={"ml": "member:ml"},
    )
    jwt_access = AccessControl(access.store, cache_ttl=0, jwt=JWTVerifier([issuer]))
    claims = {
        "iss": "https://idp.bench",
        "aud": "stratus",
        "sub": "j",
        "exp": int(time.time()) + 3600,
        "groups": ["ml"],
    }
    token = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": "k"})
    return timed(lambda: jwt_access.authenticate(token), n)


def refusal_timing(access: AccessControl, secret: str, n: int) -> dict:
    """How long refusing a key takes when its lookup id exists (a wrong secret) and when it does
    not, interleaved: the two must not differ by more than noise, or the time tells an attacker
    which lookup ids exist."""
    wrong = secret[: secret.index("_") + 1] + "A" * 43
    unknown = keys.generate().secret
    samples: dict[str, list[float]] = {"refused_wrong_secret": [], "refused_unknown_id": []}
    for i in range(2 * n):
        name, token = ("refused_wrong_secret", wrong) if i % 2 else ("refused_unknown_id", unknown)
        t = time.perf_counter_ns()
        try:
            access.authenticate(token)
        except Unauthenticated:
            pass
        samples[name].append((time.perf_counter_ns() - t) / 1000)
    return {
        name: {"n": n, "p50_us": round(common.pct(v, 0.5), 2), "p99_us": round(common.pct(v, 0.99), 2)}
        for name, v in samples.items()
    }


def in_process(url: str, n: int, tmp: Path) -> dict:
    access, secret = world(url)
    access.authenticate(secret)  # warm the cache
    out = {
        "cached_key": timed(lambda: access.cached(secret), n * 10),
        "auth_step_cached": timed(auth_step(access, secret), n * 5),
    }
    uncached = AccessControl(access.store, cache_ttl=0)
    uncached.authenticate(secret)
    out["uncached_key"] = timed(lambda: uncached.authenticate(secret), n)
    out.update(refusal_timing(uncached, secret, n))
    out["jwt_uncached"] = jwt_cost(max(200, n // 4), tmp, access)
    access.store.close()
    return out


def asgi_requests(n: int, tmp: Path) -> dict:
    """GET /v1/models through the app in process (no sockets, no client process), no auth and
    auth only, interleaved: what auth adds to a whole request, without the network's noise."""
    access, secret = world(f"sqlite:///{tmp / 'asgi' / 'stratus.db'}")
    settings = Settings(models=MODELS, data_dir=str(tmp / "asgi"), lockout_failures=0)
    apps = {
        "no-auth": create_app(settings, identity=OPEN_ACCESS),
        "auth": create_app(settings, identity=IdentityStage(access)),
    }
    auth = apps["auth"].state.stratus
    auth.pipeline = Pipeline([auth.pipeline.stages[0]])  # identify + authorize only
    samples: dict[str, list[float]] = {mode: [] for mode in apps}

    async def run():
        headers = {"Authorization": f"Bearer {secret}"}
        clients = {
            mode: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://gw", headers=headers
            )
            for mode, app in apps.items()
        }
        for i in range(n + 200):
            for mode, c in clients.items():
                t = time.perf_counter_ns()
                r = await c.get("/v1/models")
                if i >= 200:  # after a warm-up
                    samples[mode].append((time.perf_counter_ns() - t) / 1000)
                assert r.status_code == 200, r.text
        for c in clients.values():
            await c.aclose()

    asyncio.run(run())
    access.store.close()
    out = {
        m: {"n": n, "p50_us": round(common.pct(v, 0.5), 1), "p99_us": round(common.pct(v, 0.99), 1)}
        for m, v in samples.items()
    }
    out["auth_adds_p50_us"] = round(out["auth"]["p50_us"] - out["no-auth"]["p50_us"], 1)
    return out


def postgres_url() -> str | None:
    try:
        import psycopg
    except ImportError:
        return None
    base = os.environ.get("STRATUS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"stratus_bench_{os.getpid()}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error:
        return None
    return base.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def drop_postgres(url: str) -> None:
    import psycopg

    base, name = url.replace("postgresql+psycopg://", "postgresql://").rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- (b) the gateway ------------------------------------------------------------------------------


def child(mode: str, data_dir: str, port_file: str) -> None:
    """Serve one gateway until killed (run as `bench/auth.py --child MODE DATA PORTFILE`)."""
    import socket

    import uvicorn

    settings = Settings(models=MODELS, data_dir=data_dir, lockout_failures=0, log_level="warning")
    if mode == "no-auth":
        app = create_app(settings, identity=OPEN_ACCESS)
    else:
        access = build_access(settings)
        app = create_app(settings, identity=IdentityStage(access))
        if mode != "serve":  # identify + authorize only, without limits and audit
            app.state.stratus.pipeline = Pipeline([app.state.stratus.pipeline.stages[0]])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    Path(port_file).write_text(str(sock.getsockname()[1]))
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def start_servers(tmp: Path) -> tuple[dict, list, str]:
    """The three gateways on one shared data dir, and the key they accept."""
    data = tmp / "gateway"
    access, secret = world(f"sqlite:///{data / 'stratus.db'}")
    access.store.close()
    urls, procs = {}, []
    for mode in ("no-auth", "auth", "serve"):
        port_file = tmp / f"{mode}.port"
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--child", mode, str(data), str(port_file)],
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                raise RuntimeError(f"the {mode} gateway did not start")
            time.sleep(0.05)
        urls[mode] = f"http://127.0.0.1:{port_file.read_text()}"
    return urls, procs, secret


async def latency_round_robin(urls: dict, headers: dict, n: int) -> dict:
    samples = {mode: [] for mode in urls}
    async with httpx.AsyncClient(timeout=30, headers=headers) as c:
        for url in urls.values():  # warm each server and connection
            for _ in range(20):
                assert (await c.get(url + "/v1/models")).status_code == 200
        for _ in range(n):
            for mode, url in urls.items():
                t = time.perf_counter()
                r = await c.get(url + "/v1/models")
                samples[mode].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
    return {
        m: {"p50_ms": round(common.pct(s, 0.5), 3), "p99_ms": round(common.pct(s, 0.99), 3)}
        for m, s in samples.items()
    }


async def rate(url: str, headers: dict, seconds: float, concurrency: int) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, headers=headers, limits=limits) as c:

        async def worker():
            nonlocal done
            while time.perf_counter() < stop:
                r = await c.get(url + "/v1/models")
                assert r.status_code == 200, r.text
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


async def throughput(urls: dict, headers: dict, seconds: float, rounds: int, concurrency: int) -> dict:
    best = {m: 0.0 for m in urls}
    for _ in range(rounds):
        for mode, url in urls.items():
            best[mode] = max(best[mode], await rate(url, headers, seconds, concurrency))
    return {m: round(v, 1) for m, v in best.items()}


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, seconds, rounds, sequential = (2000, 4.0, 2, 300) if args.quick else (5000, 8.0, 3, 1000)

    result = {"machine": common.machine_info(), "in_process": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("(a) in process")
        result["in_process"]["sqlite"] = in_process(f"sqlite:///{tmp / 'a' / 'stratus.db'}", n, tmp)
        pg = postgres_url()
        if pg:
            try:
                result["in_process"]["postgresql"] = in_process(pg, n, tmp)
            finally:
                drop_postgres(pg)
        for backend, rows in result["in_process"].items():
            for what, row in rows.items():
                print(
                    f"  {backend:<10} {what:<18} p50 {row['p50_us']:>9.1f} us   p99 {row['p99_us']:>9.1f} us"
                )

        result["asgi_request"] = asgi_requests(n // 2, tmp)
        a = result["asgi_request"]
        print(
            f"  one request in process (ASGI): no-auth p50 {a['no-auth']['p50_us']:.0f} us, auth p50 "
            f"{a['auth']['p50_us']:.0f} us: auth adds {a['auth_adds_p50_us']:.0f} us"
        )
        print("(b) the gateway, GET /v1/models")
        urls, procs, secret = start_servers(tmp)
        headers = {"Authorization": f"Bearer {secret}"}
        try:
            result["latency_sequential"] = asyncio.run(latency_round_robin(urls, headers, sequential))
            result["requests_per_s_16_clients"] = asyncio.run(throughput(urls, headers, seconds, rounds, 16))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        for mode in urls:
            lat = result["latency_sequential"][mode]
            print(
                f"  {mode:<8} one at a time p50 {lat['p50_ms']:.3f} ms p99 {lat['p99_ms']:.3f} ms   "
                f"16 clients {result['requests_per_s_16_clients'][mode]:.0f} req/s"
            )
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = REPO / "bench" / "results" / f"auth-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
