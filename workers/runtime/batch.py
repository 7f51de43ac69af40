"""Adaptive batches: the admitted deliveries that are waiting, handled in one transaction.

A consumer hands each admitted delivery to `Batches.submit` and waits. A runner takes what is waiting
(up to `batch_max`, tenants taking turns as in workers/runtime/fairness.py; never waiting for more to
arrive). Up to `runners` batches run at once, each holding one pooled connection (so the consumer sets
`runners` below its pool size): while fewer are busy, a delivery starts one at once (a batch of one,
today's latency); when all are busy, what arrives waits and the next free runner takes it together, so
batches grow with the load. A batch is one transaction: BEGIN, one multi-row inbox claim that sets each
row's tenant and also tells which are duplicates, each handler in turn, the outbox rows with the COMMIT;
then the events go to the direct publisher and every delivery learns its outcome (the consumer acks after
that). A batch of one runs as the single path's own transaction (`Transactions.once`).

Row-level security: a batch may mix tenants (a queue carries every tenant's messages; one transaction
per tenant made a batch of a busy queue with eight tenants eight transactions of one or two deliveries).
The transaction's tenant setting (`appt.tenant_id`) is switched per message: the claim and the outbox
rows set each row's own tenant as the row is produced, before row-level security checks it, and each
handler runs after `uow.scope_to(its message's tenant)` (after a claim of several tenants the setting is
set again before the first handler: no row order is assumed). A batch's messages are grouped by tenant
(each tenant's in their order), so the setting changes once per tenant, and no handler statement runs
under another message's tenant: it can neither read nor write another tenant's rows.

Any failure inside a batch (a conflict, a deadlock with another replica's batch, a handler bug, a poison
message, `DeadLetter`, a lost connection) rolls the whole batch back (counted in
`appt_batch_fallbacks_total` by kind) and answers `None` to each of its deliveries: the consumer then
handles each one alone through the single path (retries, dead letters, requeue), so a failure keeps
exactly the outcome it has without batches. A batch of one is the single path's first attempt; if it
fails, the delivery goes on alone from that failure (no extra attempt).
"""

import asyncio
import contextvars
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.envelope import Envelope
from workers.runtime.database import UnitOfWork
from workers.runtime.errors import failure_kind
from workers.runtime.fairness import take_in_turn
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outbox import DirectPublisher
from workers.runtime.outcomes import Committed, Duplicate, Handled
from workers.runtime.redelivery import MAX_ERROR
from workers.runtime.steps import Handler
from workers.runtime.transaction import Transactions

log = structlog.get_logger(__name__)

# What a delivery learns from its batch: its outcome; None (the batch rolled back: go alone, from the
# start); or the exception its first attempt ended with (a batch of one: go on alone from there).
Answer = Committed | Exception | None


