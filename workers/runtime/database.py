"""Engine creation and the unit of work: one transaction per message, rolled back unless committed.

The unit of work holds one pooled connection and drives its transaction by hand (BEGIN / COMMIT /
ROLLBACK). It exposes ONE handle on that transaction, `uow.driver` (the asyncpg connection): every store
runs module-level parameterised SQL (`$1`, `$2`, ...) through it, which asyncpg prepares once per
connection and caches by its text. No value is ever pasted into SQL text (tests/unit/test_sql_idiom.py
scans the workers for that); SQLAlchemy only pools the connections.

- BEGIN, then the inbox claim, which also sets the transaction's tenant and returns its clock
  (`claim=` below; a batch claims its deliveries with `claim_all`);
- `now()` is asked only when a handler wants it and no statement returned it yet, once per transaction;
- the outbox rows a handler emits are written in one statement just before the COMMIT (`written`
  holds them afterwards, for the consumer to publish directly); with `notify`, the same statement
  wakes this producer's relay (per-producer NOTIFY channel, delivered at commit);
- no pre-ping: a connection found dead at BEGIN is invalidated and the BEGIN retried on another (as
  many times as the pool has connections, since one outage kills them all; a dead one fails at once);
  a connection that dies later fails the transaction, which the consumer retries as a transient error.
"""

import asyncio
import re
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import asyncpg
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import Pool

from contracts.envelope import Envelope
from workers.runtime import inbox, outbox
from workers.runtime.faults import FaultPoint, fault_point

log = structlog.get_logger(__name__)
E = TypeVar("E", bound=Envelope)

# How often BEGIN is retried on another connection when the first one turns out to be dead, at least.
BEGIN_ATTEMPTS = 3
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")  # contracts.types.TenantId
TENANT_SETTING = "appt.tenant_id"  # what the row-level security policies compare tenant_id with
_SET_TENANT = "SELECT set_config('appt.tenant_id', $1, true)"  # SET LOCAL, with the tenant as a parameter
_NOW = "SELECT now()"


# What a worker's pool holds by default (APPT_DB_POOL_SIZE): on the two-core reference machine a stage
# never has more than a few transactions in flight (docs/scaling.md). A worker's one other connection is
# its relay's session (LISTEN and the outbox writer lock).
DEFAULT_POOL_SIZE = 5


def create_engine(
    database_url: str,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = 0,
    server_settings: Mapping[str, str] | None = None,
    *,
    application_name: str | None = None,
) -> AsyncEngine:
    """A fixed-size pool by default: overflow connections are closed when returned and opened again
    moments later under load (a backend fork each time); a unit of work that finds the pool busy waits
    for a connection instead. No pre-ping (see the module docstring). `server_settings`: session settings
    every pooled connection opens with (a worker's outbox writer id, `outbox.writer_settings`).
    `application_name`: what pg_stat_activity shows for these connections (which worker holds them)."""
    settings = dict(server_settings or {})
    if application_name is not None:
        settings["application_name"] = application_name[:63]
    engine = create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        connect_args={"server_settings": settings} if settings else {},
    )
    _BEGUN[engine.sync_engine.pool] = 0
    return engine


# Transactions begun per pool: with every pooled connection busy, the health check tells a working
# database (transactions still begin) from a hung one (none do) without a connection of its own.
_BEGUN: "weakref.WeakKeyDictionary[Pool, int]" = weakref.WeakKeyDictionary()


def transactions_begun(engine: AsyncEngine) -> int:
    return _BEGUN.get(engine.sync_engine.pool, 0)


def pool_exhausted(engine: AsyncEngine) -> bool:
    """Every connection of the pool is checked out (a unit of work would wait for one)."""
    pool = engine.sync_engine.pool
    checked_out = getattr(pool, "checkedout", None)
    size = pool_size(engine)
    overflow = getattr(pool, "_max_overflow", 0)
    return callable(checked_out) and size > 0 and checked_out() >= size + max(overflow, 0)


