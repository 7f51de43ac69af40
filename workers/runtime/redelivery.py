"""What a delivery's retry bookkeeping may be believed to say, and the copies parked or dead-lettered.

Retry bookkeeping (`x-attempt`, the original route) is believed only on a delivery the broker itself
handed back from one of our delay queues, through the return exchange no identity may publish to; any
other `x-death` / `x-original-*` header is a publisher's claim and changes nothing. Pure: reads the
delivery, builds messages, touches nothing.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

MAX_DETAIL = 900
MAX_ERROR = 300

ATTEMPT_HEADER = "x-attempt"  # how many deliveries of this message failed transiently so far
LAST_ERROR_HEADER = "x-last-error"
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
# The broker's own bookkeeping: a copy starts without it (the broker adds fresh entries when it expires).
_BROKER_HEADERS = frozenset({"x-death", "x-delivery-count"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


@dataclass(frozen=True)
class DelayedRetry:
    """Where transient failures wait before the next attempt: the retry exchange, the worker's delay
    queues (shortest delay first; the last one is reused), and how many delayed retries before giving up."""

    exchange: str
    queues: tuple[str, ...]
    delays_s: tuple[float, ...]
    limit: int

    def tier(self, failed_before: int) -> tuple[str, float]:
        index = self.tier_index(failed_before)
        return self.queues[index], self.delays_s[index]

    def tier_index(self, failed_before: int) -> int:
        return min(failed_before, len(self.queues) - 1)


@dataclass(frozen=True)
class Bookkeeping:
    """What the runtime believes about where a delivery comes from and how often it failed before."""

    exchange: str
    routing_key: str
    failed_before: int

    @classmethod
    def of(
        cls,
        incoming: AbstractIncomingMessage,
        *,
        queue_name: str,
        delayed: DelayedRetry | None,
        return_exchange: str | None,
    ) -> "Bookkeeping":
        headers = incoming.headers or {}
        if back_from_delay(incoming, queue_name, delayed, return_exchange):
            try:
                failed = max(int(_text(headers.get(ATTEMPT_HEADER)) or 0), 0)
            except ValueError:
                failed = 0
            if ORIGINAL_EXCHANGE in headers:
                return cls(
                    _text(headers.get(ORIGINAL_EXCHANGE)), _text(headers.get(ORIGINAL_ROUTING_KEY)), failed
                )
            return cls(incoming.exchange or "", incoming.routing_key or "", failed)
        return cls(incoming.exchange or "", incoming.routing_key or "", 0)


def back_from_delay(
    incoming: AbstractIncomingMessage,
    queue_name: str,
    delayed: DelayedRetry | None,
    return_exchange: str | None,
) -> bool:
    """Did the broker itself hand this delivery back from one of our delay queues?

    It came by the return exchange, which no identity may publish to (only the broker dead-letters
    through it), and the broker's latest x-death names one of our delay queues. Only then are
    `x-attempt` and the original route in the headers ours (written by this worker on the copy it
    parked): a publisher's `x-death` or `x-original-*` headers, or a replayed dead letter's, are never
    believed."""
    if (
        delayed is None
        or return_exchange is None
        or incoming.exchange != return_exchange
        or incoming.routing_key != queue_name
    ):
        return False
    deaths = (incoming.headers or {}).get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
        return False
    latest = deaths[0]
    return _text(latest.get("reason")) == "expired" and _text(latest.get("queue")) in delayed.queues


def retry_copy(incoming: AbstractIncomingMessage, where: Bookkeeping, error: str) -> aio_pika.Message:
    """The copy parked in a delay queue: the broker's bookkeeping dropped, ours added."""
    headers = {
        key: value
        for key, value in (incoming.headers or {}).items()
        if key not in _BROKER_HEADERS and not key.startswith(_BROKER_HEADER_PREFIXES)
    }
    headers.update(
        {
            ATTEMPT_HEADER: where.failed_before + 1,
            LAST_ERROR_HEADER: error[:MAX_ERROR],
            ORIGINAL_EXCHANGE: where.exchange,
            ORIGINAL_ROUTING_KEY: where.routing_key,
        }
    )
    return copy_of(incoming, headers)


def dead_letter_copy(
    incoming: AbstractIncomingMessage,
    where: Bookkeeping,
    *,
    reason: str,
    detail: str,
    queue_name: str,
    worker: str,
    now: datetime,
    extra_headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    """The original bytes with why, where from and by whom."""
    headers = dict(incoming.headers or {})
    headers.update(extra_headers or {})
    headers.update(
        {
            "x-dead-letter-reason": str(reason),
            "x-dead-letter-detail": detail[:MAX_DETAIL],
            ORIGINAL_EXCHANGE: where.exchange,
            ORIGINAL_ROUTING_KEY: where.routing_key,
            "x-original-queue": queue_name,
            "x-dead-lettered-by": worker,
            "x-dead-lettered-at": now.isoformat(),
        }
    )
    return copy_of(incoming, headers)


def copy_of(incoming: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The delivery as a new persistent message: same body, ids and properties, the given headers."""
    return aio_pika.Message(
        incoming.body,
        headers=headers,
        content_type=incoming.content_type,
        content_encoding=incoming.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=incoming.message_id,
        correlation_id=incoming.correlation_id,
        type=incoming.type,
        app_id=incoming.app_id,
        timestamp=incoming.timestamp,
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value or "")
