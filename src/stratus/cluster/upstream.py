"""OpenAI-compatible upstreams (vLLM, TGI, llama.cpp server, Ollama, another stratus) as replicas.

    pool = UpstreamPool()
    pool.set([Upstream("vllm-a", "llama", "http://10.0.0.7:8000/v1", "meta-llama/Llama-3.1-8B", key)])
    opened = await pool.open("llama", "/chat/completions", body)   # retried elsewhere before byte one
    ... opened.response (a streaming httpx.Response) ... ; await opened.close(tokens, ok=True)

An upstream speaks text, not token ids, so it is proxied at the HTTP level rather than wrapped as a
`Replica`; several upstreams of one model are still routed with the same `Router`. Only an admin
registers one (its base URL is checked here: http or https, no credentials in it); the URL a
request goes to always comes from that registration, never from the client. A connection error,
a timeout, a 5xx, a 429, or a refusal of the gateway's own key (401/403/404) before the first
byte moves the request to another upstream of the model; a 400 is the client's and is returned.
A text stream cannot be resumed elsewhere: a failure mid-stream ends it (api/upstream_proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field

import httpx

from stratus.cluster.breaker import CircuitBreaker
from stratus.cluster.router import NoReplicaAvailable, Router
from stratus.net.urls import check_http_url
from stratus.observe import tracing

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RETRY_STATUSES = {401, 403, 404, 408, 409, 429}  # the gateway's problem with that upstream, or busy
MAX_ATTEMPTS = 3


def check_base_url(url: str) -> str:
    """An admin-given base URL: http(s), a host, no credentials, query or fragment. Raises ValueError."""
    return check_http_url(
        url,
        "base_url",
        example=", e.g. http://10.0.0.7:8000/v1",
        credentials_fix="; pass the key as api_key (it is stored encrypted)",
    )


@dataclass(frozen=True)
class Upstream:
    name: str
    model: str  # the name clients use here
    base_url: str  # e.g. http://10.0.0.7:8000/v1; requests go to base_url + /chat/completions
    upstream_model: str  # the name the upstream knows the model by
    api_key: str = field(default="", repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The bearer key the upstream expects, if it has one."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class UpstreamFailed(Exception):
    """No upstream of the model could take the request; the message is safe for clients."""


@dataclass
class Opened:
    """An upstream's answer whose status and headers have arrived (the body may still stream)."""

    upstream: Upstream
    response: httpx.Response
    router: Router
    work: float
    started: float = field(default_factory=time.monotonic)
    breaker: CircuitBreaker | None = None
    _closed: bool = False

    async def close(self, tokens: int, ok: bool) -> None:
        if self._closed:
            return
        self._closed = True
        await self.response.aclose()
        if self.breaker is not None and not ok:
            self.breaker.record_failure()  # it broke mid-answer
        self.router.end(self.upstream.name, self.work, tokens, time.monotonic() - self.started, ok)


