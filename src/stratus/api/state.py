"""Everything one gateway app holds, reachable from a request as `request.app.state.stratus`
(routes take it through the `StateDep` alias in deps.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stratus.api.pipeline import Pipeline
from stratus.api.registry import ModelRegistry
from stratus.api.response_cache import ResponseCache
from stratus.audit.stage import AuditStage
from stratus.config import Settings
from stratus.limits.meter import Meter
from stratus.limits.stage import LimitsStage
from stratus.observe.metrics import Metrics
from stratus.observe.tracing import Tracing
from stratus.security.access import AccessControl

if TYPE_CHECKING:
    from stratus.api.upstream_proxy import Upstreams
    from stratus.cluster.ray_cluster import RayCluster
    from stratus.cluster.registration import WorkerDirectory


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    metrics: Metrics
    pipeline: Pipeline
    cache: ResponseCache | None = None
    access: AccessControl | None = None  # users, keys and grants; None with --no-auth
    upstreams: Upstreams | None = None  # OpenAI-compatible upstreams; with access control only
    ray_cluster: RayCluster | None = None  # with --ray-address
    workers: WorkerDirectory | None = None  # `stratus worker`s that registered; with a cluster secret
    tracing: Tracing = field(default_factory=Tracing.off)  # OpenTelemetry spans (--otlp-endpoint)

    @property
    def audit(self) -> AuditStage | None:
        """The audit trail; None on a gateway without access control (--no-auth)."""
        return self.pipeline.stage(AuditStage)

    @property
    def meter(self) -> Meter | None:
        """Limits and the usage ledger; None when metering is off."""
        limits = self.pipeline.stage(LimitsStage)
        return limits.meter if limits is not None else None
