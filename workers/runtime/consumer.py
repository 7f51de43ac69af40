"""Consume one queue: decode -> dedupe -> handle -> commit -> ack, with one policy for every failure.

- Undecodable, unknown or misrouted messages are dead-lettered with the reason in headers, then acked.
- A duplicate (already in the inbox) is acked with no effect.
- Lock conflicts retry the whole transaction a bounded number of times.
- Transient failures (database or broker away) are retried in place with growing delay; the message
  stays unacknowledged, so a crash meanwhile hands it back to the broker.
- Any other exception is a handler bug: dead-lettered with the error, never a crash, never a drop.
Ack happens only after the transaction committed, on the channel that delivered the message.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.decoding import DecodeFailure, decode
from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from workers.runtime import inbox
from workers.runtime.broker import Broker
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import is_conflict, is_transient

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]

MAX_CONFLICT_RETRIES = 5
MAX_DETAIL = 900


class TransientRetryBudgetExhausted(Exception):
    pass


class QueueConsumer:
    def __init__(
        self,
        *,
        name: str,
        queue_name: str,
        dead_letter_routing_key: str,
        handlers: Mapping[type[Envelope], Handler],
        engine: AsyncEngine,
        broker: Broker,
        prefetch: int,
        transient_retry_delay_s: float = 1.0,
        transient_retry_budget_s: float = 300.0,
    ) -> None:
        self.name = name
        self._queue_name = queue_name
        self._dead_letter_key = dead_letter_routing_key
        self._handlers = dict(handlers)
        self._engine = engine
        self._broker = broker
        self._prefetch = prefetch
        self._retry_delay = transient_retry_delay_s
        self._retry_budget = transient_retry_budget_s
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._stopping = False
        self.counts: dict[str, int] = {}

    async def start(self) -> None:
        channel = await self._broker.channel(self._prefetch)
        # passive: the topology is applied by `apptctl topology apply`; a missing queue is a set-up error.
        self._queue = await channel.declare_queue(self._queue_name, passive=True)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consumer.started", queue=self._queue_name, prefetch=self._prefetch)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages, then let the ones in hand finish (unfinished ones go back to the queue).

        Bounded by `timeout_s` as a whole, even when the broker is unreachable: cancelling the consumer
        would otherwise wait for a reconnect that may never come.
        """
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await asyncio.wait_for(self._queue.cancel(self._consumer_tag), timeout=min(timeout_s, 5.0))
            except Exception as exc:
                log.warning("consumer.cancel_failed", error=repr(exc)[:300])
        if self._in_flight:
            _, pending = await asyncio.wait(list(self._in_flight), timeout=max(deadline - loop.time(), 0.01))
            for task in pending:
                task.cancel()
            # Let cancelled handlers roll back before the caller closes the engine under them.
            await asyncio.gather(*pending, return_exceptions=True)
        log.info("consumer.drained", queue=self._queue_name)

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        structlog.contextvars.bind_contextvars(
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            message_type=incoming.type,
            queue=self._queue_name,
        )
        try:
            outcome = await self._process(incoming)
            self._count(outcome)
        except asyncio.CancelledError:
            # Drain timed out: leave it unacked; the broker redelivers it to another consumer.
            log.warning("message.abandoned_on_shutdown")
            raise
        except Exception as exc:  # last wall: never let a delivery crash the worker
            log.exception("message.unhandled_runtime_error", error=repr(exc))
            await self._nack_requeue(incoming)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, incoming: AbstractIncomingMessage) -> str:
        decoded = decode(incoming.body, content_type=incoming.content_type, property_type=incoming.type)
        if isinstance(decoded, DecodeFailure):
            return await self._dead_letter(incoming, decoded.reason, decoded.detail)
        handler = self._handlers.get(type(decoded))
        if handler is None:
            return await self._dead_letter(
                incoming,
                DeadLetterReason.UNEXPECTED_MESSAGE_TYPE,
                f"{self.name} has no handler for {decoded.type} v{decoded.schema_version}",
            )
        structlog.contextvars.bind_contextvars(
            message_id=str(decoded.message_id),
            correlation_id=decoded.correlation_id,
            tenant_id=decoded.tenant_id,
        )
        started = time.perf_counter()
        try:
            outcome = await self._handle_with_retries(decoded, handler)
        except TransientRetryBudgetExhausted as exc:
            log.warning("message.transient_budget_exhausted", error=str(exc))
            await self._nack_requeue(incoming)
            return "requeued"
        except Exception as exc:
            log.exception("message.handler_error", error=repr(exc))
            return await self._dead_letter(
                incoming, DeadLetterReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]
            )
        await self._ack(incoming)
        log.info(
            "message.handled", outcome=outcome, duration_ms=round((time.perf_counter() - started) * 1000, 2)
        )
        return outcome

    async def _handle_with_retries(self, message: Envelope, handler: Handler) -> str:
        conflicts = 0
        delay = min(0.05, self._retry_delay) or 0.05
        deadline = time.monotonic() + self._retry_budget
        while True:
            try:
                return await self._handle_once(message, handler)
            except Exception as exc:
                if is_conflict(exc) and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    log.info("message.conflict_retry", attempt=conflicts, error=repr(exc)[:300])
                    continue
                if not is_transient(exc):
                    raise
                if self._stopping or time.monotonic() > deadline:
                    raise TransientRetryBudgetExhausted(repr(exc)[:300]) from exc
                log.warning("message.transient_retry", delay_s=delay, error=repr(exc)[:300])
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self._retry_delay, 0.05) * 8)

    async def _handle_once(self, message: Envelope, handler: Handler) -> str:
        async with UnitOfWork(self._engine, producer=self.name) as uow:
            if not await inbox.claim(uow.connection, self.name, message.message_id):
                return "duplicate"
            await handler(message, uow)
            await uow.commit()
        return "handled"

    async def _dead_letter(self, incoming: AbstractIncomingMessage, reason: str, detail: str) -> str:
        """Publish the original bytes to the dead-letter exchange with why, confirmed, then ack."""
        headers = dict(incoming.headers or {})
        headers.update(
            {
                "x-dead-letter-reason": str(reason),
                "x-dead-letter-detail": detail[:MAX_DETAIL],
                "x-original-exchange": incoming.exchange or "",
                "x-original-routing-key": incoming.routing_key or "",
                "x-original-queue": self._queue_name,
                "x-dead-lettered-by": self.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            }
        )
        dead = aio_pika.Message(
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
        try:
            await self._broker.publish(
                self._broker.topology.dead_letter_exchange, self._dead_letter_key, dead
            )
        except Exception as exc:
            log.error("message.dead_letter_publish_failed", reason=str(reason), error=repr(exc)[:300])
            await self._nack_requeue(incoming)
            return "requeued"
        await self._ack(incoming)
        log.warning("message.dead_lettered", reason=str(reason), detail=detail[:300])
        return f"dead_lettered:{reason}"

    async def _ack(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await incoming.ack()
        except Exception as exc:
            # The channel closed after commit: the broker redelivers and the inbox drops the duplicate.
            log.warning("message.ack_failed", error=repr(exc)[:300])

    async def _nack_requeue(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await incoming.nack(requeue=True)
        except Exception as exc:
            log.warning("message.nack_failed", error=repr(exc)[:300])