class UpstreamPool:
    def __init__(
        self,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        policy: str = "p2c",
        *,
        open_seconds: float = 5.0,
        probe_timeout: float = 5.0,
    ):
        self.policy = policy
        self.open_seconds = open_seconds
        self.probe_timeout = probe_timeout
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            follow_redirects=False,  # a redirect could point anywhere; the admin's URL is the URL
        )
        self.upstreams: dict[str, Upstream] = {}
        self._routers: dict[str, Router] = {}  # model -> router over its upstreams
        # One breaker per upstream, fed by request outcomes: a dead upstream is skipped (it would
        # cost a connect timeout on every request) until, after a cooldown, one trial succeeds.
        self.breakers: dict[str, CircuitBreaker] = {}
        self._prober: asyncio.Task | None = None

    def set(self, upstreams: list[Upstream]) -> None:
        """Replace the registered upstreams (routers keep what they learned of those that stay)."""
        self.upstreams = {u.name: u for u in upstreams}
        self.breakers = {
            u.name: self.breakers.get(u.name) or CircuitBreaker(open_seconds=self.open_seconds)
            for u in upstreams
        }
        by_model: dict[str, list[str]] = {}
        for u in upstreams:
            by_model.setdefault(u.model, []).append(u.name)
        for model in list(self._routers):
            if model not in by_model:
                del self._routers[model]
        for model, names in by_model.items():
            router = self._routers.get(model)
            if router is None:
                router = self._routers[model] = Router(self.policy)
            for name in [n for n in router.snapshot() if n not in names]:
                router.remove(name)
            for name in names:
                if name not in router:
                    router.add(name)

    def models(self) -> set[str]:
        return set(self._routers)

    async def open(self, model: str, path: str, body: dict, work: float = 1.0) -> Opened:
        """Send `body` (its `model` rewritten) to one upstream of `model`; move on before the
        first byte when one fails. Returns the first answer that is a 2xx or a client error."""
        router = self._routers.get(model)
        if router is None:
            raise UpstreamFailed(f"no upstream serves the model '{model}'")
        tried: set[str] = set()
        blocked = {
            name
            for name, u in self.upstreams.items()
            if u.model == model and self.breakers[name].state == "open"
        }
        why = "none reachable" if len(blocked) < len(router) else "every upstream is failing"
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            try:
                name = router.pick(work, exclude=tried | blocked)
            except NoReplicaAvailable:
                break
            breaker = self.breakers[name]
            if not breaker.allow():  # half-open with its one trial already out
                blocked.add(name)
                continue
            attempts += 1
            tried.add(name)
            upstream = self.upstreams[name]
            payload = {**body, "model": upstream.upstream_model}
            headers = tracing.inject(dict(upstream.headers))  # the upstream may continue the trace
            request = self._client.build_request(
                "POST", upstream.base_url + path, json=payload, headers=headers
            )
            router.begin(name, work)
            started = time.monotonic()
            try:
                response = await self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}"
                router.end(name, work, 0, time.monotonic() - started, False)
                breaker.record_failure()
                self._ensure_prober()
                continue
            if response.status_code >= 500 or response.status_code in RETRY_STATUSES:
                why = f"HTTP {response.status_code}"
                await response.aclose()
                router.end(name, work, 0, time.monotonic() - started, False)
                if response.status_code != 429:  # busy is not broken
                    breaker.record_failure()
                    self._ensure_prober()
                continue
            breaker.record_success()  # it answered (a 400 is the client's, not the upstream's)
            return Opened(upstream, response, router, work, started, breaker)
        raise UpstreamFailed(f"no upstream of the model '{model}' could take the request ({why})")

    async def probe(self, name: str) -> bool:
        """`GET {base_url}/models` with the upstream's key: a light check that it answers us."""
        upstream = self.upstreams[name]
        try:
            r = await self._client.get(
                upstream.base_url + "/models", headers=upstream.headers, timeout=self.probe_timeout
            )
        except httpx.HTTPError:
            return False
        return r.status_code < 400

    async def probe_failing(self) -> None:
        """Give each upstream whose breaker is half-open its trial as a probe, so it comes back
        without a client's request paying for the trial."""
        for name, breaker in list(self.breakers.items()):
            if breaker.state == "half_open" and name in self.upstreams and breaker.allow():
                if await self.probe(name):
                    breaker.record_success()
                else:
                    breaker.record_failure()

    def _ensure_prober(self) -> None:
        if self._prober is None or self._prober.done():
            self._prober = asyncio.create_task(self._probe_loop(), name="stratus-upstream-probes")

    async def _probe_loop(self) -> None:
        # Runs while some breaker is not closed; a failure starts it again.
        while any(b.state != "closed" for n, b in self.breakers.items() if n in self.upstreams):
            await asyncio.sleep(self.open_seconds / 2)
            await self.probe_failing()

    async def aclose(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self._client.aclose()
