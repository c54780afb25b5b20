"""The audit trail in the request path: lockouts before identification, suspended keys after it,
and one hash-chained record per request at the end (fail closed), fed to the anomaly guard.

    stage = AuditStage.from_settings(settings, store)    # what the gateway does with access control

screen     a locked-out address or key prefix: 429 (audit/guard.py; policy in audit/anomaly.py)
identify   a key suspended after a security alert: 403 (audit/suspension.py)
record     the request's audit record (audit/recorder.py): a failed write refuses a complete
           response with 503; then the finished request is shown to the anomaly guard, whose
           lockouts and alerts are audited, sent to the webhook, and may suspend the key
"""

from __future__ import annotations

from typing import Any

from stratus.audit import guard
from stratus.audit.anomaly import Guard
from stratus.audit.guard import Review, guard_for
from stratus.audit.recorder import AuditRecorder, recorder_for
from stratus.audit.suspension import Suspensions
from stratus.audit.webhook import AlertWebhook
from stratus.request.context import RequestContext
from stratus.request.stage import Stage
from stratus.security.secrets import SecretStore
from stratus.security.stage import unavailable
from stratus.store import Store, StoreUnavailable


class AuditStage(Stage):
    def __init__(self, recorder: AuditRecorder, anomaly: Guard | None = None, review: Review | None = None):
        self.recorder = recorder
        self.anomaly = anomaly
        self.review = review or Review()  # after an alert: webhook, suspension (audit/guard.py)

    @classmethod
    def from_settings(cls, settings: Any, store: Store) -> AuditStage:
        recorder = recorder_for(settings, store)
        ttl = settings.auth_cache_ttl
        review = Review(
            suspensions=Suspensions(store, ttl=ttl),
            webhook=AlertWebhook(lambda: SecretStore(store, recorder.content.ring), ttl=ttl),
            suspend=settings.alert_suspend,
        )
        return cls(recorder, guard_for(settings), review)

    def close(self) -> None:
        self.recorder.close()

    async def screen(self, ctx: RequestContext) -> None:
        if self.anomaly is not None:
            guard.check(self.anomaly, ctx)  # a locked-out address or key prefix: 429

    async def identify(self, ctx: RequestContext) -> None:
        if self.review.suspensions is None or ctx.principal is None:
            return
        try:
            await guard.check_suspended(self.review.suspensions, ctx.principal)  # 403 while suspended
        except StoreUnavailable:
            raise unavailable() from None

    async def record(self, ctx: RequestContext) -> None:
        await self.recorder.record(ctx)
        if self.anomaly is not None:
            await guard.observe(self.anomaly, self.recorder, ctx, self.review)

    async def open_stream(self, ctx: RequestContext) -> None:
        """A stream's opening record, before its first byte (raises AuditUnavailable)."""
        await self.recorder.open(ctx)
