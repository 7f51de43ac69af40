"""The outbox: events are rows written with the state change; a relay publishes them after commit.

The relay claims unpublished rows with FOR UPDATE SKIP LOCKED (so replicas share the work without
double-publishing a row at the same time), publishes them with confirms, and marks only the confirmed
ones. A crash between publish and mark republishes: consumers dedupe on message_id.
"""

import asyncio
import contextlib
import json
from datetime import timedelta
from uuid import UUID

import aiormq.exceptions
import asyncpg
import structlog
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.decoding import encode
from contracts.envelope import Envelope
from infra.db.tables import outbox
from infra.topology import REPLY_ROLE
from workers.runtime import database
from workers.runtime.broker import amqp_properties, headers_for
from workers.runtime.faults import FaultPoint, fault_point

log = structlog.get_logger(__name__)
# The migration's trigger notifies this shared channel on every outbox insert (kept for rows written by
# other code paths); the relays listen on their producer's own channel, which `write` notifies, so a
# commit wakes only the relay that has something to publish.
NOTIFY_CHANNEL = "outbox"

_CLAIM_BATCH = """
SELECT id, message_id, exchange_role, routing_key, message_type, correlation_id, producer, headers, body
FROM messaging.outbox
WHERE published_at IS NULL AND producer = $1
ORDER BY id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
_PURGE = "DELETE FROM messaging.outbox WHERE producer = $1 AND published_at < now() - $2::interval"


def _headers(value: dict | str) -> dict:
    """jsonb as SQLAlchemy's asyncpg codec decodes it (a dict), or as plain asyncpg does (text)."""
    return value if isinstance(value, dict) else json.loads(value)


def channel_of(producer: str) -> str:
    """The NOTIFY channel that wakes `producer`'s relay (at most 63 bytes, PostgreSQL's limit)."""
    return f"outbox.{producer}"[:63]


def row_for(message: Envelope, producer: str) -> tuple:
    """What `write_script` needs of one message, computed when it is emitted."""
    return (
        message.message_id,
        message.exchange_role,
        message.route(),
        message.type,
        message.correlation_id,
        message.tenant_id,
        json.dumps(headers_for(message)),
        encode(message),
    )


def _text(value: str) -> str:
    """A text literal that cannot break out of its quotes, whatever `value` holds: its UTF-8 bytes in
    hex, turned back into text by the server."""
    return f"convert_from('\\x{value.encode().hex()}','UTF8')"


def write_script(producer: str, rows: list[tuple]) -> str:
    """SQL that inserts the rows and notifies the producer's relay (delivered at commit), to run in the
    caller's transaction as part of one simple-query round trip (the unit of work adds the COMMIT).

    No parameters in the simple-query protocol, so every value is a literal that carries only hex
    digits (text, bytea) or a UUID's canonical form: nothing in a message can end a literal early."""
    values = ",".join(
        f"('{UUID(str(m))}'::uuid,{_text(producer)},{_text(r)},{_text(k)},{_text(t)},{_text(c)},{_text(tn)},"
        f"{_text(h)}::jsonb,'\\x{b.hex()}'::bytea)"
        for m, r, k, t, c, tn, h, b in rows
    )
    return (
        "INSERT INTO messaging.outbox (message_id,producer,exchange_role,routing_key,message_type,"
        f"correlation_id,tenant_id,headers,body) VALUES {values};"
        f"SELECT pg_notify({_text(channel_of(producer))},'')"
    )


async def add(connection: AsyncConnection, message: Envelope, *, producer: str) -> None:
    """One row through SQLAlchemy, on a connection whose transaction the caller holds."""
    await connection.execute(
        insert(outbox).values(
            message_id=message.message_id,
            producer=producer,
            exchange_role=message.exchange_role,
            routing_key=message.route(),
            message_type=message.type,
            correlation_id=message.correlation_id,
            tenant_id=message.tenant_id,
            headers=headers_for(message),
            body=encode(message),
        )
    )
    await connection.execute(select(func.pg_notify(channel_of(producer), "")))


