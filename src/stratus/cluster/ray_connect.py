"""Join a Ray cluster from the gateway: `connect` (blocking, as ray.init is) and
`connect_within` (bounded, for the gateway's start).

    started_ray = await connect_within("auto", timeout=60)   # True when this call started Ray
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading

# Ray 2.60's client refuses streaming actor methods (ray/util/client/worker.py, call_remote),
# and every request to a replica is one: a gateway on Ray Client could place actors but never
# serve a token from them.
RAY_CLIENT_REFUSED = (
    "--ray-address {address}: Ray Client (ray://) cannot serve replicas, because Ray 2.60's "
    "client does not support the streaming calls every request makes; run the gateway on a "
    "node of the cluster (`ray start --address HEAD:6379` there) with --ray-address auto, or "
    "give the head's GCS address (HEAD:6379)"
)


def connect(address: str, namespace: str = "stratus") -> bool:
    """Join Ray: "auto" (the cluster this machine belongs to), "HOST:PORT" (a head's GCS) or
    "local" (start a Ray instance of our own). Returns True when this call started Ray.
    "ray://host:port" (Ray Client) is refused: see RAY_CLIENT_REFUSED."""
    if address.startswith("ray://"):
        raise ConnectionError(RAY_CLIENT_REFUSED.format(address=address))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from a gateway
    host = address.rpartition(":")[0].strip("[]")
    if host in ("localhost", "127.0.0.1", "::1") and "ray" not in sys.modules:
        # A head on loopback: Ray would swap the address for this machine's external one and
        # wait for good for a GCS that is not there; this (read when ray is imported) keeps
        # every address loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():  # tests and embedding connect before the app starts
        return False
    if address == "local":
        ray.init(namespace=namespace, include_dashboard=False, log_to_driver=False)
        return True
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    except Exception as exc:
        hint = ""
        if address != "auto" and not os.environ.get("RAY_AUTH_MODE"):
            # Ray sends its token (~/.ray/auth_token) to an explicit address only when told to
            hint = " If the cluster uses token authentication, set RAY_AUTH_MODE=token."
        raise ConnectionError(f"cannot connect to Ray at {address}: {exc}.{hint}") from exc
    return True


async def connect_within(address: str, timeout: float) -> bool:
    """`connect` in a daemon thread, bounded: an unreachable head must neither hang the
    gateway's start nor keep its process alive at exit (ray.init may block for good)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def settle(result: bool | None, error: BaseException | None) -> None:
        if done.done():  # gave up waiting already
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(bool(result))

    def run() -> None:
        try:
            result = connect(address)
        except BaseException as exc:
            outcome: tuple[bool | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the gateway's loop may be gone by now
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="stratus-ray-connect", daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise ConnectionError(
            f"cannot connect to Ray at {address} within {timeout:.0f} s: is the head running and "
            "reachable from here (its GCS port, 6379 by default)?"
        ) from None