def pool_size(engine: AsyncEngine) -> int:
    """The connections the engine's pool holds (0 when it is not a sized pool)."""
    size = getattr(engine.sync_engine.pool, "size", None)
    return size() if callable(size) else 0


def _is_disconnect(error: BaseException, driver: asyncpg.Connection | None) -> bool:
    """The connection is unusable (closed, or its protocol stuck mid-operation, as when the server shut
    down under it): retrying on another connection may succeed."""
    if driver is not None and driver.is_closed():
        return True
    return isinstance(
        error,
        OSError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | asyncpg.exceptions.AdminShutdownError
        | asyncpg.exceptions.CannotConnectNowError,
    )


def _reraise(error: Exception, lost: bool) -> NoReturn:
    """Raise `error`; a client-side failure of a lost connection as the error the consumer retries
    (SQLSTATE 08003), since asyncpg's InterfaceError / InternalClientError say nothing about that."""
    if lost and isinstance(error, asyncpg.exceptions.InterfaceError | asyncpg.exceptions.InternalClientError):
        raise asyncpg.exceptions.ConnectionDoesNotExistError(
            f"connection unusable: {error!r}"[:300]
        ) from error
    raise error


def _check_tenant(tenant: str) -> None:
    if not _TENANT.match(tenant):
        raise ValueError(f"not a tenant id: {tenant[:70]!r}")


def asyncpg_dsn(database_url: str) -> str:
    """A SQLAlchemy URL (`postgresql+asyncpg://...`) as the DSN plain asyncpg connects with."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def execute_alone(engine: AsyncEngine, statement: str, *args: object) -> str:
    """One parameterised statement as a transaction of its own (one round trip) on a pooled connection."""
    return await _alone(engine, "execute", statement, args)


async def fetchrow_alone(engine: AsyncEngine, statement: str, *args: object) -> asyncpg.Record | None:
    """As `execute_alone`, returning the statement's first row."""
    return await _alone(engine, "fetchrow", statement, args)


async def _alone(engine: AsyncEngine, method: str, statement: str, args: tuple) -> Any:
    connection = await engine.connect()
    driver: asyncpg.Connection | None = None
    broken = True  # until the statement succeeded or failed on a connection that is still sound
    try:
        raw = await connection.get_raw_connection()
        driver = raw.driver_connection
        result = await getattr(driver, method)(statement, *args)
        broken = False
        return result
    except Exception as exc:
        broken = _is_disconnect(exc, driver)
        _reraise(exc, broken)
    finally:
        try:
            if broken:
                await asyncio.shield(connection.invalidate())
            await asyncio.shield(connection.close())
        except Exception as exc:
            log.info("database.close_failed", error=repr(exc)[:200])


