"""The gate's admission check: each tenant's rate limits (cached) and the process's token buckets."""

import time
from dataclasses import dataclass

from workers.policy_gate import store
from workers.policy_gate.limits import RateLimiter, RateLimits, Refusal
from workers.runtime.database import UnitOfWork
from workers.runtime.settings import Settings

# How long a tenant's limits are believed before the business layer is read again. The replica that applies
# a settings change knows at once; other replicas within this time.
LIMITS_TTL_S = 30.0


@dataclass
class _Cached:
    limits: RateLimits
    loaded_at: float


class Admission:
    """Per process: buckets are not shared between gate replicas (each replica admits up to the limit of
    the requests it receives; docs/security.md#fairness)."""

    def __init__(self, defaults: RateLimits | None = None) -> None:
        self._defaults = defaults
        self._limits: dict[str, _Cached] = {}
        self.limiter = RateLimiter()

    @property
    def defaults(self) -> RateLimits:
        if self._defaults is None:
            s = Settings()
            self._defaults = RateLimits(
                tenant_per_minute=s.rate_tenant_per_minute,
                tenant_burst=s.rate_tenant_burst,
                requester_per_minute=s.rate_requester_per_minute,
                requester_burst=s.rate_requester_burst,
            )
        return self._defaults

    def learn(self, tenant_id: str, business_rate_limits: dict | None, now: float | None = None) -> None:
        """The business layer's rate limits (as stored), just read or just applied."""
        limits = self.defaults.overlaid(**(business_rate_limits or {}))
        self._limits[tenant_id] = _Cached(limits, time.monotonic() if now is None else now)

    def forget(self, tenant_id: str) -> None:
        """The business layer changed: read it again when the tenant's next request comes."""
        self._limits.pop(tenant_id, None)

    async def limits_for(self, uow: UnitOfWork, tenant_id: str, now: float) -> RateLimits:
        cached = self._limits.get(tenant_id)
        if cached is None or now - cached.loaded_at > LIMITS_TTL_S:
            self.learn(tenant_id, await store.load_business_rate_limits(uow.driver, tenant_id), now)
            cached = self._limits[tenant_id]
        return cached.limits

    async def check(self, uow: UnitOfWork, tenant_id: str, requester_id: str) -> Refusal | None:
        now = time.monotonic()
        limits = await self.limits_for(uow, tenant_id, now)
        return self.limiter.admit(tenant_id, requester_id, limits, now)


ADMISSION = Admission()
