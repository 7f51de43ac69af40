"""Consume one queue as a pipeline of steps: admit -> transaction -> settle, each ending in a typed outcome.

- `steps.admit`: size, signature, decode, route, signer, dispatch. Undecodable, unknown or misrouted
  messages are dead-lettered with the reason in headers, then acked, before any handler or state is
  touched, on first deliveries, retries and replays alike (`redelivery.Bookkeeping` says which route
  and attempt count are believed).
- `transaction.Transactions`: inbox claim, handler, outbox and commit in one transaction; a duplicate is
  acked with no effect; conflicts and transient blips are retried in place. With `batch_max` > 1,
  `batch.Batches` first handles the deliveries waiting together (one transaction); a batch
  that fails sends each of its deliveries through `Transactions` alone.
- `settle.Settler`: ack after the commit, on the channel that delivered the message; a transient failure
  that outlasts the quick tries is parked in the worker's delay queue of the next tier (`RetryLater`),
  dead-lettered as `retries_exhausted` after `limit` of them; `DeadLetter` raised by a handler and any
  other exception (a handler bug) are dead-lettered with the reason, never a crash, never a drop.
Outcomes (workers/runtime/outcomes.py) are what metrics and logs read.
"""

import asyncio
import time
from collections.abc import Mapping

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from contracts.routes import RouteTable
from workers.runtime.batch import Batches
from workers.runtime.broker import Broker
from workers.runtime.database import pool_size
from workers.runtime.errors import DeadLetter
from workers.runtime.fairness import LanesClosed, TenantLanes
from workers.runtime.faults import FaultPoint, fault_point
from workers.runtime.metrics import UNDECODED, WorkerMetrics
from workers.runtime.outbox import DirectPublisher
from workers.runtime.outcomes import Committed, Duplicate, Handled, Outcome
from workers.runtime.redelivery import MAX_DETAIL, Bookkeeping, DelayedRetry
from workers.runtime.settle import Settler
from workers.runtime.signatures import SignaturePolicy
from workers.runtime.steps import Admitted, Handler, admit
from workers.runtime.transaction import MAX_CONFLICT_RETRIES, Transactions, TransientFailure

__all__ = ["MAX_CONFLICT_RETRIES", "DelayQueueMissing", "DelayedRetry", "Handler", "QueueConsumer"]

log = structlog.get_logger(__name__)


