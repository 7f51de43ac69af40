"""The inbox: a message's id is recorded in the same transaction as its effect, so a redelivery is a no-op.

A concurrent duplicate waits on the primary key until the first transaction ends, then sees the
conflict, so two replicas never both apply the same message. The unit of work claims as the first
statement of its transaction (`UnitOfWork(..., claim=...)`); `claim` below does the same on a
transaction already open.

A worker claims in its own partition (`messaging.<worker>_inbox`, migration 0008), the only one its role
may write, and with its message's tenant, the only one row-level security lets it write.
"""

from uuid import UUID

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from infra.db.tables import inbox_table


def claim_sql(consumer: str, tenant: str, message_id: UUID) -> str:
    """The claim as literal SQL, for the simple-query protocol (BEGIN and claim in one round trip).
    Only for a consumer name and a tenant the caller has checked to be quote-free, and a real UUID."""
    return (
        f"INSERT INTO {inbox_table(consumer)} (consumer, tenant_id, message_id)"
        f" VALUES ('{consumer}', '{tenant}', '{message_id}') ON CONFLICT DO NOTHING"
    )


async def claim_on(driver: asyncpg.Connection, consumer: str, tenant: str, message_id: UUID) -> bool:
    """The claim on the asyncpg connection under a unit of work (prepared once per connection)."""
    statement = (
        f"INSERT INTO {inbox_table(consumer)} (consumer, tenant_id, message_id) VALUES ($1, $2, $3)"
        " ON CONFLICT DO NOTHING"
    )
    return await driver.execute(statement, consumer, tenant, message_id) != "INSERT 0 0"


async def claim(connection: AsyncConnection, consumer: str, message_id: UUID, *, tenant: str = "") -> bool:
    """True the first time `consumer` sees `message_id`; False for a duplicate."""
    result = await connection.execute(
        text(
            f"INSERT INTO {inbox_table(consumer)} (consumer, tenant_id, message_id)"
            " VALUES (:consumer, :tenant, :message_id) ON CONFLICT DO NOTHING RETURNING message_id"
        ),
        {"consumer": consumer, "tenant": tenant, "message_id": message_id},
    )
    return result.first() is not None
