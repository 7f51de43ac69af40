"""The gate's admission check: each tenant's rate limits (cached) and the process's token buckets."""

import time
from dataclasses import dataclass

from workers.policy_gate import store
from workers.policy_gate.limits import RateLimiter, RateLimits, Refusal
from workers.runtime.database import UnitOfWork
from workers.runtime.settings import Settings

# How long a tenant's limits are believed before the business layer is read again. The replica that applies
# a settings change knows at once (from the message it applied); other replicas within this time.
LIMITS_TTL_S = 30.0


@dataclass
class _Cached:
    limits: RateLimits
    settings_version: int  # of the business layer they came from (0: none)
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

    def learn(self, tenant_id: str, rate_limits: dict | None, settings_version: int, now: float) -> None:
        """The business layer's rate limits (as stored) at `settings_version`, just read or just applied; an
        older version than the one known is ignored (a read that raced a change)."""
        known = self._limits.get(tenant_id)
        if known is not None and known.settings_version > settings_version:
            known.loaded_at = now
            return
        self._limits[tenant_id] = _Cached(
            self.defaults.overlaid(**(rate_limits or {})), settings_version, now
        )

    def known(self, tenant_id: str) -> RateLimits | None:
        cached = self._limits.get(tenant_id)
        return cached.limits if cached else None

    async def limits_for(self, uow: UnitOfWork, tenant_id: str, now: float) -> RateLimits:
        cached = self._limits.get(tenant_id)
        if cached is None or now - cached.loaded_at > LIMITS_TTL_S:
            rate_limits, version = await store.of(uow).load_business_rate_limits(tenant_id)
            self.learn(tenant_id, rate_limits, version, now)
            cached = self._limits[tenant_id]
        return cached.limits

    async def check(self, uow: UnitOfWork, tenant_id: str, requester_id: str) -> Refusal | None:
        now = time.monotonic()
        limits = await self.limits_for(uow, tenant_id, now)
        return self.limiter.admit(tenant_id, requester_id, limits, now)


ADMISSION = Admission()
