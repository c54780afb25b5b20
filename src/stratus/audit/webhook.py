"""The alert webhook: each lockout and alert POSTed as JSON to a URL an admin configured, signed
with HMAC-SHA256 so the receiver can tell it came from this server.

    hook = AlertWebhook(secret_store_provider)
    hook.configure("https://ops.example/hooks/stratus", secret)    # both stored encrypted
    hook.notify({"kind": "rate_spike", ...})                         # returns at once

Headers: `X-Stratus-Timestamp: <unix seconds>` and `X-Stratus-Signature: sha256=<hex>`, the
HMAC of `<timestamp>.<body>` under the shared secret (`verify` below is the receiver's check;
reject old timestamps to stop replays). Delivery never blocks a request: it runs as a task on
the event loop, tries up to `attempts` times with a doubling pause on a transport error or a
non-2xx answer, and logs each failure (never the secret, and never the URL's query string).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from stratus.security.errors import Invalid
from stratus.security.secrets import SecretStore

log = logging.getLogger("stratus.audit")

SECRET_NAME = "alerts/webhook"  # {"url": ..., "secret": ...}, encrypted in stored_secrets


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """The receiver's check (constant time)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("The webhook URL must be an http:// or https:// URL with a host.", field="url")
    return url


def shown(url: str) -> str:
    """The URL without credentials, path parameters or query (for logs and the admin API)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class AlertWebhook:
    def __init__(
        self,
        box: Callable[[], SecretStore],
        attempts: int = 3,
        backoff: float = 0.5,
        timeout: float = 5.0,
        ttl: float = 2.0,
    ):
        self._box = box
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.ttl = ttl
        self._config: dict | None = None
        self._loaded_at = float("-inf")
        self._tasks: set[asyncio.Task] = set()
        self.failed = 0

    # -- configuration ------------------------------------------------------------------------------

    def configure(self, url: str, secret: str) -> None:
        if len(secret) < 16:
            raise Invalid("The webhook secret must be at least 16 characters.", field="secret")
        self._box().put(SECRET_NAME, json.dumps({"url": check_url(url), "secret": secret}))
        self._loaded_at = float("-inf")

    def clear(self) -> bool:
        removed = self._box().delete(SECRET_NAME)
        self._config, self._loaded_at = None, time.monotonic()
        return removed

    def config(self) -> dict | None:
        """The current {"url", "secret"} (read again every ttl seconds, so every gateway follows)."""
        if time.monotonic() - self._loaded_at >= self.ttl:
            stored = self._box().get(SECRET_NAME)
            self._config = json.loads(stored) if stored else None
            self._loaded_at = time.monotonic()
        return self._config

    # -- delivery -----------------------------------------------------------------------------------

    def notify(self, payload: dict) -> asyncio.Task:
        """Deliver in the background (reading the configuration too, off the event loop)."""
        task = asyncio.get_running_loop().create_task(self._notify(payload))
        self._tasks.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._tasks.discard)
        return task

    async def _notify(self, payload: dict) -> bool:
        try:
            config = await asyncio.to_thread(self.config)
        except Exception as exc:
            log.error("alert webhook: cannot read its configuration (%s)", type(exc).__name__)
            return False
        return False if config is None else await self._deliver(config, payload)

    async def _deliver(self, config: dict, payload: dict) -> bool:
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        where = shown(config["url"])
        pause = self.backoff
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            for attempt in range(1, self.attempts + 1):
                stamp = str(int(time.time()))
                headers = {
                    "Content-Type": "application/json",
                    "X-Stratus-Timestamp": stamp,
                    "X-Stratus-Signature": sign(config["secret"], stamp, body),
                }
                try:
                    r = await client.post(config["url"], content=body, headers=headers)
                    if 200 <= r.status_code < 300:
                        return True
                    why = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    why = type(exc).__name__
                log.warning("alert webhook %s: attempt %d/%d failed (%s)", where, attempt, self.attempts, why)
                if attempt < self.attempts:
                    await asyncio.sleep(pause)
                    pause *= 2
        self.failed += 1
        log.error(
            "alert webhook %s: gave up after %d attempts; the alert is in the audit trail",
            where,
            self.attempts,
        )
        return False
