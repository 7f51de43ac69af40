"""The outbox: events are rows written with the state change, and published after the commit.

Two ways out, one guarantee (a committed row is published at least once, marked only once confirmed):

- **Directly** (`DirectPublisher`): the consumer that committed the rows publishes them right away from
  the bytes it still holds, awaits the confirms, and the confirmed rows are marked published in batches
  a few milliseconds later. No wake-up, no read-back, no relay round between a commit and its events.
- **The relay** (`OutboxRelay`), the fallback: it claims unpublished rows with FOR UPDATE SKIP LOCKED
  (so replicas share the work without double-publishing a row at the same time), publishes them with
  confirms, and marks only the confirmed ones. It takes only rows older than a grace period (so it does
  not race a direct publish still in flight), except when a writer that publishes nothing itself wakes
  it with NOTIFY: those rows it takes at once.

A crash between commit and publish leaves the rows to the relay, which takes them at once, grace period or
not: every row names its **writer** (the worker process whose transaction wrote it, migration 0013), each
worker holds an advisory lock on its writer id for as long as it lives (on its relay's LISTEN
connection), and a row whose writer holds no lock has nobody about to publish it. A crash between publish
and mark (or a direct publish racing the relay) publishes twice: consumers dedupe on message_id.

A worker writes into its own partition (`messaging.<worker>_outbox`, migration 0008), one tenant per
transaction (row-level security); the relay's claim, mark, purge and backlog cross tenants only through
that worker's own functions (`relay_call`).
"""

import asyncio
import contextlib
import json
import secrets
from collections.abc import Sequence
from datetime import timedelta
from typing import NamedTuple
from uuid import UUID

import aiormq.exceptions
import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.decoding import encode
from contracts.envelope import Envelope
from infra.db.names import WORKERS, outbox_function, outbox_table
from infra.topology import REPLY_ROLE
from workers.runtime import database
from workers.runtime.broker import amqp_properties, headers_for
from workers.runtime.fairness import take_in_turn
from workers.runtime.faults import FaultPoint, fault_point

log = structlog.get_logger(__name__)


# Writers (migration 0013): a worker's pooled connections carry its writer id in this setting, which the
# outbox's `writer` column takes as its default; its relay holds the advisory lock (WRITER_LOCK_CLASS,
# writer id) while the process lives. The claim takes young rows of a writer without that lock at once.
WRITER_SETTING = "appt.outbox_writer"
WRITER_LOCK_CLASS = 1095782484  # 'APPT' as an int4; frozen in migration 0013


def new_writer() -> int:
    """A writer id for one worker process's life (a clash with a live process is detected at the lock)."""
    return secrets.randbelow(2**31 - 2) + 1


def writer_settings(writer: int) -> dict[str, str]:
    """The session settings a writer's pooled connections open with (`database.create_engine`)."""
    return {WRITER_SETTING: str(writer)}


def _headers(value: dict | str) -> dict:
    """jsonb as SQLAlchemy's asyncpg codec decodes it (a dict), or as plain asyncpg does (text)."""
    return value if isinstance(value, dict) else json.loads(value)


def channel_of(producer: str) -> str:
    """The NOTIFY channel that wakes `producer`'s relay (at most 63 bytes, PostgreSQL's limit)."""
    return f"outbox.{producer}"[:63]


class OutboxRow(NamedTuple):
    """One emitted event as it is written to the outbox and published: encoded once, when emitted."""

    message_id: UUID
    exchange_role: str
    routing_key: str
    message_type: str
    correlation_id: str
    tenant_id: str
    headers: dict
    body: bytes


def row_for(message: Envelope, producer: str) -> OutboxRow:
    """What `write` and a direct publish need of one message, computed when it is emitted."""
    return OutboxRow(
        message.message_id,
        message.exchange_role,
        message.route(),
        message.type,
        message.correlation_id,
        message.tenant_id,
        headers_for(message),
        encode(message),
    )


