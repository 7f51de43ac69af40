"""One admitted message in one transaction: inbox claim, handler, outbox with the commit; retried in place.

Lock conflicts (serialization failure, deadlock) retry the whole transaction a bounded number of times.
Transient failures (database or broker away) get `retry_in_place` quick tries after short waits (a blip);
if it still fails, `TransientFailure` tells the consumer to park the delivery in a delay queue (the one
retry mode: every consumer has delay queues). Any other exception is the caller's to judge.
"""

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import Envelope
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import is_conflict, is_transient
from workers.runtime.fairness import TenantLanes
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outbox import DirectPublisher
from workers.runtime.outcomes import Committed, Duplicate, Handled
from workers.runtime.redelivery import MAX_ERROR
from workers.runtime.steps import Handler

log = structlog.get_logger(__name__)

MAX_CONFLICT_RETRIES = 5


class TransientFailure(Exception):
    """Still failing transiently after the quick tries in place: retry later, through a delay queue."""


class Transactions:
    def __init__(
        self,
        *,
        worker: str,
        engine: AsyncEngine,
        metrics: WorkerMetrics,
        publisher: DirectPublisher | None,
        lanes: TenantLanes | None,
        retry_delay_s: float,
        retry_in_place: int,
    ) -> None:
        """`publisher`: publishes the committed events at once (without one, the commit's NOTIFY wakes the
        relay). `lanes`: a transaction waits for its tenant's turn (workers/runtime/fairness.py)."""
        self._worker = worker
        self._engine = engine
        self._metrics = metrics
        self._publisher = publisher
        self._lanes = lanes
        self._retry_delay = retry_delay_s
        self._retry_in_place = retry_in_place
        self.stopping = False

    async def run(self, message: Envelope, handler: Handler, failed: Exception | None = None) -> Committed:
        """`failed`: the first attempt was made elsewhere (a batch of one) and raised this."""
        conflicts = 0
        transient = 0
        while True:
            if failed is None:
                try:
                    return await self.once(message, handler)
                except Exception as exc:
                    failed = exc
            exc, failed = failed, None
            if is_conflict(exc) and conflicts < MAX_CONFLICT_RETRIES:
                conflicts += 1
                self._metrics.retry("conflict")
                log.info("message.conflict_retry", attempt=conflicts, error=repr(exc)[:MAX_ERROR])
                continue
            if not is_transient(exc):
                raise exc
            if self.stopping or transient >= self._retry_in_place:
                raise TransientFailure(repr(exc)[:MAX_ERROR]) from exc
            wait = (
                (min(0.05, self._retry_delay) or 0.05)
                if transient == 0
                else self._retry_delay * 2 ** (transient - 1)
            )
            transient += 1
            self._metrics.retry("transient")
            log.warning("message.transient_retry", delay_s=wait, error=repr(exc)[:MAX_ERROR])
            await asyncio.sleep(wait)

    async def once(self, message: Envelope, handler: Handler) -> Committed:
        # BEGIN, then the inbox claim (which sets the tenant and returns the clock); the handler's
        # statements; the outbox rows, then COMMIT.
        publisher = self._publisher
        self._metrics.transaction(1)
        # With tenant lanes, a transaction waits for its tenant's turn; the publish below does not hold it.
        async with (
            self._lanes.turn(message.tenant_id) if self._lanes is not None else contextlib.nullcontext(),
            UnitOfWork(
                self._engine,
                self._worker,
                claim=(self._worker, message.message_id),
                tenant=message.tenant_id,
                notify=publisher is None,
            ) as uow,
        ):
            if not uow.claimed:
                return Duplicate()
            await handler(message, uow)
            await uow.commit()
        if publisher is not None and uow.written:
            # Committed: into the next burst (the delivery is acked without waiting for the confirm, unless
            # too much is waiting already; what is not confirmed stays in the outbox for the relay).
            await publisher.submit(uow.written)
        return Handled()
