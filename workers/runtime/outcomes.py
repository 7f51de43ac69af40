"""What became of one delivery: a small closed set of typed outcomes that metrics and logs read directly."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Handled:
    """Its handler ran and the transaction committed; acked after the commit."""

    label = "handled"


@dataclass(frozen=True)
class Duplicate:
    """Already in the inbox: acked with no effect."""

    label = "duplicate"


@dataclass(frozen=True)
class DeadLettered:
    """Published to the worker's dead-letter exchange with `reason` in its headers (confirmed), then acked."""

    reason: str
    label = "dead_lettered"

    @property
    def key(self) -> str:
        return f"{self.label}:{self.reason}"


@dataclass(frozen=True)
class RetryLater:
    """A copy parked in the delay queue of retry `tier` (0: the shortest delay), confirmed, then acked."""

    tier: int
    label = "retried"


@dataclass(frozen=True)
class Requeued:
    """Handed back to the broker unacknowledged (draining, or the broker could not take a copy)."""

    label = "requeued"


Outcome = Handled | Duplicate | DeadLettered | RetryLater | Requeued
# What the transaction step can end in (the others are decided by the broker-side steps).
Committed = Handled | Duplicate
