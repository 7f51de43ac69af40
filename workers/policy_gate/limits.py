"""Request rate limits, pure: token buckets per tenant and per requester; the caller passes `now` (seconds).

A request is admitted when both its tenant's bucket and its requester's bucket (tenant, requester id) hold
a token; it then takes one from each. A refused request takes nothing, so a flood that is refused does not
push its own recovery further away. A bucket refills continuously at its rate up to its burst; a bucket
that is full again is forgotten (a fresh one is the same), which keeps memory bounded by recent senders.
"""

from dataclasses import dataclass, field
from enum import StrEnum

# Forget full buckets at most this often (every admit would cost a scan of every bucket).
PRUNE_EVERY_S = 30.0


class LimitScope(StrEnum):
    TENANT = "tenant"
    REQUESTER = "requester"


@dataclass(frozen=True)
class RateLimits:
    """Sustained rates (requests per minute) and bursts (how many at once after a quiet spell)."""

    tenant_per_minute: int = 3000
    tenant_burst: int = 300
    requester_per_minute: int = 10
    requester_burst: int = 5

    def rate_per_s(self, scope: LimitScope) -> float:
        per_minute = self.tenant_per_minute if scope is LimitScope.TENANT else self.requester_per_minute
        return per_minute / 60.0

    def burst(self, scope: LimitScope) -> int:
        return self.tenant_burst if scope is LimitScope.TENANT else self.requester_burst

    def overlaid(self, **overrides: int | None) -> "RateLimits":
        """These limits with every override that is set (None keeps the value)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values.update({name: value for name, value in overrides.items() if value is not None})
        return RateLimits(**values)


@dataclass(frozen=True)
class Refusal:
    scope: LimitScope
    setting: str  # the settings path whose limit refused it, e.g. "rate_limits.requester_per_minute"
    retry_after_s: float  # when the emptier bucket holds a token again


@dataclass
class _Bucket:
    tokens: float
    updated: float
    rate_per_s: float  # the limits it was last used with (a tenant's limits may change)
    burst: int

    def level(self, rate_per_s: float, burst: int, now: float) -> float:
        return min(float(burst), self.tokens + max(0.0, now - self.updated) * rate_per_s)

    def full(self, now: float) -> bool:
        return self.level(self.rate_per_s, self.burst, now) >= self.burst


@dataclass
class RateLimiter:
    """Token buckets for every tenant and requester seen recently (per process: see docs/security.md)."""

    _buckets: dict[tuple[str, ...], _Bucket] = field(default_factory=dict)
    _pruned_at: float | None = None

    def admit(self, tenant_id: str, requester_id: str, limits: RateLimits, now: float) -> Refusal | None:
        """None (and one token taken from each bucket) when the request may go on, else why not."""
        self._prune(now)
        keys = {
            LimitScope.TENANT: (tenant_id,),
            LimitScope.REQUESTER: (tenant_id, requester_id),
        }
        levels = {}
        # The requester's own limit first: a customer over theirs is told so even when the tenant is too.
        for scope in (LimitScope.REQUESTER, LimitScope.TENANT):
            bucket = self._buckets.get(keys[scope])
            burst = limits.burst(scope)
            level = float(burst) if bucket is None else bucket.level(limits.rate_per_s(scope), burst, now)
            if level < 1.0:
                rate = limits.rate_per_s(scope)
                return Refusal(scope, f"rate_limits.{scope.value}_per_minute", (1.0 - level) / rate)
            levels[scope] = level
        for scope, level in levels.items():
            self._buckets[keys[scope]] = _Bucket(
                level - 1.0, now, limits.rate_per_s(scope), limits.burst(scope)
            )
        return None

    def tracked(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = now
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[key]
