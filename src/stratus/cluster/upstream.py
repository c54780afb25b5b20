"""OpenAI-compatible upstreams (vLLM, TGI, llama.cpp server, Ollama, another stratus) as replicas.

    pool = UpstreamPool()
    pool.set([Upstream("vllm-a", "llama", "http://10.0.0.7:8000/v1", "meta-llama/Llama-3.1-8B", key)])
    opened = await pool.open("llama", "/chat/completions", body)   # retried elsewhere before byte one
    ... opened.response (an UpstreamResponse: status, then the body read or streamed) ...
    await opened.close(tokens, ok=True)

An upstream speaks text, not token ids, so it is proxied at the HTTP level rather than wrapped as a
`Replica`; several upstreams of one model are still routed with the same `Router`. Only an admin
registers one (its base URL is checked here: http or https, no credentials in it); the URL a
request goes to always comes from that registration, never from the client. A connection error,
a timeout, a 5xx, a 429, or a refusal of the gateway's own key (401/403/404) before the first
byte moves the request to another upstream of the model; a 400 is the client's and is returned.
A text stream cannot be resumed elsewhere: a failure mid-stream ends it (api/upstream_proxy.py).

The HTTP client is aiohttp's: one session per event loop, a keep-alive connection pool, its C
HTTP parser. It costs about a tenth of the CPU per request of httpx's client, whose pool checks
every idle connection's socket on each request (measured with bench/gateway.py, issue 18), and
the proxy's request path is mostly this call.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

import aiohttp
import orjson

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


def env_proxy(url: str) -> str | None:
    """The proxy for `url` from the environment (HTTP_PROXY / HTTPS_PROXY, NO_PROXY honoured), as
    httpx and requests read them; None for a direct connection."""
    parts = urlsplit(url)
    if parts.hostname and proxy_bypass_environment(parts.hostname):
        return None
    return getproxies_environment().get(parts.scheme) or None


def _failure(exc: BaseException) -> str:
    """What went wrong, in words that do not depend on the HTTP client (clients may read them)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "ConnectError"
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors
        return "Timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "ServerDisconnected"
    return "ConnectionError"


class UpstreamResponse:
    """An upstream's answer once its status and headers have arrived: the body is then read
    whole (`aread`) or as lines (`aiter_lines`), and the connection released (`aclose`): back to
    the pool when the body was read to its end, closed otherwise."""

    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    async def aread(self) -> bytes:
        return await self._response.read()

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines, decoded, without their line ends (SSE framing); a line may be of
        any length (a tool call's arguments in one event)."""
        pending = b""
        async for chunk in self._response.content.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    async def aclose(self) -> None:
        self._response.release()


class UpstreamFailed(Exception):
    """No upstream of the model could take the request; the message is safe for clients."""


@dataclass
class Opened:
    """An upstream's answer whose status and headers have arrived (the body may still stream)."""

    upstream: Upstream
    response: UpstreamResponse
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
        # connect: the TCP (and TLS) connect; sock_read: the longest silence while reading. The
        # pool has no size limit: admission (limits, the queue bound) bounds what is in flight.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._proxies: dict[str, str | None] = {}
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
            headers = tracing.inject({**upstream.headers, "Content-Type": "application/json"})
            router.begin(name, work)
            started = time.monotonic()
            try:
                # a redirect could point anywhere; the admin's URL is the URL
                answer = await self.session().post(
                    upstream.base_url + path,
                    data=orjson.dumps(payload),
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy(upstream.base_url),
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = _failure(exc)
                router.end(name, work, 0, time.monotonic() - started, False)
                breaker.record_failure()
                self._ensure_prober()
                continue
            response = UpstreamResponse(answer)
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
        timeout = aiohttp.ClientTimeout(total=self.probe_timeout)
        try:
            async with self.session().get(
                upstream.base_url + "/models",
                headers=upstream.headers,
                timeout=timeout,
                allow_redirects=False,
            ) as r:
                return r.status < 400
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _proxy(self, base_url: str) -> str | None:
        """The proxy the environment names for `base_url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), read
        once per base URL."""
        if base_url not in self._proxies:
            self._proxies[base_url] = env_proxy(base_url)
        return self._proxies[base_url]

    def session(self) -> aiohttp.ClientSession:
        """The client session of the running event loop (made on first use: a session belongs to
        the loop it was made in)."""
        session = self._session
        loop = asyncio.get_running_loop()
        if session is None or session.closed or self._session_loop is not loop:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
            # No cookie jar: a cookie an upstream sets must not ride along on other callers'
            # requests. No trust_env: aiohttp would look the proxy up in a thread on every request;
            # HTTP(S)_PROXY and NO_PROXY are read once per base URL instead (_proxy).
            session = self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
            self._session_loop = loop
        return session

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
        if self._session is not None and not self._session.closed:
            await self._session.close()
