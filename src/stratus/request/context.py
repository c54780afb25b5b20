"""What the gateway knows about one request as it moves through the stages."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stratus.names import redact_keys
from stratus.request.ids import new_id

if TYPE_CHECKING:
    from stratus.security.identity import Principal


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    from_response_cache: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass
class RequestContext:
    """One request, as every stage sees it. Created by the API layer from the ASGI scope."""

    request_id: str
    method: str
    path: str
    client: str | None
    started: float = field(default_factory=time.perf_counter)  # for durations
    started_at: float = field(default_factory=time.time)  # wall clock, for records
    principal: Principal | None = None  # set by identify
    route: str | None = None  # the route template, e.g. /v1/models/{model_id}
    model: str | None = None
    status: int | None = None
    outcome: str = "ok"  # ok | error | client_disconnect | aborted
    usage: Usage | None = None
    error: str | None = None  # the client-facing message of an error response
    response_headers: dict[str, str] = field(default_factory=dict)  # sent with the response (x-ratelimit-*)
    user_agent: str | None = None
    credential_prefix: str | None = None  # public prefix of a presented API key (never the secret)
    authenticating: bool = False  # identify was reached: the request gets an audit record
    body: dict | None = None  # the parsed JSON body; read only by content logging (off by default)
    completions: list[str] | None = None  # generated texts, likewise only for content logging
    failovers: list[dict] = field(default_factory=list)  # replica retries/migrations, for the audit
    # The Authorization header as sent: read once here, by every stage (never logged or shown).
    authorization: str | None = field(default=None, repr=False)
    # The request's headers as the ASGI server gave them (for stages that read their own).
    headers: list[tuple[bytes, bytes]] = field(default_factory=list, repr=False)
    # The limits stage's reservation for this request (limits/meter.py Ticket), until settled.
    ticket: Any = field(default=None, repr=False)
    # The limit rules whose requests-per-minute counted this request when its caller was known.
    counted: frozenset[str] | None = None

    @classmethod
    def from_scope(
        cls, scope: dict, key_prefix: Callable[[str], str | None] = lambda _: None
    ) -> RequestContext:
        """`key_prefix`: the public prefix of an API key in a bearer token (security/keys.py)."""
        raw = scope.get("headers") or []
        headers = dict(raw)
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID_RE.match(given) else new_id()
        client = scope.get("client")
        agent = headers.get(b"user-agent")
        authorization = headers.get(b"authorization")
        if sum(1 for name, _ in raw if name == b"authorization") > 1:
            # Layers that read the first and the last header would disagree on who is calling:
            # several credentials are no credential (the usual 401), and charge no key's lockout.
            authorization = None
        return cls(
            request_id=request_id,
            method=scope.get("method", ""),
            # A key pasted into the URL or the User-Agent by mistake is not stored whole in the
            # audit trail, the ledger or the access log.
            path=redact_keys(scope.get("path", "")),
            client=f"{client[0]}:{client[1]}" if client else None,
            user_agent=redact_keys(agent.decode("latin-1")[:256]) if agent else None,
            credential_prefix=_credential_prefix(authorization, key_prefix),
            authorization=authorization.decode("latin-1") if authorization is not None else None,
            headers=raw,
        )

    def name_model(self, model: str) -> None:
        """Record which model the request is about (audit, ledger, access log): bounded, and
        a key sent as the model name by mistake is not stored whole."""
        self.model = redact_keys(model[:128])

    def header(self, name: str) -> str | None:
        """The first value of a request header (name in lower case), or None."""
        key = name.encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.headers if k == key), None)


def _credential_prefix(authorization: bytes | None, key_prefix: Callable[[str], str | None]) -> str | None:
    if not authorization or len(authorization) > 300:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    return key_prefix(token.strip()) if scheme.lower() == "bearer" else None
