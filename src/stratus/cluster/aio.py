"""Small asyncio helpers shared by the cluster modules."""

from __future__ import annotations

import inspect
from typing import Any


async def maybe_await(value: Any) -> Any:
    """`value`, awaited first if it is awaitable: for registries whose methods may be sync or async."""
    return await value if inspect.isawaitable(value) else value
