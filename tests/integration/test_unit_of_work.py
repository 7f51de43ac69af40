"""The unit of work on the real database: one round trip for BEGIN + inbox claim, outbox rows written
with the COMMIT as literals, and pooled connections that died while idle replaced without a pre-ping."""

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import select

from contracts.decoding import encode
from contracts.portal_v1 import Cancel, ModifyRequested, ModifyRequestedPayload
from infra.db.tables import inbox, outbox
from workers.runtime.database import UnitOfWork, asyncpg_dsn
from workers.runtime.errors import is_transient

pytestmark = pytest.mark.integration


def _request(reason: str) -> ModifyRequested:
    return ModifyRequested(
        message_id=uuid.uuid4(),
        tenant_id="uow-tenant",
        correlation_id=f"req-{uuid.uuid4().hex[:12]}",
        occurred_at=datetime.now(UTC),
        producer="portal-web",
        payload=ModifyRequestedPayload(
            appointment_id="apt-1", requester_id="home-ana", change=Cancel(reason=reason)
        ),
    )


async def test_a_claim_is_recorded_once_and_a_duplicate_writes_nothing(engine):
    consumer, message_id = f"uow_{uuid.uuid4().hex[:8]}", uuid.uuid4()
    async with UnitOfWork(engine, consumer, claim=(consumer, message_id)) as uow:
        assert uow.claimed
        await uow.commit()
    async with UnitOfWork(engine, consumer, claim=(consumer, message_id)) as uow:
        assert not uow.claimed
    async with engine.connect() as connection:
        rows = (await connection.execute(select(inbox).where(inbox.c.consumer == consumer))).all()
    assert [row.message_id for row in rows] == [message_id]


async def test_nothing_is_kept_without_commit(engine):
    producer = f"uow_{uuid.uuid4().hex[:8]}"
    message_id = uuid.uuid4()
    async with UnitOfWork(engine, producer, claim=(producer, message_id)) as uow:
        await uow.emit(_request("Fixed it myself"))
        assert await uow.now() == await uow.now()  # one clock per transaction
    async with engine.connect() as connection:
        claimed = (await connection.execute(select(inbox).where(inbox.c.message_id == message_id))).all()
        written = (await connection.execute(select(outbox).where(outbox.c.producer == producer))).all()
    assert claimed == [] and written == []


async def test_outbox_rows_keep_every_byte_of_hostile_content(engine):
    """Rows go out as SQL literals: quotes, backslashes, dollar signs and SQL in the text stay data."""
    producer = f"uow_{uuid.uuid4().hex[:8]}"
    hostile = "It's fine'); DROP TABLE messaging.outbox; -- \\x00 $$ é ☃"
    messages = [_request(hostile), _request("Schedule conflict")]
    async with UnitOfWork(engine, producer) as uow:
        for message in messages:
            await uow.emit(message)
        await uow.commit()
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(outbox).where(outbox.c.producer == producer).order_by(outbox.c.id)
            )
        ).all()
    assert [row.message_id for row in rows] == [m.message_id for m in messages]  # emission order
    assert [bytes(row.body) for row in rows] == [encode(m) for m in messages]
    assert rows[0].headers["x-tenant-id"] == "uow-tenant"
    assert rows[0].correlation_id == messages[0].correlation_id


async def test_pooled_connections_killed_while_idle_are_replaced(engine, database_url):
    """No pre-ping: a dead pooled connection shows at BEGIN, and the unit of work takes a fresh one."""
    consumer = f"uow_{uuid.uuid4().hex[:8]}"
    pids = []
    for _ in range(2):
        async with UnitOfWork(engine, consumer, claim=(consumer, uuid.uuid4())) as uow:
            pids.append(await uow.driver.fetchval("SELECT pg_backend_pid()"))
            await uow.commit()
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    finally:
        await admin.close()
    async with UnitOfWork(engine, consumer, claim=(consumer, uuid.uuid4())) as uow:
        assert uow.claimed
        await uow.commit()


async def test_a_connection_lost_mid_transaction_is_a_transient_failure(engine, database_url):
    """A handler's statement on the unit of work's one handle meets a terminated backend."""
    consumer = f"uow_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        with pytest.raises(Exception) as raised:
            async with UnitOfWork(engine, consumer, claim=(consumer, uuid.uuid4())) as uow:
                pid = await uow.driver.fetchval("SELECT pg_backend_pid()")
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
                await uow.driver.fetchval("SELECT 1")
                await uow.commit()
    finally:
        await admin.close()
    assert is_transient(raised.value)
    async with UnitOfWork(engine, consumer, claim=(consumer, uuid.uuid4())) as uow:  # the pool recovers
        await uow.commit()


async def test_a_client_error_of_a_connection_stuck_mid_operation_is_a_transient_failure(engine):
    """What a handler's driver statement meets when the backend was terminated during another one:
    asyncpg's protocol is stuck, and says so only as a client error. It is retried, not a bug."""
    stuck = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError) as raised:
        async with UnitOfWork(engine, "uow"):
            raise stuck
    assert is_transient(raised.value) and raised.value.__cause__ is stuck
    async with UnitOfWork(engine, "uow") as uow:  # that connection was discarded, not pooled
        assert await uow.driver.fetchval("SELECT 1") == 1


async def test_a_tenant_is_set_with_begin_for_this_transaction_only(engine):
    consumer = f"uow_{uuid.uuid4().hex[:8]}"
    async with UnitOfWork(engine, consumer, claim=(consumer, uuid.uuid4()), tenant="acme-plumbing") as uow:
        assert uow.claimed
        assert await uow.driver.fetchval("SELECT current_setting('appt.tenant_id', true)") == "acme-plumbing"
        await uow.commit()
        # the next transaction on the same pooled connection does not inherit it
    async with UnitOfWork(engine, consumer) as uow:
        assert await uow.driver.fetchval("SELECT current_setting('appt.tenant_id', true)") in (None, "")


@pytest.mark.parametrize("tenant", ["Acme", "a", "acme'; DROP TABLE x; --", "acme plumbing", "-acme"])
def test_a_malformed_tenant_never_reaches_the_database(engine, tenant):
    with pytest.raises(ValueError, match="not a tenant id"):
        UnitOfWork(engine, "uow", tenant=tenant)