class DelayQueueMissing(Exception):
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
        delayed_retry: DelayedRetry,
        transient_retry_delay_s: float = 1.0,
        retry_in_place: int = 2,
        metrics: WorkerMetrics | None = None,
        signatures: SignaturePolicy | None = None,
        dead_letter_exchange: str | None = None,
        publisher: DirectPublisher | None = None,
        fair_window: int = 0,
        routes: RouteTable | None = None,
        return_exchange: str | None = None,
        batch_max: int = 1,
        batch_runners: int | None = None,
    ) -> None:
        """`delayed_retry`: the worker's delay queues, where transient failures that outlast
        `retry_in_place` quick tries wait (the only retry mode).
        With `signatures`, portal messages must carry a good signature (checked before parsing).
        `dead_letter_exchange`: where this consumer publishes dead letters (the worker's own; by default
        the topology's shared one). `publisher`: publishes a delivery's events right after its commit
        (without one, the relay publishes them when the commit's NOTIFY wakes it).
        `fair_window` > 0: hold up to that many deliveries and handle at most `prefetch` at once, tenants
        taking turns (workers/runtime/fairness.py). `routes`: the (exchange, routing key, type, schema
        version) combinations this worker accepts (None: any, for the bench's stages). `return_exchange`:
        where the broker hands back expired delay-queue messages (the only way a delivery's retry headers
        are believed). `batch_max` > 1: the deliveries waiting are handled up to that many in one
        transaction (workers/runtime/batch.py); the prefetch is raised to twice that, so the
        next batch gathers while one commits. 1: one delivery per transaction. `batch_runners`: batches at
        once, each holding one pooled connection (default the pool's size less one, left for the direct
        publisher's marks and the health check: below that many busy, a delivery is a batch of one; at
        that many, what arrives gathers into the next batch)."""
        self.name = name
        self._queue_name = queue_name
        self._handlers = dict(handlers)
        self._broker = broker
        self._prefetch = max(fair_window or prefetch, 2 * batch_max if batch_max > 1 else 0)
        self._lanes = TenantLanes(prefetch) if fair_window else None
        self._delayed = delayed_retry
        self.metrics = metrics or WorkerMetrics(name)
        self._signatures = signatures
        self._routes = routes
        self._return_exchange = return_exchange
        self._transactions = Transactions(
            worker=name,
            engine=engine,
            metrics=self.metrics,
            publisher=publisher,
            lanes=self._lanes,
            retry_delay_s=transient_retry_delay_s,
            retry_in_place=retry_in_place,
        )
        self.batches = (
            Batches(
                worker=name,
                engine=engine,
                publisher=publisher,
                transactions=self._transactions,
                metrics=self.metrics,
                batch_max=batch_max,
                runners=batch_runners or max(1, pool_size(engine) - 1),
            )
            if batch_max > 1
            else None
        )
        self._settle = Settler(
            worker=name,
            queue_name=queue_name,
            broker=broker,
            dead_letter_exchange=dead_letter_exchange or broker.topology.dead_letter_exchange,
            dead_letter_routing_key=dead_letter_routing_key,
            delayed=delayed_retry,
            metrics=self.metrics,
        )
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._in_flight: set[asyncio.Task] = set()
        self._stopping = False
        self.metrics.track_in_flight(lambda: len(self._in_flight))

    @property
    def counts(self) -> dict[str, int]:
        """Deliveries by outcome key ("handled", "dead_lettered:<reason>", ...), from the metrics."""
        return self.metrics.outcomes()

    async def start(self) -> None:
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
        self._stopping = self._transactions.stopping = True
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
        if self.batches is not None:
            await self.batches.close()
        log.info("consumer.drained", queue=self._queue_name)

    async def handle(self, message: Envelope) -> Committed:
        """A decoded message through dedupe, its handler and the commit, with the conflict and transient
        retries: what a delivery does between decode and ack (`Handled` or `Duplicate`)."""
        return await self._transactions.run(message, self._handlers[type(message)])

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
            self.metrics.message(message_type, outcome, duration_s)
        except asyncio.CancelledError:
            # Drain timed out: leave it unacked; the broker redelivers it to another consumer.
            log.warning("message.abandoned_on_shutdown")
            raise
        except Exception as exc:  # last wall: never let a delivery crash the worker
            log.exception("message.unhandled_runtime_error", error=repr(exc))
            self.metrics.message(UNDECODED, await self._settle.requeue(incoming))
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _process(self, incoming: AbstractIncomingMessage) -> tuple[Outcome, str, float | None]:
        """(outcome, message type for metrics, seconds from decoded to acked when committed)."""
        where = Bookkeeping.of(
            incoming,
            queue_name=self._queue_name,
            delayed=self._delayed,
            return_exchange=self._return_exchange,
        )
        admitted = admit(
            incoming,
            where,
            signatures=self._signatures,
            routes=self._routes,
            handlers=self._handlers,
            worker=self.name,
        )
        if not isinstance(admitted, Admitted):
            outcome = await self._settle.dead_letter(incoming, where, admitted.reason, admitted.detail)
            return outcome, admitted.message_type, None
        message = admitted.message
        structlog.contextvars.bind_contextvars(
            message_id=str(message.message_id),
            correlation_id=message.correlation_id,
            tenant_id=message.tenant_id,
        )
        if where.failed_before:
            structlog.contextvars.bind_contextvars(attempt=where.failed_before + 1)
        started = time.perf_counter()
        try:
            # In a batch when batches are on; alone when they are off or its batch failed.
            answer = await self.batches.submit(message, admitted.handler) if self.batches else None
            if isinstance(answer, Handled | Duplicate):
                committed: Committed = answer
            else:
                committed = await self._transactions.run(message, admitted.handler, failed=answer)
        except TransientFailure as exc:
            return await self._settle.retry_later(incoming, where, str(exc)), message.type, None
        except LanesClosed:  # draining before its turn came: back to the queue, untouched
            return await self._settle.requeue(incoming), message.type, None
        except DeadLetter as exc:
            log.warning("message.refused_by_handler", reason=exc.reason, detail=exc.detail)
            return await self._settle.dead_letter(incoming, where, exc.reason, exc.detail), message.type, None
        except Exception as exc:
            log.exception("message.handler_error", error=repr(exc))
            detail = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL]
            outcome = await self._settle.dead_letter(incoming, where, DeadLetterReason.HANDLER_ERROR, detail)
            return outcome, message.type, None
        await self._settle.ack(incoming)
        duration_s = time.perf_counter() - started
        log.info("message.handled", outcome=committed.label, duration_ms=round(duration_s * 1000, 2))
        return committed, message.type, duration_s