@dataclass
class _Entry:
    message: Envelope
    handler: Handler
    answer: "asyncio.Future[Answer]" = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Batches:
    def __init__(
        self,
        *,
        worker: str,
        engine: AsyncEngine,
        publisher: DirectPublisher | None,
        transactions: Transactions,
        metrics: WorkerMetrics,
        batch_max: int,
        runners: int = 1,
    ) -> None:
        if runners < 1:
            raise ValueError("runners must be at least 1")
        if batch_max < 2:
            raise ValueError("batches need batch_max >= 2 (1 is the single path)")
        self._worker = worker
        self._engine = engine
        self._publisher = publisher
        self._transactions = transactions
        self._metrics = metrics
        self._batch_max = batch_max
        self._waiting: list[_Entry] = []
        self._max_runners = runners
        self._runners: set[asyncio.Task] = set()
        self.sizes: dict[int, int] = {}  # batch size -> how many batches (for tests and logs)

    @property
    def waiting(self) -> int:
        """Deliveries waiting for the next batch."""
        return sum(1 for e in self._waiting if not e.answer.done())

    async def submit(self, message: Envelope, handler: Handler) -> Answer:
        """`Handled` / `Duplicate` once the delivery's batch committed; else how it goes on alone."""
        entry = _Entry(message, handler)
        self._waiting.append(entry)
        if len(self._runners) < self._max_runners:
            # A context of its own: not the log context of the delivery that happened to start it.
            runner = asyncio.get_running_loop().create_task(self._run(), context=contextvars.Context())
            self._runners.add(runner)
            runner.add_done_callback(self._ended)
        return await entry.answer

    async def close(self) -> None:
        """Stop the runners (a transaction one has open rolls back); deliveries they held go back unacked."""
        runners = list(self._runners)
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        for entry in self._waiting:
            entry.answer.cancel()
        self._waiting.clear()

    def _ended(self, runner: "asyncio.Task[None]") -> None:
        self._runners.discard(runner)
        if not runner.cancelled() and (error := runner.exception()) is not None:
            log.warning("batch.runner_ended", error=repr(error)[:MAX_ERROR])

    async def _run(self) -> None:
        try:
            await self._take_until_none_waiting()
        finally:
            # Synchronously, in the runner's last step: its done-callback runs a turn of the loop later,
            # and a delivery submitted in between (its submitter woke first) must start a runner of its
            # own, not count on this one.
            self._runners.discard(asyncio.current_task())

    async def _take_until_none_waiting(self) -> None:
        while True:
            live = [e for e in self._waiting if not e.answer.done()]
            if not live:
                self._waiting.clear()
                return
            batch, self._waiting = take_in_turn(live, self._batch_max, key=lambda e: e.message.tenant_id)
            self.sizes[len(batch)] = self.sizes.get(len(batch), 0) + 1
            try:
                if len(batch) == 1:
                    await self._alone(batch[0])
                else:
                    await self._together(_by_tenant(batch))
            except BaseException:  # cancelled, or a simulated crash: nothing is answered, nothing acked
                for entry in batch:
                    entry.answer.cancel()
                raise

    async def _alone(self, entry: _Entry) -> None:
        try:
            _answer(entry, await self._transactions.once(entry.message, entry.handler))
        except Exception as exc:  # the single path's first attempt: it goes on alone from there
            _answer(entry, exc)

    async def _together(self, entries: list[_Entry]) -> None:
        """One transaction for `entries` (grouped by tenant, see `_by_tenant`)."""
        publisher = self._publisher
        self._metrics.transaction(len(entries))
        try:
            async with UnitOfWork(self._engine, self._worker, notify=publisher is None) as uow:
                claimed = set(await uow.claim_all(self._worker, [e.message for e in entries]))
                uow.batch = _handled(entries, claimed)
                outcomes: list[Committed] = []
                for entry in entries:
                    message = entry.message
                    if message.message_id not in claimed:  # in the inbox already, or earlier in this batch
                        outcomes.append(Duplicate())
                        continue
                    claimed.discard(message.message_id)
                    await uow.scope_to(message.tenant_id)
                    with structlog.contextvars.bound_contextvars(
                        worker=self._worker,
                        message_id=str(message.message_id),
                        correlation_id=message.correlation_id,
                        tenant_id=message.tenant_id,
                        batch_size=len(entries),
                    ):
                        await entry.handler(message, uow)
                    outcomes.append(Handled())
                await uow.commit()
        except Exception as exc:
            kind = failure_kind(exc)
            self._metrics.batch_fallback(kind)
            log.info("batch.rolled_back", size=len(entries), kind=kind, error=repr(exc)[:MAX_ERROR])
            for entry in entries:
                _answer(entry, None)
            return
        if publisher is not None and uow.written:
            try:
                await publisher.submit(uow.written)
            except Exception as exc:  # as on the single path: judged per delivery (a retry finds it claimed)
                for entry in entries:
                    _answer(entry, exc)
                return
        for entry, outcome in zip(entries, outcomes, strict=True):
            _answer(entry, outcome)


def _handled(entries: list[_Entry], claimed: set) -> tuple[Envelope, ...]:
    """The messages the handlers will run for, in order (claimed now, each id once): a handler may write
    for several of them at once (`UnitOfWork.batch`), those of the tenant it is scoped to."""
    fresh, seen = [], set()
    for entry in entries:
        message_id = entry.message.message_id
        if message_id in claimed and message_id not in seen:
            seen.add(message_id)
            fresh.append(entry.message)
    return tuple(fresh)


def _by_tenant(batch: list[_Entry]) -> list[_Entry]:
    """The batch grouped by tenant, tenants in the order they first appear, each tenant's deliveries in
    their order: the transaction's tenant setting then changes once per tenant."""
    groups: dict[str, list[_Entry]] = {}
    for entry in batch:
        groups.setdefault(entry.message.tenant_id, []).append(entry)
    return [entry for group in groups.values() for entry in group]


def _answer(entry: _Entry, outcome: Answer) -> None:
    if not entry.answer.done():
        entry.answer.set_result(outcome)