def relay_call(producer: str, operation: str, arity: int = 0) -> tuple[str, tuple[str, ...]]:
    """A call of the relay's `operation` (claim, mark, purge, backlog) on `producer`'s rows of every
    tenant (migration 0008): a worker's role may only call its own worker's functions, which take no
    producer name. Returns the call with `$n` placeholders for the leading arguments and then the
    operation's `arity` own ones, and the leading values to pass first."""
    name, leading = outbox_function(producer, operation)
    placeholders = ", ".join(f"${i}" for i in range(1, len(leading) + arity + 1))
    return f"{name}({placeholders})", leading


# The rows, as parallel arrays, in one statement; the writer's relay is woken (delivered at commit) by
# the same statement unless the writer publishes its rows itself right after the commit. Each row sets
# the transaction's tenant to its own as it is produced, before row-level security checks it (as the
# inbox claim does): a batch's rows of several tenants go out in one statement, each under its tenant.
_WRITE = """
INSERT INTO {table} (message_id, producer, exchange_role, routing_key, message_type, correlation_id,
                     tenant_id, headers, body)
SELECT m, $1, r, k, t, c, set_config('appt.tenant_id', tn, true), h::jsonb, b
  FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
              $9::bytea[]) AS u(m, r, k, t, c, tn, h, b)
"""
_WRITE_AND_NOTIFY = """
WITH written AS ({insert} RETURNING 1)
SELECT pg_notify($10, '') FROM (SELECT count(*) FROM written) n
"""
_WRITES = {
    (producer, notify): (
        _WRITE_AND_NOTIFY.format(insert=_WRITE.format(table=outbox_table(producer)).strip())
        if notify
        else _WRITE.format(table=outbox_table(producer))
    )
    for producer in (*WORKERS, "")
    for notify in (True, False)
}


async def write(
    driver: asyncpg.Connection, producer: str, rows: Sequence[OutboxRow], *, notify: bool = True
) -> None:
    """Insert the rows in the caller's transaction and, with `notify`, wake the producer's relay."""
    statement = _WRITES[(producer if producer in WORKERS else "", notify)]
    columns = [
        [r.message_id for r in rows],
        [r.exchange_role for r in rows],
        [r.routing_key for r in rows],
        [r.message_type for r in rows],
        [r.correlation_id for r in rows],
        [r.tenant_id for r in rows],
        [json.dumps(r.headers) for r in rows],
        [r.body for r in rows],
    ]
    if notify:
        await driver.execute(statement, producer, *columns, channel_of(producer))
    else:
        await driver.execute(statement, producer, *columns)


def _undeliverable_reply(exchange_role: str, error: BaseException) -> bool:
    return exchange_role == REPLY_ROLE and isinstance(error, aiormq.exceptions.PublishError)


async def _publish_rows(broker, producer: str, rows: Sequence[OutboxRow]) -> list[BaseException | None]:
    """Publish every row at once (persistent, mandatory) and await the confirms together; per row, None
    when it is out (confirmed, or a reply whose queue is gone) or the error that kept it back."""
    exchanges: dict[str, str] = {}
    publishes = []
    for row in rows:
        role = row.exchange_role
        exchange = exchanges.get(role) or exchanges.setdefault(role, broker.topology.exchange(role))
        properties = amqp_properties(
            message_id=str(row.message_id),
            correlation_id=row.correlation_id,
            message_type=row.message_type,
            producer=producer,
            headers=row.headers,
        )
        publishes.append(broker.publish_body(exchange, row.routing_key, row.body, properties))
    results: list[BaseException | None] = await asyncio.gather(*publishes, return_exceptions=True)
    for index, (row, result) in enumerate(zip(rows, results, strict=True)):
        if result is None:
            # One line per event, with its request's correlation id: grep shows the whole path.
            log.info(
                "outbox.published",
                message_id=str(row.message_id),
                correlation_id=row.correlation_id,
                message_type=row.message_type,
                routing_key=row.routing_key,
            )
        elif _undeliverable_reply(row.exchange_role, result):
            # A portal's reply queue that is gone: the outcome is in the read store and the outcome
            # event, so the reply is dropped rather than retried for ever.
            log.warning("outbox.reply_undeliverable", routing_key=row.routing_key)
            results[index] = None
        else:
            log.warning(
                "outbox.publish_failed",
                message_id=str(row.message_id),
                correlation_id=row.correlation_id,
                routing_key=row.routing_key,
                error=repr(result)[:500],
            )
    return results


