"""Is this worker able to work: its broker connection and its database, checked cheaply and often.

The broker check reads the robust connection's state (no traffic). The database check runs one query on
a connection of the worker's pool every `interval_s` (no connection of its own); for a worker that emits
events the query is the outbox backlog, which also feeds the outbox gauges. A busy pool is not an
outage: while every pooled connection is checked out, the database counts as up as long as transactions
still begin between two checks.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from workers.runtime import database
from workers.runtime.broker import Broker
from workers.runtime.metrics import WorkerMetrics
from workers.runtime.outbox import relay_call

log = structlog.get_logger(__name__)


@dataclass
class Check:
    ok: bool
    error: str | None = None
    since: datetime | None = None  # when it last changed between ok and failing
    checked_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok}
        if self.error is not None:
            body["error"] = self.error
        if self.since is not None:
            body["since"] = self.since.isoformat()
        if self.checked_at is not None:
            body["checked_at"] = self.checked_at.isoformat()
        return body


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300] if text else type(error).__name__


class HealthMonitor:
    def __init__(
        self,
        worker: str,
        *,
        broker: Broker,
        engine: AsyncEngine,
        metrics: WorkerMetrics,
        producer: str | None = None,
        interval_s: float = 5.0,
        queues: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """`queues`: (name, role) of the queues whose depth and consumers this worker reports (its work
        queue and its dead letters), read with a passive declare: no permission beyond connecting."""
        self.worker = worker
        self._broker = broker
        self._engine = engine
        self._metrics = metrics
        self._interval = interval_s
        # Long enough for a connect on a busy host, short enough that a hung database shows promptly.
        self._timeout = min(max(interval_s, 2.0), 10.0)
        self._query_sql = "SELECT 1"
        self._leading: tuple[str, ...] = ()
        self._backlog = producer is not None
        if producer is not None:
            # Every tenant's unpublished rows: through the worker's own backlog function (migration 0008).
            call, self._leading = relay_call(producer, "backlog")
            self._query_sql = f"SELECT * FROM {call}"
        self._begun_at_last_check = -1
        self._task: asyncio.Task | None = None
        self.database = Check(ok=False, error="not checked yet")
        self._broker_was_ok: bool | None = None
        self._queues = queues
        self._queue_channel: Any = None
        self._queue_problem: str | None = None
        metrics.track_broker(self.broker_ok)

    # --- broker ------------------------------------------------------------------------------------

    def broker_ok(self) -> bool:
        connection = self._broker.connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    def broker_check(self) -> Check:
        ok = self.broker_ok()
        return Check(ok, None if ok else "no open connection to RabbitMQ (reconnecting)")

    # --- database ----------------------------------------------------------------------------------

    async def check_database(self) -> Check:
        """Run the check once now; updates `database` and the gauges."""
        now = datetime.now(UTC)
        try:
            await self._query()
        except Exception as exc:
            self._set_database(False, _describe(exc) or "timed out", now)
        else:
            self._set_database(True, None, now)
        return self.database

    async def _query(self) -> None:
        begun = database.transactions_begun(self._engine)
        progressed = begun != self._begun_at_last_check
        self._begun_at_last_check = begun
        if database.pool_exhausted(self._engine):
            if not progressed:
                raise TimeoutError(
                    "every pooled connection is busy; no transaction began since the last check"
                )
            return
        try:
            row = await asyncio.wait_for(
                database.fetchrow_alone(self._engine, self._query_sql, *self._leading), timeout=self._timeout
            )
        except TimeoutError:
            if database.pool_exhausted(self._engine) and database.transactions_begun(self._engine) != begun:
                return  # the pool filled up while the check waited for a connection: busy, and working
            raise
        if self._backlog and row is not None:
            backlog, oldest_age_s = row
            self._metrics.outbox(int(backlog), float(oldest_age_s))

    def _set_database(self, ok: bool, error: str | None, now: datetime) -> None:
        previous = self.database
        changed = previous.ok != ok or previous.checked_at is None
        self.database = Check(ok, error, now if changed else previous.since, now)
        self._metrics.database(ok)
        if changed and not ok:
            log.warning("health.database_unavailable", worker=self.worker, error=error)
        elif changed and previous.checked_at is not None:
            log.info("health.database_available", worker=self.worker)

    # --- queues -----------------------------------------------------------------------------------

    async def probe_queues(self) -> None:
        """Read each watched queue's ready messages and consumers into the gauges; a failure (broker
        away, queue missing, access refused) drops this round's values and is logged once per cause."""
        if not self._queues or not self.broker_ok():
            self._metrics.forget_queues()
            return
        try:
            await asyncio.wait_for(self._read_queues(), timeout=self._timeout)
        except Exception as exc:
            self._queue_channel = None
            self._metrics.forget_queues()
            problem = _describe(exc) or "timed out"
            if problem != self._queue_problem:
                log.warning("health.queue_probe_failed", worker=self.worker, error=problem)
            self._queue_problem = problem
        else:
            self._queue_problem = None

    async def _read_queues(self) -> None:
        if self._queue_channel is None or self._queue_channel.is_closed:
            assert self._broker.connection is not None
            self._queue_channel = await self._broker.connection.channel()
        for name, role in self._queues:
            declared = await self._queue_channel.declare_queue(name, passive=True)
            result = declared.declaration_result
            self._metrics.queue(name, role, result.message_count, result.consumer_count)

    # --- the loop ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.check_database()
        self._task = asyncio.create_task(self._run(), name=f"{self.worker}-health")

    async def _run(self) -> None:
        while True:
            began = time.monotonic()
            await self.check_database()
            self._note_broker()
            await self.probe_queues()
            await asyncio.sleep(max(self._interval - (time.monotonic() - began), 0.05))

    def _note_broker(self) -> None:
        """Log when the broker connection is lost or back (not while the worker is still connecting)."""
        ok = self.broker_ok()
        if self._broker_was_ok is None and not ok:
            return
        if self._broker_was_ok is not None and ok != self._broker_was_ok:
            if ok:
                log.info("health.broker_available", worker=self.worker)
            else:
                log.warning("health.broker_unavailable", worker=self.worker)
        self._broker_was_ok = ok

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        channel, self._queue_channel = self._queue_channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    # --- what the endpoints say --------------------------------------------------------------------

    def report(self, *, consuming: bool | None = None) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): body names each check and, when unhealthy, which ones failed."""
        checks = {"broker": self.broker_check(), "database": self.database}
        if consuming is not None:
            checks["consuming"] = Check(
                consuming, None if consuming else "not consuming (starting or draining)"
            )
        failed = [name for name, check in checks.items() if not check.ok]
        body = {
            "status": "ok" if not failed else "unavailable",
            "worker": self.worker,
            "failed": failed,
            "checks": {name: check.to_json() for name, check in checks.items()},
        }
        return not failed, body
