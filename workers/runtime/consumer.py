"""Consume one queue: decode -> dedupe -> handle -> commit -> ack, with one policy for every failure.

- Undecodable, unknown or misrouted messages are dead-lettered with the reason in headers, then acked.
  A route decides the type: the exchange and routing key a delivery came by and the type and schema
  version its body names must be one of the worker's routes (contracts/routes.py), checked before any
  handler or state is touched, on first deliveries, retries and replays alike.
- Retry bookkeeping (`x-attempt`, the original route) is believed only on a delivery the broker itself
  handed back from one of our delay queues, through the return exchange no identity may publish to;
  any other `x-death` / `x-original-*` header is a publisher's claim and changes nothing.
- A duplicate (already in the inbox) is acked with no effect.
- Lock conflicts retry the whole transaction a bounded number of times.
- Transient failures (database or broker away) are retried in place a couple of times after a short
  wait (a blip). If it still fails, a copy (same body, message id and properties, plus `x-attempt` and
  `x-last-error` headers) is published to the worker's delay queue of the next tier, confirmed, and only
  then is the delivery acked; the broker hands the copy back to the work queue once the tier's delay is
  over. After `limit` delayed retries it is dead-lettered as `retries_exhausted`. When the copy cannot
  be published (the broker is away too) the delivery is handed back unacknowledged, as a crash would.
  The message id is kept, so the inbox still drops a copy whose first delivery did commit.
- Any other exception is a handler bug: dead-lettered with the error, never a crash, never a drop.
Ack happens only after the transaction committed, on the channel that delivered the message.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.decoding import MAX_MESSAGE_BYTES, DecodeFailure, decode
from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from contracts.routes import RouteTable
from contracts.signing import SignatureRefused, Verified
from workers.runtime.broker import Broker
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import DeadLetter, is_conflict, is_transient
from workers.runtime.fairness import LanesClosed, TenantLanes
from workers.runtime.faults import FaultPoint, fault_point
from workers.runtime.metrics import UNDECODED, WorkerMetrics
from workers.runtime.outbox import DirectPublisher
from workers.runtime.signatures import SignaturePolicy

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope, UnitOfWork], Awaitable[None]]

MAX_CONFLICT_RETRIES = 5
MAX_DETAIL = 900
MAX_ERROR = 300

ATTEMPT_HEADER = "x-attempt"  # how many deliveries of this message failed transiently so far
LAST_ERROR_HEADER = "x-last-error"
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
# The broker's own bookkeeping: a copy starts without it (the broker adds fresh entries when it expires).
_BROKER_HEADERS = frozenset({"x-death", "x-delivery-count"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


class TransientRetryBudgetExhausted(Exception):
    pass


class DelayQueueMissing(Exception):
    pass


@dataclass(frozen=True)
class DelayedRetry:
    """Where transient failures wait before the next attempt: the retry exchange, the worker's delay
    queues (shortest delay first; the last one is reused), and how many delayed retries before giving up."""

    exchange: str
    queues: tuple[str, ...]
    delays_s: tuple[float, ...]
    limit: int

    def tier(self, failed_before: int) -> tuple[str, float]:
        index = min(failed_before, len(self.queues) - 1)
        return self.queues[index], self.delays_s[index]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value or "")


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
        delayed_retry: DelayedRetry | None = None,
        retry_in_place: int = 2,
        metrics: WorkerMetrics | None = None,
        signatures: SignaturePolicy | None = None,
        dead_letter_exchange: str | None = None,
        publisher: DirectPublisher | None = None,
        fair_window: int = 0,
        routes: RouteTable | None = None,
        return_exchange: str | None = None,
    ) -> None:
        """Without `delayed_retry`, transient failures are retried in place for up to
        `transient_retry_budget_s`, then handed back to the broker (a topology without delay queues).
        With `signatures`, portal messages must carry a good signature (checked before parsing).
        `dead_letter_exchange`: where this consumer publishes dead letters (the worker's own; by default
        the topology's shared one). `publisher`: publishes a delivery's events right after its commit
        (without one, the relay publishes them when the commit's NOTIFY wakes it).
        `fair_window` > 0: hold up to that many deliveries and handle at most `prefetch` at once, tenants
        taking turns (workers/runtime/fairness.py). `routes`: the (exchange, routing key, type, schema
        version) combinations this worker accepts (None: any, for the bench's stages). `return_exchange`:
        where the broker hands back expired delay-queue messages (the only way a delivery's retry headers
        are believed)."""
        self.name = name
        self._queue_name = queue_name
        self._dead_letter_key = dead_letter_routing_key
        self._handlers = dict(handlers)
        self._engine = engine
        self._broker = broker
        self._prefetch = fair_window or prefetch
        self._lanes = TenantLanes(prefetch) if fair_window else None
        self._retry_delay = transient_retry_delay_s
        self._retry_budget = transient_retry_budget_s
        self._delayed = delayed_retry
        self._retry_in_place = retry_in_place
        self.metrics = metrics or WorkerMetrics(name)
        self._signatures = signatures
        self._publisher = publisher
        self._routes = routes
        self._return_exchange = return_exchange
        self._dead_letter_exchange = dead_letter_exchange or broker.topology.dead_letter_exchange
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._stopping = False
        self.counts: dict[str, int] = {}
        self.metrics.track_in_flight(lambda: len(self._in_flight))

    async def start(self) -> None:
        if self._delayed is not None:
            await self._check_delay_queues(self._delayed)
        channel = await self._broker.channel(self._prefetch)
        self._channel = channel
        # passive: the topology is applied by `apptctl topology apply`; a missing queue is a set-up error.
        self._queue = await channel.declare_queue(self._queue_name, passive=True)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consumer.started", queue=self._queue_name, prefetch=self._prefetch)

    async def _check_delay_queues(self, delayed: DelayedRetry) -> None:
        """Fail at start, not at the first outage, when the applied topology lacks our delay tiers."""
        assert self._broker.connection is not None
        for name in delayed.queues:
            channel = await self._broker.connection.channel(publisher_confirms=False)
            try:
                await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                raise DelayQueueMissing(
                    f"delay queue {name} does not exist: run `apptctl topology apply` with the same "
                    "APPT_NAMESPACE and APPT_RETRY_DELAYS_S as the workers"
                ) from None
            finally:
                if not channel.is_closed:
                    await channel.close()

    @property
    def consuming(self) -> bool:
        """Subscribed, not draining, on an open channel (the robust channel reopens after a reconnect)."""
        channel = self._channel
        return (
            self._consumer_tag is not None
            and not self._stopping
            and channel is not None
            and not channel.is_closed
        )

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages, then let the ones in hand finish (unfinished ones go back to the queue).

        Bounded by `timeout_s` as a whole, even when the broker is unreachable: cancelling the consumer
        would otherwise wait for a reconnect that may never come.
        """
        self._stopping = True
        if self._lanes is not None:
            self._lanes.close()  # deliveries not started yet go back to the queue at once
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

    def _count(self, outcome: str, message_type: str = UNDECODED, duration_s: float | None = None) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.metrics.message(message_type, outcome, duration_s)

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        structlog.contextvars.bind_contextvars(
            worker=self.name,
            message_id=incoming.message_id,
            correlation_id=incoming.correlation_id,
            message_type=incoming.type,
            queue=self._queue_name,
        )
        log.debug("message.received", redelivered=incoming.redelivered)
        try:
            fault_point(FaultPoint.AFTER_RECEIVE)
            outcome, message_type, duration_s = await self._process(incoming)
            self._count(outcome, message_type, duration_s)
        except asyncio.CancelledError:
            # Drain timed out: leave it unacked; the broker redelivers it to another consumer.
            log.warning("message.abandoned_on_shutdown")
            raise
        except Exception as exc:  # last wall: never let a delivery crash the worker
            log.exception("message.unhandled_runtime_error", error=repr(exc))
            self.metrics.message(UNDECODED, "requeued")
            await self._nack_requeue(incoming)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, incoming: AbstractIncomingMessage) -> tuple[str, str, float | None]:
        """(outcome, message type for metrics, seconds from decoded to acked when handled)."""
        verified: Verified | None = None
        exchange, routing_key = self._original_route(incoming)
        # The size limit first (decode refuses an oversize body), then the signature, then parsing.
        if self._signatures is not None and len(incoming.body) <= MAX_MESSAGE_BYTES:
            if self._signatures.applies_to(exchange):
                checked = self._signatures.check(incoming.body, incoming.headers)
                if isinstance(checked, SignatureRefused):
                    return await self._dead_letter(incoming, checked.reason, checked.detail), UNDECODED, None
                verified = checked
        decoded = decode(incoming.body, content_type=incoming.content_type, property_type=incoming.type)
        if isinstance(decoded, DecodeFailure):
            return await self._dead_letter(incoming, decoded.reason, decoded.detail), UNDECODED, None
        if self._routes is not None:
            refusal = self._routes.refusal(exchange, routing_key, decoded.type, decoded.schema_version)
            if refusal is not None:
                outcome = await self._dead_letter(incoming, DeadLetterReason.ROUTE_TYPE_MISMATCH, refusal)
                return outcome, decoded.type, None
        if self._signatures is not None:
            refused = self._signatures.check_parsed(decoded, verified)
            if refused is not None:
                return await self._dead_letter(incoming, refused.reason, refused.detail), decoded.type, None
        handler = self._handlers.get(type(decoded))
        if handler is None:
            outcome = await self._dead_letter(
                incoming,
                DeadLetterReason.UNEXPECTED_MESSAGE_TYPE,
                f"{self.name} has no handler for {decoded.type} v{decoded.schema_version}",
            )
            return outcome, decoded.type, None
        structlog.contextvars.bind_contextvars(
            message_id=str(decoded.message_id),
            correlation_id=decoded.correlation_id,
            tenant_id=decoded.tenant_id,
        )
        failed_before = self._failed_deliveries(incoming)
        if failed_before:
            structlog.contextvars.bind_contextvars(attempt=failed_before + 1)
        started = time.perf_counter()
        try:
            outcome = await self._handle_with_retries(decoded, handler)
        except TransientRetryBudgetExhausted as exc:
            return await self._retry_later(incoming, failed_before, str(exc)), decoded.type, None
        except LanesClosed:  # draining before its turn came: back to the queue, untouched
            await self._nack_requeue(incoming)
            return "requeued", decoded.type, None
        except DeadLetter as exc:
            log.warning("message.refused_by_handler", reason=exc.reason, detail=exc.detail)
            return await self._dead_letter(incoming, exc.reason, exc.detail), decoded.type, None
        except Exception as exc:
            log.exception("message.handler_error", error=repr(exc))
            outcome = await self._dead_letter(
                incoming, DeadLetterReason.HANDLER_ERROR, f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]
            )
            return outcome, decoded.type, None
        await self._ack(incoming)
        duration_s = time.perf_counter() - started
        log.info("message.handled", outcome=outcome, duration_ms=round(duration_s * 1000, 2))
        return outcome, decoded.type, duration_s

    async def handle(self, message: Envelope) -> str:
        """A decoded message through dedupe, its handler and the commit, with the conflict and transient
        retries: what a delivery does between decode and ack ("handled" or "duplicate")."""
        return await self._handle_with_retries(message, self._handlers[type(message)])

    async def _handle_with_retries(self, message: Envelope, handler: Handler) -> str:
        conflicts = 0
        transient = 0
        delay = min(0.05, self._retry_delay) or 0.05
        deadline = time.monotonic() + self._retry_budget
        while True:
            try:
                return await self._handle_once(message, handler)
            except Exception as exc:
                if is_conflict(exc) and conflicts < MAX_CONFLICT_RETRIES:
                    conflicts += 1
                    self.metrics.retry("conflict")
                    log.info("message.conflict_retry", attempt=conflicts, error=repr(exc)[:MAX_ERROR])
                    continue
                if not is_transient(exc):
                    raise
                if self._stopping:
                    raise TransientRetryBudgetExhausted(repr(exc)[:MAX_ERROR]) from exc
                if self._delayed is not None:
                    # A blip gets a couple of quick tries; an outage goes to the delay queues.
                    if transient >= self._retry_in_place:
                        raise TransientRetryBudgetExhausted(repr(exc)[:MAX_ERROR]) from exc
                    wait = delay if transient == 0 else self._retry_delay * 2 ** (transient - 1)
                    transient += 1
                else:
                    if time.monotonic() > deadline:
                        raise TransientRetryBudgetExhausted(repr(exc)[:MAX_ERROR]) from exc
                    wait = delay
                    delay = min(delay * 2, max(self._retry_delay, 0.05) * 8)
                self.metrics.retry("transient")
                log.warning("message.transient_retry", delay_s=wait, error=repr(exc)[:MAX_ERROR])
                await asyncio.sleep(wait)

    async def _handle_once(self, message: Envelope, handler: Handler) -> str:
        # The inbox claim is the transaction's first statement, sent with its BEGIN.
        publisher = self._publisher
        # With tenant lanes, a transaction waits for its tenant's turn; the publish below does not hold it.
        async with (
            self._lanes.turn(message.tenant_id) if self._lanes is not None else contextlib.nullcontext(),
            UnitOfWork(
                self._engine,
                self.name,
                claim=(self.name, message.message_id),
                tenant=message.tenant_id,
                notify=publisher is None,
            ) as uow,
        ):
            if not uow.claimed:
                return "duplicate"
            await handler(message, uow)
            await uow.commit()
        if publisher is not None and uow.written:
            # Committed: into the next burst (the delivery is acked without waiting for the confirm, unless
            # too much is waiting already; what is not confirmed stays in the outbox for the relay).
            await publisher.submit(uow.written)
        return "handled"

    # --- delayed retries ----------------------------------------------------------------------------

    def _back_from_delay(self, incoming: AbstractIncomingMessage) -> bool:
        """Did the broker itself hand this delivery back from one of our delay queues?

        It came by the return exchange, which no identity may publish to (only the broker dead-letters
        through it), and the broker's latest x-death names one of our delay queues. Only then are
        `x-attempt` and the original route in the headers ours (written by this worker on the copy it
        parked): a publisher's `x-death` or `x-original-*` headers, or a replayed dead letter's, are never
        believed."""
        if (
            self._delayed is None
            or self._return_exchange is None
            or incoming.exchange != self._return_exchange
            or incoming.routing_key != self._queue_name
        ):
            return False
        deaths = (incoming.headers or {}).get("x-death")
        if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], dict):
            return False
        latest = deaths[0]
        return _text(latest.get("reason")) == "expired" and _text(latest.get("queue")) in self._delayed.queues

    def _failed_deliveries(self, incoming: AbstractIncomingMessage) -> int:
        if not self._back_from_delay(incoming):
            return 0
        try:
            return max(int(_text((incoming.headers or {}).get(ATTEMPT_HEADER)) or 0), 0)
        except ValueError:
            return 0

    def _original_route(self, incoming: AbstractIncomingMessage) -> tuple[str, str]:
        """Where the message was first published (a retried copy carries it in headers)."""
        headers = incoming.headers or {}
        if self._back_from_delay(incoming) and ORIGINAL_EXCHANGE in headers:
            return _text(headers.get(ORIGINAL_EXCHANGE)), _text(headers.get(ORIGINAL_ROUTING_KEY))
        return incoming.exchange or "", incoming.routing_key or ""

    async def _retry_later(self, incoming: AbstractIncomingMessage, failed_before: int, error: str) -> str:
        """Park a copy in the next delay tier (confirmed), then ack; or give up after the limit."""
        if self._delayed is None:
            log.warning("message.transient_budget_exhausted", error=error)
            await self._nack_requeue(incoming)
            return "requeued"
        failed = failed_before + 1
        if failed > self._delayed.limit:
            return await self._dead_letter(
                incoming,
                DeadLetterReason.RETRIES_EXHAUSTED,
                f"still failing after {failed} attempts; last error: {error}",
                {ATTEMPT_HEADER: failed, LAST_ERROR_HEADER: error[:MAX_ERROR]},
            )
        queue, delay_s = self._delayed.tier(failed_before)
        exchange, routing_key = self._original_route(incoming)
        headers = {
            key: value
            for key, value in (incoming.headers or {}).items()
            if key not in _BROKER_HEADERS and not key.startswith(_BROKER_HEADER_PREFIXES)
        }
        headers.update(
            {
                ATTEMPT_HEADER: failed,
                LAST_ERROR_HEADER: error[:MAX_ERROR],
                ORIGINAL_EXCHANGE: exchange,
                ORIGINAL_ROUTING_KEY: routing_key,
            }
        )
        try:
            await self._broker.publish(self._delayed.exchange, queue, _copy(incoming, headers))
        except Exception as exc:
            # The broker can't take it either: hand the delivery back, as a crash would.
            log.error("message.retry_publish_failed", retry_queue=queue, error=repr(exc)[:MAX_ERROR])
            await self._nack_requeue(incoming)
            return "requeued"
        await self._ack(incoming)
        self.metrics.retry("delayed")
        log.warning(
            "message.retry_scheduled", attempt=failed, delay_s=delay_s, retry_queue=queue, error=error
        )
        return "retried"

    # --- dead letters, acks ------------------------------------------------------------------------

    async def _dead_letter(
        self,
        incoming: AbstractIncomingMessage,
        reason: str,
        detail: str,
        extra_headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish the original bytes to the dead-letter exchange with why, confirmed, then ack."""
        exchange, routing_key = self._original_route(incoming)
        headers = dict(incoming.headers or {})
        headers.update(extra_headers or {})
        headers.update(
            {
                "x-dead-letter-reason": str(reason),
                "x-dead-letter-detail": detail[:MAX_DETAIL],
                ORIGINAL_EXCHANGE: exchange,
                ORIGINAL_ROUTING_KEY: routing_key,
                "x-original-queue": self._queue_name,
                "x-dead-lettered-by": self.name,
                "x-dead-lettered-at": datetime.now(UTC).isoformat(),
            }
        )
        dead = _copy(incoming, headers)
        try:
            await self._broker.publish(self._dead_letter_exchange, self._dead_letter_key, dead)
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
            return
        fault_point(FaultPoint.AFTER_ACK)

    async def _nack_requeue(self, incoming: AbstractIncomingMessage) -> None:
        try:
            await incoming.nack(requeue=True)
        except Exception as exc:
            log.warning("message.nack_failed", error=repr(exc)[:300])


def _copy(incoming: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
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
