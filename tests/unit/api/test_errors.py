"""The generic 500: no traceback to the client, and the request id it can quote to an operator."""

import asyncio

import httpx

from stratus.api import create_app
from stratus.config import Settings
from stratus.security.stage import OPEN_ACCESS


def test_unexpected_error_is_a_500_that_carries_the_request_id():
    app = create_app(Settings(models={}, auth=False), identity=OPEN_ACCESS)

    async def boom():
        raise RuntimeError("secret internals")

    app.add_api_route("/boom", boom)

    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            return await c.get("/boom", headers={"x-request-id": "req-42"})

    r = asyncio.run(call())
    assert r.status_code == 500
    message = r.json()["error"]["message"]
    assert "req-42" in message and "secret internals" not in message
