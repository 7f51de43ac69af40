"""Settle a delivery with the broker: ack, hand back, dead-letter or park for a delayed retry.

Every path ends in exactly one ack or nack, on the channel that delivered the message. A copy (dead
letter, retry) is confirmed before the delivery is acked; a copy the broker cannot take hands the
delivery back unacknowledged, as a crash would.
"""

from datetime import UTC, datetime
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage

from contracts.reasons import DeadLetterReason
from workers.runtime.broker import Broker
from workers.runtime.faults import FaultPoint, fault_point
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outcomes import DeadLettered, Outcome, Requeued, RetryLater
from workers.runtime.redelivery import (
    ATTEMPT_HEADER,
    LAST_ERROR_HEADER,
    MAX_ERROR,
    Bookkeeping,
    DelayedRetry,
    dead_letter_copy,
    retry_copy,
)

log = structlog.get_logger(__name__)


class Settler:
    def __init__(
        self,
        *,
        worker: str,
        queue_name: str,
        broker: Broker,
        dead_letter_exchange: str,
        dead_letter_routing_key: str,
        delayed: DelayedRetry,
        metrics: WorkerMetrics,
    ) -> None:
        self._worker = worker
        self._queue_name = queue_name
        self._broker = broker
        self._dead_letter_exchange = dead_letter_exchange
        self._dead_letter_key = dead_letter_routing_key
        self._delayed = delayed
        self._metrics = metrics

    async def ack(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await incoming.ack()
        except Exception as exc:
            # The channel closed after commit: the broker redelivers and the inbox drops the duplicate.
            log.warning("message.ack_failed", error=repr(exc)[:300])
            return
        fault_point(FaultPoint.AFTER_ACK)

    async def requeue(self, incoming: AbstractIncomingMessage) -> Requeued:
        try:
            await incoming.nack(requeue=True)
        except Exception as exc:
            log.warning("message.nack_failed", error=repr(exc)[:300])
        return Requeued()

    async def dead_letter(
        self,
        incoming: AbstractIncomingMessage,
        where: Bookkeeping,
        reason: str,
        detail: str,
        extra_headers: dict[str, Any] | None = None,
    ) -> DeadLettered | Requeued:
        """Publish the original bytes to the dead-letter exchange with why, confirmed, then ack."""
        dead = dead_letter_copy(
            incoming,
            where,
            reason=reason,
            detail=detail,
            queue_name=self._queue_name,
            worker=self._worker,
            now=datetime.now(UTC),
            extra_headers=extra_headers,
        )
        try:
            await self._broker.publish(self._dead_letter_exchange, self._dead_letter_key, dead)
        except Exception as exc:
            log.error("message.dead_letter_publish_failed", reason=str(reason), error=repr(exc)[:300])
            return await self.requeue(incoming)
        await self.ack(incoming)
        log.warning("message.dead_lettered", reason=str(reason), detail=detail[:300])
        return DeadLettered(str(reason))

    async def retry_later(self, incoming: AbstractIncomingMessage, where: Bookkeeping, error: str) -> Outcome:
        """Park a copy in the next delay tier (confirmed), then ack; or give up after the limit."""
        failed = where.failed_before + 1
        if failed > self._delayed.limit:
            return await self.dead_letter(
                incoming,
                where,
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"still failing after {failed} attempts; last error: {error}",
                {ATTEMPT_HEADER: failed, LAST_ERROR_HEADER: error[:MAX_ERROR]},
            )
        queue, delay_s = self._delayed.tier(where.failed_before)
        try:
            await self._broker.publish(self._delayed.exchange, queue, retry_copy(incoming, where, error))
        except Exception as exc:
            # The broker can't take it either: hand the delivery back, as a crash would.
            log.error("message.retry_publish_failed", retry_queue=queue, error=repr(exc)[:MAX_ERROR])
            return await self.requeue(incoming)
        await self.ack(incoming)
        self._metrics.retry("delayed")
        log.warning(
            "message.retry_scheduled", attempt=failed, delay_s=delay_s, retry_queue=queue, error=error
        )
        return RetryLater(self._delayed.tier_index(where.failed_before))
