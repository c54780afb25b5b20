"""A credential whose cache entry expired is verified once for all the requests that carry it at
that moment, not once per request; a refusal reaches each of them."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from stratus.request.errors import APIError
from stratus.security import errors as sec
from stratus.security.identity import Principal
from stratus.security.stage import IdentityStage

pytestmark = pytest.mark.timeout(30)


class SlowAccess:
    """AccessControl's two calls the stage makes: nothing cached, a verification that blocks."""

    def __init__(self, refuse: bool = False):
        self.calls = 0
        self.refuse = refuse
        self.gate = threading.Event()

    def cached(self, token):
        return None

    def authenticate(self, token):
        self.calls += 1
        self.gate.wait(10)
        if self.refuse:
            raise sec.Unauthenticated("revoked")
        return Principal("member", key_id="key_1")


def _requests(stage: IdentityStage, access: SlowAccess, token: str, n: int) -> list:
    async def run():
        ctxs = [SimpleNamespace(authorization=f"Bearer {token}") for _ in range(n)]
        waiting = [asyncio.create_task(stage._principal(ctx)) for ctx in ctxs]  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        access.gate.set()
        return await asyncio.gather(*waiting, return_exceptions=True)

    return asyncio.run(run())


def test_concurrent_requests_with_one_credential_share_one_verification():
    access = SlowAccess()
    stage = IdentityStage(access)  # type: ignore[arg-type]
    got = _requests(stage, access, "sk-stratus-abc", 32)
    assert access.calls == 1
    assert all(isinstance(p, Principal) and p.user == "member" for p in got)
    assert stage._verifying == {}  # nothing left behind


def test_a_refusal_reaches_every_request_that_waited_for_it():
    access = SlowAccess(refuse=True)
    stage = IdentityStage(access)  # type: ignore[arg-type]
    got = _requests(stage, access, "sk-stratus-revoked", 8)
    assert access.calls == 1
    assert all(isinstance(e, APIError) and e.status == 401 for e in got)