def _undeliverable_reply(row, error: BaseException) -> bool:
    return row["exchange_role"] == REPLY_ROLE and isinstance(error, aiormq.exceptions.PublishError)


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


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
    ) -> None:
        self._engine = engine
        self._broker = broker
        self._producer = producer
        self._dsn = asyncpg_dsn(database_url)
        self._batch_size = batch_size
        self._poll_interval = poll_interval_s
        self._retention = timedelta(seconds=retention_s)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listen_lost = asyncio.Event()
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
                try:
                    published = await self.publish_pending()
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

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many were confirmed and marked.

        The batch's rows stay locked (FOR UPDATE SKIP LOCKED) while they are published, so a replica's
        relay skips them; all publishes go out at once and their confirms are awaited together; only
        the confirmed rows are marked, in the same round trip as the COMMIT.
        """
        async with database.UnitOfWork(self._engine, self._producer) as uow:
            rows = await uow.driver.fetch(_CLAIM_BATCH, self._producer, self._batch_size)
            if not rows:
                return 0
            results = await self._publish_all(rows)
            fault_point(FaultPoint.RELAY_AFTER_PUBLISH)
            confirmed: list[int] = []
            for row, result in zip(rows, results, strict=True):
                if result is not None and _undeliverable_reply(row, result):
                    # A portal's reply queue that is gone: the outcome is in the read store and the
                    # outcome event, so the reply is dropped rather than retried for ever.
                    log.warning("outbox.reply_undeliverable", routing_key=row["routing_key"])
                    result = None
                if result is None:
                    confirmed.append(row["id"])
                    # One line per event, with its request's correlation id: grep shows the whole path.
                    log.info(
                        "outbox.published",
                        message_id=str(row["message_id"]),
                        correlation_id=row["correlation_id"],
                        message_type=row["message_type"],
                        routing_key=row["routing_key"],
                    )
                else:
                    log.warning(
                        "outbox.publish_failed",
                        message_id=str(row["message_id"]),
                        correlation_id=row["correlation_id"],
                        routing_key=row["routing_key"],
                        error=repr(result)[:500],
                    )
            if confirmed:
                # Integers from the database, inlined: the UPDATE and the COMMIT in one round trip.
                ids = ",".join(str(int(i)) for i in confirmed)
                await uow.commit_with(
                    f"UPDATE messaging.outbox SET published_at = now() WHERE id = ANY('{{{ids}}}'::bigint[])"
                )
        self.published_total += len(confirmed)
        return len(confirmed)

    async def _publish_all(self, rows: list) -> list[BaseException | None]:
        """Publish every row at once and await the confirms together."""
        exchanges: dict[str, str] = {}
        publishes = []
        for row in rows:
            role = row["exchange_role"]
            exchange = exchanges.get(role) or exchanges.setdefault(role, self._broker.topology.exchange(role))
            properties = amqp_properties(
                message_id=str(row["message_id"]),
                correlation_id=row["correlation_id"],
                message_type=row["message_type"],
                producer=row["producer"],
                headers=_headers(row["headers"]),
            )
            publishes.append(self._broker.publish_body(exchange, row["routing_key"], row["body"], properties))
        return await asyncio.gather(*publishes, return_exceptions=True)

    async def purge_published(self) -> int:
        async with database.UnitOfWork(self._engine, self._producer) as uow:
            status = await uow.driver.execute(_PURGE, self._producer, self._retention)
            await uow.commit()
        return int(status.rsplit(" ", 1)[-1] or 0)

    async def _listen(self) -> None:
        """LISTEN for commits that wrote outbox rows; reconnects forever, polling covers the gaps."""
        while not self._stopping.is_set():
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                self._listen_lost = lost
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(channel_of(self._producer), lambda *_: self._wake.set())
                self._wake.set()  # catch up on anything committed while we were not listening
                await lost.wait()  # set when the connection drops, or by stop()
            except (OSError, asyncpg.PostgresError) as exc:
                log.info("outbox.listen_unavailable", error=repr(exc)[:300])
                await asyncio.sleep(self._poll_interval)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
