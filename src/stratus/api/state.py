"""Everything one gateway app holds, reachable from a request as `request.app.state.stratus`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stratus.api.pipeline import RequestHooks
from stratus.api.registry import ModelRegistry
from stratus.api.response_cache import ResponseCache
from stratus.config import Settings
from stratus.observe.metrics import Metrics
from stratus.security.access import AccessControl


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    hooks: RequestHooks
    cache: ResponseCache | None = None
    access: AccessControl | None = None  # users, keys and grants; None with --no-auth
    ray_cluster: Any = None  # cluster/ray_cluster.RayCluster with --ray-address
