"""Traffic for a fault scenario: several concurrent clients, each with its own key, sending
completions (every other one streamed) until told to stop, and what each one saw.

    keys = member_keys(url, admin, count=4)
    with Traffic(url, keys) as traffic:      # the clients run in a thread of their own
        traffic.wait_for(lambda s: s.status == 200, count=8)
        ...inject the fault...
    reconcile(traffic.observed(), data_dir)  # tests/fault/reconcile.py

Every request carries its own X-Request-Id (`fault-<client>-<n>`, or another `prefix`), so its audit record and
ledger row can be found; what the client saw is reconcile.py's `Outcome` (via its `call`),
timed here (`Sent.started`, `Sent.ended`, monotonic) so a test can tell what happened during a
fault from what happened around it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests import issued
from tests.conftest import TINY_MODEL
from tests.fault.reconcile import Outcome, call


@dataclass
class Sent:
    """One request a client sent: its id, when, and what it saw."""

    request_id: str
    started: float  # time.monotonic()
    ended: float
    outcome: Outcome

    @property
    def status(self) -> int | None:
        return self.outcome.status

    @property
    def code(self) -> str | None:
        """The error envelope's code (a refusal's, or a stream's error event); None without one."""
        text = self.outcome.error
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return text  # a transport error, as reconcile.call names it
        if isinstance(data, dict):
            data = data.get("error", data)
        return data.get("code") if isinstance(data, dict) else None


def member_keys(url: str, admin: str, count: int, model: str = TINY_MODEL) -> list[str]:
    """`count` members of a new team granted `model`, one key each (access control as in production)."""
    team = f"fault-{uuid.uuid4().hex[:6]}"
    secrets = []
    with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {admin}"}) as c:
        _ok(c.post("/admin/teams", json={"name": team}))
        _ok(c.put(f"/admin/teams/{team}/models/{model}"))
        for i in range(count):
            user = f"{team}-u{i}"
            _ok(c.post("/admin/users", json={"name": user, "team": team}))
            made = _ok(c.post("/admin/keys", json={"name": f"k{i}", "user": user}))
            secrets.append(issued.record(made["secret"]))
    return secrets


def _ok(r: httpx.Response) -> dict:
    assert r.status_code in (200, 201), r.text
    return r.json()


def body(n: int, stream: bool, max_tokens: int = 8) -> dict:
    return {
        "model": TINY_MODEL,
        "prompt": [5, 6, 7, 8 + n % 50],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


class Traffic:
    """The clients, in a thread with its own event loop; `stop()` lets each finish its request."""

    def __init__(
        self, url: str, keys: list[str], max_tokens: int = 8, timeout: float = 60.0, prefix: str = "fault"
    ):
        self.url = url
        self.prefix = prefix  # request ids are PREFIX-<client>-<n>: one prefix per Traffic of a test
        self.keys = keys
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.sent: list[Sent] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run()), name="fault-traffic", daemon=True
        )

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 30)
        assert not self._thread.is_alive(), "a client never finished its request"

    def observed(self) -> dict[str, Outcome]:
        """What the clients saw, by request id: reconcile.py's input."""
        return {s.request_id: s.outcome for s in self.sent}

    def wait_for(self, match: Callable[[Sent], bool], count: int = 1, timeout: float = 120.0) -> Sent:
        """The `count`th request (in order of ending) that matches; waits for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in list(self.sent) if match(s)]
            if len(found) >= count:
                return found[count - 1]
            assert self._thread.is_alive(), "the clients stopped"
            time.sleep(0.01)
        raise AssertionError(f"not {count} matching requests within {timeout} s")

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=len(self.keys))
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout, limits=limits) as client:
            await asyncio.gather(*(self._client(client, i, key) for i, key in enumerate(self.keys)))

    async def _client(self, client: httpx.AsyncClient, i: int, key: str) -> None:
        n = 0
        while not self._stop.is_set():
            rid, started = f"{self.prefix}-{i}-{n}", time.monotonic()
            payload = body(n, stream=(n + i) % 2 == 1, max_tokens=self.max_tokens)
            out = await call(client, "/v1/completions", payload, rid, {"Authorization": f"Bearer {key}"})
            self.sent.append(Sent(rid, started, time.monotonic(), out))
            n += 1
            if out.status != 200:
                await asyncio.sleep(0.02)  # refused: do not spin