class UnitOfWork:
    """Holds one connection in one transaction. `emit` queues events in the outbox of that transaction.

    `claim=(consumer, message_id)` records the message in the inbox as the transaction's first
    statement (in the consumer's own partition, with the transaction's tenant); `claimed` is then False
    for a duplicate (the caller skips it; nothing was written). A batch opens the unit of work without a
    claim and claims its deliveries with `claim_all`, then `scope_to` each message's tenant in turn.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        producer: str,
        *,
        claim: tuple[str, UUID] | None = None,
        tenant: str | None = None,
        notify: bool = True,
    ) -> None:
        """`claim`: (consumer, message id) claimed in the inbox with BEGIN. `tenant`: the transaction may
        only see and write that tenant's rows (row-level security, migration 0007; enforced for the
        per-worker roles, not for the owner): set right after BEGIN (with the claim). `notify=False`:
        the caller publishes the committed rows itself (`written`), so the relay is not woken."""
        if tenant is not None:
            _check_tenant(tenant)
        self._tenant = tenant
        self._scoped: str | None = None  # the tenant the transaction's statements are scoped to now
        self._engine = engine
        self.producer = producer
        self._connection: AsyncConnection  # the pooled connection; SQLAlchemy never runs a statement on it
        self.driver: asyncpg.Connection  # the one handle on the transaction (see the module docstring)
        self.written: list[outbox.OutboxRow] = []  # the outbox rows the commit wrote
        # The messages this transaction handles, in order (workers/runtime/batch.py sets them for a batch;
        # empty for one message): a handler may write for all of them at its first call, in one
        # statement, and keep what it learnt in `memo` for the calls that follow.
        self.batch: tuple[Envelope, ...] = ()
        self.memo: dict[str, Any] = {}
        self.claimed = True
        self._claim = claim
        self._notify = notify
        self._pending: list[outbox.OutboxRow] = []
        self._now: datetime | None = None
        self._committed = False
        self._open = False
        self._broken = False

    async def __aenter__(self) -> "UnitOfWork":
        self.written = []
        self.memo = {}
        self._pending = []
        self._scoped = None
        self._now = None
        self._committed = False
        # Every pooled connection may have died in the same outage: try each (a dead one fails at once).
        attempts = max(BEGIN_ATTEMPTS, pool_size(self._engine) + 1)
        for attempt in range(1, attempts + 1):
            self._connection = await self._engine.connect()
            try:
                raw = await self._connection.get_raw_connection()
                self.driver = raw.driver_connection
                self.claimed = await self._begin()
                _BEGUN[self._engine.sync_engine.pool] = _BEGUN.get(self._engine.sync_engine.pool, 0) + 1
            except BaseException as exc:
                dead = _is_disconnect(exc, getattr(self, "driver", None))
                await self._discard(invalidate=True)
                if not isinstance(exc, Exception):
                    raise
                if not dead or attempt == attempts:
                    _reraise(exc, dead)
                # A connection that died while idle in the pool (invalidated above): take another.
                log.info("database.stale_connection", attempt=attempt, error=repr(exc)[:200])
                continue
            self._open = True
            self._broken = False
            return self
        raise AssertionError("unreachable")

    async def _begin(self) -> bool:
        driver = self.driver
        if driver.is_in_transaction():  # never expected; don't let a leftover transaction swallow ours
            raise asyncpg.exceptions.InterfaceError("pooled connection was left inside a transaction")
        await driver.execute("BEGIN")
        if self._claim is not None:
            # The tenant setting (and the clock) travel with the claim: one statement (see `inbox.claim`).
            consumer, message_id = self._claim
            return bool(await self._claim_rows(consumer, [self._tenant or ""], [message_id]))
        if self._tenant is not None:
            await driver.execute(_SET_TENANT, self._tenant)
            self._scoped = self._tenant
        return True

    async def claim_all(self, consumer: str, messages: Sequence[Envelope]) -> frozenset[UUID]:
        """Claim `messages` in `consumer`'s inbox in one statement, each with its own tenant; returns the
        ids claimed now (the others are duplicates: in the inbox already, or earlier in `messages`). Then
        `scope_to` each message's tenant before its handler runs."""
        for message in messages:
            _check_tenant(message.tenant_id)
        return await self._claim_rows(
            consumer, [m.tenant_id for m in messages], [m.message_id for m in messages]
        )

    async def _claim_rows(self, consumer: str, tenants: list[str], ids: list[UUID]) -> frozenset[UUID]:
        try:
            claimed = await inbox.claim(self.driver, consumer, tenants, ids)
        except Exception as exc:
            self._failed(exc)
        # One tenant in the claim: the transaction is scoped to it. Several: to one of them, which one
        # depends on the order the server produced the rows in, so nothing is assumed (`scope_to` sets it).
        distinct = set(tenants)
        if len(distinct) == 1 and tenants[0]:
            self._scoped = tenants[0]
        elif len(distinct) > 1:
            self._scoped = None
        if claimed.now is not None:
            self.saw_now(claimed.now)
        return claimed.fresh

    async def scope_to(self, tenant: str) -> None:
        """Scope the transaction's next statements to `tenant` (row-level security), when it is not
        already: a batch's handlers each run scoped to their own message's tenant."""
        _check_tenant(tenant)
        if tenant == self._scoped:
            return
        try:
            await self.driver.execute(_SET_TENANT, tenant)
        except Exception as exc:
            self._failed(exc)
        self._scoped = tenant

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._open:
            return
        self._open = False
        if self._committed:
            await self._connection.close()
            return
        # A handler's own statement on `driver` failed because the connection was lost under it (a
        # terminated backend leaves asyncpg's protocol mid-operation): discard the connection and raise
        # the failure as the lost connection it is, which the consumer retries.
        lost = isinstance(exc, Exception) and _is_disconnect(exc, self.driver)
        await self._release(broken=self._broken or lost)
        if lost and isinstance(
            exc, asyncpg.exceptions.InterfaceError | asyncpg.exceptions.InternalClientError
        ):
            _reraise(exc, lost=True)

    async def _release(self, *, broken: bool) -> None:
        """Roll back and return the connection to the pool, or discard it when it cannot be trusted."""
        if broken or self.driver.is_closed():
            await self._discard(invalidate=True)
            return
        try:
            await self.driver.execute("ROLLBACK")
        except asyncio.CancelledError:
            await self._discard(invalidate=True)
            raise
        except Exception as error:
            # Unknown state (connection lost, protocol busy): never hand it back to the pool. The
            # exception that ended the transaction is the one the caller sees.
            log.info("database.rollback_failed", error=repr(error)[:200])
            await self._discard(invalidate=True)
            return
        await self._discard(invalidate=self.driver.is_closed())

    async def _discard(self, *, invalidate: bool) -> None:
        try:
            if invalidate:
                await asyncio.shield(self._connection.invalidate())
            await asyncio.shield(self._connection.close())
        except Exception as exc:
            log.info("database.close_failed", error=repr(exc)[:200])

    def saw_now(self, value: datetime) -> None:
        """A statement of the handler's returned `now()` along with its result: the transaction's clock,
        so `now()` below need not ask for it again."""
        self._now = value

    async def now(self) -> datetime:
        """The transaction's clock (PostgreSQL `now()`), the same for every statement in it."""
        if self._now is None:
            try:
                self._now = await self.driver.fetchval(_NOW)
            except Exception as exc:
                self._failed(exc)
        return self._now

    def _failed(self, error: Exception) -> NoReturn:
        """A statement of ours failed: remember when the connection is unusable, so it is discarded
        rather than rolled back and pooled, and say so as the transient error the consumer retries."""
        lost = _is_disconnect(error, self.driver) and not isinstance(error, asyncpg.PostgresError)
        self._broken = self._broken or lost
        _reraise(error, lost)

    async def emit(self, message: Envelope) -> None:
        """Queue `message` for the outbox; the rows are written with the commit, in one statement."""
        self._pending.append(outbox.row_for(message, self.producer))

    async def follow(
        self,
        cause: Envelope,
        event_type: type[E],
        payload: object,
        *,
        correlation_id: str | None = None,
        request_producer: str | None = None,
    ) -> E:
        """Build the event of type `event_type` that `cause` leads to and queue it for the outbox: its
        producer (this unit of work's), occurred_at (the transaction's clock), tenant, correlation id
        (the cause's, unless the event answers another request, then with that request's portal in
        `request_producer`) and causation id (the cause's id) are filled in; only the payload is the
        handler's."""
        event = event_type.follow(
            cause,
            producer=self.producer,
            occurred_at=await self.now(),
            correlation_id=correlation_id,
            request_producer=request_producer,
            payload=payload,
        )
        await self.emit(event)
        return event

    async def commit(self) -> None:
        """Write the queued outbox rows (and, with `notify`, wake the producer's relay: delivered at
        commit) in one statement, then COMMIT. `written` holds the rows afterwards."""
        rows, self._pending = self._pending, []
        fault_point(FaultPoint.BEFORE_COMMIT)
        try:
            if rows:
                await outbox.write(self.driver, self.producer, rows, notify=self._notify)
            await self.driver.execute("COMMIT")
        except Exception as exc:
            # A lost COMMIT may or may not have committed: the retry's inbox claim tells.
            self._failed(exc)
        self._committed = True
        self.written = rows
        fault_point(FaultPoint.AFTER_COMMIT)