class OutboxRelay:
    def __init__(
        self,
        engine: AsyncEngine,
        broker,
        *,
        producer: str,
        database_url: str,
        batch_size: int = 200,
        poll_interval_s: float = 1.0,
        retention_s: float = 3600.0,
        grace_s: float = 0.0,
        writer: int | None = None,
        application_name: str | None = None,
    ) -> None:
        """`grace_s`: leave rows younger than this to the direct publisher that wrote them (0 without
        one), unless that publisher's process is gone (see `writer`); a NOTIFY still makes the next
        round take every unpublished row.

        `writer`: this process's writer id (`new_writer`, also in its engine's `writer_settings`): the
        relay holds its advisory lock on the LISTEN connection, so that other processes' relays leave
        its young rows to its direct publisher, and take them at once when it is gone.
        `application_name`: what pg_stat_activity shows for that connection."""
        self._engine = engine
        self._broker = broker
        self._producer = producer
        self._dsn = database.asyncpg_dsn(database_url)
        self._server_settings = {"application_name": application_name[:63]} if application_name else None
        self._batch_size = batch_size
        # The columns after `id` are OutboxRow's fields, in its order.
        claim, self._leading = relay_call(producer, "claim", 2)
        self._claim_batch = f"SELECT * FROM {claim}"
        self._purge = f"SELECT {relay_call(producer, 'purge', 1)[0]}"
        self._mark = f"SELECT {relay_call(producer, 'mark', 1)[0]}"
        self._poll_interval = poll_interval_s
        self._retention = timedelta(seconds=retention_s)
        self._grace = timedelta(seconds=grace_s)
        self._notified = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listen_lost = asyncio.Event()
        self._writer = writer
        # Set while this process holds its writer lock (rows it writes are then known to be in hand).
        self.writer_held = asyncio.Event()
        self.published_total = 0

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._listen_lost.set()

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name=f"{self._producer}-outbox-listen")
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                notified, self._notified = self._notified, False
                try:
                    published = await self.publish_pending(all_ages=notified)
                    if loop.time() - last_purge > 60:
                        await self.purge_published()
                        last_purge = loop.time()
                except Exception as exc:  # keep relaying once the broker or database is back
                    log.warning("outbox.relay_error", error=repr(exc)[:500])
                    published = 0
                    await asyncio.sleep(self._poll_interval)
                if published >= self._batch_size:
                    continue  # more may be waiting
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener

    async def publish_pending(self, *, all_ages: bool = True) -> int:
        """Publish one batch; returns how many were confirmed and marked. Without `all_ages`, only rows
        older than the grace period (the others are a direct publisher's, in flight).

        The batch's rows stay locked (FOR UPDATE SKIP LOCKED) while they are published, so a replica's
        relay skips them; all publishes go out at once and their confirms are awaited together; only
        the confirmed rows are marked, in the same round trip as the COMMIT.
        """
        grace = timedelta(0) if all_ages else self._grace
        async with database.UnitOfWork(self._engine, self._producer) as uow:
            records = await uow.driver.fetch(self._claim_batch, *self._leading, self._batch_size, grace)
            if not records:
                return 0
            rows = [OutboxRow(*r[1:])._replace(headers=_headers(r["headers"])) for r in records]
            results = await _publish_rows(self._broker, self._producer, rows)
            fault_point(FaultPoint.RELAY_AFTER_PUBLISH)
            confirmed = [r.message_id for r, result in zip(rows, results, strict=True) if result is None]
            if confirmed:
                await uow.driver.execute(self._mark, *self._leading, confirmed)
                await uow.commit()
        self.published_total += len(confirmed)
        return len(confirmed)

    async def purge_published(self) -> int:
        async with database.UnitOfWork(self._engine, self._producer) as uow:
            purged = await uow.driver.fetchval(self._purge, *self._leading, self._retention)
            await uow.commit()
        return int(purged or 0)

    async def _hold_writer_lock(self, connection: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Take this process's writer lock for the life of `connection` (the server drops it with the
        session). Busy means another live session holds it: the same id drawn twice, or our own previous
        LISTEN session not yet ended on the server; try again until it is free."""
        while not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1::int4, $2::int4)", WRITER_LOCK_CLASS, self._writer
        ):
            log.warning("outbox.writer_lock_busy", writer=self._writer)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), timeout=self._poll_interval)
            if lost.is_set():
                return
        self.writer_held.set()

    def _on_notify(self) -> None:
        self._notified = True
        self._wake.set()

    async def _listen(self) -> None:
        """LISTEN for commits that wrote outbox rows; reconnects forever, polling covers the gaps."""
        while not self._stopping.is_set():
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn, server_settings=self._server_settings)
                lost = asyncio.Event()
                self._listen_lost = lost
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(channel_of(self._producer), lambda *_: self._on_notify())
                if self._writer is not None:
                    await self._hold_writer_lock(connection, lost)
                self._wake.set()  # catch up on anything committed while we were not listening
                await lost.wait()  # set when the connection drops, or by stop()
            except (OSError, asyncpg.PostgresError) as exc:
                log.info("outbox.listen_unavailable", error=repr(exc)[:300])
                await asyncio.sleep(self._poll_interval)
            finally:
                # The server releases the lock with the session; other relays may take our young rows
                # now (a duplicate at worst, if our direct publish gets them out too).
                self.writer_held.clear()
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)


def _tenant_of(row: OutboxRow) -> str:
    return row.tenant_id


class DirectPublisher:
    """Publishes the outbox rows consumers' transactions just committed, right after the commits, from
    the bytes the units of work still hold, and marks the confirmed ones published so the relay never
    sees them.

    `submit` queues (the delivery is acked without waiting for the broker's confirm); one loop publishes
    whatever has queued up in one burst and awaits its confirms together, so at low rates an event goes
    out at once and under load the bursts grow by themselves (as a group commit does). Another loop marks
    the confirmed rows, one UPDATE per `mark_interval_s` at most.

    Backpressure: while `max_pending` rows are queued or awaiting their confirms, `submit` waits, so a
    broker that confirms slowly (a saturated one took seconds per burst in the bench) slows the consumers
    down instead of letting the lag grow until the relay's grace period runs out and it publishes the
    same rows a second time (which loads the broker further).

    Whatever is not confirmed (broker away, timeout) stays unpublished and the relay takes it once it is
    older than its grace period; what a crashed process committed, any relay takes at once (its writer
    lock is gone, see the module docstring); a crash after the confirm but before the
    mark publishes it twice, and consumers drop the copy by message id.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        broker,
        *,
        producer: str,
        burst: int = 500,
        max_pending: int = 1000,
        mark_interval_s: float = 0.02,
        retry_interval_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._producer = producer
        self._burst = burst
        self._max_pending = max_pending
        self._mark_interval = mark_interval_s
        self._retry_interval = retry_interval_s
        mark, self._leading = relay_call(producer, "mark", 1)
        self._mark = f"SELECT {mark}"
        self._queued: list[OutboxRow] = []
        self._waiting: dict[str, int] = {}  # tenant -> its rows queued or awaiting their confirms
        self._publishing = 0  # rows of the burst awaiting their confirms
        self._room = asyncio.Event()
        self._room.set()
        self._to_publish = asyncio.Event()
        self._confirmed: list[UUID] = []
        self._to_mark = asyncio.Event()
        self._stopping = False
        self.published_total = 0

    async def submit(self, rows: Sequence[OutboxRow]) -> None:
        """Queue committed rows for the next burst; first wait while `max_pending` rows are ahead and some
        of them are this tenant's (a tenant with nothing waiting is not held back by another's flood)."""
        tenant = rows[0].tenant_id if rows else ""
        while self.pending >= self._max_pending and self._waiting.get(tenant) and not self._stopping:
            self._room.clear()
            await self._room.wait()
        self._queued.extend(rows)
        for row in rows:
            self._waiting[row.tenant_id] = self._waiting.get(row.tenant_id, 0) + 1
        self._to_publish.set()

    @property
    def pending(self) -> int:
        """Rows queued or awaiting their confirms."""
        return len(self._queued) + self._publishing

    @property
    def unmarked(self) -> int:
        return len(self._confirmed)

    async def run(self) -> None:
        """Publish bursts and mark them until stopped (`flush` then publishes what is still queued)."""
        marks = asyncio.create_task(self._mark_loop(), name=f"{self._producer}-outbox-marks")
        try:
            while not self._stopping:
                await self._to_publish.wait()
                try:
                    await self.publish_queued()
                except Exception as exc:  # that burst is the relay's now; keep going
                    log.warning("outbox.direct_publish_error", error=repr(exc)[:500])
                    await asyncio.sleep(self._retry_interval)
        finally:
            marks.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await marks

    def stop(self) -> None:
        self._stopping = True
        self._to_publish.set()
        self._room.set()

    async def flush(self) -> None:
        """Publish everything queued and mark everything confirmed (a worker's drain)."""
        while self._queued:
            await self.publish_queued()
        await self.mark_confirmed()

    async def publish_queued(self) -> int:
        """One burst: up to `burst` queued rows at once, confirms awaited together; how many confirmed."""
        # Tenants in turn: the next burst holds every waiting tenant's oldest rows, not one tenant's backlog.
        rows, self._queued = take_in_turn(self._queued, self._burst, _tenant_of)
        if not self._queued:
            self._to_publish.clear()
        if not rows:
            return 0
        self._publishing = len(rows)
        try:
            results = await _publish_rows(self._broker, self._producer, rows)
        finally:
            self._publishing = 0
            for row in rows:
                left = self._waiting.pop(row.tenant_id, 0) - 1
                if left > 0:
                    self._waiting[row.tenant_id] = left
            self._room.set()
        fault_point(FaultPoint.AFTER_PUBLISH)
        confirmed = [row.message_id for row, result in zip(rows, results, strict=True) if result is None]
        if confirmed:
            self._confirmed.extend(confirmed)
            self._to_mark.set()
            self.published_total += len(confirmed)
        return len(confirmed)

    async def _mark_loop(self) -> None:
        while True:
            await self._to_mark.wait()
            await asyncio.sleep(self._mark_interval)  # let a few more confirms join the batch
            if not await self.mark_confirmed():
                await asyncio.sleep(self._retry_interval)

    async def mark_confirmed(self) -> bool:
        """One UPDATE, in a transaction of its own, for everything confirmed so far. On failure the ids
        are kept for the next round (the relay may republish some first: a duplicate, dropped downstream)."""
        ids, self._confirmed = self._confirmed, []
        self._to_mark.clear()
        if not ids:
            return True
        try:
            await database.execute_alone(self._engine, self._mark, *self._leading, ids)
        except Exception as exc:
            log.warning("outbox.mark_failed", events=len(ids), error=repr(exc)[:300])
            self._confirmed[:0] = ids
            self._to_mark.set()
            return False
        return True
