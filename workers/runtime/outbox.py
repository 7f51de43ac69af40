"""The outbox: events are rows written with the state change; a relay publishes them after commit.

The relay claims unpublished rows with FOR UPDATE SKIP LOCKED (so replicas share the work without
double-publishing a row at the same time), publishes them with confirms, and marks only the confirmed
ones. A crash between publish and mark republishes: consumers dedupe on message_id.
"""

import asyncio
import contextlib
from datetime import timedelta

import asyncpg
import structlog
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.decoding import encode
from contracts.envelope import Envelope
from infra.db.tables import outbox
from workers.runtime.broker import amqp_message, headers_for

log = structlog.get_logger(__name__)
NOTIFY_CHANNEL = "outbox"


async def add(connection: AsyncConnection, message: Envelope, *, producer: str) -> None:
    await connection.execute(
        insert(outbox).values(
            message_id=message.message_id,
            producer=producer,
            exchange_role=message.exchange_role,
            routing_key=message.routing_key,
            message_type=message.type,
            correlation_id=message.correlation_id,
            tenant_id=message.tenant_id,
            headers=headers_for(message),
            body=encode(message),
        )
    )


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
        """Publish one batch; returns how many were confirmed and marked."""
        async with self._engine.connect() as connection, connection.begin():
            rows = (
                await connection.execute(
                    select(outbox)
                    .where(outbox.c.published_at.is_(None), outbox.c.producer == self._producer)
                    .order_by(outbox.c.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            results = await asyncio.gather(*(self._publish_row(row) for row in rows), return_exceptions=True)
            confirmed = [row.id for row, result in zip(rows, results, strict=True) if result is None]
            for row, result in zip(rows, results, strict=True):
                if result is not None:
                    log.warning(
                        "outbox.publish_failed",
                        message_id=str(row.message_id),
                        correlation_id=row.correlation_id,
                        routing_key=row.routing_key,
                        error=repr(result)[:500],
                    )
            if confirmed:
                await connection.execute(
                    update(outbox).where(outbox.c.id.in_(confirmed)).values(published_at=func.now())
                )
        self.published_total += len(confirmed)
        return len(confirmed)

    async def _publish_row(self, row) -> None:
        message = amqp_message(
            row.body,
            message_id=str(row.message_id),
            correlation_id=row.correlation_id,
            message_type=row.message_type,
            producer=row.producer,
            headers=row.headers,
        )
        await self._broker.publish(
            self._broker.topology.exchange(row.exchange_role), row.routing_key, message
        )

    async def purge_published(self) -> int:
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(outbox).where(
                    outbox.c.producer == self._producer,
                    outbox.c.published_at < func.now() - self._retention,
                )
            )
        return result.rowcount or 0

    async def _listen(self) -> None:
        """LISTEN for commits that wrote outbox rows; reconnects forever, polling covers the gaps."""
        while not self._stopping.is_set():
            connection = None
            try:
                connection = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                self._listen_lost = lost
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                await connection.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                self._wake.set()  # catch up on anything committed while we were not listening
                await lost.wait()  # set when the connection drops, or by stop()
            except (OSError, asyncpg.PostgresError) as exc:
                log.info("outbox.listen_unavailable", error=repr(exc)[:300])
                await asyncio.sleep(self._poll_interval)
            finally:
                if connection is not None and not connection.is_closed():
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
